//! `run`: migrate the fleet in scope from this machine, resumable through `--state`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope};
use super::state::{decide, Decision};
use crate::azure::ResourceId;
use crate::migration::local::{self, migrate_locally, Scope as LocalScope};
use crate::pipeline::contract::Requested;
use crate::pipeline::ledger::Ledger;
use crate::pipeline::local::{LocalRun, Start, StateFile};
use crate::pipeline::runner::RunnerConfig;
use crate::policy::Policy;
use crate::report::{self, round3, BucketCounts, Performance, Report};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
    /// State file (SQLite): queue, ledger and the run's contract. Run again with the same file
    /// to resume (default vnet-migrate.db; a dry run's own default is vnet-migrate.dry-run.db).
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
    /// Discover and plan only; nothing is written to Azure. Keeps a state file of its own.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Start a new run on a state file whose newest run is finished (targets rolled back
    /// in earlier runs are left out).
    #[arg(long)]
    pub(crate) new_run: bool,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let path = args.state.clone().unwrap_or_else(|| {
        PathBuf::from(if args.dry_run {
            "vnet-migrate.dry-run.db"
        } else {
            "vnet-migrate.db"
        })
    });
    let given = common::load_policy(global, &args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let scope_text = local::scope_text(&given, &apps);
    let scope_given = scope_text != local::scope_text(&Policy::default(), &[]);
    // Nothing is created for a command that cannot run.
    anyhow::ensure!(
        scope_given || path.exists(),
        "no scope: pass --subscription (or --app, or scope.subscriptions in the policy), or --state of a run to resume"
    );
    let state = StateFile::open(&path)?;
    let requested = Requested {
        scope: scope_given.then(|| scope_text.clone()),
        arm_endpoint: global.arm_endpoint.clone(),
        dry_run: args.dry_run,
        policy_hash: args
            .scope
            .policy
            .is_some()
            .then(|| local::policy_hash(&given)),
        plan_hash: None,
    };
    let shown = path.display().to_string();
    let newest = state.store().newest_run()?;
    let (policy, apps, start) = match decide(newest, &requested, args.new_run, &shown)? {
        Decision::Finished { run } => {
            eprintln!(
                "run {run} in {shown} is finished: nothing to do (`status --state {shown}` shows it; --new-run starts another)"
            );
            let records = state.store().targets(&run).await?;
            let report = Report::new(run.as_str(), args.dry_run, &records, Default::default());
            common::finish(global, &report, Report::table)?;
            return Ok(ExitCode::SUCCESS);
        }
        Decision::Resume { run, contract } => {
            let policy = Policy::from_json(&contract.policy)
                .context("the policy recorded in the state file")?;
            (
                policy,
                local::scope_apps(&contract.scope)?,
                Start::Resume(run),
            )
        }
        Decision::New { previous } => {
            // A new run on a known state keeps what the state remembers unless told otherwise.
            let (mut policy, apps) = match previous {
                Some(prev) if !scope_given => (
                    Policy::from_json(&prev.policy)
                        .context("the policy recorded in the state file")?,
                    local::scope_apps(&prev.scope)?,
                ),
                _ => (given, apps),
            };
            let recorded_scope = local::scope_text(&policy, &apps);
            let held_back = state.store().rolled_back_targets()?;
            if !held_back.is_empty() {
                eprintln!(
                    "{} target(s) rolled back in earlier runs are left out of the new run",
                    held_back.len()
                );
                policy.scope.exclude.extend(held_back);
            }
            let mut contract =
                local::contract(&policy, &apps, &global.arm_endpoint, args.dry_run, None);
            contract.scope = recorded_scope;
            (policy, apps, Start::New(contract))
        }
    };
    let subs = common::subscriptions(&policy, &apps)?;
    // A dry run gets a client that may write nowhere: the steps already write nothing in a
    // dry run, and a client that refuses every write makes sure of it.
    let write_scope: Vec<ResourceId> = if args.dry_run {
        Vec::new()
    } else {
        subs.iter()
            .map(|s| ResourceId::subscription_id(s))
            .collect()
    };
    let arm = common::arm_client(global, write_scope)?;
    let report = migrate(
        global,
        arm,
        policy,
        subs,
        apps,
        (state, start),
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
    (state, start): (StateFile, Start),
    dry_run: bool,
    time_scale: f64,
) -> Result<Report> {
    let runner = RunnerConfig {
        per_subscription: policy.concurrency.per_subscription as usize,
        ..RunnerConfig::default()
    };
    let subscription_count = subscriptions.len();
    let local = LocalRun {
        dry_run,
        runner,
        origin: std::env::args().collect::<Vec<_>>().join(" "),
        progress: global.output == common::OutputFormat::Table,
    };
    let finished = migrate_locally(
        local,
        state,
        start,
        LocalScope {
            arm: arm.clone(),
            policy: Arc::new(policy),
            subscriptions,
            apps,
            time_scale,
        },
    )
    .await?;
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
