//! `run`: migrate the fleet in scope from this machine, resumable through `--state`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope};
use super::state::{decide, Decision};
use crate::azure::arm::ArmClient;
use crate::azure::ResourceId;
use crate::migration::fleet_plan::{AppliedPlan, PlanFile};
use crate::migration::local::{self, migrate_locally, Scope as LocalScope};
use crate::migration::FrontEnd;
use crate::pipeline::contract::{hash, same_endpoint, AppliedPlanFile, Requested, RunContract};
use crate::pipeline::ledger::Ledger;
use crate::pipeline::local::{Finished, LocalRun, Start, StateFile};
use crate::policy::Policy;
use crate::report::{self, round3, BucketCounts, Performance, Report};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
    #[command(flatten)]
    pub(crate) connection: common::Connection,
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
    /// Apply exactly this plan file (from `plan --out-file`): its targets, subnets and
    /// prefixes; a target ARM drifted from since is held back as `blocked:drifted`.
    #[arg(long)]
    pub(crate) plan: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page (charts included) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub(crate) report: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let path = args.state.clone().unwrap_or_else(|| {
        PathBuf::from(if args.dry_run {
            "vnet-migrate.dry-run.db"
        } else {
            "vnet-migrate.db"
        })
    });
    let given = common::load_policy(&args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let scope_text = local::scope_text(&given, &apps);
    let scope_given = scope_text != local::scope_text(&Policy::default(), &[]);
    let plan = args
        .plan
        .as_deref()
        .map(|p| {
            read_plan(
                p,
                global,
                &args.scope,
                scope_given.then_some(&scope_text),
                &given,
            )
        })
        .transpose()?;
    // Nothing is created for a command that cannot run: the connection settings (credential
    // kind, loopback rules) are checked before the state file is opened.
    common::arm_client(global, Vec::new())?;
    anyhow::ensure!(
        scope_given || path.exists() || plan.is_some(),
        "no scope: pass --subscription (or --app, or scope.subscriptions in the policy), or --state of a run to resume"
    );
    let state = StateFile::open(&path)?;
    let requested = match &plan {
        Some((file, applied)) => Requested {
            scope: Some(file.scope.clone()),
            arm_endpoint: global.arm_endpoint.clone(),
            dry_run: args.dry_run,
            policy_hash: Some(file.policy_hash.clone()),
            plan_hash: Some(applied.hash.clone()),
        },
        None => Requested {
            scope: scope_given.then(|| scope_text.clone()),
            arm_endpoint: global.arm_endpoint.clone(),
            dry_run: args.dry_run,
            policy_hash: args
                .scope
                .policy
                .is_some()
                .then(|| local::policy_hash(&given)),
            plan_hash: None,
        },
    };
    let shown = path.display().to_string();
    let newest = state.store().newest_run()?;
    let (policy, apps, start, applied) = match decide(newest, &requested, args.new_run, &shown)? {
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
            let (policy, apps, applied) = recorded(&contract)?;
            (policy, apps, Start::Resume(run), applied)
        }
        Decision::New { previous } => {
            // A new run on a known state keeps what the state remembers unless told otherwise.
            let (mut policy, apps) = match (&plan, previous) {
                (Some((file, _)), _) => (file.policy.clone(), file.sites()),
                (None, Some(prev)) if !scope_given => (
                    Policy::from_json(&prev.policy)
                        .context("the policy recorded in the state file")?,
                    local::scope_apps(&prev.scope)?,
                ),
                _ => (given, apps),
            };
            let recorded_scope = match &plan {
                Some((file, _)) => file.scope.clone(),
                None => local::scope_text(&policy, &apps),
            };
            let held_back = state.store().rolled_back_targets()?;
            if !held_back.is_empty() {
                eprintln!(
                    "{} target(s) rolled back in earlier runs are left out of the new run",
                    held_back.len()
                );
                policy.scope.exclude.extend(held_back);
            }
            let (file, text) = plan.unzip();
            let mut contract =
                local::contract(&policy, &apps, &global.arm_endpoint, args.dry_run, text);
            contract.scope = recorded_scope;
            contract.simulated_speed = (global.arm_speed != 1.0).then_some(global.arm_speed);
            (policy, apps, Start::New(contract), file)
        }
    };
    let report = execute(global, (state, start), policy, apps, applied, args.dry_run).await?;
    let code = common::finish(global, &report, Report::table)?;
    if let Some(path) = &args.report {
        report::html::write(&report, path)?;
    }
    let drifted = report
        .targets
        .iter()
        .filter(|t| t.reason.as_deref() == Some("drifted"))
        .count();
    if drifted > 0 {
        eprintln!("{drifted} target(s) held back: ARM changed since the plan was made; run `plan` again and review it");
    }
    Ok(code)
}

/// What a run's contract recorded: its policy, its `--app` ids and the plan it applies.
pub(crate) fn recorded(
    contract: &RunContract,
) -> Result<(Policy, Vec<ResourceId>, Option<PlanFile>)> {
    let policy =
        Policy::from_json(&contract.policy).context("the policy recorded in the state file")?;
    let applied = contract
        .plan
        .as_ref()
        .map(|p| PlanFile::parse(&p.text))
        .transpose()
        .context("the plan recorded in the state file")?;
    Ok((policy, local::scope_apps(&contract.scope)?, applied))
}

/// Drives `start` on `state` against ARM with this policy, scope and plan; the report.
pub(crate) async fn execute(
    global: &Global,
    (state, start): (StateFile, Start),
    policy: Policy,
    apps: Vec<ResourceId>,
    applied: Option<PlanFile>,
    dry_run: bool,
) -> Result<Report> {
    let subs = common::subscriptions(&policy, &apps)?;
    // A dry run gets a client that may write nowhere: the steps already write nothing in a
    // dry run, and a client that refuses every write makes sure of it.
    let write_scope = if dry_run {
        Vec::new()
    } else {
        common::write_scope(&subs)?
    };
    let arm = common::arm_client(global, write_scope)?;
    let scope = LocalScope {
        arm,
        policy: Arc::new(policy),
        subscriptions: subs,
        apps,
        time_scale: 1.0,
        applied: applied.as_ref().map(|p| Arc::new(AppliedPlan::new(p))),
        forecasts: None,
        front_end: FrontEnd::Https,
    };
    migrate(global, scope, (state, start), dry_run).await
}

/// The plan file at `path`, checked against what the command line says: the plan carries its
/// own scope and policy, and was made against one endpoint.
fn read_plan(
    path: &std::path::Path,
    global: &Global,
    scope: &common::Scope,
    scope_text: Option<&String>,
    given: &Policy,
) -> Result<(PlanFile, AppliedPlanFile)> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan file {shown}"))?;
    let file = PlanFile::parse(&text).with_context(|| format!("plan file {shown}"))?;
    anyhow::ensure!(
        same_endpoint(&file.arm_endpoint, &global.arm_endpoint),
        "plan {shown} was made against {}, not {}: plan again against this endpoint",
        file.arm_endpoint,
        global.arm_endpoint
    );
    if let Some(given_scope) = scope_text.filter(|s| **s != file.scope) {
        anyhow::bail!(
            "plan {shown} covers scope {}, not {given_scope}: leave out the scope flags (the plan has its own) or plan again",
            file.scope
        );
    }
    if scope.policy.is_some() && local::policy_hash(given) != file.policy_hash {
        anyhow::bail!(
            "plan {shown} was made with policy {}, this policy is {}: leave out --policy (the plan has its own) or plan again",
            file.policy_hash,
            local::policy_hash(given)
        );
    }
    let applied = AppliedPlanFile {
        hash: hash(text.as_bytes()),
        text,
    };
    Ok((file, applied))
}

/// Shared by `run` and `plan`: drive a local run and build its report.
pub(crate) async fn migrate(
    global: &Global,
    scope: LocalScope,
    state: (StateFile, Start),
    dry_run: bool,
) -> Result<Report> {
    run_to_end(global, scope, state, dry_run).await?.report()
}

/// A local run driven to its end, with what its report is computed from. `rehearse` holds it
/// while it reads the simulator's final state and lets the simulator go before the report is
/// built: the fleet, the ledger's records and the report are then never in memory at once
/// (10,000 targets: the end had been the rehearsal's peak, 156–161 MB of RSS; now 143–152).
pub(crate) struct Ran {
    finished: Finished,
    arm: ArmClient,
    subscription_count: usize,
    time_scale: f64,
    dry_run: bool,
}

/// Drives a local run to its end (or to its hold).
pub(crate) async fn run_to_end(
    global: &Global,
    scope: LocalScope,
    (state, start): (StateFile, Start),
    dry_run: bool,
) -> Result<Ran> {
    let runner = scope.policy.runner_config();
    let subscription_count = scope.subscriptions.len();
    let (arm, time_scale) = (scope.arm.clone(), scope.time_scale);
    let local = LocalRun {
        dry_run,
        runner,
        origin: std::env::args().collect::<Vec<_>>().join(" "),
        progress: global.output == common::OutputFormat::Table,
        rollout: Default::default(),
        checks: None,
    };
    let finished = migrate_locally(local, state, start, scope).await?;
    Ok(Ran {
        finished,
        arm,
        subscription_count,
        time_scale,
        dry_run,
    })
}

impl Ran {
    /// The run's report, from its ledger and the ARM client's counters.
    pub(crate) fn report(self) -> Result<Report> {
        let Ran {
            finished,
            arm,
            subscription_count,
            time_scale,
            dry_run,
        } = self;
        let records = finished.store.target_outcomes(&finished.run)?;
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
            // Only a rehearsal knows them (`rehearsal::use_simulator_figures`).
            busiest_vnet: None,
            downtime_ratio: None,
        };
        let waves = finished.store.waves(&finished.run)?;
        let mut report = Report::new(finished.run.as_str(), dry_run, &records, perf)
            .with_waves(&records, &waves);
        if let Some(held) = &finished.held {
            eprintln!("{held}");
            report.stopped = Some(held.to_string());
        }
        Ok(report)
    }
}
