//! The simulator's mutable state: the store plus everything that makes it behave like ARM
//! over time (LROs, locks, throttling, deterministic randomness, counters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::options::{InjectedFault, SimOptions, SimStats, Work};
use super::reply::Reply;
use super::store::Store;
use super::throttle::Throttle;
use crate::azure::ResourceId;

/// A running operation holding a VNet: until when, and the subnet it writes (whose GET reads
/// `Updating` meanwhile).
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    pub(crate) until: Instant,
    pub(crate) subnet: Option<String>,
}

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
    /// VNet (or VPN gateway) key → the operation running on it (ARM locks it meanwhile;
    /// `contention`).
    pub(crate) vnet_busy: HashMap<String, Hold>,
    /// Site or slot key → instant its running write finishes (App Service's site lock).
    pub(crate) site_busy: HashMap<String, Instant>,
    /// How long the request being routed takes (its LRO, if it starts one): set by the server
    /// from the latency model around each dispatch.
    pub(crate) work: Duration,
    /// The error the LRO the request being routed starts ends with (an injected failure).
    pub(crate) failing_operation: Option<Value>,
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
            site_busy: HashMap::new(),
            work: Duration::ZERO,
            failing_operation: None,
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
    fn latency(&mut self, lo: f64, hi: f64) -> Duration {
        if !self.options.latency {
            return Duration::ZERO;
        }
        let secs = self.rng.random_range(lo..=hi);
        self.options.scaled(secs)
    }

    /// How long `work` takes this time (the latency model, `Work::seconds`).
    pub(crate) fn duration(&mut self, work: Work) -> Duration {
        let (lo, hi) = work.seconds();
        self.latency(lo, hi)
    }

    /// Registers the LRO of the request being routed (lasting `self.work`, failing when a
    /// failure was injected); returns its id and whether it fails.
    pub(crate) fn start_operation(&mut self) -> (String, bool) {
        let id = self.uuid();
        let error = self.failing_operation.take();
        let fails = error.is_some();
        self.operations.insert(
            id.clone(),
            Operation {
                done_at: Instant::now() + self.work,
                error,
                result: None,
            },
        );
        (id, fails)
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
            Reply::empty(202).header("Retry-After", Self::retry_after(op.done_at - now))
        } else if let Some(e) = &op.error {
            Reply::new(400, json!({"error": e}))
        } else {
            match &op.result {
                Some(r) => Reply::ok(r.clone()),
                None => Reply::empty(204),
            }
        })
    }

    /// `Retry-After` for a wait of `wait` (already divided by the speed): seconds with
    /// millisecond precision, so a sped-up simulator's waits are not stretched to whole seconds.
    pub(crate) fn retry_after(wait: Duration) -> String {
        format!("{:.3}", wait.as_secs_f64().max(0.001))
    }
}
