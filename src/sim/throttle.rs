//! ARM's per-subscription token buckets (reads 250/25 s⁻¹, writes and deletes 200/10 s⁻¹).

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OpClass {
    Read,
    Write,
    Delete,
}

impl OpClass {
    pub(crate) fn of(method: &str) -> Self {
        match method {
            "GET" | "HEAD" | "OPTIONS" => Self::Read,
            "DELETE" => Self::Delete,
            _ => Self::Write,
        }
    }

    fn limits(self) -> (f64, f64) {
        match self {
            Self::Read => (250.0, 25.0),
            Self::Write | Self::Delete => (200.0, 10.0),
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    refill: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.refill).min(self.capacity);
        self.at = now;
    }
}

/// All buckets of the simulator. `speed` compresses time: it scales the refill rates (per
/// second), not the bucket sizes (token counts).
#[derive(Debug)]
pub(crate) struct Throttle {
    enabled: bool,
    speed: f64,
    buckets: HashMap<(String, OpClass), Bucket>,
}

/// What the buckets say about one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// `None` = admitted; `Some(seconds)` = throttled, retry after that many whole simulated
    /// seconds (ARM sends whole seconds; the reply divides them by the speed).
    pub(crate) retry_after: Option<u64>,
    /// The request's class and the tokens left in its bucket: ARM reports only the request's
    /// own class (a GET carries `x-ms-ratelimit-remaining-subscription-reads` alone, a DELETE
    /// `…-deletes` alone): recorded writes carry only `…-writes` and deletes only `…-deletes`
    /// (recording test_webapp_vnetE2E; the recorder strips the reads header, reference §13).
    pub(crate) remaining: (OpClass, u64),
}

impl Throttle {
    pub(crate) fn new(enabled: bool, speed: f64) -> Self {
        Self {
            enabled,
            speed,
            buckets: HashMap::new(),
        }
    }

    fn bucket(&mut self, sub: &str, class: OpClass, now: Instant) -> &mut Bucket {
        let speed = self.speed;
        let b = self
            .buckets
            .entry((sub.to_ascii_lowercase(), class))
            .or_insert_with(|| {
                let (cap, refill) = class.limits();
                Bucket {
                    tokens: cap,
                    capacity: cap,
                    refill: refill * speed,
                    at: now,
                }
            });
        b.refill(now);
        b
    }

    /// Takes one token of `class` from the subscription's bucket (always admits when
    /// throttling is off, but still reports the remaining counts).
    pub(crate) fn admit(&mut self, sub: &str, class: OpClass, now: Instant) -> Verdict {
        let (enabled, speed) = (self.enabled, self.speed);
        let b = self.bucket(sub, class, now);
        let retry_after = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else if enabled {
            // The refill rate is per real second (scaled by the speed); the wait ARM states is
            // in its own, simulated, seconds.
            Some((((1.0 - b.tokens) * speed / b.refill).ceil() as u64).max(1))
        } else {
            None
        };
        let remaining = (class, b.tokens.floor().max(0.0) as u64);
        Verdict {
            retry_after,
            remaining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empties_then_refills() {
        let mut t = Throttle::new(true, 1.0);
        let now = Instant::now();
        for _ in 0..200 {
            assert_eq!(t.admit("s", OpClass::Write, now).retry_after, None);
        }
        let v = t.admit("s", OpClass::Write, now);
        assert_eq!(v.retry_after, Some(1));
        assert_eq!(v.remaining, (OpClass::Write, 0));
        assert_eq!(
            t.admit("s", OpClass::Read, now).remaining,
            (OpClass::Read, 249)
        );
        // other subscriptions have their own buckets
        assert_eq!(t.admit("other", OpClass::Write, now).retry_after, None);
        let later = now + Duration::from_millis(500);
        assert_eq!(t.admit("s", OpClass::Write, later).retry_after, None);
    }

    #[test]
    fn disabled_never_throttles_and_speed_scales() {
        let mut t = Throttle::new(false, 1.0);
        let now = Instant::now();
        for _ in 0..300 {
            assert_eq!(t.admit("s", OpClass::Delete, now).retry_after, None);
        }
        let mut fast = Throttle::new(true, 2.0);
        let v = fast.admit("s", OpClass::Read, now);
        assert_eq!(v.remaining, (OpClass::Read, 249));
    }
}
