//! `rollback --app ID`: put one migrated app (or slot) back on its saved gateway-based
//! connection by hand, through the same reconciler as an automatic rollback (regional
//! integration removed, then the gateway handshake).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global};
use super::state::{operate, On};
use crate::azure::ResourceId;
use crate::pipeline::ledger::Ledger;
use crate::pipeline::message::{Origin, Step, StepMessage};
use crate::pipeline::queue::Outgoing;
use crate::pipeline::reason::RollbackReason;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) on: On,
    /// The app or slot to roll back (ARM id).
    #[arg(long)]
    pub(crate) app: String,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let app = ResourceId::parse(&args.app).context("--app")?;
    let op = operate(&args.on.state, args.on.run.as_deref(), global)?;
    let shown = args.on.state.display();
    let record = op
        .state
        .store()
        .target(&op.run, &app)
        .await?
        .with_context(|| format!("{app} is not a target of run {} in {shown}", op.run))?;
    // Without the connection saved before its DELETE there is nothing to put back.
    let gateway = record.gateway.clone().with_context(|| {
        format!(
            "no saved gateway connection for {app} in run {}: it was not cut over by vnet-migrate, so there is nothing to roll back to",
            op.run
        )
    })?;
    anyhow::ensure!(
        record.outcome.is_some(),
        "{app} is still being migrated in run {}: let the run finish (or park) first",
        op.run
    );
    let n = op.state.store().retries(&StepMessage::new(
        op.run.clone(),
        app.clone(),
        Step::Rollback,
        Origin::Replay,
    ))? + 1;
    let mut message = StepMessage::new(op.run.clone(), app.clone(), Step::Rollback, Origin::Replay);
    message.gateway = Some(gateway);
    message.reason = Some(RollbackReason::Requested);
    message.replay = n;
    let was = record
        .outcome
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    op.state.store().reopen_target(
        &format!("rollback by hand (was: {was})"),
        Outgoing::now(message),
    )?;
    eprintln!("rolling back {app} onto its saved gateway connection");
    let report = op.drive(global).await?;
    common::finish(global, &report, Report::table)
}
