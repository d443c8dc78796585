//! What a simulated ARM operation answers, before it becomes an HTTP response.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// `None` = empty body (e.g. swift DELETE).
    pub(crate) body: Option<Value>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Reply {
    pub(crate) fn new(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
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
