//! The invocation response (reference/functions-host.md §3):
//! `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`, always JSON with
//! `Content-Type: application/json` — an empty 2xx body hangs the invocation until timeout.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Builder and wire form of the response. `Logs` may be `null` in the host's samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs", default, deserialize_with = "null_default")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs", default, deserialize_with = "null_default")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue", default)]
    pub return_value: Value,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl InvocationResponse {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A line logged by the host against this invocation.
    pub(crate) fn log(mut self, line: impl Into<String>) -> Self {
        self.logs.push(line.into());
        self
    }

    pub(crate) fn output(mut self, binding: impl Into<String>, value: Value) -> Self {
        self.outputs.insert(binding.into(), value);
        self
    }

    /// An HTTP-trigger output: `Outputs.<binding> = {statusCode, body, headers}`; a JSON body
    /// is sent as its text with `Content-Type: application/json`.
    pub(crate) fn http(self, binding: &str, status: u16, body: &Value) -> Self {
        let (text, ctype) = match body {
            Value::String(s) => (s.clone(), "text/plain; charset=utf-8"),
            v => (v.to_string(), "application/json"),
        };
        let headers: BTreeMap<&str, &str> = [("Content-Type", ctype)].into();
        self.output(
            binding,
            serde_json::json!({ "statusCode": status, "body": text, "headers": headers }),
        )
    }

    /// 200: the invocation succeeded (Service Bus completes the message).
    pub(crate) fn ok(self) -> Response {
        self.with_status(StatusCode::OK)
    }

    /// 500: the host fails the invocation, so Service Bus abandons and redelivers the message.
    pub(crate) fn redeliver(self) -> Response {
        self.with_status(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn with_status(self, status: StatusCode) -> Response {
        let body = serde_json::to_value(&self).unwrap_or_else(|_| Value::Object(Map::new()));
        json_response(status, &body)
    }
}

impl IntoResponse for InvocationResponse {
    fn into_response(self) -> Response {
        self.ok()
    }
}

/// Any JSON body with the right content type; `null` becomes `{}` so a 2xx is never empty.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let text = match body {
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    };
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> (StatusCode, String, Value) {
        let status = resp.status();
        let ctype = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn empty_success_is_still_a_json_object() {
        let (status, ctype, v) = body_of(json_response(StatusCode::OK, &Value::Null)).await;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::OK, "application/json")
        );
        assert_eq!(v, serde_json::json!({}));
        let (status, _, v) = body_of(InvocationResponse::new().log("why").redeliver()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            v,
            serde_json::json!({"Outputs": {}, "Logs": ["why"], "ReturnValue": null})
        );
    }

    #[tokio::test]
    async fn http_output_carries_status_body_and_headers() {
        let resp =
            InvocationResponse::new().http("res", 404, &serde_json::json!({"error": "no run"}));
        let (_, _, v) = body_of(resp.ok()).await;
        assert_eq!(v["Outputs"]["res"]["statusCode"], 404);
        assert_eq!(v["Outputs"]["res"]["body"], r#"{"error":"no run"}"#);
        assert_eq!(
            v["Outputs"]["res"]["headers"]["Content-Type"],
            "application/json"
        );
    }
}
