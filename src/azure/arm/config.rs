//! The client's settings and its request counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::azure::pacer::PacerConfig;
use crate::azure::resource_id::ResourceId;

#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// `https://management.azure.com` or `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Writes are allowed only at or below one of these ids; empty = every write refused.
    pub write_scope: Vec<ResourceId>,
    /// Per HTTP attempt.
    pub request_timeout: Duration,
    /// Retries per call for transient failures.
    pub max_retries: u32,
    /// Exponential backoff base (with jitter, capped at 32× the base).
    pub backoff_base: Duration,
    /// LRO poll interval when the server sends no `Retry-After`.
    pub lro_poll_default: Duration,
    /// Give up waiting for an LRO after this long.
    pub lro_timeout: Duration,
    /// Upper bound on any wait taken from a server's `Retry-After` (tests set it tiny).
    pub retry_after_cap: Duration,
    pub pacer: PacerConfig,
}

impl ArmConfig {
    pub fn new(endpoint: impl Into<String>, write_scope: Vec<ResourceId>) -> Self {
        Self {
            endpoint: endpoint.into(),
            write_scope,
            request_timeout: Duration::from_secs(60),
            max_retries: 6,
            backoff_base: Duration::from_secs(1),
            lro_poll_default: Duration::from_secs(5),
            lro_timeout: Duration::from_secs(600),
            retry_after_cap: Duration::from_secs(300),
            pacer: PacerConfig::default(),
        }
    }

    /// Paces the client for an ARM simulator compressing time by `speed`: rates go up, waits
    /// go down. The simulator sends every `Retry-After` already compressed, with millisecond
    /// precision, so it is honoured as ARM asks (arm-vnet reference §8) up to the compressed
    /// cap: an LRO is polled when its `Retry-After` says it is done, not on a shorter cadence
    /// that finds it still running and then waits the default interval.
    pub fn time_compressed(mut self, speed: f64) -> Self {
        self.pacer = self.pacer.scaled(speed);
        self.backoff_base = self.backoff_base.div_f64(speed);
        self.lro_poll_default = self.lro_poll_default.div_f64(speed);
        self.retry_after_cap = self.retry_after_cap.div_f64(speed);
        self
    }
}

/// Counters since the client was created. `reads + writes + deletes == requests`: every HTTP
/// attempt counts, retries and LRO polls (reads) included.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ArmMetrics {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub(crate) deletes: u64,
    pub throttled_429: u64,
    pub retries: u64,
    pub lro_polls: u64,
}

/// The live counters behind [`ArmMetrics`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) deletes: AtomicU64,
    pub(super) throttled_429: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) lro_polls: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> ArmMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ArmMetrics {
            requests: get(&self.requests),
            reads: get(&self.reads),
            writes: get(&self.writes),
            deletes: get(&self.deletes),
            throttled_429: get(&self.throttled_429),
            retries: get(&self.retries),
            lro_polls: get(&self.lro_polls),
        }
    }
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
