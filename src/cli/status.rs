//! `status`: what a state file says about a run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global};
use crate::pipeline::ledger::Ledger;
use crate::pipeline::sqlite::SqliteStore;
use crate::pipeline::RunId;
use crate::report::{Performance, Report};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[arg(long, default_value = "vnet-migrate.db")]
    pub(crate) state: PathBuf,
    /// Run id (default: the newest run).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// Also write the report as one self-contained HTML page (charts included) to this file.
    #[arg(long, value_name = "FILE.html")]
    pub(crate) report: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    anyhow::ensure!(
        args.state.exists(),
        "state file {} does not exist",
        args.state.display()
    );
    let store = SqliteStore::open(&args.state)?;
    let runs = store.runs().await?;
    let run = match args.run {
        Some(r) => runs
            .iter()
            .find(|x| x.run.as_str() == r)
            .with_context(|| format!("no run {r} in {}", args.state.display()))?
            .clone(),
        None => runs
            .last()
            .with_context(|| format!("no run in {}", args.state.display()))?
            .clone(),
    };
    let records = store.targets(&RunId(run.run.0.clone())).await?;
    // Dead letters are kept in the state file; `replay` resends them.
    let dead = store.dead_letters()?;
    let report = Report::new(
        run.run.as_str(),
        run.dry_run,
        &records,
        Performance::default(),
    );
    if let Some(path) = &args.report {
        crate::report::html::write(&report, path)?;
    }
    common::finish(global, &report, |r| {
        let mut s = r.table();
        for t in r
            .targets
            .iter()
            .filter(|t| matches!(t.outcome.as_str(), "parked" | "rolled-back" | "unfinished"))
        {
            s.push_str(&format!(
                "  {} {}: {}\n",
                t.outcome,
                t.id,
                t.reason.as_deref().unwrap_or("-")
            ));
        }
        for d in &dead {
            s.push_str(&format!(
                "  dead-lettered message {} after {} deliveries: {}\n",
                d.message_id, d.delivery_count, d.reason
            ));
        }
        s
    })
}
