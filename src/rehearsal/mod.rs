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
/// is the policy's settle delay, in simulated seconds.
pub(crate) fn use_simulator_figures(
    report: &mut Report,
    stats: &SimStats,
    speed: f64,
    settle_seconds: f64,
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
    let bound = LowerBound::new(stats, speed, settle_seconds, chains).seconds();
    let p = &mut report.performance;
    p.arm_write_bound_seconds = round3(write_bound);
    p.lower_bound_seconds = round3(bound);
    p.bound_ratio = report::ratio(p.makespan_seconds, bound);
    p.arm_requests = stats.requests;
    p.arm_writes = stats.writes + stats.deletes;
    p.throttled429 = stats.throttled429;
}
