//! The simulator's mutable state: the store plus everything that makes it behave like ARM
//! over time (LROs, locks, throttling, deterministic randomness, counters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::options::{InjectedFault, SimOptions, SimStats};
use super::reply::Reply;
use super::store::Store;
use super::throttle::Throttle;
use crate::azure::ResourceId;

/// A long-running operation as its status URL reports it.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) done_at: Instant,
    pub(crate) error: Option<Value>,
    /// What the operation's `Location` URL answers once done (an action's result).
    pub(crate) result: Option<Value>,
}

/// A VPN client package the simulator issued: the gateway it was generated for and the root
/// certificates (`publicCertData`) that gateway trusted at that moment (a package is a
/// snapshot of the gateway's P2S configuration).
#[derive(Debug, Clone)]
pub(crate) struct VpnPackage {
    /// Lowercased gateway id.
    pub(crate) gateway: String,
    pub(crate) root_certificates: Vec<String>,
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
    /// VNet (or gateway) key → instant its last write finishes (ARM locks it meanwhile).
    pub(crate) vnet_busy: HashMap<String, Instant>,
    /// Subscription key → requests left in a chaos 429 storm.
    pub(crate) storms: HashMap<String, u32>,
    /// (subnet, plan) → instant the plan's service association link, left behind when
    /// its last app left the subnet, is finally removed.
    pub(crate) lingering_links: HashMap<(ResourceId, ResourceId), Instant>,
    /// Package SAS URL → what it was issued for (`generatevpnclientpackage`).
    pub(crate) vpn_packages: HashMap<String, VpnPackage>,
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
            vpn_packages: HashMap::new(),
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
                result: None,
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

    /// What an operation's `Location` URL answers: 202 while it runs, then 200 with its result
    /// (the `final-state-via: location` pattern of Network actions, arm-vnet reference §8);
    /// `None` when unknown.
    pub(crate) fn operation_result(&self, id: &str) -> Option<Reply> {
        let op = self.operations.get(&id.to_ascii_lowercase())?;
        let now = Instant::now();
        Some(if now < op.done_at {
            Reply::empty(202).header(
                "Retry-After",
                Self::retry_after_secs(op.done_at - now).to_string(),
            )
        } else if let Some(e) = &op.error {
            Reply::new(400, json!({"error": e}))
        } else {
            match &op.result {
                Some(r) => Reply::ok(r.clone()),
                None => Reply::empty(204),
            }
        })
    }

    /// Seconds until an LRO poll is worth repeating (ARM sends `Retry-After` on LROs).
    pub(crate) fn retry_after_secs(duration: Duration) -> u64 {
        duration.as_secs().clamp(1, 10)
    }
}
