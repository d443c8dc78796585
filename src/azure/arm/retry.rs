//! Retries: the loop around single attempts, backoff with jitter or the server's
//! `Retry-After`, and the re-read that settles a write whose answer was lost.

use std::time::Duration;

use rand::Rng;
use reqwest::{Method, Url};
use serde_json::Value;
use tracing::debug;

use super::attempt::Resp;
use super::config::bump;
use super::envelope::status_error;
use super::error::{is_ambiguous, rereadable, ArmError};
use super::ArmClient;
use crate::azure::pacer::OpKind;

/// The retry loop either ends with an answer or hands an ambiguous write back for a re-read.
enum Sent {
    Answer(Resp),
    Ambiguous,
}

/// A write's result: a response to finish (LRO), or the re-read showing it already happened.
pub(super) enum Written {
    Answer(Resp),
    AlreadyDone(Value),
}

impl ArmClient {
    /// A read with retries; any non-transient answer (404 included) is returned.
    pub(super) async fn read(&self, url: &Url) -> Result<Resp, ArmError> {
        let mut used = 0;
        match self
            .send(&Method::GET, url, None, OpKind::Read, &mut used, false)
            .await?
        {
            Sent::Answer(resp) => Ok(resp),
            // Reads are never ambiguous; kept total rather than panicking.
            Sent::Ambiguous => Err(ArmError::Timeout {
                method: "GET".into(),
                path: url.path().to_string(),
            }),
        }
    }

    /// A write with retries. After a 504, timeout or transport error on PUT/PATCH/DELETE the
    /// resource is re-read: the write may have happened although its answer was lost. From
    /// then on a contention answer is read the same way: the lock refusing the re-send may be
    /// held by the first write itself, still being applied (ARM's 504 and then App Service's
    /// lock 429, recording test_functionapp_create_with_vnet_by_subnet_rid #19–21).
    pub(super) async fn write(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Written, ArmError> {
        let kind = if method == Method::DELETE {
            OpKind::Delete
        } else {
            OpKind::Write
        };
        let mut used = 0;
        let mut unsettled = false;
        loop {
            match self
                .send(method, url, body, kind, &mut used, unsettled)
                .await
            {
                Ok(Sent::Answer(resp)) => return Ok(Written::Answer(resp)),
                Ok(Sent::Ambiguous) => {
                    unsettled = true;
                    if let Some(done) = self.already_applied(method, url, body).await? {
                        debug!(method = %method, path = url.path(), "write found applied on re-read");
                        return Ok(Written::AlreadyDone(done));
                    }
                }
                // Out of retries on an ambiguous failure: one last look before reporting it.
                Err(e)
                    if rereadable(method)
                        && (is_ambiguous(&e) || (unsettled && e.is_contention())) =>
                {
                    return match self.already_applied(method, url, body).await? {
                        Some(done) => Ok(Written::AlreadyDone(done)),
                        None => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Exponential backoff with jitter in [half, full] of `base × 2^(retry-1)`, capped at 32×.
    fn backoff(&self, retry: u32) -> Duration {
        let base = self.inner.config.backoff_base;
        let full = base * 2u32.saturating_pow(retry.saturating_sub(1).min(5));
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// The retry loop around single attempts. Transient answers (contention included) are
    /// retried with backoff (or the server's `Retry-After`); an ambiguous write failure, or a
    /// contention answer to an `unsettled` write, is handed back to `write` for a re-read
    /// after the backoff.
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        kind: OpKind,
        used: &mut u32,
        unsettled: bool,
    ) -> Result<Sent, ArmError> {
        loop {
            let (err, retry_after) = match self.attempt(method, url, body, kind, *used).await {
                Ok(resp) if resp.ok() => return Ok(Sent::Answer(resp)),
                Ok(resp) => {
                    let err = status_error(method, url, &resp);
                    if !err.is_transient() {
                        return Ok(Sent::Answer(resp));
                    }
                    (err, resp.retry_after)
                }
                Err(e @ (ArmError::Timeout { .. } | ArmError::Transport { .. })) => (e, None),
                Err(e) => return Err(e),
            };
            let ambiguous =
                rereadable(method) && (is_ambiguous(&err) || (unsettled && err.is_contention()));
            if *used >= self.inner.config.max_retries {
                return Err(err);
            }
            *used += 1;
            bump(&self.inner.metrics.retries);
            let wait = retry_after
                .map(|d| d.min(self.inner.config.retry_after_cap))
                .unwrap_or_else(|| self.backoff(*used));
            debug!(method = %method, path = url.path(), retry = *used, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            crate::timer::sleep(wait).await;
            if ambiguous {
                return Ok(Sent::Ambiguous);
            }
        }
    }
}

/// `Retry-After` in seconds (ARM sends seconds; HTTP dates are ignored → own backoff).
pub(super) fn parse_retry_after(v: String) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_only() {
        assert_eq!(parse_retry_after("2".into()), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 0.5 ".into()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            None
        );
        assert_eq!(parse_retry_after("-1".into()), None);
    }
}
