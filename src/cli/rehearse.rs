//! `rehearse`: the whole pipeline against the built-in ARM simulator, through the real HTTP
//! client and the embedded queue. The default demo, and a dress rehearsal on a snapshot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global};
use super::run::migrate;
use crate::azure::arm::{ArmClient, ArmConfig};
use crate::azure::credential::StaticToken;
use crate::azure::ResourceId;
use crate::policy::Policy;
use crate::rehearsal::{self, invariants};
use crate::sim::{FaultProfile, SimOptions, Simulator};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) source: common::FleetSource,
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// none, flaky or chaos.
    #[arg(long, default_value = "none")]
    pub(crate) faults: FaultProfile,
    /// Time compression: divides latencies and delays, multiplies ARM's rate limits.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) speed: f64,
    /// State file (default: a fresh temporary file).
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    common::check_speed(args.speed)?;
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let Some(fleet) = args.source.load()? else {
        anyhow::bail!("rehearse needs --fleet FILE or --generate N");
    };
    let subs = invariants::subscriptions(&fleet);
    // The invariants need a few facts of the fleet as it was, not the fleet: the simulator
    // takes the fleet itself (one copy of it in memory, not two).
    let before = invariants::View::of(&mut fleet.resources.iter());
    let sim = Simulator::new(
        fleet,
        SimOptions {
            speed: args.speed,
            faults: args.faults,
            seed: args.source.seed,
            ..SimOptions::default()
        },
    );
    let server = sim
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .context("cannot start the ARM simulator")?;
    let write_scope: Vec<ResourceId> = subs
        .iter()
        .map(|s| ResourceId::subscription_id(s))
        .collect();
    let config = ArmConfig::new(server.url(), write_scope).time_compressed(args.speed);
    let arm = ArmClient::new(config, std::sync::Arc::new(StaticToken::new("rehearsal")))?;
    let state = match args.state {
        Some(p) => p,
        None => {
            std::env::temp_dir().join(format!("vnet-migrate-rehearse-{}.db", uuid::Uuid::new_v4()))
        }
    };
    let settle_seconds = policy.settle_seconds as f64;
    let mut report = migrate(
        global,
        arm,
        policy,
        subs,
        Vec::new(),
        state.clone(),
        false,
        args.speed,
    )
    .await?;

    rehearsal::use_simulator_figures(&mut report, &sim.stats(), args.speed, settle_seconds);

    let violations = invariants::check_views(
        &before,
        &sim.with_resources(|r| invariants::View::of(r)),
        &report,
    );
    server.shutdown().await;
    let code = common::finish(global, &report, |r| {
        let mut s = r.table();
        if violations.is_empty() {
            s.push_str("invariants: every target has one outcome; migrated targets sit in a delegated subnet of their region with no gateway connection; rolled-back targets have their gateway connection back in sync; no overlapping subnets; no plan with more than two subnets\n");
        }
        s
    })?;
    anyhow::ensure!(
        violations.is_empty(),
        "rehearsal broke invariants:\n  {}",
        violations.join("\n  ")
    );
    if state.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_file(&state);
    }
    Ok(code)
}
