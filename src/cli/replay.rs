//! `replay`: resend dead-lettered step messages of a state file with a fresh MessageId, at a
//! bounded rate; `--dry-run` groups them by dead-letter reason. The dead-lettered copy is
//! removed in the transaction that enqueues the resend.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::common::{self, Global};
use super::state::{operate, On};
use crate::pipeline::dead_letters::{group, replayed, DeadLetters, Selection};
use crate::pipeline::queue::Outgoing;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) on: On,
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
    // The run the replayed steps belong to is driven afterwards; its contract decides how.
    let op = operate(&args.on.state, args.on.run.as_deref(), global)?;
    let all = op.state.store().dead_lettered().await?;
    let chosen: Vec<_> = all.iter().filter(|d| selection.matches(d)).collect();
    if args.dry_run {
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
        return Ok(ExitCode::SUCCESS);
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
            continue;
        };
        let visible_at = now + time::Duration::seconds_f64(spacing * i as f64);
        op.state
            .store()
            .resend(
                d,
                Outgoing {
                    message: replayed(m),
                    visible_at,
                },
            )
            .await?;
    }
    if unreadable > 0 {
        eprintln!("{unreadable} dead letter(s) left: their bodies are not step messages this version can read");
    }
    eprintln!("{} message(s) replayed", chosen.len() - unreadable);
    let report = op.drive(global).await?;
    common::finish(global, &report, Report::table)
}
