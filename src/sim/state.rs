//! The simulator's mutable state: the store plus everything that makes it behave like ARM
//! over time (LROs, locks, throttling, deterministic randomness, counters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::options::{InjectedFault, SimOptions, SimStats};
use super::store::Store;
use super::throttle::Throttle;
use crate::azure::ResourceId;

/// A long-running operation as its status URL reports it.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) done_at: Instant,
    pub(crate) error: Option<Value>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) options: SimOptions,
    pub(crate) throttle: Throttle,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) stats: SimStats,
    pub(crate) injected: Vec<InjectedFault>,
    pub(crate) operations: HashMap<String, Operation>,
    /// VNet key → instant its last subnet/VNet write finishes (ARM locks the VNet meanwhile).
    pub(crate) vnet_busy: HashMap<String, Instant>,
    /// Subscription key → requests left in a chaos 429 storm.
    pub(crate) storms: HashMap<String, u32>,
    /// (subnet, plan) → instant the plan's service association link, left behind when
    /// its last app left the subnet, is finally removed.
    pub(crate) lingering_links: HashMap<(ResourceId, ResourceId), Instant>,
}

impl State {
    pub(crate) fn new(store: Store, options: SimOptions) -> Self {
        Self {
            store,
            throttle: Throttle::new(options.throttle, options.speed()),
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
            stats: SimStats::default(),
            injected: Vec::new(),
            operations: HashMap::new(),
            vnet_busy: HashMap::new(),
            storms: HashMap::new(),
            lingering_links: HashMap::new(),
        }
    }

    /// A uuid drawn from the seeded generator, so runs with one seed are reproducible.
    pub(crate) fn uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string()
    }

    /// A Network-style weak etag `W/"{uuid}"`.
    pub(crate) fn etag(&mut self) -> String {
        format!("W/\"{}\"", self.uuid())
    }

    /// A duration drawn uniformly from `[lo, hi]` seconds, divided by speed; zero when the
    /// latency model is off.
    pub(crate) fn latency(&mut self, lo: f64, hi: f64) -> Duration {
        if !self.options.latency {
            return Duration::ZERO;
        }
        let secs = self.rng.random_range(lo..=hi) / self.options.speed();
        Duration::from_secs_f64(secs)
    }

    /// Registers an LRO finishing after `duration`; returns its id.
    pub(crate) fn start_operation(&mut self, duration: Duration) -> String {
        let id = self.uuid();
        self.operations.insert(
            id.clone(),
            Operation {
                done_at: Instant::now() + duration,
                error: None,
            },
        );
        id
    }

    /// `{"status": …}` for an operation status URL; `None` when unknown.
    pub(crate) fn operation_status(&self, id: &str) -> Option<Value> {
        let op = self.operations.get(&id.to_ascii_lowercase())?;
        Some(if Instant::now() < op.done_at {
            json!({"status": "InProgress"})
        } else if let Some(e) = &op.error {
            json!({"status": "Failed", "error": e})
        } else {
            json!({"status": "Succeeded"})
        })
    }

    /// Seconds until an LRO poll is worth repeating (ARM sends `Retry-After` on LROs).
    pub(crate) fn retry_after_secs(duration: Duration) -> u64 {
        duration.as_secs().clamp(1, 10)
    }
}
