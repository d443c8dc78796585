//! The least time a rehearsal could take, from the simulator's own model: ARM's token buckets
//! for the requests the simulator admitted, the chain of calls one target's steps must make
//! one after another (at the lower ends of the latency model, plus the policy's settle
//! delay), and the operations one VNet ran one at a time, for as long as each held the VNet
//! in this run (`SimStats::vnet_held_seconds`; never less than their lower ends,
//! `vnet_lock_seconds`), followed by what the target of the VNet's last operation still had
//! to do when that was its join (the settle delay and the check). Each is a floor under the
//! makespan, so their maximum is too.

use std::collections::HashMap;

use crate::azure::arm::PacerConfig;
use crate::pipeline::reason::RollbackReason;
use crate::pipeline::Outcome;
use crate::report::{self, BucketCounts};
use crate::sim::{SimStats, Work};

/// One ARM call as the simulator times it: a read, or a write whose transport latency is
/// followed by the work the request does (`Work::seconds`; a refused write does none).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    Read,
    Write(Work),
}

impl Call {
    /// The least simulated seconds the call takes.
    fn seconds(self) -> f64 {
        match self {
            Call::Read => Work::Read.seconds().0,
            Call::Write(Work::Write) => Work::Write.seconds().0,
            Call::Write(w) => Work::Write.seconds().0 + w.seconds().0,
        }
    }
}

/// The chains of calls a target cannot do without, by how it ends. Only calls every correct
/// run makes, in the order they must come, are listed (reads a step could spare are not), so
/// the sum stays a floor however the steps are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// Observe the app, delete its gateway connection, join the subnet (synchronous, arm-vnet
    /// reference §13), let it settle (the policy's delay), check it.
    Migrated,
    /// Rolled back because ARM refused the join: observe, delete the gateway connection, the
    /// refused join (answered before any work), then the handshake of arm-vnet reference
    /// §2.2: declare the connection, generate a VPN package (a Network LRO, read when done),
    /// hand it over.
    Refused,
    /// Rolled back because `verify` found the app unhealthy: the migrated chain, then the
    /// removal of regional integration (51–53 s, arm-vnet reference §13) and the handshake.
    Unhealthy,
}

/// The handshake that re-adds a gateway connection (arm-vnet reference §2.2).
const HANDSHAKE: [Call; 4] = [
    Call::Write(Work::Write),
    Call::Write(Work::NetworkWrite),
    Call::Read,
    Call::Write(Work::Write),
];

impl Chain {
    /// The chain of a target that ended with `outcome`; none where the calls it made are not
    /// known (skipped, blocked, parked, or rolled back after a failing step).
    pub(crate) fn of(outcome: &Outcome) -> Option<Chain> {
        match outcome {
            Outcome::Migrated => Some(Chain::Migrated),
            Outcome::RolledBack(RollbackReason::ConnectRejected(_)) => Some(Chain::Refused),
            Outcome::RolledBack(RollbackReason::Unhealthy(_)) => Some(Chain::Unhealthy),
            _ => None,
        }
    }

    fn calls(self) -> Vec<Call> {
        let cut_over = [
            Call::Read,
            Call::Write(Work::Write),
            Call::Write(Work::SubnetJoin),
            Call::Read,
        ];
        match self {
            Chain::Migrated => cut_over.to_vec(),
            Chain::Refused => [
                Call::Read,
                Call::Write(Work::Write),
                Call::Write(Work::Write),
            ]
            .into_iter()
            .chain(HANDSHAKE)
            .collect(),
            Chain::Unhealthy => cut_over
                .into_iter()
                .chain([Call::Write(Work::SwiftDelete)])
                .chain(HANDSHAKE)
                .collect(),
        }
    }

    /// The least simulated seconds the chain takes, with the policy's settle delay where the
    /// chain waits for it (between the join and its check).
    pub(crate) fn seconds(self, settle_seconds: f64) -> f64 {
        self.calls().iter().map(|c| c.seconds()).sum::<f64>() + self.settle(settle_seconds)
    }

    /// The least simulated seconds the chain takes after its join has done its work: the
    /// settle delay and the calls after the join (none when the chain has no join that works).
    pub(crate) fn after_join(self, settle_seconds: f64) -> f64 {
        let calls = self.calls();
        match calls
            .iter()
            .position(|c| *c == Call::Write(Work::SubnetJoin))
        {
            Some(i) => {
                calls[i + 1..].iter().map(|c| c.seconds()).sum::<f64>()
                    + self.settle(settle_seconds)
            }
            None => 0.0,
        }
    }

    fn settle(self, settle_seconds: f64) -> f64 {
        match self {
            Chain::Migrated | Chain::Unhealthy => settle_seconds,
            Chain::Refused => 0.0,
        }
    }
}

/// The three floors, in wall-clock seconds at the rehearsal's speed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct LowerBound {
    /// The slowest of ARM's read, write and delete buckets of the busiest subscription.
    pub(crate) buckets: f64,
    /// The longest chain one target of the run went through.
    pub(crate) target_chain: f64,
    /// The bake times between the rollout's waves: a wave starts only after the previous
    /// wave's last outcome and its bake, so the waves run one after another and the bakes,
    /// with the longest chain (whichever wave it is in), lie end to end.
    pub(crate) bakes: f64,
    /// The longest chain of operations one VNet (or VPN gateway) ran one at a time, each for
    /// as long as it held the VNet, with what the target of its last operation had left to do
    /// when that was its join: the holds never overlap, so the last ends after their sum, and
    /// the makespan after that target's settle and check.
    pub(crate) vnet_chain: f64,
}

impl LowerBound {
    /// From the simulator's counts at `speed`, for targets that ended as `chains`; `chain_of`
    /// holds the chain of each target by its lowercased id (those without one left out).
    pub(crate) fn new(
        stats: &SimStats,
        speed: f64,
        settle_seconds: f64,
        bakes_seconds: f64,
        chain_of: &HashMap<String, Chain>,
    ) -> Self {
        let buckets = report::bucket_bound_seconds(
            stats.by_subscription.values().map(|s| BucketCounts {
                reads: s.reads,
                writes: s.writes,
                deletes: s.deletes,
            }),
            &PacerConfig::default().scaled(speed),
        );
        let longest = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0, f64::max) / speed;
        let tail = |vnet: &str| {
            stats
                .vnet_last_join
                .get(vnet)
                .and_then(|target| chain_of.get(target))
                .map_or(0.0, |c| c.after_join(settle_seconds))
        };
        LowerBound {
            buckets,
            target_chain: longest(&mut chain_of.values().map(|c| c.seconds(settle_seconds))),
            vnet_chain: longest(
                &mut stats
                    .vnet_held_seconds
                    .iter()
                    .map(|(vnet, held)| held + tail(vnet)),
            ),
            bakes: bakes_seconds / speed,
        }
    }

    pub(crate) fn seconds(&self) -> f64 {
        self.buckets
            .max(self.target_chain + self.bakes)
            .max(self.vnet_chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SubscriptionStats;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn chains_add_the_lower_ends_of_the_latency_model() {
        // Read 0.03 + delete 0.15 + join (0.15 + 7) + read 0.03, and the settle delay.
        assert!(close(Chain::Migrated.seconds(60.0), 67.36));
        // Read 0.03, delete and refused join 0.3, then the handshake: declare 0.15, package
        // (0.15 + 1), its read 0.03, hand-over 0.15.
        assert!(close(Chain::Refused.seconds(60.0), 1.81));
        // The migrated chain, regional removal (0.15 + 50), the handshake 1.48.
        assert!(close(Chain::Unhealthy.seconds(60.0), 67.36 + 50.15 + 1.48));
        assert_eq!(Chain::of(&Outcome::Migrated), Some(Chain::Migrated));
        let rejected = "rolled-back:connect-rejected:BadRequest".parse().unwrap();
        assert_eq!(Chain::of(&rejected), Some(Chain::Refused));
        let unhealthy = "rolled-back:kv-references-unresolved".parse().unwrap();
        assert_eq!(Chain::of(&unhealthy), Some(Chain::Unhealthy));
        let skipped = "skipped:no-integration".parse().unwrap();
        assert_eq!(Chain::of(&skipped), None);
    }

    /// Targets "t0", "t1", … with these chains.
    fn targets(chains: &[Chain]) -> HashMap<String, Chain> {
        (0..)
            .map(|i| format!("t{i}"))
            .zip(chains.iter().copied())
            .collect()
    }

    #[test]
    fn the_bound_is_the_largest_floor() {
        let mut stats = SimStats::default();
        stats.by_subscription.insert(
            "a".into(),
            SubscriptionStats {
                reads: 2_500,
                writes: 300,
                ..Default::default()
            },
        );
        stats.by_subscription.insert(
            "b".into(),
            SubscriptionStats {
                deletes: 700,
                ..Default::default()
            },
        );
        stats.vnet_lock_seconds.insert("v1".into(), 60.0);
        stats.vnet_held_seconds.insert("v1".into(), 71.0);
        stats.vnet_held_seconds.insert("v2".into(), 14.0);
        let refused_and_migrated = targets(&[Chain::Refused, Chain::Migrated]);
        // Speed 10: reads (2500 - 250) / 250 = 9 s beat deletes (700 - 200) / 100 = 5 s;
        // the migrated chain 67.36 / 10; VNet v1 71 / 10.
        let b = LowerBound::new(&stats, 10.0, 60.0, 0.0, &refused_and_migrated);
        assert!(close(b.buckets, 9.0));
        assert!(close(b.target_chain, 6.736));
        assert!(close(b.vnet_chain, 7.1));
        assert!(close(b.seconds(), 9.0));
        // A small run: no bucket drains, the target's own chain is the floor.
        let small = SimStats::default();
        let b = LowerBound::new(&small, 50.0, 60.0, 0.0, &targets(&[Chain::Migrated]));
        assert_eq!(b.buckets, 0.0);
        assert!(close(b.seconds(), 67.36 / 50.0));
        assert_eq!(
            LowerBound::new(&small, 50.0, 60.0, 0.0, &HashMap::new()).seconds(),
            0.0
        );
        // Three waves with a two-minute bake: two bakes and the longest chain end to end.
        let waves = LowerBound::new(&small, 50.0, 60.0, 240.0, &targets(&[Chain::Migrated]));
        assert!(close(waves.seconds(), (240.0 + 67.36) / 50.0));
    }

    /// A VNet whose last operation was the join of a target that then migrated is followed by
    /// that target's settle and check; one whose target was refused, or unknown, by nothing.
    #[test]
    fn a_vnet_chain_ends_with_the_settle_and_check_of_its_last_join() {
        // After the join: the settle delay and the check's read (0.03).
        assert!(close(Chain::Migrated.after_join(60.0), 60.03));
        // After the join: settle, the check, the removal (0.15 + 50), the handshake 1.48.
        assert!(close(
            Chain::Unhealthy.after_join(60.0),
            60.03 + 50.15 + 1.48
        ));
        // Its join was refused, so did no work.
        assert_eq!(Chain::Refused.after_join(60.0), 0.0);
        let mut stats = SimStats::default();
        stats.vnet_held_seconds.insert("v1".into(), 500.0);
        stats.vnet_held_seconds.insert("v2".into(), 520.0);
        let chains = targets(&[Chain::Migrated, Chain::Refused]);
        // Nothing known of the last operations: the longest chain held, at speed 50.
        let plain = LowerBound::new(&stats, 50.0, 60.0, 0.0, &chains);
        assert!(close(plain.vnet_chain, 520.0 / 50.0));
        // v1's last operation was t0's join, which migrated: 500 + 60.03 beats v2's 520.
        stats.vnet_last_join.insert("v1".into(), "t0".into());
        stats.vnet_last_join.insert("v2".into(), "t1".into());
        let b = LowerBound::new(&stats, 50.0, 60.0, 0.0, &chains);
        assert!(close(b.vnet_chain, 560.03 / 50.0));
    }
}
