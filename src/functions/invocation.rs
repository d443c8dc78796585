//! Decoding the Functions host's invocation request (reference/functions-host.md §2):
//! `{"Data": {<binding>: value}, "Metadata": {...}}`. The host's value encoding is lossy in
//! known ways (strings JSON-encoded twice, numbers as strings, `…Utc` dates without offset),
//! so every accessor here is tolerant and every failure says in one line what was wrong.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::eventgrid::EventGridEvent;

/// Why an invocation payload could not be decoded; the message is one line, meant for logs and
/// for the dead-letter description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        DecodeError(msg.into())
    }
}

/// The raw envelope. Unknown keys are ignored; a missing `Data`/`Metadata` is empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Invocation {
    #[serde(rename = "Data", default, deserialize_with = "null_as_empty")]
    pub(crate) data: Map<String, Value>,
    #[serde(rename = "Metadata", default, deserialize_with = "null_as_empty")]
    pub(crate) metadata: Map<String, Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

impl Invocation {
    pub(crate) fn parse(req: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(req).map_err(|e| {
            DecodeError::new(format!(
                "invocation is not a JSON {{Data, Metadata}} object: {e}"
            ))
        })
    }

    /// `Data.<binding>`; the host drops null values, so null counts as missing.
    pub(crate) fn binding(&self, binding: &str) -> Result<&Value, DecodeError> {
        match self.data.get(binding) {
            None | Some(Value::Null) => Err(DecodeError::new(format!("Data.{binding} is missing"))),
            Some(v) => Ok(v),
        }
    }

    /// A Metadata string with the host's extra JSON quoting removed.
    pub(crate) fn meta_string(&self, key: &str) -> Option<String> {
        self.metadata.get(key).and_then(host_string)
    }

    /// A Metadata number, sent by the host as a string (`"1"`) or, by older hosts, a number.
    pub(crate) fn meta_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            Value::Number(n) => n.as_u64(),
            v => host_string(v)?.trim().parse().ok(),
        }
    }
}

/// The host's string encoding undone: `"\"abc\""` → `abc`; a plain string stays as it is.
pub(crate) fn host_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(serde_json::from_str::<String>(s).unwrap_or_else(|_| s.clone())),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses host timestamps: RFC 3339 with or without offset and fraction; no offset means UTC
/// (the host drops the offset of `…Utc` values).
pub(crate) fn parse_host_time(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    let fmt = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|p| p.assume_utc())
}

fn normalise_time(s: String) -> String {
    match parse_host_time(&s).and_then(|t| t.format(&Rfc3339).ok()) {
        Some(t) => t,
        None => s,
    }
}

/// One Service Bus message as the `step` function receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBusDelivery {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub session_id: Option<String>,
    pub delivery_count: Option<u32>,
    /// RFC 3339 in UTC when the host's value parses, else the host's text.
    pub enqueued_time_utc: Option<String>,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
}

/// Decodes a Service Bus trigger invocation. With `dataType: binary` (ours) the body is base64;
/// a string-mode trigger (JSON-encoded string, as the host sends without `dataType`) is accepted
/// too so a misconfigured function.json still yields the exact body.
pub fn decode_service_bus(req: &[u8], binding: &str) -> Result<ServiceBusDelivery, DecodeError> {
    let inv = Invocation::parse(req)?;
    let body = service_bus_body(inv.binding(binding)?, binding)?;
    Ok(ServiceBusDelivery {
        body,
        message_id: inv.meta_string("MessageId"),
        session_id: inv.meta_string("SessionId"),
        delivery_count: inv
            .meta_u64("DeliveryCount")
            .and_then(|n| u32::try_from(n).ok()),
        enqueued_time_utc: inv.meta_string("EnqueuedTimeUtc").map(normalise_time),
        content_type: inv.meta_string("ContentType"),
        correlation_id: inv.meta_string("CorrelationId"),
    })
}

fn service_bus_body(v: &Value, binding: &str) -> Result<Vec<u8>, DecodeError> {
    let Value::String(s) = v else {
        return Err(DecodeError::new(format!(
            "Data.{binding} is a JSON {}, expected a base64 string (dataType binary)",
            json_kind(v)
        )));
    };
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s) {
        return Ok(bytes);
    }
    // String mode: the body text JSON-encoded once more; a JSON-encoded string starts with `"`,
    // which base64 never contains, so the two modes cannot be confused.
    if s.starts_with('"') {
        return serde_json::from_str::<String>(s)
            .map(String::into_bytes)
            .map_err(|_| {
                DecodeError::new(format!(
                    "Data.{binding} is neither base64 nor a JSON-encoded string"
                ))
            });
    }
    // Some hosts/libraries send a JSON body unquoted (reference §2.2, KG fixture).
    if s.starts_with('{') || s.starts_with('[') {
        return Ok(s.clone().into_bytes());
    }
    Err(DecodeError::new(format!(
        "Data.{binding}: body is not base64 (expected dataType binary)"
    )))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Decodes an Event Grid trigger invocation: `Data.<binding>` is the event object (the host
/// dispatches one at a time) or, tolerated, an array of events; either schema.
pub fn decode_event_grid(req: &[u8], binding: &str) -> Result<Vec<EventGridEvent>, DecodeError> {
    let inv = Invocation::parse(req)?;
    let v = inv.binding(binding)?;
    // A string here would be a JSON text (string-typed binding); accept its content.
    let parsed;
    let v = match v {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(&host_string(v).unwrap_or_else(|| s.clone()))
                .map_err(|e| {
                    DecodeError::new(format!("Data.{binding} is a string but not JSON: {e}"))
                })?;
            &parsed
        }
        v => v,
    };
    EventGridEvent::from_json(v).map_err(|e| DecodeError::new(format!("Data.{binding}: {e}")))
}

/// The timer trigger's `TimerInfo` (`ScheduleStatus` is null on a first run / without monitor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerInfo {
    pub is_past_due: bool,
    pub adjust_for_dst: Option<bool>,
    pub last: Option<String>,
    pub next: Option<String>,
    pub last_updated: Option<String>,
}

pub fn decode_timer(req: &[u8], binding: &str) -> Result<TimerInfo, DecodeError> {
    let inv = Invocation::parse(req)?;
    let Value::Object(t) = inv.binding(binding)? else {
        return Err(DecodeError::new(format!(
            "Data.{binding} is not a TimerInfo object"
        )));
    };
    if !t.contains_key("IsPastDue") && !t.contains_key("Schedule") {
        return Err(DecodeError::new(format!(
            "Data.{binding} has neither IsPastDue nor Schedule: not a timer trigger"
        )));
    }
    let status = t.get("ScheduleStatus").and_then(Value::as_object);
    let status_field = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(host_string)
            .map(normalise_time)
    };
    Ok(TimerInfo {
        is_past_due: match t.get("IsPastDue") {
            Some(Value::Bool(b)) => *b,
            Some(v) => host_string(v).is_some_and(|s| s.eq_ignore_ascii_case("true")),
            None => false,
        },
        adjust_for_dst: t
            .get("Schedule")
            .and_then(|s| s.get("AdjustForDST"))
            .and_then(Value::as_bool),
        last: status_field("Last"),
        next: status_field("Next"),
        last_updated: status_field("LastUpdated"),
    })
}

/// The HTTP trigger's request object (`Data.req`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequestData {
    pub method: String,
    pub url: String,
    pub query: BTreeMap<String, String>,
    /// Header name as sent → values (the host sends arrays).
    pub(crate) headers: BTreeMap<String, Vec<String>>,
    pub body: Option<String>,
    pub params: BTreeMap<String, String>,
}

impl HttpRequestData {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
}

pub fn decode_http(req: &[u8], binding: &str) -> Result<HttpRequestData, DecodeError> {
    let inv = Invocation::parse(req)?;
    let Value::Object(r) = inv.binding(binding)? else {
        return Err(DecodeError::new(format!(
            "Data.{binding} is not an HTTP request object"
        )));
    };
    let field = |k: &str| {
        r.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    };
    let method = field("Method")
        .and_then(host_string)
        .ok_or_else(|| DecodeError::new(format!("Data.{binding}.Method is missing")))?;
    let url = field("Url")
        .and_then(host_string)
        .ok_or_else(|| DecodeError::new(format!("Data.{binding}.Url is missing")))?;
    let headers = match field("Headers") {
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| {
                let vals = match v {
                    Value::Array(a) => a.iter().filter_map(host_string).collect(),
                    v => host_string(v).into_iter().collect(),
                };
                (k.clone(), vals)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let body = match field("Body") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    Ok(HttpRequestData {
        method,
        url,
        query: string_map(field("Query"), binding, "Query")?,
        headers,
        body,
        params: string_map(field("Params"), binding, "Params")?,
    })
}

/// `Query`/`Params` arrive as an object or (docs sample) as the object's JSON text.
fn string_map(
    v: Option<&Value>,
    binding: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, DecodeError> {
    let parsed;
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Map<String, Value>>(s).map_err(|_| {
                DecodeError::new(format!("Data.{binding}.{name} is not a JSON object"))
            })?;
            &parsed
        }
        Some(_) => {
            return Err(DecodeError::new(format!(
                "Data.{binding}.{name} is not an object"
            )))
        }
    };
    Ok(obj
        .iter()
        .filter_map(|(k, v)| host_string(v).map(|s| (k.clone(), s)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_string_unquotes_once() {
        assert_eq!(host_string(&Value::from("\"abc\"")).as_deref(), Some("abc"));
        assert_eq!(host_string(&Value::from("abc")).as_deref(), Some("abc"));
        assert_eq!(
            host_string(&Value::from("\"\\\"x\\\"\"")).as_deref(),
            Some("\"x\"")
        );
        assert_eq!(host_string(&serde_json::json!(3)).as_deref(), Some("3"));
    }

    #[test]
    fn host_times_without_offset_are_utc() {
        let t = parse_host_time("2024-05-01T12:30:00").unwrap();
        assert_eq!(t.offset(), time::UtcOffset::UTC);
        assert_eq!(t.unix_timestamp(), 1_714_566_600);
        assert!(parse_host_time("2024-05-01T12:31:01.9876543+00:00").is_some());
        assert!(parse_host_time("2023-10-12T20:13:49.640002Z").is_some());
        assert!(parse_host_time("yesterday").is_none());
    }

    #[test]
    fn missing_binding_and_wrong_shapes_say_what_is_wrong() {
        let e = decode_service_bus(br#"{"Data":{},"Metadata":{}}"#, "msg").unwrap_err();
        assert_eq!(e.to_string(), "Data.msg is missing");
        let e = decode_service_bus(br#"{"Data":{"msg":"not base64!"}}"#, "msg").unwrap_err();
        assert!(e.to_string().contains("body is not base64"), "{e}");
        let e = decode_service_bus(br#"{"Data":{"msg":{"a":1}}}"#, "msg").unwrap_err();
        assert!(e.to_string().contains("is a JSON object"), "{e}");
        let e = decode_service_bus(b"[1,2]", "msg").unwrap_err();
        assert!(e.to_string().starts_with("invocation is not a JSON"), "{e}");
    }

    proptest! {
        #[test]
        fn binary_body_round_trips(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
            let req = serde_json::json!({"Data": {"msg": b64}, "Metadata": {"DeliveryCount": "3"}});
            let d = decode_service_bus(req.to_string().as_bytes(), "msg").unwrap();
            prop_assert_eq!(d.body, body);
            prop_assert_eq!(d.delivery_count, Some(3));
        }

        #[test]
        fn string_mode_body_round_trips(text in "\\PC{0,64}") {
            let once = serde_json::to_string(&text).unwrap();
            let req = serde_json::json!({"Data": {"msg": once}});
            let d = decode_service_bus(req.to_string().as_bytes(), "msg").unwrap();
            prop_assert_eq!(d.body, text.into_bytes());
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_service_bus(&bytes, "msg");
            let _ = decode_event_grid(&bytes, "ev");
            let _ = decode_timer(&bytes, "t");
            let _ = decode_http(&bytes, "req");
        }
    }
}
