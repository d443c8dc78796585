//! The simulator's mutable state: the store plus everything that makes it behave like ARM
//! over time (LROs, locks, throttling, deterministic randomness, counters).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::options::{InjectedFault, SimOptions, SimStats, Work};
use super::reply::Reply;
use super::store::Store;
use super::throttle::Throttle;
use crate::azure::ResourceId;

/// How long, in simulated seconds, a finished operation's status and result URLs keep
/// answering. ARM documents no retention for them (arm-vnet reference §8 only says a client
/// polls `Azure-AsyncOperation` until the status is terminal), so a client must not count on
/// an old URL: forgetting after ten minutes is stricter than remembering forever, and far
/// longer than a client here waits between an operation's end and its next poll (at most one
/// `Retry-After`). A long run no longer keeps every operation it ever started.
const OPERATION_RETENTION_SECONDS: f64 = 600.0;

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
    /// When the simulator started (`SimStats::vnet_span_seconds` counts from it).
    pub(crate) started: Instant,
    pub(crate) injected: Vec<InjectedFault>,
    pub(crate) operations: HashMap<String, Operation>,
    /// When each operation may be forgotten (`OPERATION_RETENTION_SECONDS` after it is due
    /// to finish), soonest first: `start_operation` drops the expired ones, so a long run
    /// keeps only the recent operations rather than every one it ever started.
    operation_expiry: BinaryHeap<Reverse<(Instant, String)>>,
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
            started: Instant::now(),
            injected: Vec::new(),
            operations: HashMap::new(),
            operation_expiry: BinaryHeap::new(),
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
        let now = Instant::now();
        self.forget_operations(now);
        let id = self.uuid();
        let error = self.failing_operation.take();
        let fails = error.is_some();
        let done_at = now + self.work;
        self.operations.insert(
            id.clone(),
            Operation {
                done_at,
                error,
                result: None,
            },
        );
        self.operation_expiry
            .push(Reverse((done_at + self.operation_retention(), id.clone())));
        (id, fails)
    }

    /// How long a finished operation's status URL keeps answering, in simulated time.
    fn operation_retention(&self) -> Duration {
        // Unlike `SimOptions::scaled`, not zero without the latency model: an operation that
        // finishes at once must still answer the poll that follows.
        Duration::from_secs_f64(OPERATION_RETENTION_SECONDS / self.options.speed())
    }

    /// Drops the operations whose retention ended by `now`; their status URLs answer 404 from
    /// then on, as an unknown operation's do.
    fn forget_operations(&mut self, now: Instant) {
        while let Some(Reverse((expires, _))) = self.operation_expiry.peek() {
            if *expires > now {
                break;
            }
            let Some(Reverse((_, id))) = self.operation_expiry.pop() else {
                break;
            };
            self.operations.remove(&id);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished operation keeps answering its status URL for the retention window, then is
    /// forgotten (404 from then on), so a long run does not keep every operation it started.
    #[test]
    fn finished_operations_are_forgotten_after_their_retention() {
        // At this speed the ten simulated minutes last 60 ms.
        let options = SimOptions {
            speed: 10_000.0,
            latency: false,
            ..SimOptions::default()
        };
        let mut st = State::new(Store::default(), options);
        let (first, _) = st.start_operation();
        assert_eq!(
            st.operation_status(&first),
            Some(json!({"status": "Succeeded"}))
        );
        let (second, _) = st.start_operation();
        assert!(
            st.operation_status(&first).is_some(),
            "forgotten within its retention"
        );
        std::thread::sleep(Duration::from_millis(150));
        let (third, _) = st.start_operation();
        assert_eq!(st.operation_status(&first), None);
        assert_eq!(st.operation_status(&second), None);
        assert!(st.operation_status(&third).is_some());
        assert_eq!(st.operations.len(), 1);
    }
}
