//! A thin Service Bus REST data-plane client (reference §A): send (single, batch, scheduled),
//! peek-lock receive, complete / abandon / renew via the lock URI, and receive from the
//! dead-letter sub-queue. The Functions host does the hot-path receiving; the handler sends,
//! and `replay` plus the test harness use receive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::credential::check_token_endpoint;

/// The longest SessionId Service Bus takes: "The session identifier. Maximum length is 128
/// characters." (`ServiceBusMessage.SessionId`, Azure SDK for .NET reference).
pub const MAX_SESSION_ID: usize = 128;

/// Content type of a batch send.
pub(crate) const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";
/// Token scope for Entra ID (public cloud); the caller obtains the token.
pub(crate) const SERVICEBUS_SCOPE: &str = "https://servicebus.azure.net/.default";
/// Dead-letter sub-queue path segment.
pub(crate) const DEAD_LETTER_QUEUE: &str = "$DeadLetterQueue";
/// Stay well below the 256 KB Standard-tier message limit per batch.
const MAX_BATCH_BYTES: usize = 192 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServiceBusError {
    #[error("Service Bus is not configured: {0}")]
    Config(String),
    #[error("could not obtain a Service Bus token: {0}")]
    Auth(String),
    #[error("Service Bus {op} failed to reach the service: {detail}")]
    Transport { op: &'static str, detail: String },
    #[error("Service Bus {op} answered {status}: {detail}")]
    Status {
        op: &'static str,
        status: u16,
        detail: String,
    },
    #[error("Service Bus {op}: message lock lost or message already settled")]
    LockLost { op: &'static str },
    #[error("Service Bus {op}: unexpected response: {detail}")]
    Protocol { op: &'static str, detail: String },
}

/// Supplies the bearer token for each request (the credential module implements this).
pub trait BearerSource: Send + Sync {
    fn bearer(&self) -> BoxFuture<'_, Result<String, ServiceBusError>>;
}

/// A fixed token: tests, and `VNET_MIGRATE_CREDENTIAL=static` against loopback.
pub struct StaticBearer(pub String);

impl BearerSource for StaticBearer {
    fn bearer(&self) -> BoxFuture<'_, Result<String, ServiceBusError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// The `BrokerProperties` header (JSON). Dates are RFC 1123 (`Sun, 06 Nov 1994 08:49:37 GMT`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BrokerProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scheduled_enqueue_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time_to_live: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enqueued_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) locked_until_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<String>,
}

/// RFC 1123 / HTTP-date in GMT, the format Service Bus REST uses for dates.
pub(crate) fn rfc1123(t: OffsetDateTime) -> String {
    httpdate::fmt_http_date(SystemTime::from(t))
}

/// Parses an RFC 1123 date (leading spaces tolerated, as in the docs' own example).
pub(crate) fn parse_rfc1123(s: &str) -> Option<OffsetDateTime> {
    httpdate::parse_http_date(s.trim())
        .ok()
        .map(OffsetDateTime::from)
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendMessage {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub session_id: Option<String>,
    /// Invisible until then; `None` (or a past time) = available at once.
    pub scheduled_enqueue_time: Option<OffsetDateTime>,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
    /// Application properties (custom headers on a single send).
    pub properties: BTreeMap<String, String>,
}

impl SendMessage {
    /// The `BrokerProperties` this message is sent with.
    pub(crate) fn broker_properties(&self) -> BrokerProperties {
        BrokerProperties {
            message_id: self.message_id.clone(),
            session_id: self.session_id.clone(),
            correlation_id: self.correlation_id.clone(),
            content_type: self.content_type.clone(),
            scheduled_enqueue_time_utc: self.scheduled_enqueue_time.map(rfc1123),
            ..Default::default()
        }
    }
}

/// A peek-locked message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    pub body: Vec<u8>,
    pub broker: BrokerProperties,
    pub content_type: Option<String>,
    /// The `Location` header: the URI to complete (DELETE), abandon (PUT) or renew (POST).
    pub lock_uri: String,
    /// Application properties (custom headers, JSON quoting removed).
    pub(crate) properties: BTreeMap<String, String>,
}

impl ReceivedMessage {
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.property("DeadLetterReason")
    }

    pub fn dead_letter_description(&self) -> Option<&str> {
        self.property("DeadLetterErrorDescription")
    }

    pub(crate) fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Standard headers that are not application properties on a received message.
const NOT_PROPERTIES: &[&str] = &[
    "brokerproperties",
    "location",
    "content-type",
    "content-length",
    "date",
    "server",
    "transfer-encoding",
    "connection",
    "strict-transport-security",
];

/// Client for one queue.
#[derive(Clone)]
pub struct ServiceBusClient {
    http: reqwest::Client,
    endpoint: String,
    queue: String,
    bearer: Arc<dyn BearerSource>,
}

impl std::fmt::Debug for ServiceBusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusClient")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl ServiceBusClient {
    /// `endpoint` = `https://{ns}.servicebus.windows.net` or a loopback URL.
    pub fn new(
        endpoint: impl Into<String>,
        queue: impl Into<String>,
        bearer: Arc<dyn BearerSource>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client builds");
        Self::with_http(http, endpoint, queue, bearer)
    }

    pub(crate) fn with_http(
        http: reqwest::Client,
        endpoint: impl Into<String>,
        queue: impl Into<String>,
        bearer: Arc<dyn BearerSource>,
    ) -> Self {
        ServiceBusClient {
            http,
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            queue: queue.into(),
            bearer,
        }
    }

    /// Sends one message (201 expected; a duplicate MessageId is accepted and dropped by
    /// the service).
    pub async fn send(&self, msg: &SendMessage) -> Result<(), ServiceBusError> {
        const OP: &str = "send";
        let bp = serde_json::to_string(&msg.broker_properties()).expect("serialisable");
        let url = format!("{}/{}/messages", self.endpoint, self.queue);
        let mut req = self
            .http
            .post(url)
            .header("BrokerProperties", bp)
            .header(
                CONTENT_TYPE,
                msg.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            )
            .body(msg.body.clone());
        for (k, v) in &msg.properties {
            req = req.header(k.as_str(), serde_json::to_string(v).expect("string"));
        }
        let resp = self.execute(OP, req, Duration::from_secs(60)).await?;
        expect_status(OP, resp, &[StatusCode::CREATED, StatusCode::OK]).await
    }

    /// Sends any number of messages the cheapest way: nothing for none, a single send for one,
    /// batches for more.
    pub(crate) async fn send_messages(&self, msgs: &[SendMessage]) -> Result<(), ServiceBusError> {
        match msgs {
            [] => Ok(()),
            [one] => self.send(one).await,
            many => self.send_batch(many).await,
        }
    }

    /// Sends several messages, split into batches that fit the entity's size limit. Bodies
    /// must be UTF-8 (the batch format carries them as JSON strings).
    pub async fn send_batch(&self, msgs: &[SendMessage]) -> Result<(), ServiceBusError> {
        const OP: &str = "send batch";
        let mut batch: Vec<serde_json::Value> = Vec::new();
        let mut size = 0;
        for m in msgs {
            let body = std::str::from_utf8(&m.body).map_err(|_| ServiceBusError::Protocol {
                op: OP,
                detail: "batch message bodies must be UTF-8".into(),
            })?;
            let item = serde_json::json!({
                "Body": body,
                "BrokerProperties": m.broker_properties(),
                "UserProperties": m.properties,
            });
            let len = item.to_string().len();
            if !batch.is_empty() && size + len > MAX_BATCH_BYTES {
                self.post_batch(std::mem::take(&mut batch)).await?;
                size = 0;
            }
            size += len;
            batch.push(item);
        }
        if !batch.is_empty() {
            self.post_batch(batch).await?;
        }
        Ok(())
    }

    async fn post_batch(&self, items: Vec<serde_json::Value>) -> Result<(), ServiceBusError> {
        const OP: &str = "send batch";
        let url = format!("{}/{}/messages", self.endpoint, self.queue);
        let req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(serde_json::Value::Array(items).to_string());
        let resp = self.execute(OP, req, Duration::from_secs(60)).await?;
        expect_status(OP, resp, &[StatusCode::CREATED, StatusCode::OK]).await
    }

    /// Peek-locks the next message, waiting up to `timeout` (whole seconds); `None` if none.
    pub async fn receive(
        &self,
        timeout: Duration,
    ) -> Result<Option<ReceivedMessage>, ServiceBusError> {
        self.receive_from(&self.queue.clone(), timeout, "receive")
            .await
    }

    /// Peek-locks the next dead-lettered message of this queue.
    pub async fn receive_dead_letter(
        &self,
        timeout: Duration,
    ) -> Result<Option<ReceivedMessage>, ServiceBusError> {
        let entity = format!("{}/{DEAD_LETTER_QUEUE}", self.queue);
        self.receive_from(&entity, timeout, "receive dead letter")
            .await
    }

    async fn receive_from(
        &self,
        entity: &str,
        timeout: Duration,
        op: &'static str,
    ) -> Result<Option<ReceivedMessage>, ServiceBusError> {
        let url = format!(
            "{}/{}/messages/head?timeout={}",
            self.endpoint,
            entity,
            timeout.as_secs()
        );
        let req = self.http.post(url).header(CONTENT_TYPE, "application/json");
        let resp = self
            .execute(op, req, timeout + Duration::from_secs(30))
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::CREATED | StatusCode::OK => Ok(Some(self.read_message(op, resp).await?)),
            _ => Err(status_error(op, resp).await),
        }
    }

    async fn read_message(
        &self,
        op: &'static str,
        resp: reqwest::Response,
    ) -> Result<ReceivedMessage, ServiceBusError> {
        let headers = resp.headers().clone();
        let protocol = |detail: String| ServiceBusError::Protocol { op, detail };
        let broker: BrokerProperties = match headers.get("BrokerProperties") {
            Some(v) => serde_json::from_slice(v.as_bytes())
                .map_err(|e| protocol(format!("BrokerProperties header is not valid: {e}")))?,
            None => return Err(protocol("no BrokerProperties header".into())),
        };
        let lock_uri = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol("no Location (lock URI) header".into()))?
            .to_string();
        // The token is sent to the lock URI: never follow one that leaves our endpoint.
        if !lock_uri.starts_with(&format!("{}/", self.endpoint)) {
            return Err(protocol(format!(
                "lock URI {lock_uri} is outside the endpoint {}",
                self.endpoint
            )));
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| ServiceBusError::Transport {
                op,
                detail: e.to_string(),
            })?
            .to_vec();
        Ok(ReceivedMessage {
            body,
            broker,
            content_type,
            lock_uri,
            properties: application_properties(&headers),
        })
    }

    /// Completes (deletes) a locked message. 404 = lock lost.
    pub async fn complete(&self, msg: &ReceivedMessage) -> Result<(), ServiceBusError> {
        self.settle(Method::DELETE, msg, "complete").await
    }

    /// Releases the lock; the message is redelivered with DeliveryCount + 1.
    pub async fn abandon(&self, msg: &ReceivedMessage) -> Result<(), ServiceBusError> {
        self.settle(Method::PUT, msg, "abandon").await
    }

    /// Extends the lock by the entity's lock duration.
    pub async fn renew_lock(&self, msg: &ReceivedMessage) -> Result<(), ServiceBusError> {
        self.settle(Method::POST, msg, "renew lock").await
    }

    async fn settle(
        &self,
        method: Method,
        msg: &ReceivedMessage,
        op: &'static str,
    ) -> Result<(), ServiceBusError> {
        let req = self
            .http
            .request(method, &msg.lock_uri)
            .header(CONTENT_TYPE, "application/json");
        let resp = self.execute(op, req, Duration::from_secs(60)).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(ServiceBusError::LockLost { op }),
            _ => Err(status_error(op, resp).await),
        }
    }

    async fn execute(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ServiceBusError> {
        let token = self.bearer.bearer().await?;
        req.header(AUTHORIZATION, format!("Bearer {token}"))
            .timeout(timeout)
            .send()
            .await
            // reqwest errors carry the URL, never headers; redact anyway in case a URL ever did.
            .map_err(|e| ServiceBusError::Transport {
                op,
                detail: redact(&e.to_string(), &token),
            })
    }
}

fn redact(s: &str, token: &str) -> String {
    if token.is_empty() {
        s.to_string()
    } else {
        s.replace(token, "<redacted>")
    }
}

async fn expect_status(
    op: &'static str,
    resp: reqwest::Response,
    ok: &[StatusCode],
) -> Result<(), ServiceBusError> {
    if ok.contains(&resp.status()) {
        Ok(())
    } else {
        Err(status_error(op, resp).await)
    }
}

async fn status_error(op: &'static str, resp: reqwest::Response) -> ServiceBusError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    // Service Bus error bodies are short XML/JSON; keep a bounded, single-line excerpt.
    let mut detail: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if detail.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| detail.is_char_boundary(*i))
            .unwrap_or(0);
        detail.truncate(cut);
    }
    if detail.contains("Bearer ") || detail.contains("eyJ") {
        detail = "<response body withheld: it may contain a credential>".into();
    }
    ServiceBusError::Status { op, status, detail }
}

fn application_properties(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(k, _)| !NOT_PROPERTIES.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let raw = v.to_str().ok()?;
            // Values come JSON-quoted (`"High"`); numbers and booleans bare.
            let value = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string());
            Some((k.as_str().to_string(), value))
        })
        .collect()
}

/// The Service Bus base URL: `VNET_MIGRATE_SERVICEBUS_ENDPOINT` (full override) or
/// `https://{ServiceBusConnection__fullyQualifiedNamespace}`.
pub(crate) fn endpoint_from_env() -> Result<String, ServiceBusError> {
    endpoint_from(
        std::env::var("VNET_MIGRATE_SERVICEBUS_ENDPOINT")
            .ok()
            .as_deref(),
        std::env::var("ServiceBusConnection__fullyQualifiedNamespace")
            .ok()
            .as_deref(),
    )
}

/// [`endpoint_from_env`] without the environment.
pub(crate) fn endpoint_from(
    override_url: Option<&str>,
    namespace: Option<&str>,
) -> Result<String, ServiceBusError> {
    if let Some(url) = override_url.map(str::trim).filter(|s| !s.is_empty()) {
        // The Entra token goes with every request: never in clear text to another host.
        check_token_endpoint(url).map_err(|e| {
            ServiceBusError::Config(format!("VNET_MIGRATE_SERVICEBUS_ENDPOINT: {e}"))
        })?;
        return Ok(url.trim_end_matches('/').to_string());
    }
    if let Some(ns) = namespace.map(str::trim).filter(|s| !s.is_empty()) {
        // Tolerate `sb://ns/` or `https://ns/` pasted from a connection string or the portal.
        let host = ns
            .trim_start_matches("sb://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(ServiceBusError::Config(format!(
                "ServiceBusConnection__fullyQualifiedNamespace is not a host name: {ns:?}"
            )));
        }
        return Ok(format!("https://{host}"));
    }
    Err(ServiceBusError::Config(
        "set ServiceBusConnection__fullyQualifiedNamespace or VNET_MIGRATE_SERVICEBUS_ENDPOINT"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1123_round_trips_in_gmt() {
        let t = time::macros::datetime!(1994-11-06 08:49:37 UTC);
        assert_eq!(rfc1123(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_rfc1123(" Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
    }

    #[test]
    fn endpoint_override_wins_and_namespace_becomes_https() {
        assert_eq!(
            endpoint_from(
                Some("http://127.0.0.1:9/"),
                Some("x.servicebus.windows.net")
            )
            .unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            endpoint_from(None, Some("contoso.servicebus.windows.net")).unwrap(),
            "https://contoso.servicebus.windows.net"
        );
        assert_eq!(
            endpoint_from(None, Some("sb://contoso.servicebus.windows.net/")).unwrap(),
            "https://contoso.servicebus.windows.net"
        );
        assert!(endpoint_from(None, None).is_err());
        assert!(endpoint_from(Some("ftp://x"), None).is_err());
        let e = endpoint_from(Some("http://contoso.servicebus.windows.net"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("http only on loopback"), "{e}");
    }
}
