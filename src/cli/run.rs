//! `run`: migrate the fleet in scope from this machine, resumable through `--state`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope};
use crate::azure::ResourceId;
use crate::migration::local::{migrate_locally, Scope as LocalScope};
use crate::pipeline::local::LocalRun;
use crate::pipeline::runner::RunnerConfig;
use crate::report::{self, round3, BucketCounts, Performance, Report};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
    /// State file (SQLite): queue and ledger. Run again with the same file to resume.
    #[arg(long, default_value = "vnet-migrate.db")]
    pub(crate) state: PathBuf,
    /// Discover and plan only; nothing is written to Azure.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let policy = common::load_policy(global, &args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let subs = common::subscriptions(&policy, &apps)?;
    let arm = common::arm_client(global, common::write_scope(&subs)?)?;
    let report = migrate(
        global,
        arm,
        policy,
        subs,
        apps,
        args.state,
        args.dry_run,
        1.0,
    )
    .await?;
    common::finish(global, &report, Report::table)
}

/// Shared by `run`, `plan` and `rehearse`: drive a local run and build its report.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn migrate(
    global: &Global,
    arm: crate::azure::arm::ArmClient,
    policy: crate::policy::Policy,
    subscriptions: Vec<String>,
    apps: Vec<ResourceId>,
    state: PathBuf,
    dry_run: bool,
    time_scale: f64,
) -> Result<Report> {
    let runner = RunnerConfig {
        per_subscription: policy.concurrency.per_subscription as usize,
        ..RunnerConfig::default()
    };
    let subscription_count = subscriptions.len();
    let local = LocalRun {
        state,
        dry_run,
        runner,
        origin: std::env::args().collect::<Vec<_>>().join(" "),
        progress: global.output == common::OutputFormat::Table,
    };
    let finished = migrate_locally(
        local,
        LocalScope {
            arm: arm.clone(),
            policy: Arc::new(policy),
            subscriptions,
            apps,
            time_scale,
        },
    )
    .await?;
    use crate::pipeline::ledger::Ledger;
    let records = finished.store.targets(&finished.run).await?;
    let m = arm.metrics();
    let limits = crate::azure::arm::PacerConfig::default();
    // The client counts requests for all subscriptions together; spreading them evenly gives a
    // bound no higher than the true one (the busiest subscription sets it), so the ratio
    // reported is never flattering.
    let k = subscription_count.max(1) as u64;
    let spread = |reads: u64| {
        std::iter::repeat_n(
            BucketCounts {
                reads: reads / k,
                writes: m.writes / k,
                deletes: m.deletes / k,
            },
            k as usize,
        )
    };
    let write_bound = report::bucket_bound_seconds(spread(0), &limits);
    // Against real ARM only the buckets are known: how long ARM takes for each call, and so
    // the chains of calls one target or one VNet must make in sequence, is not (a rehearsal
    // adds those terms from the simulator's model, `rehearsal::use_simulator_figures`).
    let lower_bound = report::bucket_bound_seconds(spread(m.reads), &limits);
    let steps = finished.stats.steps as f64;
    let perf = Performance {
        makespan_seconds: round3(finished.makespan_seconds),
        arm_write_bound_seconds: round3(write_bound),
        lower_bound_seconds: round3(lower_bound),
        bound_ratio: report::ratio(finished.makespan_seconds, lower_bound),
        arm_requests: m.requests,
        arm_writes: m.writes + m.deletes,
        throttled429: m.throttled_429,
        steps_per_second: round3(steps / finished.makespan_seconds.max(1e-9)),
        // Computed by `Report::new` from the ledger's cut-over times.
        downtime_seconds: None,
        // A rehearsal runs `time_scale` times faster than ARM: its downtimes are reported in
        // the simulated seconds they stand for.
        simulated_speed: (time_scale > 1.0).then_some(time_scale),
    };
    Ok(Report::new(finished.run.as_str(), dry_run, &records, perf))
}
