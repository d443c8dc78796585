//! The ARM client: api-versions, paging, long-running operations, retries with backoff that
//! honour `Retry-After`, re-read after ambiguous writes, the per-subscription pacer, and the
//! scope guard every write passes before it is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::debug;

use super::credential::{CredentialError, TokenSource};
use super::pacer::{OpKind, Pacer};
use super::resource_id::ResourceId;

pub use super::pacer::PacerConfig;

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
    /// go down. Retry-After arrives in whole seconds (at least 1) even from a sped-up
    /// simulator, so its waits are capped before they are compressed.
    pub fn time_compressed(mut self, speed: f64) -> Self {
        self.pacer = self.pacer.scaled(speed);
        self.backoff_base = self.backoff_base.div_f64(speed);
        self.lro_poll_default = self.lro_poll_default.div_f64(speed);
        self.retry_after_cap = self
            .retry_after_cap
            .min(Duration::from_secs(2))
            .div_f64(speed);
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
    pub deletes: u64,
    pub throttled_429: u64,
    pub retries: u64,
    pub lro_polls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Removed,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("{method} {path} failed with HTTP {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        method: String,
        path: String,
    },
    #[error("{method} {path}: transport error: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: timed out")]
    Timeout { method: String, path: String },
    #[error("long-running operation on {path} failed: {code}: {message}")]
    LroFailed {
        path: String,
        code: String,
        message: String,
    },
    #[error("gave up waiting for the long-running operation on {path}")]
    LroTimeout { path: String },
    #[error("{method} {path} refused: outside the configured write scope")]
    OutOfScope { method: String, path: String },
    #[error("cannot decode the response of {path}: {message}")]
    Decode { path: String, message: String },
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    #[error("ARM client configuration: {0}")]
    Config(String),
}

impl ArmError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } | Self::LroFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 408, 429, 5xx (but 501), timeouts (also of an LRO, which may still finish) and
    /// transport errors.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_transient_status(*status),
            Self::Timeout { .. } | Self::Transport { .. } | Self::LroTimeout { .. } => true,
            _ => false,
        }
    }
}

/// Writes whose effect can be checked by reading the resource back (not actions).
fn rereadable(method: &Method) -> bool {
    *method == Method::PUT || *method == Method::PATCH || *method == Method::DELETE
}

/// A write failure that does not tell whether the write happened.
fn is_ambiguous(e: &ArmError) -> bool {
    matches!(
        e,
        ArmError::Timeout { .. }
            | ArmError::Transport { .. }
            | ArmError::Status { status: 504, .. }
    )
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..600).contains(&status) && status != 501)
}

#[derive(Clone)]
pub struct ArmClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArmConfig,
    endpoint: String,
    base: Url,
    http: reqwest::Client,
    credential: Arc<dyn TokenSource>,
    pacer: Pacer,
    metrics: Counters,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    throttled_429: AtomicU64,
    retries: AtomicU64,
    lro_polls: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What one HTTP attempt brought back (only the headers we act on).
struct Resp {
    status: u16,
    retry_after: Option<Duration>,
    async_op: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
}

impl Resp {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The retry loop either ends with an answer or hands an ambiguous write back for a re-read.
enum Sent {
    Answer(Resp),
    Ambiguous,
}

/// A write's result: a response to finish (LRO), or the re-read showing it already happened.
enum Written {
    Answer(Resp),
    AlreadyDone(Value),
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.inner.endpoint)
            .field("write_scope", &self.inner.config.write_scope)
            .finish_non_exhaustive()
    }
}

impl ArmClient {
    pub fn new(config: ArmConfig, credential: Arc<dyn TokenSource>) -> Result<Self, ArmError> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        let base = Url::parse(&endpoint)
            .map_err(|e| ArmError::Config(format!("invalid ARM endpoint {endpoint:?}: {e}")))?;
        match base.scheme() {
            "https" => {}
            // Bearer tokens in clear text only ever go to this machine.
            "http" if super::credential::is_loopback_endpoint(&endpoint) => {}
            _ => {
                return Err(ArmError::Config(format!(
                    "ARM endpoint {endpoint:?} must be https (http only on loopback)"
                )))
            }
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ArmError::Config(format!("cannot build the HTTP client: {e}")))?;
        let pacer = Pacer::new(config.pacer);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                base,
                http,
                credential,
                pacer,
                metrics: Counters::default(),
            }),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The per-subscription pacer (for inspection and reporting).
    pub fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    pub fn metrics(&self) -> ArmMetrics {
        let m = &self.inner.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ArmMetrics {
            requests: get(&m.requests),
            reads: get(&m.reads),
            writes: get(&m.writes),
            deletes: get(&m.deletes),
            throttled_429: get(&m.throttled_429),
            retries: get(&m.retries),
            lro_polls: get(&m.lro_polls),
        }
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, ArmError> {
        let url = self.url(path)?;
        let resp = self.read(&url).await?;
        if !resp.ok() {
            return Err(status_error(&Method::GET, &url, &resp));
        }
        parse_body(&url, &resp.body)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ArmError> {
        let v = self.get_json(path).await?;
        decode(path, v)
    }

    /// 404 → `None`.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ArmError> {
        match self.get_json(path).await {
            Ok(v) => decode(path, v).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A bare JSON array, or `{value, nextLink}` pages followed to the end.
    pub async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ArmError> {
        let mut url = self.url(path)?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let resp = self.read(&url).await?;
            if !resp.ok() {
                return Err(status_error(&Method::GET, &url, &resp));
            }
            let next = match parse_body(&url, &resp.body)? {
                Value::Array(items) => {
                    push_items(path, items, &mut out)?;
                    None
                }
                Value::Object(mut page) => {
                    if let Some(Value::Array(items)) = page.remove("value") {
                        push_items(path, items, &mut out)?;
                    }
                    page.get("nextLink")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                }
                Value::Null => None,
                other => {
                    return Err(ArmError::Decode {
                        path: path.to_string(),
                        message: format!("expected a list, got {}", json_kind(&other)),
                    })
                }
            };
            let Some(next) = next else { return Ok(out) };
            url = self.follow(&next)?;
            if !seen.insert(url.to_string()) {
                return Err(ArmError::Decode {
                    path: path.to_string(),
                    message: "nextLink repeats a page already read".into(),
                });
            }
        }
    }

    /// Waits for the LRO and returns the final resource.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ArmError> {
        let v = self.upsert(Method::PUT, path, body).await?;
        decode(path, v)
    }

    /// Waits for the LRO and returns the final resource.
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ArmError> {
        let v = self.upsert(Method::PATCH, path, body).await?;
        decode(path, v)
    }

    /// Idempotent: a 404 (at once, or on the re-read after an ambiguous failure) is success.
    pub async fn delete(&self, path: &str) -> Result<Deleted, ArmError> {
        let url = self.url(path)?;
        self.guard(&Method::DELETE, &url)?;
        match self.write(&Method::DELETE, &url, None).await? {
            Written::AlreadyDone(_) => Ok(Deleted::NotFound),
            Written::Answer(resp) if resp.status == 404 => Ok(Deleted::NotFound),
            Written::Answer(resp) => {
                self.complete(&Method::DELETE, &url, resp).await?;
                Ok(Deleted::Removed)
            }
        }
    }

    /// An action (`…/list`, `…/purge…`): counted as a write and scope-guarded.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ArmError> {
        let url = self.url(path)?;
        self.guard(&Method::POST, &url)?;
        match self.write(&Method::POST, &url, Some(body)).await? {
            Written::AlreadyDone(v) => Ok(v),
            Written::Answer(resp) => self.complete(&Method::POST, &url, resp).await,
        }
    }

    async fn upsert(&self, method: Method, path: &str, body: &Value) -> Result<Value, ArmError> {
        let url = self.url(path)?;
        self.guard(&method, &url)?;
        match self.write(&method, &url, Some(body)).await? {
            Written::AlreadyDone(v) => Ok(v),
            Written::Answer(resp) => self.complete(&method, &url, resp).await,
        }
    }

    /// Builds the request URL: endpoint + path, `api-version` added from the provider.
    fn url(&self, path: &str) -> Result<Url, ArmError> {
        let mut url = if path.starts_with("http://") || path.starts_with("https://") {
            self.follow(path)?
        } else if path.starts_with('/') {
            Url::parse(&format!("{}{}", self.inner.endpoint, path))
                .map_err(|e| ArmError::Config(format!("invalid ARM path {path:?}: {e}")))?
        } else {
            return Err(ArmError::Config(format!(
                "ARM path {path:?} must start with '/'"
            )));
        };
        if !has_api_version(&url) {
            let version = api_version_for(url.path())?;
            url.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(url)
    }

    /// An absolute URL from the server (nextLink, LRO header). It must point at our endpoint:
    /// the bearer token is never sent anywhere else.
    fn follow(&self, link: &str) -> Result<Url, ArmError> {
        let mut url = match Url::parse(link) {
            Ok(u) => u,
            Err(_) if link.starts_with('/') => self
                .inner
                .base
                .join(link)
                .map_err(|e| ArmError::Config(format!("invalid link {link:?}: {e}")))?,
            Err(e) => return Err(ArmError::Config(format!("invalid link {link:?}: {e}"))),
        };
        let base = &self.inner.base;
        let same_origin = url.scheme() == base.scheme()
            && url.port_or_known_default() == base.port_or_known_default()
            && url
                .host_str()
                .zip(base.host_str())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
        if !same_origin {
            return Err(ArmError::Config(format!(
                "refusing to follow {} outside the ARM endpoint {}",
                url.origin().ascii_serialization(),
                self.inner.endpoint
            )));
        }
        // Links normally carry their api-version; add ours when one is missing and known.
        if !has_api_version(&url) {
            if let Ok(version) = api_version_for(url.path()) {
                url.query_pairs_mut().append_pair("api-version", version);
            }
        }
        Ok(url)
    }

    /// The scope guard: a write's target (or, for an action, the resource it acts on) must lie
    /// at or below a configured scope.
    fn guard(&self, method: &Method, url: &Url) -> Result<(), ArmError> {
        let path = url.path();
        let target = ResourceId::parse(path).ok().or_else(|| {
            path.trim_end_matches('/')
                .rsplit_once('/')
                .and_then(|(resource, _action)| ResourceId::parse(resource).ok())
        });
        let allowed = target.is_some_and(|id| {
            self.inner
                .config
                .write_scope
                .iter()
                .any(|scope| id.is_within(scope))
        });
        if allowed {
            Ok(())
        } else {
            Err(ArmError::OutOfScope {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
    }

    /// A read with retries; any non-transient answer (404 included) is returned.
    async fn read(&self, url: &Url) -> Result<Resp, ArmError> {
        let mut used = 0;
        match self
            .send(&Method::GET, url, None, OpKind::Read, &mut used)
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
    /// resource is re-read: the write may have happened although its answer was lost.
    async fn write(
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
        loop {
            match self.send(method, url, body, kind, &mut used).await {
                Ok(Sent::Answer(resp)) => return Ok(Written::Answer(resp)),
                Ok(Sent::Ambiguous) => {
                    if let Some(done) = self.already_applied(method, url, body).await? {
                        debug!(method = %method, path = url.path(), "write found applied on re-read");
                        return Ok(Written::AlreadyDone(done));
                    }
                }
                // Out of retries on an ambiguous failure: one last look before reporting it.
                Err(e) if rereadable(method) && is_ambiguous(&e) => {
                    return match self.already_applied(method, url, body).await? {
                        Some(done) => Ok(Written::AlreadyDone(done)),
                        None => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn already_applied(
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

    /// Finishes a write's successful first answer: follows its LRO, returns the final body.
    async fn complete(&self, method: &Method, url: &Url, resp: Resp) -> Result<Value, ArmError> {
        if !resp.ok() {
            return Err(status_error(method, url, &resp));
        }
        let wants_resource = *method == Method::PUT || *method == Method::PATCH;
        if let Some(op) = resp.async_op.as_deref() {
            let status = self.poll_async_operation(url, op, resp.retry_after).await?;
            return if wants_resource {
                self.final_resource(url).await
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
        tokio::time::sleep(wait.min(deadline - now)).await;
        Ok(())
    }

    fn poll_interval(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .map(|d| d.min(self.inner.config.retry_after_cap))
            .unwrap_or(self.inner.config.lro_poll_default)
    }

    /// Exponential backoff with jitter in [half, full] of `base × 2^(retry-1)`, capped at 32×.
    fn backoff(&self, retry: u32) -> Duration {
        let base = self.inner.config.backoff_base;
        let full = base * 2u32.saturating_pow(retry.saturating_sub(1).min(5));
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// The retry loop around single attempts. Transient answers are retried with backoff
    /// (or the server's `Retry-After`); an ambiguous write failure is handed back to `write`
    /// for a re-read after the backoff.
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        kind: OpKind,
        used: &mut u32,
    ) -> Result<Sent, ArmError> {
        loop {
            let (err, retry_after) = match self.attempt(method, url, body, kind, *used).await {
                Ok(resp) if !is_transient_status(resp.status) => return Ok(Sent::Answer(resp)),
                Ok(resp) => (status_error(method, url, &resp), resp.retry_after),
                Err(e @ (ArmError::Timeout { .. } | ArmError::Transport { .. })) => (e, None),
                Err(e) => return Err(e),
            };
            let ambiguous = rereadable(method) && is_ambiguous(&err);
            if *used >= self.inner.config.max_retries {
                return Err(err);
            }
            *used += 1;
            bump(&self.inner.metrics.retries);
            let wait = retry_after
                .map(|d| d.min(self.inner.config.retry_after_cap))
                .unwrap_or_else(|| self.backoff(*used));
            debug!(method = %method, path = url.path(), retry = *used, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            if ambiguous {
                return Ok(Sent::Ambiguous);
            }
        }
    }

    /// One HTTP attempt: pace, authenticate, send, read the answer, feed the pacer.
    async fn attempt(
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
            .map_err(|_| ArmError::Config("the access token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let mut req = inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, auth);
        if kind != OpKind::Read {
            req = req.header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string());
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
                    message: error_chain(&e),
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
        let retry_after = header(&headers, "retry-after").and_then(parse_retry_after);
        if status == 429 {
            bump(&inner.metrics.throttled_429);
            if let Some(ra) = retry_after {
                inner
                    .pacer
                    .throttled(&subscription, kind, ra.min(inner.config.retry_after_cap));
            }
        }
        Ok(Resp {
            status,
            retry_after,
            async_op: header(&headers, "azure-asyncoperation"),
            location: header(&headers, "location"),
            body,
        })
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

/// `Retry-After` in seconds (ARM sends seconds; HTTP dates are ignored → own backoff).
fn parse_retry_after(v: String) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The subscription a path belongs to (`""` for tenant-level paths): the pacer's key.
fn subscription_of(path: &str) -> String {
    let mut parts = path.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("subscriptions") {
            return parts.next().unwrap_or("").to_ascii_lowercase();
        }
    }
    String::new()
}

fn has_api_version(url: &Url) -> bool {
    url.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("api-version"))
}

/// api-version by the provider namespace of the path (the last `providers/{ns}`).
fn api_version_for(path: &str) -> Result<&'static str, ArmError> {
    let segments: Vec<&str> = path.split('/').collect();
    let ns = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("providers"))
        .and_then(|i| segments.get(i + 1));
    let Some(ns) = ns else {
        return Ok("2021-04-01");
    };
    match ns.to_ascii_lowercase().as_str() {
        "microsoft.web" => Ok("2024-11-01"),
        "microsoft.network" => Ok("2024-07-01"),
        "microsoft.insights" => Ok("2022-10-01"),
        "microsoft.classicnetwork" => Ok("2016-11-01"),
        _ => Err(ArmError::Config(format!(
            "no api-version known for provider {ns}; put api-version in the path"
        ))),
    }
}

fn parse_body(url: &Url, body: &[u8]) -> Result<Value, ArmError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| ArmError::Decode {
        path: url.path().to_string(),
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(path: &str, v: Value) -> Result<T, ArmError> {
    serde_json::from_value(v).map_err(|e| ArmError::Decode {
        path: strip_query(path).to_string(),
        message: e.to_string(),
    })
}

fn push_items<T: DeserializeOwned>(
    path: &str,
    items: Vec<Value>,
    out: &mut Vec<T>,
) -> Result<(), ArmError> {
    for item in items {
        out.push(decode(path, item)?);
    }
    Ok(())
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{"error":{"code","message"}}`, PascalCase `{"Code","Message"}`, or plain text.
fn error_envelope(body: &[u8], status: u16) -> (String, String) {
    let fallback_code = || format!("HTTP{status}");
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return (fallback_code(), text.chars().take(500).collect());
    };
    let err = v
        .get("error")
        .or_else(|| v.get("Error"))
        .filter(|e| e.is_object())
        .unwrap_or(&v);
    let field = |lower: &str, upper: &str| {
        err.get(lower)
            .or_else(|| err.get(upper))
            .and_then(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    };
    (
        field("code", "Code").unwrap_or_else(fallback_code),
        field("message", "Message").unwrap_or_default(),
    )
}

fn status_error(method: &Method, url: &Url, resp: &Resp) -> ArmError {
    let (code, message) = error_envelope(&resp.body, resp.status);
    ArmError::Status {
        status: resp.status,
        code,
        message,
        method: method.to_string(),
        path: url.path().to_string(),
    }
}

/// LroFailed from an operation status body or a resource in a failed provisioning state.
fn lro_failed(url: &Url, v: &Value) -> ArmError {
    let err = v
        .get("error")
        .or_else(|| v.get("properties").and_then(|p| p.get("error")));
    let text = |e: Option<&Value>, k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let fallback = v
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| provisioning_state(v))
        .unwrap_or_else(|| "Failed".into());
    ArmError::LroFailed {
        path: url.path().to_string(),
        code: text(err, "code").unwrap_or(fallback),
        message: text(err, "message").unwrap_or_default(),
    }
}

fn provisioning_state(v: &Value) -> Option<String> {
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
    fn api_versions_by_provider() {
        let web = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a/config/web";
        assert_eq!(api_version_for(web).unwrap(), "2024-11-01");
        assert_eq!(
            api_version_for(
                "/subscriptions/s/resourceGroups/r/providers/microsoft.network/virtualNetworks/v"
            )
            .unwrap(),
            "2024-07-01"
        );
        assert_eq!(
            api_version_for("/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a/providers/Microsoft.Insights/x/y").unwrap(),
            "2022-10-01"
        );
        assert_eq!(
            api_version_for("/subscriptions/s/resourceGroups/r").unwrap(),
            "2021-04-01"
        );
        assert!(api_version_for("/subscriptions/s/providers/Microsoft.Foo/x").is_err());
    }

    #[test]
    fn envelopes() {
        let arm = br#"{"error":{"code":"NotFound","message":"gone"}}"#;
        assert_eq!(error_envelope(arm, 404), ("NotFound".into(), "gone".into()));
        let web = br#"{"Code":"429","Message":"Cannot acquire exclusive lock","Details":[]}"#;
        assert_eq!(
            error_envelope(web, 429),
            ("429".into(), "Cannot acquire exclusive lock".into())
        );
        assert_eq!(
            error_envelope(b"oops", 502),
            ("HTTP502".into(), "oops".into())
        );
    }

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
    fn subscription_and_retry_after_parsing() {
        assert_eq!(
            subscription_of("/subscriptions/ABC/resourceGroups/r"),
            "abc"
        );
        assert_eq!(subscription_of("/providers/Microsoft.Web/operations"), "");
        assert_eq!(parse_retry_after("2".into()), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            None
        );
        assert!(is_transient_status(503) && is_transient_status(429) && !is_transient_status(501));
        assert!(!is_transient_status(409));
    }
}
