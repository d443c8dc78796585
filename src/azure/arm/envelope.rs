//! Reading what ARM sends back: JSON bodies, error envelopes, failed operations.

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::attempt::Resp;
use super::error::ArmError;
use super::lro::provisioning_state;
use super::url::strip_query;

/// An empty (or blank) body is `null`.
pub(super) fn parse_body(url: &Url, body: &[u8]) -> Result<Value, ArmError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|source| ArmError::Decode {
        path: url.path().to_string(),
        source,
    })
}

/// A body decoded straight into `T`, with no `Value` in between (a site or a hub VNet is
/// kilobytes of JSON, and building its tree cost as much as decoding it). As `parse_body`
/// then `decode`: a blank body is `null`, malformed JSON is reported against the URL's path,
/// JSON of the wrong shape against `path`.
pub(super) fn parse_as<T: DeserializeOwned>(
    url: &Url,
    path: &str,
    body: &[u8],
) -> Result<T, ArmError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return decode(path, Value::Null);
    }
    serde_json::from_slice(body).map_err(|source| ArmError::Decode {
        path: if source.is_data() {
            strip_query(path)
        } else {
            url.path()
        }
        .to_string(),
        source,
    })
}

pub(super) fn decode<T: DeserializeOwned>(path: &str, v: Value) -> Result<T, ArmError> {
    serde_json::from_value(v).map_err(|source| ArmError::Decode {
        path: strip_query(path).to_string(),
        source,
    })
}

/// A [`ArmError::Decode`] for JSON of the wrong shape; shown as `message` alone.
pub(super) fn shape_error(path: &str, message: impl std::fmt::Display) -> ArmError {
    ArmError::Decode {
        path: path.to_string(),
        source: serde::de::Error::custom(message),
    }
}

pub(super) fn push_items<T: DeserializeOwned>(
    path: &str,
    items: Vec<Value>,
    out: &mut Vec<T>,
) -> Result<(), ArmError> {
    for item in items {
        out.push(decode(path, item)?);
    }
    Ok(())
}

pub(super) fn json_kind(v: &Value) -> &'static str {
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
pub(super) fn error_envelope(body: &[u8], status: u16) -> (String, String) {
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

pub(super) fn status_error(method: &Method, url: &Url, resp: &Resp) -> ArmError {
    let (code, message) = error_envelope(&resp.body, resp.status);
    ArmError::Status {
        status: resp.status,
        code,
        message,
        method: method.to_string(),
        path: url.path().to_string(),
        retry_after: resp.retry_after,
    }
}

/// LroFailed from an operation status body or a resource in a failed provisioning state.
pub(super) fn lro_failed(url: &Url, v: &Value) -> ArmError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn shape_errors_read_as_their_message() {
        let e = shape_error(
            "/x",
            format_args!("expected a list, got {}", json_kind(&json!({}))),
        );
        assert_eq!(
            e.to_string(),
            "cannot decode the response of /x: expected a list, got an object"
        );
    }

    #[test]
    fn lro_failure_code_falls_back_to_the_state() {
        let url = Url::parse("http://127.0.0.1/subscriptions/s/x").unwrap();
        let e = lro_failed(
            &url,
            &json!({"properties": {"provisioningState": "Canceled"}}),
        );
        assert_eq!(e.code(), Some("canceled"));
        let e = lro_failed(
            &url,
            &json!({"status": "Failed", "error": {"code": "Conflict", "message": "busy"}}),
        );
        assert_eq!(e.code(), Some("Conflict"));
        assert!(e.to_string().ends_with("Conflict: busy"), "{e}");
    }
}
