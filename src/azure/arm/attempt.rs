//! One HTTP attempt: pace, authenticate, stamp the client request id, send, read the answer,
//! and feed what the answer says about rate limits back to the pacer.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, Url};
use serde_json::Value;
use tracing::debug;

use super::config::bump;
use super::envelope::status_error;
use super::error::ArmError;
use super::retry::parse_retry_after;
use super::url::subscription_of;
use super::{ArmClient, CLIENT_REQUEST_ID_PREFIX};
use crate::azure::pacer::OpKind;

/// What one HTTP attempt brought back (only the headers we act on).
pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
    pub(super) async_op: Option<String>,
    pub(super) location: Option<String>,
    pub(super) body: Vec<u8>,
}

impl Resp {
    pub(super) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `x-ms-client-request-id` of a write: our prefix and a fresh uuid, so that the Event Grid
/// events our own writes raise can be told apart (ARM echoes the id in them).
pub(super) fn client_request_id() -> String {
    format!("{CLIENT_REQUEST_ID_PREFIX}{}", uuid::Uuid::new_v4())
}

impl ArmClient {
    /// One HTTP attempt: pace, authenticate, send, read the answer, feed the pacer.
    pub(super) async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        kind: OpKind,
        attempt: u32,
    ) -> Result<Resp, ArmError> {
        let inner = &self.inner;
        let subscription = subscription_of(url.path());
        inner.pacer.acquire(&subscription, kind).await;
        let token = inner.credential.token().await?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| ArmError::config("the access token is not a valid header value"))?;
        auth.set_sensitive(true);
        let mut req = inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, auth);
        if kind != OpKind::Read {
            req = req.header("x-ms-client-request-id", client_request_id());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        bump(&inner.metrics.requests);
        bump(match kind {
            OpKind::Read => &inner.metrics.reads,
            OpKind::Write => &inner.metrics.writes,
            OpKind::Delete => &inner.metrics.deletes,
        });
        let path = url.path();
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                ArmError::Timeout {
                    method: method.to_string(),
                    path: path.to_string(),
                }
            } else {
                ArmError::Transport {
                    method: method.to_string(),
                    path: path.to_string(),
                    source: e,
                }
            }
        };
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                debug!(method = %method, path, attempt, error = %e, "ARM request failed");
                return Err(transport(e));
            }
        };
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.bytes().await.map_err(transport)?.to_vec();
        debug!(method = %method, path, status, attempt, "ARM request");
        self.observe_rate_limits(&subscription, &headers);
        let resp = Resp {
            status,
            retry_after: header(&headers, "retry-after").and_then(parse_retry_after),
            async_op: header(&headers, "azure-asyncoperation"),
            location: header(&headers, "location"),
            body,
        };
        if status == 429 {
            bump(&inner.metrics.throttled_429);
            // A lock's 429 (another operation runs on the VNet or the site) says when that
            // resource is free, not when the subscription's bucket refills: only throttling
            // pauses the pacer (arm-vnet reference §8, §13).
            let lock = status_error(method, url, &resp).is_contention();
            if let Some(ra) = resp.retry_after.filter(|_| !lock) {
                inner
                    .pacer
                    .throttled(&subscription, kind, ra.min(inner.config.retry_after_cap));
            }
        }
        Ok(resp)
    }

    fn observe_rate_limits(&self, subscription: &str, headers: &HeaderMap) {
        for (name, kind) in [
            ("x-ms-ratelimit-remaining-subscription-reads", OpKind::Read),
            (
                "x-ms-ratelimit-remaining-subscription-writes",
                OpKind::Write,
            ),
            (
                "x-ms-ratelimit-remaining-subscription-deletes",
                OpKind::Delete,
            ),
        ] {
            if let Some(n) = header(headers, name).and_then(|v| v.trim().parse::<f64>().ok()) {
                self.inner.pacer.observe_remaining(subscription, kind, n);
            }
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_carry_the_prefix_and_a_fresh_uuid() {
        let (a, b) = (client_request_id(), client_request_id());
        assert_ne!(a, b);
        let uuid = a.strip_prefix(CLIENT_REQUEST_ID_PREFIX).unwrap();
        assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 4);
        // A header value as it is.
        assert!(HeaderValue::from_str(&a).is_ok());
    }
}
