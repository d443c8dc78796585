//! The ARM client: api-versions, paging, long-running operations, retries with backoff that
//! honour `Retry-After`, re-read after ambiguous writes, the per-subscription pacer, and the
//! scope guard every write passes before it is sent.
//!
//! This file holds the client and its public calls; the parts live next to it: `config`
//! (settings and counters), `error` (errors and how they are classified), `url` (URLs,
//! api-versions, the scope guard), `attempt` (one HTTP request), `retry` (the retry loop and
//! the re-read of ambiguous writes), `lro` (long-running operations) and `envelope` (reading
//! bodies and error envelopes).

mod attempt;
mod config;
mod envelope;
mod error;
mod lro;
mod retry;
mod url;

use std::sync::Arc;

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::credential::TokenSource;
use super::pacer::Pacer;
use super::ResourceId;
use attempt::Resp;
use config::Counters;
use envelope::{decode, json_kind, parse_as, parse_body, push_items, shape_error, status_error};
use lro::Want;
use retry::Written;

pub use super::pacer::PacerConfig;
pub use config::{ArmConfig, ArmMetrics};
pub use error::ArmError;

/// Prefix of the `x-ms-client-request-id` the client stamps on every write (the prefix and a
/// fresh uuid). ARM echoes the id in the Event Grid events the write raises
/// (`data.httpRequest.clientRequestId`; App Service: `data.clientRequestId`), which is how
/// `on-deploy` recognises, and ignores, the events of our own writes.
pub const CLIENT_REQUEST_ID_PREFIX: &str = "vnet-migrate-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Removed,
    NotFound,
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
            .map_err(|e| ArmError::config_from(format!("invalid ARM endpoint {endpoint:?}"), e))?;
        // Bearer tokens in clear text only ever go to this machine.
        super::credential::check_token_endpoint(&endpoint)
            .map_err(|e| ArmError::config_from("ARM endpoint", e))?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ArmError::config_from("cannot build the HTTP client", e))?;
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

    /// The per-subscription pacer (for inspection and reporting).
    /// The scopes this client may write in (a message is checked against them before any
    /// step runs, so a forged id is refused before it reaches a request body).
    pub(crate) fn write_scope(&self) -> &[ResourceId] {
        &self.inner.config.write_scope
    }

    pub fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    pub fn metrics(&self) -> ArmMetrics {
        self.inner.metrics.snapshot()
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, ArmError> {
        let (url, resp) = self.read_ok(path).await?;
        parse_body(&url, &resp.body)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ArmError> {
        let (url, resp) = self.read_ok(path).await?;
        parse_as(&url, path, &resp.body)
    }

    /// 404 → `None`.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ArmError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A read of `path` that ARM answered with success.
    async fn read_ok(&self, path: &str) -> Result<(Url, Resp), ArmError> {
        let url = self.url(path)?;
        let resp = self.read(&url).await?;
        if !resp.ok() {
            return Err(status_error(&Method::GET, &url, &resp));
        }
        Ok((url, resp))
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
                    return Err(shape_error(
                        path,
                        format_args!("expected a list, got {}", json_kind(&other)),
                    ))
                }
            };
            let Some(next) = next else { return Ok(out) };
            url = self.follow(&next)?;
            if !seen.insert(url.to_string()) {
                return Err(shape_error(path, "nextLink repeats a page already read"));
            }
        }
    }

    /// Waits for the LRO and returns the final resource.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ArmError> {
        let v = self.upsert(Method::PUT, path, body, Want::Resource).await?;
        decode(path, v)
    }

    /// Waits for the LRO and returns the final resource.
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ArmError> {
        let v = self
            .upsert(Method::PATCH, path, body, Want::Resource)
            .await?;
        decode(path, v)
    }

    /// Waits for the PATCH to finish, without reading the resource again: it when ARM's answer
    /// carried it, `None` when the write ended through its operation status. For a caller that
    /// must go on the moment the write is done and can read the resource later.
    pub async fn patch_done<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Option<T>, ArmError> {
        match self
            .upsert(Method::PATCH, path, body, Want::Carried)
            .await?
        {
            Value::Null => Ok(None),
            v => decode(path, v).map(Some),
        }
    }

    /// Idempotent: a 404 (at once, or on the re-read after an ambiguous failure) is success.
    pub async fn delete(&self, path: &str) -> Result<Deleted, ArmError> {
        let url = self.url(path)?;
        self.guard(&Method::DELETE, &url)?;
        match self.write(&Method::DELETE, &url, None).await? {
            Written::AlreadyDone(_) => Ok(Deleted::NotFound),
            Written::Answer(resp) if resp.status == 404 => Ok(Deleted::NotFound),
            Written::Answer(resp) => {
                self.complete(&Method::DELETE, &url, resp, Want::Result)
                    .await?;
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
            Written::Answer(resp) => self.complete(&Method::POST, &url, resp, Want::Result).await,
        }
    }

    async fn upsert(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        want: Want,
    ) -> Result<Value, ArmError> {
        let url = self.url(path)?;
        self.guard(&method, &url)?;
        match self.write(&method, &url, Some(body)).await? {
            Written::AlreadyDone(v) => Ok(v),
            Written::Answer(resp) => self.complete(&method, &url, resp, want).await,
        }
    }
}
