//! `retry`: start blocked, parked or rolled-back targets of a run again, once their cause is
//! removed; `--dry-run` lists them grouped by reason.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;
use time::OffsetDateTime;

use super::common::{self, Global};
use super::state::{operate, On};
use crate::azure::ResourceId;
use crate::functions::handler::resume_message;
use crate::pipeline::ledger::{Ledger, TargetRecord};
use crate::pipeline::message::{Origin, Step, StepMessage};
use crate::pipeline::queue::Outgoing;
use crate::pipeline::Outcome;
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) on: On,
    /// Only this app (ARM id of a site, with its slots, or of a slot; repeatable).
    #[arg(long = "app")]
    pub(crate) apps: Vec<String>,
    /// Only targets whose outcome or reason starts with this (`connect-rejected`, `parked`, …).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// List the targets that would be retried, grouped by reason; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Targets started per minute (the rest are scheduled after them).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) per_minute: u32,
}

/// The targets a retry starts again: blocked, parked or rolled back, matching the filters.
fn retryable<'a>(
    records: &'a [TargetRecord],
    apps: &[ResourceId],
    reason: Option<&str>,
) -> Vec<&'a TargetRecord> {
    records
        .iter()
        .filter(|t| {
            let Some(o) = &t.outcome else { return false };
            let failed = matches!(
                o,
                Outcome::Blocked(_) | Outcome::Parked(_) | Outcome::RolledBack(_)
            );
            let label = o.to_string().to_ascii_lowercase();
            let reason_ok = reason.is_none_or(|r| {
                let r = r.to_ascii_lowercase();
                label.starts_with(&r)
                    || o.reason()
                        .is_some_and(|x| x.to_ascii_lowercase().starts_with(&r))
            });
            let app_ok = apps.is_empty() || apps.iter().any(|a| t.target.is_within(a));
            failed && reason_ok && app_ok
        })
        .collect()
}

/// The first message of a retried target. A parked target whose gateway connection this run
/// removed goes on from the step it stopped at (`discover` would read it as an app without
/// any integration and skip it); any other starts again from `discover`. Either way with a
/// MessageId of its own (`replay`).
fn first_message(t: &TargetRecord, replay: u32) -> StepMessage {
    let mid_cutover = matches!(t.outcome, Some(Outcome::Parked(_)))
        && t.gateway.is_some()
        && t.current_step.is_some_and(|s| s != Step::Discover);
    if mid_cutover {
        return resume_message(t, false, replay);
    }
    let mut m = StepMessage::new(
        t.run.clone(),
        t.target.clone(),
        Step::Discover,
        Origin::Replay,
    );
    m.replay = replay;
    m
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let apps = common::parse_apps(&args.apps)?;
    let op = operate(&args.on.state, args.on.run.as_deref(), global)?;
    let records = op.state.store().targets(&op.run).await?;
    let chosen = retryable(&records, &apps, args.reason.as_deref());
    let mut by_reason: BTreeMap<String, Vec<&ResourceId>> = BTreeMap::new();
    for t in &chosen {
        let label = t
            .outcome
            .as_ref()
            .map(Outcome::to_string)
            .unwrap_or_default();
        by_reason.entry(label).or_default().push(&t.target);
    }
    if args.dry_run {
        common::emit(global, &by_reason, || {
            let mut s = format!("{:<60} {:>7}\n", "reason", "targets");
            for (label, ids) in &by_reason {
                s.push_str(&format!("{label:<60} {:>7}\n", ids.len()));
            }
            s.push_str(&format!(
                "{} target(s) of run {} would be retried (nothing was changed)\n",
                chosen.len(),
                op.run
            ));
            s
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        !chosen.is_empty(),
        "no blocked, parked or rolled-back target of run {} matches: nothing to retry",
        op.run
    );
    let now = OffsetDateTime::now_utc();
    let spacing = 60.0 / f64::from(args.per_minute);
    for (i, t) in chosen.iter().enumerate() {
        let probe = StepMessage::new(
            t.run.clone(),
            t.target.clone(),
            Step::Discover,
            Origin::Replay,
        );
        let n = op.state.store().retries(&probe)? + 1;
        let message = first_message(t, n);
        let label = t
            .outcome
            .as_ref()
            .map(Outcome::to_string)
            .unwrap_or_default();
        let note = format!(
            "retry {n} of {label} (was: {}), from {}",
            t.reason.as_deref().unwrap_or("-"),
            message.step
        );
        let visible_at = now + time::Duration::seconds_f64(spacing * i as f64);
        op.state.store().reopen_target(
            &note,
            Outgoing {
                message,
                visible_at,
            },
        )?;
    }
    eprintln!("{} target(s) of run {} started again", chosen.len(), op.run);
    let report = op.drive(global).await?;
    common::finish(global, &report, Report::table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::message::{GatewaySnapshot, RunId};

    fn record(app: &str, outcome: &str) -> TargetRecord {
        let target = ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/{app}"
        ))
        .unwrap();
        let now = OffsetDateTime::now_utc();
        TargetRecord {
            run: RunId("r-1".into()),
            target,
            outcome: Some(outcome.parse().unwrap()),
            current_step: Some(Step::Connect),
            steps: 3,
            attempts: 1,
            reason: None,
            subnet: None,
            prefix: None,
            gateway: None,
            started_at: now,
            updated_at: now,
            finished_at: Some(now),
            cutover: Default::default(),
            wave: None,
            next_at: None,
        }
    }

    #[test]
    fn only_failed_targets_matching_the_filters_are_retried() {
        let records = [
            record("a", "rolled-back:connect-rejected:BadRequest"),
            record("b", "parked:subnet-conflict"),
            record("c", "migrated"),
            record("d", "skipped:no-integration"),
            record("e", "blocked:no-address-space"),
        ];
        let names = |v: Vec<&TargetRecord>| -> Vec<String> {
            v.iter().map(|t| t.target.name().to_string()).collect()
        };
        assert_eq!(names(retryable(&records, &[], None)), ["a", "b", "e"]);
        assert_eq!(
            names(retryable(&records, &[], Some("connect-rejected"))),
            ["a"]
        );
        assert_eq!(names(retryable(&records, &[], Some("PARKED"))), ["b"]);
        let only_e = [records[4].target.clone()];
        assert_eq!(names(retryable(&records, &only_e, None)), ["e"]);
    }

    #[test]
    fn a_parked_target_mid_cutover_goes_on_where_it_stopped_with_a_fresh_id() {
        let mut parked = record("a", "parked:subnet-conflict");
        let fresh = first_message(&parked, 1);
        assert_eq!(fresh.step, Step::Discover);
        assert_ne!(fresh.message_id(), first_message(&parked, 2).message_id());
        parked.gateway = Some(GatewaySnapshot {
            name: "hub".into(),
            vnet_resource_id: ResourceId::parse(
                "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/hub",
            )
            .unwrap(),
            dns_servers: None,
            cert_thumbprint: None,
            cert_blob: None,
            routes: None,
        });
        parked.subnet = Some(
            ResourceId::parse(
                "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/hub/subnets/x",
            )
            .unwrap(),
        );
        assert_eq!(first_message(&parked, 1).step, Step::Connect);
        let rolled_back = TargetRecord {
            gateway: parked.gateway.clone(),
            ..record("b", "rolled-back:requested")
        };
        assert_eq!(first_message(&rolled_back, 1).step, Step::Discover);
    }
}
