//! `rehearse`: the whole pipeline against the built-in ARM simulator, through the real HTTP
//! client and the embedded queue. The default demo, and a dress rehearsal on a snapshot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global, TempState};
use super::run::run_to_end;
use crate::azure::arm::{ArmClient, ArmConfig};
use crate::azure::credential::StaticToken;
use crate::migration::local::{self, Scope as LocalScope};
use crate::migration::FrontEnd;
use crate::pipeline::local::{Start, StateFile};
use crate::policy::Policy;
use crate::rehearsal::{self, invariants};
use crate::report::html;
use crate::sim::{FaultProfile, SimOptions};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) source: common::FleetSource,
    /// Rollout policy file (JSON; default: the built-in defaults).
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// none, flaky or chaos.
    #[arg(long, default_value = "none")]
    pub(crate) faults: FaultProfile,
    /// Time compression: divides latencies and delays, multiplies ARM's rate limits.
    #[arg(long, default_value_t = 20.0, value_parser = common::speed_arg)]
    pub(crate) speed: f64,
    /// State file (default: a fresh temporary file).
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page (charts included) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub(crate) report: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let options = SimOptions {
        speed: args.speed,
        faults: args.faults,
        seed: args.source.seed,
        ..SimOptions::default()
    };
    let Some(sim) = args.source.simulator(options)? else {
        anyhow::bail!("rehearse needs --fleet FILE or --generate N");
    };
    // The invariants need a few facts of the fleet as it was, not the fleet: read from the
    // simulator before it serves (one copy of the fleet in memory, not two).
    let before = sim.with_resources(|r| invariants::Targets::of(r));
    let subs = before.subscriptions();
    let server = sim
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .context("cannot start the ARM simulator")?;
    let config =
        ArmConfig::new(server.url(), common::write_scope(&subs)?).time_compressed(args.speed);
    let arm = ArmClient::new(config, std::sync::Arc::new(StaticToken::new("rehearsal")))?;
    // Without `--state`, a temporary state removed on every way out of the command.
    let temp;
    let state = match args.state {
        Some(p) => p,
        None => {
            temp = TempState::new("rehearse");
            temp.path().to_path_buf()
        }
    };
    let file = StateFile::open(&state)?;
    // The simulator starts from the fleet every time: there is no rehearsal to resume.
    if let Some(r) = file.store().newest_run()? {
        anyhow::bail!(
            "{} already holds run {}; a rehearsal starts from a fresh simulator: pass another --state",
            state.display(),
            r.record.run
        );
    }
    let mut contract = local::contract(&policy, &[], &server.url(), false, None);
    contract.simulated_speed = Some(args.speed);
    let settle_seconds = policy.settle_seconds as f64;
    let bake_seconds = policy.bake_minutes as f64 * 60.0;
    let scope = LocalScope {
        arm,
        policy: std::sync::Arc::new(policy),
        subscriptions: subs,
        apps: Vec::new(),
        time_scale: args.speed,
        applied: None,
        forecasts: None,
        // The simulator answers for the apps' host names.
        front_end: FrontEnd::Simulator(server.url()),
    };
    let ran = run_to_end(global, scope, (file, Start::New(contract)), false).await?;
    server.shutdown().await;
    // What the checks and the figures need of the simulator's final state, then the
    // simulator goes before the report is built (`Ran`).
    let after = sim.with_resources(|r| invariants::View::of(r));
    let stats = sim.stats();
    drop(sim);
    let mut report = ran.report()?;
    rehearsal::use_simulator_figures(
        &mut report,
        &stats,
        args.speed,
        settle_seconds,
        bake_seconds,
    );
    let violations = invariants::check_views(&before, &after, &report);
    let code = common::finish(global, &report, |r| {
        let mut s = r.table();
        if violations.is_empty() {
            s.push_str("invariants: every target has one outcome; migrated targets sit in a delegated subnet of their region with no gateway connection; rolled-back targets have their gateway connection back in sync; no overlapping subnets; no plan with more than two subnets; a subnet several plans share is one subscription's, a /26 at least, and holds them all\n");
        }
        s
    })?;
    if let Some(path) = &args.report {
        html::write(&report, path)?;
    }
    anyhow::ensure!(
        violations.is_empty(),
        "rehearsal broke {} invariant(s): {}",
        violations.len(),
        violations.join("; ")
    );
    Ok(code)
}
