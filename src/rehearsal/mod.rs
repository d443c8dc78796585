//! Rehearsals: the whole pipeline against the built-in simulator, judged by the safety
//! invariants (`invariants`) and measured against ARM's limits with the simulator's own counts.

pub mod invariants;

use crate::azure::arm::PacerConfig;
use crate::report::{self, round3, Report};
use crate::sim::SimStats;

/// Replaces the client's estimates in the report's performance block with the simulator's
/// exact per-subscription counts (the write bound is set by the busiest subscription).
pub(crate) fn use_simulator_figures(report: &mut Report, stats: &SimStats, speed: f64) {
    let limits = PacerConfig::default().scaled(speed);
    let bound = report::write_bound_seconds(
        stats
            .by_subscription
            .values()
            .map(|s| (s.writes, s.deletes)),
        &limits,
    );
    let p = &mut report.performance;
    p.arm_write_bound_seconds = round3(bound);
    p.bound_ratio = if bound > 0.0 {
        round3(p.makespan_seconds / bound)
    } else {
        0.0
    };
    p.arm_requests = stats.requests;
    p.arm_writes = stats.writes + stats.deletes;
    p.throttled429 = stats.throttled429;
}
