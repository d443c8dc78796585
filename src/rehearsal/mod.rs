//! Rehearsals: the whole pipeline against the built-in simulator, judged by the safety
//! invariants (`invariants`) and measured against ARM's limits with the simulator's own counts
//! (`bound`).

mod bound;
pub mod invariants;

use std::collections::HashMap;

use crate::azure::arm::PacerConfig;
use crate::pipeline::Outcome;
use crate::report::{self, round3, BucketCounts, Percentiles, Report};
use crate::sim::SimStats;
use bound::{Chain, LowerBound};

/// Replaces the client's estimates in the report's performance block with the simulator's
/// exact per-subscription counts and its model of ARM's durations (`bound`); `settle_seconds`
/// is the policy's settle delay and `bake_seconds` its bake time between waves, in simulated
/// seconds.
pub(crate) fn use_simulator_figures(
    report: &mut Report,
    stats: &SimStats,
    speed: f64,
    settle_seconds: f64,
    bake_seconds: f64,
) {
    let write_bound = report::bucket_bound_seconds(
        stats.by_subscription.values().map(|s| BucketCounts {
            reads: 0,
            writes: s.writes,
            deletes: s.deletes,
        }),
        &PacerConfig::default().scaled(speed),
    );
    // The chain each target's outcome implies, by the lowercased id the simulator's counts use.
    let chains: HashMap<String, Chain> = report
        .targets
        .iter()
        .filter_map(|t| Some((t.id.to_ascii_lowercase(), Chain::of(&t.parsed_outcome()?)?)))
        .collect();
    let bakes = bake_seconds * report.waves.len().saturating_sub(1) as f64;
    let bound = LowerBound::new(stats, speed, settle_seconds, bakes, &chains).seconds();
    let p = &mut report.performance;
    p.arm_write_bound_seconds = round3(write_bound);
    p.lower_bound_seconds = round3(bound);
    p.bound_ratio = report::ratio(p.makespan_seconds, bound);
    p.arm_requests = stats.requests;
    p.arm_writes = stats.writes + stats.deletes;
    p.throttled429 = stats.throttled429;
    p.busiest_vnet = busiest_vnet(stats, speed);
    p.downtime_ratio = downtime_ratio(&report.targets, stats);
}

/// Each migrated target's downtime over its join call as the simulator drew it.
fn downtime_ratio(targets: &[report::TargetReport], stats: &SimStats) -> Option<Percentiles> {
    let migrated = Outcome::Migrated.to_string();
    Percentiles::of(targets.iter().filter_map(|t| {
        let downtime = t.downtime_seconds.filter(|_| t.outcome == migrated)?;
        let join = stats.join_seconds.get(&t.id.to_ascii_lowercase())?;
        (*join > 0.0).then(|| round3(downtime / join))
    }))
}

/// The VNet its operations held longest, with the span from its first to its last.
fn busiest_vnet(stats: &SimStats, speed: f64) -> Option<report::VnetChain> {
    let (vnet, held) = stats
        .vnet_held_seconds
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let [first, last] = stats.vnet_span_seconds.get(vnet)?;
    Some(report::VnetChain {
        held_seconds: round3(held / speed),
        span_seconds: round3((last - first) / speed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_vnet_is_the_one_held_longest_with_its_span() {
        let mut stats = SimStats::default();
        stats.vnet_held_seconds.insert("v1".into(), 100.0);
        stats.vnet_held_seconds.insert("v2".into(), 400.0);
        stats.vnet_span_seconds.insert("v1".into(), [0.0, 500.0]);
        stats.vnet_span_seconds.insert("v2".into(), [50.0, 550.0]);
        // At speed 50: held 8 s of a 10 s span, so 2 s idle between its operations.
        let v = busiest_vnet(&stats, 50.0).unwrap();
        assert_eq!((v.held_seconds, v.span_seconds), (8.0, 10.0));
        assert_eq!(busiest_vnet(&SimStats::default(), 50.0), None);
    }

    #[test]
    fn the_downtime_ratio_counts_migrated_targets_with_a_join_only() {
        let target = |id: &str, outcome: &str, downtime: Option<f64>| report::TargetReport {
            id: id.into(),
            outcome: outcome.into(),
            reason: None,
            subnet: None,
            prefix: None,
            steps: 6,
            attempts: 0,
            duration_seconds: 1.0,
            downtime_seconds: downtime,
            finished_seconds: None,
            wave: None,
        };
        let mut stats = SimStats::default();
        for (id, join) in [("/s/a", 8.0), ("/s/b", 10.0), ("/s/c", 9.0)] {
            stats.join_seconds.insert(id.into(), join);
        }
        let targets = [
            target("/S/A", "migrated", Some(8.8)),
            target("/s/b", "migrated", Some(12.0)),
            // A rollback's downtime runs on past its join: not the join's ratio.
            target("/s/c", "rolled-back", Some(140.0)),
            // Migrated without a join the simulator saw (none recorded): left out.
            target("/s/d", "migrated", Some(9.0)),
        ];
        let r = downtime_ratio(&targets, &stats).unwrap();
        assert_eq!((r.p50, r.max), (1.1, 1.2));
        assert_eq!(downtime_ratio(&targets[2..], &stats), None);
    }
}
