//! Reports: the JSON document of DESIGN §8, the terminal summary table and the HTML page
//! (`html`, with its charts and the remedies it shows per reason).

mod charts;
pub(crate) mod html;
pub(crate) mod remedy;
pub(crate) mod status;

use std::borrow::Borrow;
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
    /// From the removal of the gateway-based connection until the app was on a VNet again
    /// (DESIGN §3); None when its gateway connection was never removed (or the run has not
    /// put it back yet).
    pub downtime_seconds: Option<f64>,
    /// Seconds from the run's start (its first target's start) until this target reached its
    /// outcome, on the wall clock like `makespanSeconds`; absent while it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_seconds: Option<f64>,
    /// The rollout wave it belongs to (a slot goes with its site).
    pub wave: Option<u32>,
}

impl TargetReport {
    /// The outcome `outcome` and `reason` spell together; None while the target has none.
    pub(crate) fn parsed_outcome(&self) -> Option<Outcome> {
        match &self.reason {
            Some(reason) => format!("{}:{reason}", self.outcome).parse().ok(),
            None => self.outcome.parse().ok(),
        }
    }
}

/// One rollout wave (DESIGN §8): its targets, when it was released and when its last target
/// reached its outcome (seconds since the run started, on the clock of `makespanSeconds`),
/// and its gate once judged.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveReport {
    pub index: u32,
    pub size: u32,
    pub started_seconds: Option<f64>,
    pub ended_seconds: Option<f64>,
    /// Its targets (slots found under its sites included) per outcome kind.
    pub outcomes: BTreeMap<String, u64>,
    pub gate: Option<crate::pipeline::rollout::Gate>,
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
    /// Over the targets that have a downtime; None when no target was cut over.
    pub(crate) downtime_seconds: Option<Percentiles>,
    /// A rehearsal's time compression: the downtimes (per target and their percentiles) are
    /// simulated seconds, the wall time they took times this speed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) simulated_speed: Option<f64>,
    /// A rehearsal's busiest VNet, the one whose chain of operations is usually the bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) busiest_vnet: Option<VnetChain>,
    /// A rehearsal's migrated targets: each one's downtime over the simulated seconds of the
    /// site write that joined its subnet (its transport and the join the latency model drew),
    /// the least its downtime could be. 1.0 = offline only for that call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) downtime_ratio: Option<Percentiles>,
}

/// How one VNet's serial chain filled the run, in the makespan's seconds: its operations held
/// it for `held_seconds` between its first operation's start and its last one's end
/// (`span_seconds`); the rest of the span it sat idle (the calls that lead up to each
/// operation: reads, the gateway DELETE, the PATCH's transport; and the engine's own time),
/// and the rest of the makespan came before its first operation or after its last.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VnetChain {
    pub(crate) held_seconds: f64,
    pub(crate) span_seconds: f64,
}

/// Nearest-rank percentiles: each is the smallest value with at least that share of the
/// values at or below it, so every figure is one that was measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// None for no values.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let max = *v.last()?;
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max,
        })
    }
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
    pub waves: Vec<WaveReport>,
    /// Why the rollout stopped with waves or targets left (paused, a tripped gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// What an unfinished rollout does or waits for now (`status`): in flight, baking until
    /// T, waiting for approval, held by a gate, paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    pub performance: Performance,
}

impl Report {
    pub fn new(
        run: &str,
        dry_run: bool,
        records: &[impl Borrow<TargetRecord>],
        performance: Performance,
    ) -> Self {
        let mut summary = BTreeMap::new();
        let mut by_reason = BTreeMap::new();
        let time_scale = performance.simulated_speed.unwrap_or(1.0);
        // Every target of a run is recorded when the run begins (targets found later, such
        // as slots, start later), so the earliest start is the run's.
        let run_start = records.iter().map(|r| r.borrow().started_at).min();
        let targets = records
            .iter()
            .map(|r| {
                let r = r.borrow();
                let (kind, reason) = match &r.outcome {
                    Some(o) => (o.kind().to_string(), o.reason()),
                    None => (
                        remedy::UNFINISHED.to_string(),
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
                let downtime = r
                    .cutover
                    .downtime()
                    .map(|d| round3(d.as_seconds_f64() * time_scale));
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
                    downtime_seconds: downtime,
                    finished_seconds: r
                        .finished_at
                        .zip(run_start)
                        .map(|(f, s)| round3((f - s).as_seconds_f64())),
                    wave: r.wave,
                }
            })
            .collect::<Vec<_>>();
        let mut performance = performance;
        performance.downtime_seconds =
            Percentiles::of(targets.iter().filter_map(|t| t.downtime_seconds));
        Report {
            run: run.to_string(),
            dry_run,
            targets,
            summary,
            by_reason,
            waves: Vec::new(),
            stopped: None,
            waiting: None,
            performance,
        }
    }

    /// Adds the run's rollout waves, timed from the run's start (its earliest target start).
    pub fn with_waves(
        mut self,
        records: &[impl Borrow<TargetRecord>],
        waves: &[crate::pipeline::rollout::WaveView],
    ) -> Self {
        let run_start = records.iter().map(|r| r.borrow().started_at).min();
        let since = |t: Option<time::OffsetDateTime>| {
            t.zip(run_start)
                .map(|(t, s)| round3((t - s).as_seconds_f64()))
        };
        self.waves = waves
            .iter()
            .map(|w| {
                let mut outcomes = BTreeMap::new();
                for t in self.targets.iter().filter(|t| t.wave == Some(w.index)) {
                    *outcomes.entry(t.outcome.clone()).or_insert(0) += 1;
                }
                WaveReport {
                    index: w.index,
                    size: w.targets,
                    started_seconds: since(w.released_at),
                    ended_seconds: since(w.ended_at.filter(|_| w.released_at.is_some())),
                    outcomes,
                    gate: w.gate.clone(),
                }
            })
            .collect();
        self
    }

    /// Targets without a terminal outcome, or parked: the run needs attention.
    pub(crate) fn needs_operator(&self) -> bool {
        self.stopped.is_some()
            || self
                .targets
                .iter()
                .any(|t| t.outcome == "parked" || t.outcome == remedy::UNFINISHED)
    }

    /// One line per rollout wave (its outcomes, times and gate, each gate check under it) and
    /// what the rollout waits for; empty for a run without waves.
    pub(crate) fn waves_lines(&self) -> String {
        let mut s = String::new();
        for w in &self.waves {
            let when = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{s:.1}s"));
            let outcomes = w
                .outcomes
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            s.push_str(&format!(
                "wave {}: {} target(s) ({outcomes}), started {}, ended {}, gate {}\n",
                w.index,
                w.size,
                when(w.started_seconds),
                when(w.ended_seconds),
                match &w.gate {
                    None => "not judged",
                    Some(g) if g.passed => "passed",
                    Some(_) => "tripped",
                }
            ));
            for c in w.gate.iter().flat_map(|g| &g.checks) {
                s.push_str(&format!(
                    "  {} {}: {}\n",
                    if c.passed { "passed" } else { "FAILED" },
                    c.kind.as_str(),
                    c.detail
                ));
            }
        }
        if let Some(w) = &self.waiting {
            s.push_str(&format!("rollout: {w}\n"));
        }
        s
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
        // A run without waves in its policy is one wave of everything: nothing to add.
        if self.waves.len() > 1 || self.waiting.is_some() {
            s.push_str(&self.waves_lines());
        }
        let p = &self.performance;
        let bound = if p.lower_bound_seconds > 0.0 {
            format!(
                "lower bound {:.1}s (makespan/bound {:.2}), ARM write bound {:.1}s",
                p.lower_bound_seconds, p.bound_ratio, p.arm_write_bound_seconds
            )
        } else {
            "lower bound n/a (the requests fit in ARM's bursts)".to_string()
        };
        // A rehearsal's clock runs `simulated_speed` times faster than ARM's: its makespan and
        // bounds are wall seconds of that clock, its downtimes simulated seconds.
        let clock = match p.simulated_speed {
            Some(x) => format!(" (wall seconds at ×{x} speed)"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "makespan {:.1}s{clock}, {bound}, {} ARM requests, {} writes, {} throttled (429), {:.1} steps/s",
            p.makespan_seconds, p.arm_requests, p.arm_writes, p.throttled429, p.steps_per_second
        );
        let _ = match &p.downtime_seconds {
            Some(d) => writeln!(
                s,
                "downtime p50 {:.3}s, p95 {:.3}s, p99 {:.3}s, max {:.3}s over {} target(s){}",
                d.p50,
                d.p95,
                d.p99,
                d.max,
                self.targets
                    .iter()
                    .filter(|t| t.downtime_seconds.is_some())
                    .count(),
                if p.simulated_speed.is_some() {
                    " (simulated seconds)"
                } else {
                    ""
                }
            ),
            None => writeln!(s, "downtime n/a (no target was cut over)"),
        };
        if let Some(r) = &p.downtime_ratio {
            let _ = writeln!(
                s,
                "downtime of migrated targets over their join call: p50 {:.2}, p95 {:.2}, p99 {:.2}, max {:.2}",
                r.p50, r.p95, r.p99, r.max
            );
        }
        if let Some(v) = &p.busiest_vnet {
            let _ = writeln!(
                s,
                "busiest VNet: held {:.1}s by its operations, idle {:.1}s between them, {:.1}s of the makespan before its first or after its last",
                v.held_seconds,
                v.span_seconds - v.held_seconds,
                p.makespan_seconds - v.span_seconds
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
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of([]), None);
        let one = Percentiles::of([2.5]).unwrap();
        assert_eq!((one.p50, one.p95, one.p99, one.max), (2.5, 2.5, 2.5, 2.5));
        // 1..=100 in any order: the q-th percentile is the value ranked ceil(q·n).
        let hundred = Percentiles::of((1..=100).rev().map(f64::from)).unwrap();
        assert_eq!(
            (hundred.p50, hundred.p95, hundred.p99, hundred.max),
            (50.0, 95.0, 99.0, 100.0)
        );
        // Few values: a high percentile is the largest, never an interpolation.
        let four = Percentiles::of([0.4, 0.1, 0.3, 0.2]).unwrap();
        assert_eq!(
            (four.p50, four.p95, four.p99, four.max),
            (0.2, 0.4, 0.4, 0.4)
        );
        let odd = Percentiles::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!(odd.p50, 2.0);
    }

    fn record(name: &str, cutover: Option<(i64, i64)>) -> TargetRecord {
        let t = |ms: i64| time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
        TargetRecord {
            run: crate::pipeline::message::RunId("r".into()),
            target: crate::azure::ResourceId::parse(&format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{name}"
            ))
            .unwrap(),
            outcome: Some(Outcome::Migrated),
            current_step: None,
            steps: 6,
            attempts: 0,
            reason: None,
            subnet: None,
            prefix: None,
            gateway: None,
            started_at: t(0),
            updated_at: t(60_000),
            finished_at: Some(t(60_000)),
            cutover: crate::pipeline::ledger::Cutover {
                disconnected_at: cutover.map(|c| t(c.0)),
                connected_at: cutover.map(|c| t(c.1)),
            },
            wave: None,
            next_at: None,
        }
    }

    /// A target's outcome reads back from the report's two fields, and an unfinished one has none.
    #[test]
    fn each_target_outcome_parses_back_from_outcome_and_reason() {
        let mut rolled_back = record("a", Some((0, 100)));
        rolled_back.outcome = Some("rolled-back:connect-rejected:BadRequest".parse().unwrap());
        let mut unfinished = record("b", None);
        unfinished.outcome = None;
        let records = [record("m", None), rolled_back.clone(), unfinished];
        let report = Report::new("r", false, &records, Performance::default());
        let parsed: Vec<_> = report.targets.iter().map(|t| t.parsed_outcome()).collect();
        assert_eq!(parsed, [Some(Outcome::Migrated), rolled_back.outcome, None]);
    }

    #[test]
    fn downtime_per_target_and_percentiles_in_wall_or_simulated_seconds() {
        let records = [
            record("a", Some((1_000, 1_200))),
            record("b", Some((2_000, 2_150))),
            record("never-cut-over", None),
        ];
        let wall = Report::new("r", false, &records, Performance::default());
        let downtimes: Vec<_> = wall.targets.iter().map(|t| t.downtime_seconds).collect();
        assert_eq!(downtimes, vec![Some(0.2), Some(0.15), None]);
        let d = wall.performance.downtime_seconds.unwrap();
        assert_eq!((d.p50, d.max), (0.15, 0.2));
        let table = wall.table();
        assert!(
            table.contains(
                "downtime p50 0.150s, p95 0.200s, p99 0.200s, max 0.200s over 2 target(s)\n"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&wall).unwrap();
        assert_eq!(
            json["targets"][2]["downtimeSeconds"],
            serde_json::Value::Null
        );
        assert_eq!(json["performance"]["downtimeSeconds"]["p99"], 0.2);
        // A rehearsal at speed 50: the same wall times are 50 times as many simulated seconds.
        let perf = Performance {
            simulated_speed: Some(50.0),
            ..Performance::default()
        };
        let sim = Report::new("r", false, &records, perf);
        assert_eq!(sim.targets[0].downtime_seconds, Some(10.0));
        assert_eq!(sim.performance.downtime_seconds.unwrap().p50, 7.5);
        assert!(sim
            .table()
            .contains("max 10.000s over 2 target(s) (simulated seconds)"));
        assert_eq!(
            serde_json::to_value(&sim).unwrap()["performance"]["simulatedSpeed"],
            50.0
        );
        let none = Report::new("r", false, &records[2..], Performance::default());
        assert_eq!(none.performance.downtime_seconds, None);
        assert!(none.table().contains("downtime n/a"));
    }

    #[test]
    fn finish_times_count_from_the_runs_first_start_and_are_left_out_while_unknown() {
        let t = |ms: i64| time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
        let mut slot = record("later", None);
        (slot.started_at, slot.finished_at) = (t(5_000), Some(t(8_250)));
        let mut open = record("open", None);
        (open.outcome, open.finished_at) = (None, None);
        let r = Report::new(
            "r",
            false,
            &[record("a", None), slot, open],
            Performance::default(),
        );
        let finished: Vec<_> = r.targets.iter().map(|t| t.finished_seconds).collect();
        assert_eq!(finished, vec![Some(60.0), Some(8.25), None]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["targets"][1]["finishedSeconds"], 8.25);
        // Older readers see no new key for a target that has not finished.
        assert!(json["targets"][2].get("finishedSeconds").is_none());
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
