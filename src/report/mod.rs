//! Reports: the JSON document of DESIGN §8 and the terminal summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::pipeline::ledger::TargetRecord;
use crate::pipeline::Outcome;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetReport {
    pub id: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub subnet: Option<String>,
    pub prefix: Option<String>,
    pub steps: u32,
    pub attempts: u32,
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Performance {
    pub(crate) makespan_seconds: f64,
    /// The least time ARM's write limits allow for the writes this run made.
    pub(crate) arm_write_bound_seconds: f64,
    /// makespan / write bound (1.0 = as fast as ARM allows).
    pub(crate) bound_ratio: f64,
    pub(crate) arm_requests: u64,
    pub(crate) arm_writes: u64,
    pub(crate) throttled429: u64,
    pub(crate) steps_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub run: String,
    pub dry_run: bool,
    pub targets: Vec<TargetReport>,
    /// Count per outcome kind (`migrated`, `blocked`, …).
    pub summary: BTreeMap<String, u64>,
    /// Count per full outcome (`blocked:plan-subnet-limit`, …).
    pub by_reason: BTreeMap<String, u64>,
    pub performance: Performance,
}

impl Report {
    pub fn new(
        run: &str,
        dry_run: bool,
        records: &[TargetRecord],
        performance: Performance,
    ) -> Self {
        let mut summary = BTreeMap::new();
        let mut by_reason = BTreeMap::new();
        let targets = records
            .iter()
            .map(|r| {
                let (kind, reason) = match &r.outcome {
                    Some(o) => (o.kind().to_string(), o.reason()),
                    None => (
                        "unfinished".to_string(),
                        r.current_step.map(|s| format!("at {s}")),
                    ),
                };
                *summary.entry(kind.clone()).or_insert(0) += 1;
                *by_reason
                    .entry(
                        r.outcome
                            .as_ref()
                            .map(Outcome::to_string)
                            .unwrap_or_else(|| kind.clone()),
                    )
                    .or_insert(0) += 1;
                let end = r.finished_at.unwrap_or(r.updated_at);
                TargetReport {
                    id: r.target.to_string(),
                    outcome: kind,
                    reason,
                    subnet: r.subnet.as_ref().map(|s| s.to_string()),
                    prefix: r.prefix.clone(),
                    steps: r.steps,
                    attempts: r.attempts,
                    duration_seconds: ((end - r.started_at).as_seconds_f64() * 1000.0).round()
                        / 1000.0,
                }
            })
            .collect();
        Report {
            run: run.to_string(),
            dry_run,
            targets,
            summary,
            by_reason,
            performance,
        }
    }

    /// Targets without a terminal outcome, or parked: the run needs attention.
    pub(crate) fn needs_operator(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.outcome == "parked" || t.outcome == "unfinished")
    }

    /// The summary table printed at the end of a run.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run {}{}",
            self.run,
            if self.dry_run { " (dry run)" } else { "" }
        );
        let _ = writeln!(s, "{:<44} {:>7}", "outcome", "targets");
        for (k, n) in &self.by_reason {
            let _ = writeln!(s, "{k:<44} {n:>7}");
        }
        let _ = writeln!(s, "{:<44} {:>7}", "total", self.targets.len());
        let p = &self.performance;
        let bound = if p.arm_write_bound_seconds > 0.0 {
            format!(
                "ARM write bound {:.1}s (makespan/bound {:.2})",
                p.arm_write_bound_seconds, p.bound_ratio
            )
        } else {
            "ARM write bound n/a (the writes fit in ARM's burst)".to_string()
        };
        let _ = writeln!(
            s,
            "makespan {:.1}s, {bound}, {} ARM requests, {} writes, {} throttled (429), {:.1} steps/s",
            p.makespan_seconds, p.arm_requests, p.arm_writes, p.throttled429, p.steps_per_second
        );
        s
    }

    /// Per-target table (the `plan` command's view).
    pub(crate) fn target_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<60} {:<28} {:<18} subnet",
            "target", "outcome", "prefix"
        );
        for t in &self.targets {
            let outcome = match (&t.outcome[..], &t.reason) {
                ("skipped", Some(r)) if r == "dry-run" => "would migrate".to_string(),
                (k, Some(r)) => format!("{k}:{r}"),
                (k, None) => k.to_string(),
            };
            let short =
                t.id.split("/providers/Microsoft.Web/")
                    .last()
                    .unwrap_or(&t.id);
            let subnet = t
                .subnet
                .as_deref()
                .map(|x| x.split("/providers/Microsoft.Network/").last().unwrap_or(x))
                .unwrap_or("-");
            let _ = writeln!(
                s,
                "{:<60} {:<28} {:<18} {}",
                short,
                outcome,
                t.prefix.as_deref().unwrap_or("-"),
                subnet
            );
        }
        s
    }
}

/// The least time ARM's write limits allow: per subscription, writes (and, in their own
/// bucket, deletes) beyond the burst drain at the refill rate; subscriptions run in parallel,
/// so the bound is the slowest one. Items are `(writes, deletes)` per subscription.
pub fn write_bound_seconds(
    per_subscription: impl IntoIterator<Item = (u64, u64)>,
    limits: &crate::azure::arm::PacerConfig,
) -> f64 {
    let drain = |n: u64, burst: f64, rate: f64| (n as f64 - burst).max(0.0) / rate;
    per_subscription
        .into_iter()
        .map(|(w, d)| {
            drain(w, limits.writes_burst, limits.writes_per_sec).max(drain(
                d,
                limits.deletes_burst,
                limits.deletes_per_sec,
            ))
        })
        .fold(0.0, f64::max)
}

/// Figures are reported to the millisecond.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bound_is_the_slowest_subscription() {
        let l = crate::azure::arm::PacerConfig::default();
        assert_eq!(
            write_bound_seconds([(100, 0), (300, 0), (250, 400)], &l),
            20.0
        );
        assert_eq!(write_bound_seconds([], &l), 0.0);
    }
}
