//! Rehearsals: the whole pipeline against the built-in simulator, judged by the safety
//! invariants (`invariants`) and measured against ARM's limits with the simulator's own counts
//! (`bound`).

mod bound;
pub mod invariants;

use crate::azure::arm::PacerConfig;
use crate::pipeline::Outcome;
use crate::report::{self, round3, BucketCounts, Report};
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
    // Outcomes as the report counts them (`Outcome`'s text), each with the chain it implies.
    let chains: Vec<Chain> = report
        .by_reason
        .keys()
        .filter_map(|o| o.parse::<Outcome>().ok())
        .filter_map(|o| Chain::of(&o))
        .collect();
    let bakes = bake_seconds * report.waves.len().saturating_sub(1) as f64;
    let bound = LowerBound::new(stats, speed, settle_seconds, bakes, chains).seconds();
    let p = &mut report.performance;
    p.arm_write_bound_seconds = round3(write_bound);
    p.lower_bound_seconds = round3(bound);
    p.bound_ratio = report::ratio(p.makespan_seconds, bound);
    p.arm_requests = stats.requests;
    p.arm_writes = stats.writes + stats.deletes;
    p.throttled429 = stats.throttled429;
    p.busiest_vnet = busiest_vnet(stats, speed);
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
}
