//! `rehearse`: the whole pipeline against the built-in ARM simulator, through the real HTTP
//! client and the embedded queue. The default demo, and a dress rehearsal on a snapshot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global};
use super::run::{migrate, round3};
use crate::azure::arm::{ArmClient, ArmConfig, PacerConfig};
use crate::azure::credential::StaticToken;
use crate::azure::ResourceId;
use crate::migration::invariants;
use crate::policy::Policy;
use crate::report;
use crate::sim::{generate, FaultProfile, Fleet, SimOptions, Simulator};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Fleet file to rehearse on (e.g. from `snapshot`).
    #[arg(long, conflicts_with = "generate")]
    pub fleet: Option<PathBuf>,
    /// Generate a realistic fleet of about N targets instead.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// none, flaky or chaos.
    #[arg(long, default_value = "none")]
    pub faults: FaultProfile,
    /// Time compression: divides latencies and delays, multiplies ARM's rate limits.
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
    /// State file (default: a fresh temporary file).
    #[arg(long)]
    pub state: Option<PathBuf>,
}

pub async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    anyhow::ensure!(
        args.speed > 0.0 && args.speed.is_finite(),
        "--speed must be a positive number, got {}",
        args.speed
    );
    let policy = match &args.policy {
        Some(p) => Policy::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::default(),
    };
    let fleet = match (&args.fleet, args.generate) {
        (Some(path), _) => Fleet::load(path)?,
        (None, Some(n)) => generate::generate(n, args.seed),
        (None, None) => anyhow::bail!("rehearse needs --fleet FILE or --generate N"),
    };
    let sim = Simulator::new(
        fleet.clone(),
        SimOptions {
            speed: args.speed,
            faults: args.faults,
            seed: args.seed,
            ..SimOptions::default()
        },
    );
    let server = sim
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .context("cannot start the ARM simulator")?;
    let subs = invariants::subscriptions(&fleet);
    let write_scope: Vec<ResourceId> = subs
        .iter()
        .map(|s| ResourceId::subscription_id(s))
        .collect();
    let mut config = ArmConfig::new(server.url(), write_scope);
    config.pacer = PacerConfig::default().scaled(args.speed);
    config.backoff_base = config.backoff_base.div_f64(args.speed);
    config.lro_poll_default = config.lro_poll_default.div_f64(args.speed);
    // Retry-After comes in whole seconds (at least 1) even from a sped-up simulator.
    config.retry_after_cap = config
        .retry_after_cap
        .min(Duration::from_secs(2))
        .div_f64(args.speed);
    let arm = ArmClient::new(config, std::sync::Arc::new(StaticToken::new("rehearsal")))?;
    let state = match args.state {
        Some(p) => p,
        None => {
            std::env::temp_dir().join(format!("vnet-migrate-rehearse-{}.db", uuid::Uuid::new_v4()))
        }
    };
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

    // Exact per-subscription figures from the simulator.
    let stats = sim.stats();
    let limits = PacerConfig::default().scaled(args.speed);
    let bound = report::write_bound_seconds(
        stats.by_subscription.values().map(|s| s.writes),
        limits.writes_burst,
        limits.writes_per_sec,
    );
    let p = &mut report.performance;
    p.arm_write_bound_seconds = round3(bound);
    p.bound_ratio = if bound > 0.0 {
        round3(p.makespan_seconds / bound)
    } else {
        0.0
    };
    p.arm_requests = stats.requests;
    p.arm_writes = stats.writes + stats.deletes;
    p.throttled429 = stats.throttled429;

    let violations = invariants::check(&fleet, &sim.state(), &report);
    server.shutdown().await;
    let code = common::finish(global, &report, |r| {
        let mut s = r.table();
        if violations.is_empty() {
            s.push_str("invariants: every target has one outcome; migrated targets sit in a delegated subnet of their region with no gateway connection; no overlapping subnets; no plan with more than two subnets\n");
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
