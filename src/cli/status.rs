//! `status`: what a state file says about a run: counts per outcome (blocked and skipped
//! included) with what to do about each reason, dead letters, whether a runner is working on
//! it; `--app` one target's step log, ARM messages, saved gateway connection and downtime;
//! `--watch` refreshes in place until the run is finished. Only figures that were measured.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;

use super::common::{self, Global, OutputFormat};
use crate::azure::ResourceId;
use crate::pipeline::dead_letters::DeadLetters;
use crate::pipeline::ledger::{Ledger, RunRecord, StepLogEntry, TargetRecord};
use crate::pipeline::local::held_by_a_runner;
use crate::pipeline::message::GatewaySnapshot;
use crate::pipeline::rollout::RolloutConfig;
use crate::pipeline::sqlite::{RunState, SqliteStore};
use crate::pipeline::RunId;
use crate::policy::Policy;
use crate::report::round3;
use crate::report::status::{run_status, Around, RunStatus};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// State file of the run.
    #[arg(long, default_value = "vnet-migrate.db")]
    pub(crate) state: PathBuf,
    /// Run id (default: the newest run).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// One app or slot (ARM id): its step log, ARM messages, saved gateway connection, downtime.
    #[arg(long)]
    pub(crate) app: Option<String>,
    /// Refresh in place until the run is finished (like `kubectl rollout status --watch`).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Also write the report as one self-contained HTML page (charts included) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub(crate) report: Option<PathBuf>,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) interval: u64,
}

/// One target, whole.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AppView {
    run: String,
    target: String,
    outcome: String,
    reason: Option<String>,
    subnet: Option<String>,
    prefix: Option<String>,
    /// The gateway-based connection saved before it was removed (what a rollback restores).
    saved_gateway: Option<GatewaySnapshot>,
    /// Off its VNet from the gateway connection's removal until it was on one again; in
    /// simulated seconds for a run against a sped-up simulator (`simulatedSeconds`).
    downtime_seconds: Option<f64>,
    simulated_seconds: bool,
    steps: Vec<StepLogEntry>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    anyhow::ensure!(
        args.state.exists(),
        "state file {} does not exist",
        args.state.display()
    );
    let app = args
        .app
        .as_deref()
        .map(ResourceId::parse)
        .transpose()
        .context("--app")?;
    // Read beside a runner that holds the file: no lock is taken.
    let store = SqliteStore::open(&args.state)?;
    let wanted = args.run.as_ref().map(|r| RunId(r.clone()));
    let clear = args.watch && std::io::stdout().is_terminal();
    loop {
        let Some(run) = store.run_state(wanted.as_ref())? else {
            anyhow::bail!(match &args.run {
                Some(r) => format!("no run {r} in {}", args.state.display()),
                None => format!("no run in {}", args.state.display()),
            });
        };
        let held = held_by_a_runner(&args.state);
        let code = match &app {
            Some(app) => show_app(global, &store, &run, app).await?,
            None => show_run(global, &store, &run, held, clear, args.report.as_deref()).await?,
        };
        if !args.watch || (run.finished && !held) {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
    }
}

fn speed(run: &RunState) -> Option<f64> {
    run.contract.as_ref().and_then(|c| c.simulated_speed)
}

/// The rollout settings the run's runner judges with: the policy and speed its contract
/// recorded.
pub(crate) fn rollout_config(run: &RunState) -> Result<RolloutConfig> {
    let policy = match &run.contract {
        Some(c) => Policy::from_json(&c.policy)?,
        None => Policy::default(),
    };
    Ok(RolloutConfig::of(
        &policy,
        speed(run).unwrap_or(1.0),
        Default::default(),
    ))
}

async fn show_run(
    global: &Global,
    store: &SqliteStore,
    run: &RunState,
    held: bool,
    clear: bool,
    html: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let around = Around {
        finished: Some(run.finished),
        runner_active: Some(held),
        dead_letters: Some(store.dead_lettered().await?.len()),
        simulated_speed: speed(run),
    };
    let config = rollout_config(run)?;
    print_status(global, store, &run.record, around, &config, clear, html).await
}

/// Prints the run's status document (`--output`), writes the HTML report if asked; exit 1
/// when the run needs an operator. The same for a state file and for the ledger in Azure.
pub(crate) async fn print_status(
    global: &Global,
    ledger: &dyn Ledger,
    run: &RunRecord,
    around: Around,
    config: &RolloutConfig,
    clear: bool,
    html: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let (view, records) = run_status(ledger, run, around, config).await?;
    if let Some(path) = html {
        crate::report::html::write(&view.report, path)?;
    }
    let code = if view.report.needs_operator() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if clear && global.output == OutputFormat::Table {
        // Refresh in place: home the cursor and clear the screen.
        print!("\x1b[H\x1b[2J");
    }
    common::emit(global, &view, || run_table(&view, &records))?;
    Ok(code)
}

fn run_table(view: &RunStatus, records: &[TargetRecord]) -> String {
    let r = &view.report;
    let mut s = format!(
        "run {}{}: {}; {}\n",
        r.run,
        if r.dry_run { " (dry run)" } else { "" },
        if view.finished {
            "finished"
        } else {
            "not finished"
        },
        if view.runner_active {
            "a runner is working on it"
        } else {
            "no runner is working on it"
        }
    );
    s.push_str(&format!("{:<52} {:>7}  what to do\n", "outcome", "targets"));
    for (label, n) in &r.by_reason {
        s.push_str(&format!(
            "{label:<52} {n:>7}  {}\n",
            crate::report::remedy::remedy_for(label)
        ));
    }
    s.push_str(&format!("{:<52} {:>7}\n", "total", r.targets.len()));
    let unit = if r.performance.simulated_speed.is_some() {
        " (simulated seconds)"
    } else {
        ""
    };
    match &r.performance.downtime_seconds {
        Some(d) => s.push_str(&format!(
            "downtime p50 {:.3}s, p95 {:.3}s, p99 {:.3}s, max {:.3}s over {} target(s){unit}\n",
            d.p50,
            d.p95,
            d.p99,
            d.max,
            r.targets
                .iter()
                .filter(|t| t.downtime_seconds.is_some())
                .count()
        )),
        None => s.push_str("downtime: no target was cut over\n"),
    }
    for t in records.iter().filter(|t| {
        matches!(
            t.outcome.as_ref().map(|o| o.kind()),
            Some("parked" | "rolled-back") | None
        )
    }) {
        let label = t
            .outcome
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| {
                format!(
                    "unfinished (at {})",
                    t.current_step.map(|s| s.to_string()).unwrap_or_default()
                )
            });
        s.push_str(&format!("  {label} {}\n", t.target));
    }
    s.push_str(&r.waves_lines());
    if let Some(n) = view.dead_letters.filter(|n| *n > 0) {
        s.push_str(&format!(
            "{n} dead-lettered message(s): `replay --dry-run` lists them\n"
        ));
    }
    s
}

async fn show_app(
    global: &Global,
    store: &SqliteStore,
    run: &RunState,
    app: &ResourceId,
) -> Result<ExitCode> {
    let t = store
        .target(&run.record.run, app)
        .await?
        .with_context(|| format!("{app} is not a target of run {}", run.record.run))?;
    let steps = store.step_log(&run.record.run, app).await?;
    let scale = speed(run);
    let view = AppView {
        run: run.record.run.to_string(),
        target: t.target.to_string(),
        outcome: t
            .outcome
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "unfinished".into()),
        reason: t.reason.clone(),
        subnet: t.subnet.as_ref().map(ToString::to_string),
        prefix: t.prefix.clone(),
        saved_gateway: t.gateway.clone(),
        downtime_seconds: t
            .cutover
            .downtime()
            .map(|d| round3(d.as_seconds_f64() * scale.unwrap_or(1.0))),
        simulated_seconds: scale.is_some(),
        steps,
    };
    common::emit(global, &view, || app_table(&view))?;
    Ok(match t.outcome {
        Some(o) if o.kind() != "parked" => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn app_table(v: &AppView) -> String {
    let mut s = format!("{} (run {})\n", v.target, v.run);
    s.push_str(&format!(
        "outcome   {}\n          {}\n",
        v.outcome,
        crate::report::remedy::remedy_for(&v.outcome)
    ));
    if let Some(subnet) = &v.subnet {
        s.push_str(&format!(
            "subnet    {subnet} ({})\n",
            v.prefix.as_deref().unwrap_or("-")
        ));
    }
    match &v.saved_gateway {
        Some(g) => s.push_str(&format!(
            "gateway   {} to {} (saved before its removal; `rollback --app` restores it)\n",
            g.name, g.vnet_resource_id
        )),
        None => s.push_str("gateway   none saved (never cut over)\n"),
    }
    match v.downtime_seconds {
        Some(d) => s.push_str(&format!(
            "downtime  {d:.3}s{}\n",
            if v.simulated_seconds {
                " (simulated seconds)"
            } else {
                ""
            }
        )),
        None => s.push_str("downtime  none recorded\n"),
    }
    s.push_str("steps\n");
    for e in &v.steps {
        s.push_str(&format!(
            "  {} {:<15} attempt {} {:>6} ms  {}\n",
            e.at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            e.step.to_string(),
            e.attempt,
            e.duration_ms,
            e.detail
        ));
    }
    s
}
