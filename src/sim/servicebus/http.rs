//! The REST front: routes (entity paths may end in `$DeadLetterQueue`), the bearer check,
//! single and batch send bodies, `BrokerProperties` on deliveries and renewals, and the
//! `GET /_sb/stats` side door for tests.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::azure::servicebus::{
    rfc1123, BrokerProperties, BATCH_CONTENT_TYPE, DEAD_LETTER_QUEUE, MAX_SESSION_ID,
};

use super::broker::Settlement;
use super::queue::{Entity, Message};
use super::{QueueCounts, ServiceBusFake};

/// The fake's whole HTTP surface.
pub(super) fn router(fake: ServiceBusFake) -> Router {
    Router::new()
        .route("/_sb/stats", get(stats))
        .fallback(dispatch)
        .with_state(fake)
}

async fn stats(State(fake): State<ServiceBusFake>) -> Json<BTreeMap<String, QueueCounts>> {
    Json(
        fake.queue_names()
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

/// Any non-empty bearer token, unless `FakeOptions::required_token` names the only one.
fn authorised(fake: &ServiceBusFake, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    fake.inner
        .opts
        .required_token
        .as_deref()
        .is_none_or(|want| want == token)
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
    if !authorised(&fake, &headers) {
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
    // A longer SessionId than Service Bus takes is refused as a bad request.
    if let Some(long) = items
        .iter()
        .filter_map(|(bp, _, _)| bp.session_id.as_deref())
        .find(|s| s.chars().count() > MAX_SESSION_ID)
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "The SessionId '{long}' is {} characters long; the maximum is {MAX_SESSION_ID}.",
                long.chars().count()
            ),
        );
    }
    if fake.over_quota(queue, items.len()) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("QuotaExceeded: the maximum entity size has been reached for queue {queue}."),
        );
    }
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
    let how = if *method == Method::DELETE {
        Settlement::Complete
    } else if *method == Method::PUT {
        Settlement::Abandon
    } else {
        Settlement::Renew
    };
    match fake.settle(&entity, id, token, how) {
        None => error(
            StatusCode::NOT_FOUND,
            "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.",
        ),
        Some(until) if how == Settlement::Renew => {
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
