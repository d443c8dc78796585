//! `rollout start|status|pause|resume|promote|abort` on a local state file (DESIGN §8, issue
//! 12), or with `--ledger` in Azure (`rollout_azure.rs`).
//! `start` is `run`: every run follows its policy's waves, bake, gates and approval. `pause`,
//! `resume`, `promote` and `abort` write what the operator asked into the state file, where a
//! running rollout reads it every tick; with no process running the rollout, `resume`,
//! `promote` and `abort` drive it themselves (an abort still lets the targets a step has
//! touched reach their outcome).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use time::OffsetDateTime;

use super::common::{self, Global};
use super::rollout_azure::{self, Azure};
use super::state::On;
use super::{run, state, status};
use crate::pipeline::controller::promote;
use crate::pipeline::local::held_by_a_runner;
use crate::pipeline::rollout::{Control, Decision};
use crate::pipeline::sqlite::SqliteStore;
use crate::pipeline::RunId;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    azure: rollout_azure::Backend,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Start (or resume) a rollout: `run`, with the policy's waves, bake time and gate.
    Start(run::Args),
    /// The run's targets and waves (with their gates), from the state file.
    Status(status::Args),
    /// Hold new waves and new steps (steps in flight finish, and a cut-over or rollback whose
    /// app may be off its VNet is still carried out); the rollout exits 1 paused.
    Pause(On),
    /// Continue a paused rollout, or one stopped at a gate (past that gate).
    Resume(On),
    /// Release the next wave of a rollout waiting for approval (`gates.manualApproval`).
    Promote(On),
    /// Cancel every target no step has touched; touched ones reach their outcome.
    Abort(On),
}

impl Args {
    /// How the action reaches ARM, if it does.
    pub(crate) fn connection(&self) -> Option<&common::Connection> {
        match &self.action {
            Action::Start(a) => Some(&a.connection),
            Action::Resume(on) | Action::Abort(on) | Action::Pause(on) | Action::Promote(on) => {
                Some(&on.connection)
            }
            Action::Status(_) => None,
        }
    }
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    if let Some(azure) = Azure::open(global, args.azure).await? {
        return match args.action {
            Action::Start(a) => azure.start(global, a).await,
            Action::Status(a) => azure.status(global, a).await,
            Action::Pause(on) => azure.control(on, Control::Paused).await,
            Action::Resume(on) => azure.control(on, Control::Running).await,
            Action::Promote(on) => azure.promote(global, on).await,
            Action::Abort(on) => azure.abort(on).await,
        };
    }
    match args.action {
        Action::Start(a) => run::run(global, a).await,
        Action::Status(a) => status::run(global, a).await,
        Action::Pause(on) => {
            let (store, run) = open(&on)?;
            let now = store.set_control(&run, Control::Paused)?;
            anyhow::ensure!(
                now == Control::Paused,
                "the rollout of run {run} was aborted: there is nothing to pause"
            );
            eprintln!(
                "rollout of run {run} paused: a running rollout takes no new step within a second; `rollout resume --state {}` continues it",
                on.state.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Resume(on) => {
            let (store, run) = open(&on)?;
            let now = store.set_control(&run, Control::Running)?;
            anyhow::ensure!(
                now == Control::Running,
                "the rollout of run {run} was aborted: it cannot be resumed"
            );
            drive_unless_running(global, on, run).await
        }
        Action::Promote(on) => {
            let (store, run) = open(&on)?;
            let Some(found) = store.run_state(Some(&run))? else {
                anyhow::bail!("no such run in {}", on.state.display());
            };
            let config = status::rollout_config(&found)?;
            let index = promoted(
                &run,
                promote(&store, &run, &config, OffsetDateTime::now_utc()).await?,
            )?;
            eprintln!("rollout of run {run} promoted: wave {index} is released");
            drive_unless_running(global, on, run).await
        }
        Action::Abort(on) => {
            let (store, run) = open(&on)?;
            let cancelled = store.abort(&run, OffsetDateTime::now_utc())?;
            eprintln!("rollout of run {run} aborted: {cancelled} untouched target(s) cancelled");
            drive_unless_running(global, on, run).await
        }
    }
}

/// The wave `rollout promote` approved, or the one line that says why it refused.
pub(crate) fn promoted(run: &RunId, promoted: Result<u32, Decision>) -> Result<u32> {
    promoted.map_err(|now| {
        anyhow::anyhow!("the rollout of run {run} is not waiting for approval: {now}")
    })
}

/// The state file, opened beside a runner that may hold it, and the run meant.
fn open(on: &On) -> Result<(SqliteStore, RunId)> {
    let shown = on.state.display();
    // An operator command never creates a state file.
    anyhow::ensure!(
        on.state.exists(),
        "state file {shown} does not exist: pass the --state of a run"
    );
    let store = SqliteStore::open(&on.state)?;
    let wanted = on.run.as_ref().map(|r| RunId(r.clone()));
    let Some(found) = store.run_state(wanted.as_ref())? else {
        anyhow::bail!("no such run in {shown}");
    };
    Ok((store, found.record.run))
}

/// A process running the rollout carries the change out itself; otherwise this one drives
/// the run until it finishes or is held again, and reports.
async fn drive_unless_running(global: &Global, on: On, run: RunId) -> Result<ExitCode> {
    if held_by_a_runner(&on.state) {
        eprintln!("the process running the rollout carries this out within a second");
        return Ok(ExitCode::SUCCESS);
    }
    let operated = state::operate(&on.state, Some(run.as_str()), global)?;
    let report = operated.drive(global).await?;
    common::finish(global, &report, Report::table)
}
