//! The queue the pipeline runs on. In Azure it is Service Bus (the Functions host receives;
//! the handler only sends next steps); on one machine it is the embedded SQLite queue.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::message::StepMessage;
use crate::error::{BoxError, Suffix};

/// A message to enqueue, visible from `visible_at` (Service Bus `ScheduledEnqueueTimeUtc`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: StepMessage,
    pub visible_at: OffsetDateTime,
}

impl Outgoing {
    pub fn now(message: StepMessage) -> Self {
        Outgoing {
            message,
            visible_at: OffsetDateTime::now_utc(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage error: {message}{}", Suffix(.source))]
    Storage {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("queue service error: {0}")]
    Service(#[source] BoxError),
    #[error("message lock lost or already settled: {0}")]
    LockLost(String),
}

impl QueueError {
    /// A storage failure: what we were doing, and the error underneath (if any).
    pub(crate) fn storage(message: impl Into<String>, source: Option<BoxError>) -> Self {
        QueueError::Storage {
            message: message.into(),
            source,
        }
    }
}

/// Sends next steps. Duplicate MessageIds are dropped by the queue (duplicate detection), so
/// sending the same next step twice is harmless.
#[async_trait]
pub trait StepSender: Send + Sync {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), QueueError>;
}
