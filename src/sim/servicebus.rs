//! A Service Bus REST fake on loopback, serving exactly the surface `azure::servicebus` uses,
//! with the broker semantics the pipeline relies on: queues created on first use, duplicate
//! detection by MessageId (window = the fake's lifetime), scheduled messages, peek-lock with
//! lock expiry, DeliveryCount, abandon → immediate redelivery, dead-lettering at
//! MaxDeliveryCount (`MaxDeliveryCountExceeded`) into `{queue}/$DeadLetterQueue`, sessions.
//!
//! Deviation from Service Bus (documented on purpose): real session receivers are AMQP-only.
//! Here `POST {queue}/messages/head` is session-aware: it returns the oldest available message
//! whose session has no message locked, so one session is processed by one receiver at a time
//! and in order, and the session lock is released when its message is completed, abandoned or
//! its lock expires. This is what the test harness that plays the Functions host needs. Any
//! queue accepts messages with or without SessionId.
//!
//! Time: the fake's clock is wall time plus an offset tests can advance (`advance_clock`), so
//! schedules and lock expiry are tested without sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};

use crate::azure::servicebus::{
    parse_rfc1123, rfc1123, BrokerProperties, BATCH_CONTENT_TYPE, DEAD_LETTER_QUEUE,
};

/// Broker settings of every queue in the fake.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Service Bus default PT1M.
    pub lock_duration: Duration,
    /// Service Bus default 10.
    pub max_delivery_count: u32,
    /// When set, any other bearer token is refused with 401.
    pub required_token: Option<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            required_token: None,
        }
    }
}

/// Per-queue counts, as served by `GET /_sb/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Available now.
    pub active: u64,
    /// Waiting for their ScheduledEnqueueTimeUtc.
    pub scheduled: u64,
    /// Peek-locked by a receiver.
    pub locked: u64,
    pub completed: u64,
    /// In the dead-letter sub-queue.
    pub dead: u64,
}

/// A dead-lettered message, for test inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub session_id: Option<String>,
    pub body: Vec<u8>,
    pub reason: String,
    pub description: Option<String>,
    pub delivery_count: u32,
}

#[derive(Debug, Clone)]
struct Lock {
    token: String,
    until: OffsetDateTime,
}

#[derive(Debug, Clone)]
struct Message {
    seq: i64,
    message_id: String,
    session_id: Option<String>,
    correlation_id: Option<String>,
    content_type: Option<String>,
    label: Option<String>,
    body: Vec<u8>,
    properties: BTreeMap<String, String>,
    enqueued: OffsetDateTime,
    visible_at: OffsetDateTime,
    lock: Option<Lock>,
    delivery_count: u32,
}

#[derive(Debug, Default)]
struct Queue {
    /// Name as first used (entity names are case-insensitive).
    name: String,
    messages: BTreeMap<i64, Message>,
    seen_ids: HashSet<String>,
    next_seq: i64,
    completed: u64,
}

impl Queue {
    fn push(&mut self, mut m: Message) {
        self.next_seq += 1;
        m.seq = self.next_seq;
        self.messages.insert(m.seq, m);
    }
}

/// Entity = a queue or its dead-letter sub-queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Entity {
    queue: String,
    dead_letter: bool,
}

impl Entity {
    fn key(&self) -> String {
        let q = self.queue.to_ascii_lowercase();
        if self.dead_letter {
            format!("{q}/{}", DEAD_LETTER_QUEUE.to_ascii_lowercase())
        } else {
            q
        }
    }

    fn dead_letters_of(queue: &str) -> Entity {
        Entity {
            queue: queue.to_string(),
            dead_letter: true,
        }
    }

    fn path(&self, name: &str) -> String {
        if self.dead_letter {
            format!("{name}/{DEAD_LETTER_QUEUE}")
        } else {
            name.to_string()
        }
    }
}

struct Inner {
    opts: FakeOptions,
    queues: Mutex<HashMap<String, Queue>>,
    clock_offset: Mutex<time::Duration>,
    changed: Notify,
}

/// The fake broker; cheap to clone (shared state).
#[derive(Clone)]
pub struct ServiceBusFake {
    inner: Arc<Inner>,
}

impl Default for ServiceBusFake {
    fn default() -> Self {
        Self::new(FakeOptions::default())
    }
}

impl ServiceBusFake {
    pub fn new(opts: FakeOptions) -> Self {
        ServiceBusFake {
            inner: Arc::new(Inner {
                opts,
                queues: Mutex::new(HashMap::new()),
                clock_offset: Mutex::new(time::Duration::ZERO),
                changed: Notify::new(),
            }),
        }
    }

    /// Serves a fake with default options on `addr` (use port 0).
    pub async fn serve(addr: SocketAddr) -> io::Result<ServiceBusServer> {
        Self::default().listen(addr).await
    }

    /// Serves this fake on `addr`.
    pub async fn listen(self, addr: SocketAddr) -> io::Result<ServiceBusServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/_sb/stats", get(stats))
            .fallback(dispatch)
            .with_state(self.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(ServiceBusServer {
            fake: self,
            addr,
            stop: tx,
            handle,
        })
    }

    /// The fake's current time (wall clock plus the test offset).
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + *self.inner.clock_offset.lock().expect("clock")
    }

    /// Moves the fake's clock forward: schedules come due, locks expire.
    pub fn advance_clock(&self, by: Duration) {
        *self.inner.clock_offset.lock().expect("clock") += by;
        self.inner.changed.notify_waiters();
    }

    pub fn counts(&self, queue: &str) -> QueueCounts {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, queue, now);
        counts_of(&queues, queue, now)
    }

    /// Dead-lettered messages of `queue`, oldest first, without locking them.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        let queues = self.inner.queues.lock().expect("queues");
        let Some(dlq) = queues.get(&Entity::dead_letters_of(queue).key()) else {
            return Vec::new();
        };
        dlq.messages
            .values()
            .map(|m| DeadLetter {
                message_id: m.message_id.clone(),
                session_id: m.session_id.clone(),
                body: m.body.clone(),
                reason: m
                    .properties
                    .get("DeadLetterReason")
                    .cloned()
                    .unwrap_or_default(),
                description: m.properties.get("DeadLetterErrorDescription").cloned(),
                delivery_count: m.delivery_count,
            })
            .collect()
    }

    /// Explicitly dead-letters an unlocked or locked message (REST cannot; tests can).
    /// Returns false when no such message is in the queue.
    pub fn dead_letter(
        &self,
        queue: &str,
        message_id: &str,
        reason: &str,
        description: Option<&str>,
    ) -> bool {
        let mut queues = self.inner.queues.lock().expect("queues");
        let main = Entity {
            queue: queue.to_string(),
            dead_letter: false,
        };
        let Some(q) = queues.get_mut(&main.key()) else {
            return false;
        };
        let Some(seq) = q
            .messages
            .values()
            .find(|m| m.message_id == message_id)
            .map(|m| m.seq)
        else {
            return false;
        };
        move_to_dead_letters(&mut queues, queue, seq, reason, description);
        self.inner.changed.notify_waiters();
        true
    }

    fn lock_duration(&self) -> time::Duration {
        time::Duration::try_from(self.inner.opts.lock_duration).unwrap_or(time::Duration::MINUTE)
    }

    /// Expired locks are released; a message whose deliveries are spent is dead-lettered.
    fn expire_locks(&self, queues: &mut HashMap<String, Queue>, queue: &str, now: OffsetDateTime) {
        for dead_letter in [false, true] {
            let entity = Entity {
                queue: queue.to_string(),
                dead_letter,
            };
            let Some(q) = queues.get_mut(&entity.key()) else {
                continue;
            };
            let expired: Vec<i64> = q
                .messages
                .values()
                .filter(|m| m.lock.as_ref().is_some_and(|l| l.until <= now))
                .map(|m| m.seq)
                .collect();
            for seq in expired {
                self.release(queues, &entity, seq);
            }
        }
    }

    /// Unlocks a message (abandon or lock expiry).
    fn release(&self, queues: &mut HashMap<String, Queue>, entity: &Entity, seq: i64) {
        let Some(q) = queues.get_mut(&entity.key()) else {
            return;
        };
        let Some(m) = q.messages.get_mut(&seq) else {
            return;
        };
        m.lock = None;
        // The dead-letter queue itself never dead-letters.
        if !entity.dead_letter && m.delivery_count >= self.inner.opts.max_delivery_count {
            let desc = format!(
                "Message could not be consumed after {} delivery attempts.",
                m.delivery_count
            );
            move_to_dead_letters(
                queues,
                &entity.queue,
                seq,
                "MaxDeliveryCountExceeded",
                Some(&desc),
            );
        }
    }

    fn enqueue(
        &self,
        queue: &str,
        items: Vec<(BrokerProperties, Vec<u8>, BTreeMap<String, String>)>,
    ) {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        let key = queue.to_ascii_lowercase();
        let q = queues.entry(key).or_insert_with(|| Queue {
            name: queue.to_string(),
            ..Default::default()
        });
        for (bp, body, properties) in items {
            let message_id = bp
                .message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            // Duplicate detection: accepted and silently dropped, as the service does.
            if !q.seen_ids.insert(message_id.clone()) {
                continue;
            }
            let visible_at = bp
                .scheduled_enqueue_time_utc
                .as_deref()
                .and_then(parse_rfc1123)
                .unwrap_or(now);
            q.push(Message {
                seq: 0,
                message_id,
                session_id: bp.session_id,
                correlation_id: bp.correlation_id,
                content_type: bp.content_type,
                label: bp.label,
                body,
                properties,
                enqueued: now,
                visible_at,
                lock: None,
                delivery_count: 0,
            });
        }
        drop(queues);
        self.inner.changed.notify_waiters();
    }

    /// Locks and returns the next deliverable message of `entity`, if any.
    fn try_lock_next(&self, entity: &Entity) -> Option<(String, Message)> {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, &entity.queue, now);
        let q = queues.get_mut(&entity.key())?;
        let busy_sessions: HashSet<String> = q
            .messages
            .values()
            .filter(|m| m.lock.is_some())
            .filter_map(|m| m.session_id.clone())
            .collect();
        let until = now + self.lock_duration();
        let m = q.messages.values_mut().find(|m| {
            m.lock.is_none()
                && m.visible_at <= now
                && (entity.dead_letter
                    || m.session_id
                        .as_ref()
                        .is_none_or(|s| !busy_sessions.contains(s)))
        })?;
        m.lock = Some(Lock {
            token: uuid::Uuid::new_v4().to_string(),
            until,
        });
        m.delivery_count += 1;
        Some((q.name.clone(), m.clone()))
    }

    /// Complete / abandon / renew by lock token. `None` = lock not found (lost or settled).
    fn settle(
        &self,
        entity: &Entity,
        id: &str,
        token: &str,
        method: &Method,
    ) -> Option<OffsetDateTime> {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, &entity.queue, now);
        let q = queues.get_mut(&entity.key())?;
        let m = q.messages.values_mut().find(|m| {
            m.lock.as_ref().is_some_and(|l| l.token == token)
                && (m.seq.to_string() == id || m.message_id == id)
        })?;
        let seq = m.seq;
        let result = if *method == Method::DELETE {
            q.messages.remove(&seq);
            q.completed += 1;
            now
        } else if *method == Method::PUT {
            self.release(&mut queues, entity, seq);
            now
        } else {
            let until = now + self.lock_duration();
            if let Some(l) = m.lock.as_mut() {
                l.until = until;
            }
            until
        };
        drop(queues);
        self.inner.changed.notify_waiters();
        Some(result)
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
        else {
            return false;
        };
        self.inner
            .opts
            .required_token
            .as_deref()
            .is_none_or(|want| want == token)
    }
}

fn move_to_dead_letters(
    queues: &mut HashMap<String, Queue>,
    queue: &str,
    seq: i64,
    reason: &str,
    description: Option<&str>,
) {
    let main = Entity {
        queue: queue.to_string(),
        dead_letter: false,
    };
    let Some(mut m) = queues
        .get_mut(&main.key())
        .and_then(|q| q.messages.remove(&seq))
    else {
        return;
    };
    m.lock = None;
    m.properties
        .insert("DeadLetterReason".into(), reason.to_string());
    if let Some(d) = description {
        m.properties
            .insert("DeadLetterErrorDescription".into(), d.to_string());
    }
    let dlq = Entity::dead_letters_of(queue);
    queues
        .entry(dlq.key())
        .or_insert_with(|| Queue {
            name: queue.to_string(),
            ..Default::default()
        })
        .push(m);
}

fn counts_of(queues: &HashMap<String, Queue>, queue: &str, now: OffsetDateTime) -> QueueCounts {
    let mut c = QueueCounts::default();
    if let Some(q) = queues.get(&queue.to_ascii_lowercase()) {
        c.completed = q.completed;
        for m in q.messages.values() {
            if m.lock.is_some() {
                c.locked += 1;
            } else if m.visible_at > now {
                c.scheduled += 1;
            } else {
                c.active += 1;
            }
        }
    }
    if let Some(d) = queues.get(&Entity::dead_letters_of(queue).key()) {
        c.dead = d.messages.len() as u64;
    }
    c
}

/// A running fake.
pub struct ServiceBusServer {
    fake: ServiceBusFake,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl ServiceBusServer {
    /// Base URL, e.g. `http://127.0.0.1:41234` (the client's endpoint).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fake(&self) -> &ServiceBusFake {
        &self.fake
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

async fn stats(State(fake): State<ServiceBusFake>) -> Json<BTreeMap<String, QueueCounts>> {
    let names: Vec<String> = {
        let queues = fake.inner.queues.lock().expect("queues");
        let mut names: Vec<String> = queues
            .iter()
            .filter(|(k, _)| !k.contains('/'))
            .map(|(_, q)| q.name.clone())
            .collect();
        // A queue whose every message was dead-lettered still shows up.
        for (k, q) in queues.iter() {
            if k.contains('/') && !queues.contains_key(&q.name.to_ascii_lowercase()) {
                names.push(q.name.clone());
            }
        }
        names
    };
    Json(
        names
            .into_iter()
            .map(|n| (n.clone(), fake.counts(&n)))
            .collect(),
    )
}

fn error(status: StatusCode, detail: &str) -> Response {
    let body = format!(
        "<Error><Code>{}</Code><Detail>{detail}</Detail></Error>",
        status.as_u16()
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// Routes by hand: entity paths contain `$DeadLetterQueue`, which the router's syntax would
/// make awkward, and the surface is small.
async fn dispatch(
    State(fake): State<ServiceBusFake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !fake.authorised(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidSignature: missing or invalid bearer token.",
        );
    }
    let path = uri.path().replace("%24", "$");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_dlq = |s: &str| s.eq_ignore_ascii_case(DEAD_LETTER_QUEUE);
    let entity = |q: &str, dead_letter| Entity {
        queue: q.to_string(),
        dead_letter,
    };
    let settling = matches!(method.as_str(), "DELETE" | "PUT" | "POST");
    match (method.as_str(), segs.as_slice()) {
        ("POST", [q, "messages"]) => send(&fake, q, &headers, body),
        ("POST", [q, "messages", "head"]) => receive(&fake, entity(q, false), &uri, &headers).await,
        ("POST", [q, d, "messages", "head"]) if is_dlq(d) => {
            receive(&fake, entity(q, true), &uri, &headers).await
        }
        (_, [q, "messages", id, token]) if settling => {
            settle(&fake, entity(q, false), id, token, &method)
        }
        (_, [q, d, "messages", id, token]) if settling && is_dlq(d) => {
            settle(&fake, entity(q, true), id, token, &method)
        }
        _ => error(StatusCode::NOT_FOUND, "No such entity or operation."),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchItem {
    body: String,
    #[serde(default)]
    broker_properties: Option<BrokerProperties>,
    #[serde(default)]
    user_properties: Option<BTreeMap<String, serde_json::Value>>,
}

fn send(fake: &ServiceBusFake, queue: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let items = if ctype.starts_with(BATCH_CONTENT_TYPE) {
        let batch: Vec<BatchItem> = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Invalid batch: {e}")),
        };
        batch
            .into_iter()
            .map(|i| {
                let props = i
                    .user_properties
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k, s),
                        v => (k, v.to_string()),
                    })
                    .collect();
                (
                    i.broker_properties.unwrap_or_default(),
                    i.body.into_bytes(),
                    props,
                )
            })
            .collect()
    } else {
        let mut bp: BrokerProperties = match headers.get("BrokerProperties") {
            None => BrokerProperties::default(),
            Some(v) => match serde_json::from_slice(v.as_bytes()) {
                Ok(bp) => bp,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("BrokerProperties is not valid JSON: {e}"),
                    )
                }
            },
        };
        if bp.content_type.is_none() && !ctype.is_empty() {
            bp.content_type = Some(ctype.to_string());
        }
        vec![(bp, body.to_vec(), BTreeMap::new())]
    };
    fake.enqueue(queue, items);
    StatusCode::CREATED.into_response()
}

async fn receive(
    fake: &ServiceBusFake,
    entity: Entity,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let wait = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60)
        .min(60);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let changed = fake.inner.changed.notified();
        if let Some((name, m)) = fake.try_lock_next(&entity) {
            return delivered(&entity, &name, m, headers);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return StatusCode::NO_CONTENT.into_response();
        }
        // Woken by any send/settle; the cap also catches schedules coming due by wall time.
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), changed).await;
    }
}

fn delivered(entity: &Entity, name: &str, m: Message, req_headers: &HeaderMap) -> Response {
    let host = req_headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let lock = m.lock.clone().expect("just locked");
    let bp = BrokerProperties {
        message_id: Some(m.message_id.clone()),
        session_id: m.session_id.clone(),
        correlation_id: m.correlation_id.clone(),
        label: m.label.clone(),
        enqueued_time_utc: Some(rfc1123(m.enqueued)),
        lock_token: Some(lock.token.clone()),
        locked_until_utc: Some(rfc1123(lock.until)),
        sequence_number: Some(m.seq),
        delivery_count: Some(m.delivery_count),
        state: Some(
            if entity.dead_letter {
                "DeadLettered"
            } else {
                "Active"
            }
            .into(),
        ),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    let location = format!(
        "http://{host}/{}/messages/{}/{}",
        entity.path(name),
        m.seq,
        lock.token
    );
    let put = |h: &mut HeaderMap, k: HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(
        &mut headers,
        HeaderName::from_static("brokerproperties"),
        &serde_json::to_string(&bp).expect("serialisable"),
    );
    put(&mut headers, header::LOCATION, &location);
    put(
        &mut headers,
        header::CONTENT_TYPE,
        m.content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    for (k, v) in &m.properties {
        if let Ok(name) = HeaderName::from_bytes(k.as_bytes()) {
            // Values JSON-quoted, as the REST docs show (`Priority: "High"`).
            put(
                &mut headers,
                name,
                &serde_json::to_string(v).expect("string"),
            );
        }
    }
    (StatusCode::CREATED, headers, m.body).into_response()
}

fn settle(
    fake: &ServiceBusFake,
    entity: Entity,
    id: &str,
    token: &str,
    method: &Method,
) -> Response {
    match fake.settle(&entity, id, token, method) {
        None => error(
            StatusCode::NOT_FOUND,
            "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.",
        ),
        Some(until) if *method == Method::POST => {
            let bp = BrokerProperties {
                locked_until_utc: Some(rfc1123(until)),
                ..Default::default()
            };
            let json = serde_json::to_string(&bp).expect("serialisable");
            (StatusCode::OK, [("BrokerProperties", json)]).into_response()
        }
        Some(_) => StatusCode::OK.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(id: &str, session: Option<&str>) -> BrokerProperties {
        BrokerProperties {
            message_id: Some(id.into()),
            session_id: session.map(str::to_string),
            ..Default::default()
        }
    }

    fn main(q: &str) -> Entity {
        Entity {
            queue: q.into(),
            dead_letter: false,
        }
    }

    #[test]
    fn lock_expiry_redelivers_and_counts_deliveries() {
        let fake = ServiceBusFake::default();
        fake.enqueue("q", vec![(bp("m1", None), b"x".to_vec(), BTreeMap::new())]);
        let (_, first) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(first.delivery_count, 1);
        assert!(fake.try_lock_next(&main("q")).is_none());
        assert_eq!(fake.counts("q").locked, 1);
        fake.advance_clock(Duration::from_secs(61));
        let (_, again) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(again.delivery_count, 2);
        assert_ne!(again.lock.unwrap().token, first.lock.unwrap().token);
    }

    #[test]
    fn session_messages_are_delivered_one_at_a_time_in_order() {
        let fake = ServiceBusFake::default();
        let items = ["a1", "a2", "b1"]
            .iter()
            .map(|id| (bp(id, Some(&id[..1])), Vec::new(), BTreeMap::new()))
            .collect();
        fake.enqueue("Q", items);
        let (_, a1) = fake.try_lock_next(&main("q")).unwrap();
        let (_, b1) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(
            (a1.message_id.as_str(), b1.message_id.as_str()),
            ("a1", "b1")
        );
        assert!(fake.try_lock_next(&main("q")).is_none(), "a2 waits for a1");
        let token = a1.lock.unwrap().token;
        assert!(fake
            .settle(&main("q"), "1", &token, &Method::DELETE)
            .is_some());
        let (_, a2) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(a2.message_id, "a2");
    }

    #[test]
    fn explicit_dead_letter_moves_the_message() {
        let fake = ServiceBusFake::default();
        fake.enqueue("q", vec![(bp("m1", None), b"x".to_vec(), BTreeMap::new())]);
        assert!(fake.dead_letter("q", "m1", "Undecodable", Some("bad json")));
        assert!(!fake.dead_letter("q", "m1", "again", None));
        let dl = fake.dead_letters("q");
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, "Undecodable");
        assert_eq!(dl[0].description.as_deref(), Some("bad json"));
        assert_eq!(fake.counts("q").dead, 1);
    }
}
