//! Long-running operations: a write's first answer followed to its end (`Azure-AsyncOperation`,
//! then `Location`, then the resource's provisioning state), and the re-read that decides
//! whether an ambiguous write already took effect.

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;
use tokio::time::Instant;

use super::attempt::Resp;
use super::config::bump;
use super::envelope::{error_envelope, lro_failed, parse_body, status_error};
use super::error::ArmError;
use super::ArmClient;

/// What the caller of a write wants once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// The resource (PUT, PATCH): read again when no answer carried it.
    Resource,
    /// The resource if an answer carried it, else nothing (`Value::Null`): not read again
    /// when the write ended through its operation status.
    Carried,
    /// The operation's result (DELETE, actions).
    Result,
}

impl ArmClient {
    /// Finishes a write's successful first answer: follows its LRO, returns the final body.
    pub(super) async fn complete(
        &self,
        method: &Method,
        url: &Url,
        resp: Resp,
        want: Want,
    ) -> Result<Value, ArmError> {
        if !resp.ok() {
            return Err(status_error(method, url, &resp));
        }
        let wants_resource = want == Want::Resource;
        if let Some(op) = resp.async_op.as_deref() {
            let status = self.poll_async_operation(url, op, resp.retry_after).await?;
            return if wants_resource {
                self.final_resource(url).await
            } else if want == Want::Carried {
                Ok(Value::Null)
            } else if let Some(loc) = resp.location.as_deref() {
                self.poll_location(method, url, loc, None).await
            } else {
                Ok(status)
            };
        }
        if resp.status == 202 {
            let done = match resp.location.as_deref() {
                Some(loc) => {
                    self.poll_location(method, url, loc, resp.retry_after)
                        .await?
                }
                None => Value::Null,
            };
            return if done.is_null() && wants_resource {
                self.final_resource(url).await
            } else {
                Ok(done)
            };
        }
        let body = parse_body(url, &resp.body)?;
        if body.is_null() && wants_resource {
            return self.final_resource(url).await;
        }
        Ok(body)
    }

    /// After an ambiguous write: the resource as it now is if the write took effect (waiting
    /// for it to finish provisioning), `None` if it did not.
    pub(super) async fn already_applied(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ArmError> {
        let resp = self.read(url).await?;
        if *method == Method::DELETE {
            return Ok((resp.status == 404).then_some(Value::Null));
        }
        if !resp.ok() {
            return Ok(None);
        }
        let current = parse_body(url, &resp.body)?;
        if !body.is_some_and(|sent| contains(&current, sent)) {
            return Ok(None);
        }
        match provisioning_state(&current).as_deref() {
            None | Some("succeeded") => Ok(Some(current)),
            Some("failed") | Some("canceled") => Err(lro_failed(url, &current)),
            // Applied but still provisioning: wait on the resource itself.
            Some(_) => self.await_provisioning(url).await.map(Some),
        }
    }

    async fn await_provisioning(&self, url: &Url) -> Result<Value, ArmError> {
        let deadline = Instant::now() + self.inner.config.lro_timeout;
        let mut wait = self.inner.config.lro_poll_default;
        loop {
            self.sleep_until_poll(url, deadline, wait).await?;
            bump(&self.inner.metrics.lro_polls);
            let resp = self.read(url).await?;
            if !resp.ok() {
                return Err(status_error(&Method::GET, url, &resp));
            }
            let current = parse_body(url, &resp.body)?;
            match provisioning_state(&current).as_deref() {
                None | Some("succeeded") => return Ok(current),
                Some("failed") | Some("canceled") => return Err(lro_failed(url, &current)),
                Some(_) => wait = self.poll_interval(resp.retry_after),
            }
        }
    }

    async fn final_resource(&self, url: &Url) -> Result<Value, ArmError> {
        let resp = self.read(url).await?;
        if !resp.ok() {
            return Err(status_error(&Method::GET, url, &resp));
        }
        parse_body(url, &resp.body)
    }

    /// Polls `Azure-AsyncOperation` until Succeeded (→ its body), Failed or Canceled.
    async fn poll_async_operation(
        &self,
        url: &Url,
        op: &str,
        first_wait: Option<Duration>,
    ) -> Result<Value, ArmError> {
        let op_url = self.follow(op)?;
        let deadline = Instant::now() + self.inner.config.lro_timeout;
        let mut wait = self.poll_interval(first_wait);
        loop {
            self.sleep_until_poll(url, deadline, wait).await?;
            bump(&self.inner.metrics.lro_polls);
            let resp = self.read(&op_url).await?;
            if resp.status == 404 {
                // ARM documents no retention for a finished operation's status (arm-vnet
                // reference §8), so one polled late may be gone: whether the write took
                // effect is unknown, not refused. As a failed operation, the step is sent
                // again (counted) and observes what ARM shows.
                let (code, message) = error_envelope(&resp.body, resp.status);
                return Err(ArmError::LroFailed {
                    path: url.path().to_string(),
                    code,
                    message: format!("its status is no longer known ({message})"),
                });
            }
            if !resp.ok() {
                return Err(status_error(&Method::GET, &op_url, &resp));
            }
            let status = parse_body(&op_url, &resp.body)?;
            match status
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("succeeded") => return Ok(status),
                Some("failed") | Some("canceled") | Some("cancelled") => {
                    return Err(lro_failed(url, &status))
                }
                _ => wait = self.poll_interval(resp.retry_after),
            }
        }
    }

    /// Polls `Location`: 202 while running, another 2xx when done (its body, if any, is the
    /// result). For a DELETE a 404 also means done.
    async fn poll_location(
        &self,
        method: &Method,
        url: &Url,
        loc: &str,
        first_wait: Option<Duration>,
    ) -> Result<Value, ArmError> {
        let loc_url = self.follow(loc)?;
        let deadline = Instant::now() + self.inner.config.lro_timeout;
        let mut wait = self.poll_interval(first_wait);
        loop {
            self.sleep_until_poll(url, deadline, wait).await?;
            bump(&self.inner.metrics.lro_polls);
            let resp = self.read(&loc_url).await?;
            match resp.status {
                202 => wait = self.poll_interval(resp.retry_after),
                404 if *method == Method::DELETE => return Ok(Value::Null),
                s if (200..300).contains(&s) => return parse_body(&loc_url, &resp.body),
                _ => {
                    let (code, message) = error_envelope(&resp.body, resp.status);
                    return Err(ArmError::LroFailed {
                        path: url.path().to_string(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    async fn sleep_until_poll(
        &self,
        url: &Url,
        deadline: Instant,
        wait: Duration,
    ) -> Result<(), ArmError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(ArmError::LroTimeout {
                path: url.path().to_string(),
            });
        }
        crate::timer::sleep(wait.min(deadline - now)).await;
        Ok(())
    }

    fn poll_interval(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .map(|d| d.min(self.inner.config.retry_after_cap))
            .unwrap_or(self.inner.config.lro_poll_default)
    }
}

/// `properties.provisioningState`, lower-cased.
pub(super) fn provisioning_state(v: &Value) -> Option<String> {
    v.get("properties")
        .and_then(|p| p.get("provisioningState"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

/// True when every field of `sent` is present with the same value in `current` (recursively;
/// strings case-insensitively, since ARM normalises the casing of ids and enums). Fields ARM
/// changes on every write (`etag`, `provisioningState`) are not compared.
fn contains(current: &Value, sent: &Value) -> bool {
    match (current, sent) {
        (Value::Object(c), Value::Object(s)) => s.iter().all(|(k, sv)| {
            if k == "etag" || k == "provisioningState" {
                return true;
            }
            match c.get(k) {
                Some(cv) => contains(cv, sv),
                None => sv.is_null(),
            }
        }),
        (Value::Array(c), Value::Array(s)) => {
            c.len() == s.len() && c.iter().zip(s).all(|(cv, sv)| contains(cv, sv))
        }
        (Value::String(c), Value::String(s)) => c.eq_ignore_ascii_case(s),
        (Value::Number(c), Value::Number(s)) => c.as_f64() == s.as_f64(),
        (c, s) => c == s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_for_reread() {
        let current = json!({"id": "/x", "etag": "new", "properties": {"virtualNetworkSubnetId": "/SUBSCRIPTIONS/S/a", "other": 1, "list": [{"a": 1, "b": 2}]}});
        assert!(contains(
            &current,
            &json!({"etag": "old", "properties": {"virtualNetworkSubnetId": "/subscriptions/s/a"}})
        ));
        assert!(contains(
            &current,
            &json!({"properties": {"list": [{"a": 1}], "absent": null}})
        ));
        assert!(!contains(&current, &json!({"properties": {"other": 2}})));
        assert!(!contains(&current, &json!({"properties": {"list": []}})));
        assert!(!contains(
            &current,
            &json!({"properties": {"missing": true}})
        ));
    }

    #[test]
    fn provisioning_state_is_lower_cased() {
        assert_eq!(
            provisioning_state(&json!({"properties": {"provisioningState": "Succeeded"}}))
                .as_deref(),
            Some("succeeded")
        );
        assert_eq!(provisioning_state(&json!({"properties": {}})), None);
    }
}
