//! Client-side pacing under ARM's per-subscription token buckets, so a fleet run stays below the
//! limits instead of hammering into 429s. The server's `x-ms-ratelimit-remaining-*` headers
//! can only lower our estimate; a 429 with `Retry-After` empties the bucket for that period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The operation classes ARM meters separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
    Delete,
}

/// Bucket sizes and refill rates per subscription (ARM's 2024 token-bucket limits by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerConfig {
    pub reads_burst: f64,
    pub reads_per_sec: f64,
    pub writes_burst: f64,
    pub writes_per_sec: f64,
    pub deletes_burst: f64,
    pub deletes_per_sec: f64,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            reads_burst: 250.0,
            reads_per_sec: 25.0,
            writes_burst: 200.0,
            writes_per_sec: 10.0,
            deletes_burst: 200.0,
            deletes_per_sec: 10.0,
        }
    }
}

impl PacerConfig {
    /// Compresses time by `factor` (the simulator's `--speed`): refill rates are per second
    /// and scale; bucket sizes are token counts and do not.
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            reads_per_sec: self.reads_per_sec * factor,
            writes_per_sec: self.writes_per_sec * factor,
            deletes_per_sec: self.deletes_per_sec * factor,
            ..self
        }
    }

    fn limits(&self, kind: OpKind) -> (f64, f64) {
        let (burst, rate) = match kind {
            OpKind::Read => (self.reads_burst, self.reads_per_sec),
            OpKind::Write => (self.writes_burst, self.writes_per_sec),
            OpKind::Delete => (self.deletes_burst, self.deletes_per_sec),
        };
        // A bucket must hold at least one token and refill at all, or a request waits forever.
        (sane(burst, 1.0), sane(rate, 0.001))
    }
}

fn sane(v: f64, min: f64) -> f64 {
    if v.is_finite() {
        v.max(min)
    } else {
        min
    }
}

/// One token bucket. Time is passed in, so the maths is testable with a fake clock.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        Self {
            capacity,
            rate,
            tokens: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // `updated` may lie in the future while the bucket is drained after a 429.
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        if now > self.updated {
            self.updated = now;
        }
    }

    /// Takes one token, or says how long to wait before trying again.
    pub(crate) fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if now < self.updated {
            return Err(self.updated - now + self.time_for_one_token());
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    fn time_for_one_token(&self) -> Duration {
        Duration::from_secs_f64((1.0 - self.tokens).max(0.0) / self.rate)
    }

    /// The server says only `remaining` requests are left: lower our estimate (never raise it).
    pub(crate) fn observe_remaining(&mut self, remaining: f64, now: Instant) {
        self.refill(now);
        if remaining < self.tokens {
            self.tokens = remaining.max(0.0);
        }
    }

    /// Empty the bucket and start refilling only after `period` (a 429's `Retry-After`).
    pub(crate) fn drain(&mut self, period: Duration, now: Instant) {
        self.refill(now);
        self.tokens = 0.0;
        let until = now + period;
        if until > self.updated {
            self.updated = until;
        }
    }

    /// Tokens available at `now` (0 while drained).
    pub(crate) fn available(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + dt * self.rate).min(self.capacity)
    }
}

/// Token buckets per (subscription, operation kind), created full on first use.
#[derive(Debug)]
pub struct Pacer {
    config: PacerConfig,
    buckets: Mutex<HashMap<(String, OpKind), TokenBucket>>,
}

impl Pacer {
    pub(crate) fn new(config: PacerConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn with_bucket<R>(
        &self,
        subscription: &str,
        kind: OpKind,
        now: Instant,
        f: impl FnOnce(&mut TokenBucket) -> R,
    ) -> R {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = map
            .entry((subscription.to_ascii_lowercase(), kind))
            .or_insert_with(|| {
                let (burst, rate) = self.config.limits(kind);
                TokenBucket::new(burst, rate, now)
            });
        f(bucket)
    }

    /// Waits (asynchronously) until a token is available, then takes it.
    pub(crate) async fn acquire(&self, subscription: &str, kind: OpKind) {
        loop {
            let now = Instant::now();
            match self.with_bucket(subscription, kind, now, |b| b.try_acquire(now)) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub(crate) fn observe_remaining(&self, subscription: &str, kind: OpKind, remaining: f64) {
        let now = Instant::now();
        self.with_bucket(subscription, kind, now, |b| {
            b.observe_remaining(remaining, now)
        });
    }

    pub(crate) fn throttled(&self, subscription: &str, kind: OpKind, retry_after: Duration) {
        let now = Instant::now();
        self.with_bucket(subscription, kind, now, |b| b.drain(retry_after, now));
    }

    /// Tokens currently available for `subscription` and `kind`.
    pub fn available(&self, subscription: &str, kind: OpKind) -> f64 {
        let now = Instant::now();
        self.with_bucket(subscription, kind, now, |b| b.available(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, 10.0, t0);
        for _ in 0..3 {
            assert!(b.try_acquire(t0).is_ok());
        }
        let wait = b.try_acquire(t0).unwrap_err();
        assert_eq!(wait, ms(100));
        assert!(b.try_acquire(t0 + ms(50)).is_err());
        assert!(b.try_acquire(t0 + ms(100)).is_ok());
        // Refill never exceeds the capacity.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 3.0);
    }

    #[test]
    fn remaining_header_only_lowers() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200.0, 10.0, t0);
        b.observe_remaining(5.0, t0);
        assert_eq!(b.available(t0), 5.0);
        b.observe_remaining(150.0, t0);
        assert_eq!(b.available(t0), 5.0);
        assert!((b.available(t0 + Duration::from_secs(1)) - 15.0).abs() < 1e-9);
        b.observe_remaining(-3.0, t0);
        assert_eq!(b.available(t0), 0.0);
    }

    #[test]
    fn drain_blocks_for_retry_after_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        b.drain(Duration::from_secs(2), t0);
        assert_eq!(b.available(t0 + Duration::from_secs(1)), 0.0);
        let wait = b.try_acquire(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1) + ms(100));
        assert!(b.try_acquire(t0 + ms(2050)).is_err());
        assert!(b.try_acquire(t0 + ms(2100)).is_ok());
    }

    #[test]
    fn config_scaling_and_sanity() {
        let c = PacerConfig::default().scaled(2.0);
        assert_eq!(c.writes_burst, 200.0);
        assert_eq!(c.reads_per_sec, 50.0);
        let zero = PacerConfig::default().scaled(0.0);
        assert_eq!(zero.limits(OpKind::Read), (250.0, 0.001));
    }

    #[test]
    fn pacer_keys_by_subscription_case_insensitively() {
        let p = Pacer::new(PacerConfig {
            writes_burst: 5.0,
            writes_per_sec: 0.001,
            ..PacerConfig::default()
        });
        p.observe_remaining("SUB-A", OpKind::Write, 2.0);
        assert!(p.available("sub-a", OpKind::Write) < 2.1);
        assert!(p.available("sub-b", OpKind::Write) > 4.9);
        assert!(p.available("sub-a", OpKind::Read) > 249.0);
    }
}
