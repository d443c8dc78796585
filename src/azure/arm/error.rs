//! What an ARM call can fail with, and how a failure is classified: transient (retry),
//! ambiguous (the write may have happened: re-read), or final.

use std::error::Error;
use std::time::Duration;

use reqwest::Method;

use crate::azure::credential::CredentialError;
use crate::error::{Chain, Suffix};

/// No variant's text ever contains the bearer token: it is sent in a header, and neither the
/// URLs nor the underlying errors kept here carry headers.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("{method} {path} failed with HTTP {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        method: String,
        path: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, or the body cut short.
    #[error("{method} {path}: transport error: {}", Chain(.source))]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
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
    /// The body is not JSON, or not the JSON expected (a list, the requested type).
    #[error("cannot decode the response of {path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    /// An endpoint, path or link the client will not use, or an HTTP client it cannot build.
    #[error("ARM client configuration: {message}{}", Suffix(.source))]
    Config {
        message: String,
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
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

    /// 408, 429, 5xx (but 501), contention, timeouts (also of an LRO, which may still finish)
    /// and transport errors.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_transient_status(*status) || self.is_contention(),
            Self::Timeout { .. } | Self::Transport { .. } | Self::LroTimeout { .. } => true,
            _ => false,
        }
    }

    /// ARM refusing a write because another operation holds the resource or its VNet: 409
    /// `AnotherOperationInProgress`, 400 `NetcfgInvalidSubnet` (parallel subnet writes in one
    /// VNet, Azure/azure-rest-api-specs#14202), 429 `RetryableErrorDueToAnotherOperation`, and
    /// App Service's 429 "Cannot acquire exclusive lock" (code `429`, ExtendedCode 59206)
    /// (arm-vnet reference §8, §13). `NetcfgInvalidSubnet` also names a malformed subnet, but
    /// the subnets this tool writes always carry a valid prefix of at least /28 inside the
    /// VNet, so from it the code means contention.
    pub fn is_contention(&self) -> bool {
        matches!(
            (self.status(), self.code()),
            (Some(409), Some("AnotherOperationInProgress"))
                | (Some(400), Some("NetcfgInvalidSubnet"))
                | (
                    Some(429),
                    Some("RetryableErrorDueToAnotherOperation" | "429")
                )
        )
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A configuration error of our own making.
    pub(super) fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error caused by `source` (shown after the message).
    pub(super) fn config_from(
        message: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        Self::Config {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Writes whose effect can be checked by reading the resource back (not actions).
pub(super) fn rereadable(method: &Method) -> bool {
    *method == Method::PUT || *method == Method::PATCH || *method == Method::DELETE
}

/// A write failure that does not tell whether the write happened.
pub(super) fn is_ambiguous(e: &ArmError) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses() {
        assert!(is_transient_status(503) && is_transient_status(429) && !is_transient_status(501));
        assert!(!is_transient_status(409));
    }

    fn status(status: u16, code: &str) -> ArmError {
        ArmError::Status {
            status,
            code: code.into(),
            message: String::new(),
            method: "PUT".into(),
            path: "/x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn contention_answers_are_transient() {
        for (s, c) in [
            (409, "AnotherOperationInProgress"),
            (400, "NetcfgInvalidSubnet"),
            (429, "RetryableErrorDueToAnotherOperation"),
            (429, "429"),
        ] {
            let e = status(s, c);
            assert!(e.is_contention() && e.is_transient(), "{s} {c}");
        }
        for (s, c) in [
            (409, "Conflict"),
            (400, "NetcfgSubnetRangesOverlap"),
            (400, "BadRequest"),
        ] {
            let e = status(s, c);
            assert!(!e.is_contention() && !e.is_transient(), "{s} {c}");
        }
        // Throttling is transient, but not contention.
        assert!(status(429, "SubscriptionRequestsThrottled").is_transient());
        assert!(!status(429, "SubscriptionRequestsThrottled").is_contention());
    }

    #[test]
    fn config_errors_show_their_cause_and_keep_it() {
        let plain = ArmError::config("no api-version known");
        assert_eq!(
            plain.to_string(),
            "ARM client configuration: no api-version known"
        );
        assert!(plain.source().is_none());
        let cause = "not a number".parse::<u16>().unwrap_err();
        let caused = ArmError::config_from("invalid port", cause.clone());
        assert_eq!(
            caused.to_string(),
            format!("ARM client configuration: invalid port: {cause}")
        );
        assert_eq!(caused.source().unwrap().to_string(), cause.to_string());
    }

    #[test]
    fn decode_errors_keep_the_json_error() {
        let cause = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let text = cause.to_string();
        let e = ArmError::Decode {
            path: "/x".into(),
            source: cause,
        };
        assert_eq!(
            e.to_string(),
            format!("cannot decode the response of /x: {text}")
        );
        assert_eq!(e.source().unwrap().to_string(), text);
    }
}
