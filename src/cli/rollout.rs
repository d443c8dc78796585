//! `rollout start|status|pause|resume|promote|abort` on a local state file (DESIGN §8, issue 12).
//! `start` is `run`: every run follows its policy's waves, bake and gate. `pause`, `resume`
//! and `abort` write what the operator asked into the state file, where a running rollout
//! reads it every tick; with no process running the rollout, `resume` and `abort` drive it
//! themselves (an abort still lets the targets a step has touched reach their outcome).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use time::OffsetDateTime;

use super::common::{self, Global};
use super::state::On;
use super::{run, state, status};
use crate::pipeline::local::held_by_a_runner;
use crate::pipeline::rollout::{self, Control, Decision, RolloutConfig};
use crate::pipeline::sqlite::{RunState, SqliteStore};
use crate::pipeline::RunId;
use crate::policy::Policy;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
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
            match standing(&store, &found)? {
                Decision::AwaitApproval { index } => store.approve(&run, index)?,
                other => {
                    anyhow::bail!("the rollout of run {run} is not waiting for approval: {other}")
                }
            }
            eprintln!("rollout of run {run} promoted: the next wave is released");
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

/// What the run's rollout does or waits for now, judged as its runner judges it (with the
/// policy and speed the run recorded).
pub(crate) fn standing(store: &SqliteStore, run: &RunState) -> Result<Decision> {
    let contract = run.contract.as_ref();
    let policy = match contract {
        Some(c) => Policy::from_json(&c.policy)?,
        None => Policy::default(),
    };
    let speed = contract.and_then(|c| c.simulated_speed).unwrap_or(1.0);
    let config = RolloutConfig::of(&policy, speed, Default::default());
    let id = &run.record.run;
    Ok(rollout::decide(
        &store.waves(id)?,
        store.control(id)?,
        &config,
        OffsetDateTime::now_utc(),
    ))
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
