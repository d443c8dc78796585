//! `replay`: resend dead-lettered step messages with a fresh MessageId, at a bounded rate;
//! `--dry-run` groups them by dead-letter reason. From a state file, the dead-lettered copy is
//! removed in the transaction that enqueues the resend and the run is driven afterwards;
//! with `--dlq`, from the steps queue's Service Bus dead-letter sub-queue, each is completed
//! only after its resend was accepted, and the function app runs the steps.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::common::{self, Global};
use super::state::{operate, On};
use crate::azure::credential::CredentialKind;
use crate::pipeline::dead_letters::{group, replayed, DeadLetters, Selection};
use crate::pipeline::queue::Outgoing;
use crate::pipeline::servicebus::ServiceBusDeadLetters;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) on: On,
    /// Replay the Service Bus dead-letter queue of the steps queue instead of a state file
    /// (the settings of `serve`: `VNET_MIGRATE_SERVICEBUS_ENDPOINT` or
    /// `ServiceBusConnection__fullyQualifiedNamespace`, `VNET_MIGRATE_STEPS_QUEUE`).
    #[arg(long, conflicts_with = "state")]
    pub(crate) dlq: bool,
    /// Only messages for this app (ARM id of a site, with its slots, or of a slot; repeatable).
    #[arg(long = "app")]
    pub(crate) apps: Vec<String>,
    /// Only messages whose dead-letter reason starts with this.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// List the dead letters grouped by reason (count, first and last time); resend nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Messages resent per minute (the rest are scheduled after them).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) per_minute: u32,
}

fn when(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let selection = Selection {
        run: args.on.run.clone(),
        apps: common::parse_apps(&args.apps)?,
        reason: args.reason.clone(),
    };
    if args.dlq {
        let kind: CredentialKind = global.credential.parse().context("--credential")?;
        let dlq = ServiceBusDeadLetters::new(super::serve::steps_queue(kind, None)?);
        let replayed = replay(global, &args, &selection, &dlq).await?;
        if !args.dry_run {
            common::emit(global, &serde_json::json!({ "replayed": replayed }), || {
                format!("{replayed} message(s) replayed to the steps queue\n")
            })?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The run the replayed steps belong to is driven afterwards; its contract decides how.
    let op = operate(&args.on.state, args.on.run.as_deref(), global)?;
    replay(global, &args, &selection, op.state.store().as_ref()).await?;
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let report = op.drive(global).await?;
    common::finish(global, &report, Report::table)
}

/// Lists, selects and (unless `--dry-run`, which prints the groups) resends; every listed
/// dead letter not resent is released. Returns how many were resent.
async fn replay(
    global: &Global,
    args: &Args,
    selection: &Selection,
    dead_letters: &dyn DeadLetters,
) -> Result<usize> {
    let all = dead_letters.dead_lettered().await?;
    let (chosen, others): (Vec<_>, Vec<_>) = all.iter().partition(|d| selection.matches(d));
    for d in &others {
        dead_letters.release(d).await?;
    }
    if args.dry_run {
        for d in &chosen {
            dead_letters.release(d).await?;
        }
        let groups = group(&chosen);
        let doc: serde_json::Map<String, serde_json::Value> = groups
            .iter()
            .map(|(r, g)| {
                (
                    r.clone(),
                    serde_json::json!({"count": g.count, "first": when(g.first), "last": when(g.last)}),
                )
            })
            .collect();
        common::emit(global, &doc, || {
            let mut s = format!("{:<40} {:>6}  {:<32} last\n", "reason", "count", "first");
            for (r, g) in &groups {
                s.push_str(&format!(
                    "{r:<40} {:>6}  {:<32} {}\n",
                    g.count,
                    when(g.first),
                    when(g.last)
                ));
            }
            s.push_str(&format!(
                "{} dead-lettered message(s) would be replayed (nothing was changed)\n",
                chosen.len()
            ));
            s
        })?;
        return Ok(0);
    }
    anyhow::ensure!(
        !chosen.is_empty(),
        "no dead-lettered message matches: nothing to replay"
    );
    let now = OffsetDateTime::now_utc();
    let spacing = 60.0 / f64::from(args.per_minute);
    let mut unreadable = 0;
    for (i, d) in chosen.iter().enumerate() {
        let Ok(m) = &d.message else {
            // Nothing to resend: its body is no step message this version can read.
            unreadable += 1;
            dead_letters.release(d).await?;
            continue;
        };
        let visible_at = now + time::Duration::seconds_f64(spacing * i as f64);
        dead_letters
            .resend(
                d,
                Outgoing {
                    message: replayed(m),
                    visible_at,
                },
            )
            .await
            .with_context(|| format!("replaying dead letter {}", d.message_id))?;
    }
    if unreadable > 0 {
        eprintln!("{unreadable} dead letter(s) left: their bodies are not step messages this version can read");
    }
    let replayed = chosen.len() - unreadable;
    eprintln!("{replayed} message(s) replayed");
    Ok(replayed)
}
