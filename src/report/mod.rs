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
    /// The least time the run could take: the slowest of ARM's read, write and delete buckets
    /// for the requests made and, where a model of ARM's durations is known (rehearsals), the
    /// longest chain of calls one target must make in sequence and the longest chain of
    /// operations one VNet must run one at a time.
    pub(crate) lower_bound_seconds: f64,
    /// makespan / lower bound (1.0 = as fast as ARM allows).
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
        let bound = if p.lower_bound_seconds > 0.0 {
            format!(
                "lower bound {:.1}s (makespan/bound {:.2}), ARM write bound {:.1}s",
                p.lower_bound_seconds, p.bound_ratio, p.arm_write_bound_seconds
            )
        } else {
            "lower bound n/a (the requests fit in ARM's bursts)".to_string()
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

/// Requests one subscription made that took a token of each of ARM's buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketCounts {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
}

/// The least time ARM's token buckets allow for these requests: per subscription, requests
/// beyond a bucket's burst drain at its refill rate; buckets and subscriptions run in
/// parallel, so the bound is the slowest bucket of the slowest subscription (arm-vnet
/// reference §8).
pub fn bucket_bound_seconds(
    per_subscription: impl IntoIterator<Item = BucketCounts>,
    limits: &crate::azure::arm::PacerConfig,
) -> f64 {
    let drain = |n: u64, burst: f64, rate: f64| (n as f64 - burst).max(0.0) / rate;
    per_subscription
        .into_iter()
        .map(|c| {
            drain(c.reads, limits.reads_burst, limits.reads_per_sec)
                .max(drain(c.writes, limits.writes_burst, limits.writes_per_sec))
                .max(drain(
                    c.deletes,
                    limits.deletes_burst,
                    limits.deletes_per_sec,
                ))
        })
        .fold(0.0, f64::max)
}

/// makespan / bound, 0 when there is no bound.
pub(crate) fn ratio(makespan_seconds: f64, bound_seconds: f64) -> f64 {
    if bound_seconds > 0.0 {
        round3(makespan_seconds / bound_seconds)
    } else {
        0.0
    }
}

/// Figures are reported to the millisecond.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(reads: u64, writes: u64, deletes: u64) -> BucketCounts {
        BucketCounts {
            reads,
            writes,
            deletes,
        }
    }

    #[test]
    fn bucket_bound_is_the_slowest_bucket_of_the_slowest_subscription() {
        let l = crate::azure::arm::PacerConfig::default();
        // Writes: (300 - 200) / 10 = 10 s; deletes: (400 - 200) / 10 = 20 s.
        assert_eq!(
            bucket_bound_seconds(
                [counts(0, 100, 0), counts(0, 300, 0), counts(0, 250, 400)],
                &l
            ),
            20.0
        );
        // Reads: (1000 - 250) / 25 = 30 s, beyond the 10 s of the same subscription's writes.
        assert_eq!(bucket_bound_seconds([counts(1000, 300, 0)], &l), 30.0);
        // Within the bursts nothing waits; speed scales the refill, not the burst.
        assert_eq!(bucket_bound_seconds([counts(250, 200, 200)], &l), 0.0);
        assert_eq!(
            bucket_bound_seconds([counts(1000, 0, 0)], &l.scaled(50.0)),
            0.6
        );
        assert_eq!(bucket_bound_seconds([], &l), 0.0);
        assert_eq!(ratio(12.0, 8.0), 1.5);
        assert_eq!(ratio(12.0, 0.0), 0.0);
    }
}
