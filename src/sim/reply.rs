//! What a simulated ARM operation answers, before it becomes an HTTP response.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// `None` = empty body (e.g. swift DELETE), or the body is `text`.
    pub(crate) body: Option<Value>,
    /// A JSON body already serialized: a large resource answered as stored (`Reply::stored`).
    pub(crate) text: Option<Box<[u8]>>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Reply {
    pub(crate) fn new(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            text: None,
            headers: Vec::new(),
        }
    }

    /// 200 with `v` serialized as it is, without a copy of it: a hub VNet holds every
    /// integration subnet, so a copy per GET grew with the fleet (10,000 targets: the GET took
    /// 4.7 % of a rehearsal's samples with the copy, 3.9 % without, its serialization).
    pub(crate) fn stored(v: &Value) -> Self {
        Self {
            status: 200,
            body: None,
            text: Some(serde_json::to_vec(v).expect("a value serializes").into()),
            headers: Vec::new(),
        }
    }

    pub(crate) fn ok(body: Value) -> Self {
        Self::new(200, body)
    }

    pub(crate) fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            text: None,
            headers: Vec::new(),
        }
    }

    /// ARM's error envelope `{"error":{"code","message"}}`.
    pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::new(
            status,
            json!({"error": {"code": code, "message": message.into()}}),
        )
    }

    pub(crate) fn not_found(id: &str) -> Self {
        Self::error(
            404,
            "ResourceNotFound",
            format!("The Resource '{id}' was not found."),
        )
    }

    pub(crate) fn not_simulated(what: &str) -> Self {
        Self::error(
            404,
            "NotSimulated",
            format!("{what} is not simulated by vnet-migrate's ARM simulator."),
        )
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Per-request facts behaviours need to build URLs (LRO status links, nextLinks).
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// `http://host:port` as the client addressed us.
    pub(crate) base: String,
    pub(crate) api_version: String,
}
