//! Service Bus as the pipeline's [`StepSender`]: each outgoing step becomes one Service Bus
//! message (MessageId and SessionId from the step, the step's JSON as the body, scheduled
//! while it is not yet visible), sent with the pipeline-agnostic client in
//! [`crate::azure::servicebus`]; and the steps queue's dead-letter sub-queue as the
//! [`DeadLetters`] `replay --dlq` reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::dead_letters::{DeadLettered, DeadLetters};
use super::message::StepMessage;
use super::queue::{Outgoing, QueueError, StepSender};
use crate::azure::servicebus::{ReceivedMessage, SendMessage, ServiceBusClient, ServiceBusError};

/// The Service Bus message for one outgoing step. A `visible_at` in the past or now is sent
/// without a scheduled enqueue time (available at once).
pub(crate) fn send_message(o: &Outgoing) -> SendMessage {
    let scheduled = (o.visible_at > OffsetDateTime::now_utc()).then_some(o.visible_at);
    SendMessage {
        body: o.message.encode(),
        message_id: Some(o.message.message_id()),
        session_id: Some(o.message.session_id()),
        scheduled_enqueue_time: scheduled,
        content_type: Some("application/json".into()),
        correlation_id: o.message.trace.clone(),
        properties: BTreeMap::new(),
    }
}

fn queue_error(e: ServiceBusError) -> QueueError {
    match e {
        ServiceBusError::LockLost { .. } => QueueError::LockLost(e.to_string()),
        e => QueueError::Service(Box::new(e)),
    }
}

/// One step: a single send; several: batches. Duplicate MessageIds are dropped by the
/// queue's duplicate detection.
#[async_trait]
impl StepSender for ServiceBusClient {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let msgs: Vec<SendMessage> = messages.iter().map(send_message).collect();
        self.send_messages(&msgs).await.map_err(queue_error)
    }
}

/// The dead-letter sub-queue (`{queue}/$DeadLetterQueue`) of the client's queue. Listing
/// peek-locks every dead letter (REST has no browse; servicebus reference §A4) and keeps the
/// locks; a resend sends the new message to the queue and completes the dead letter only
/// after the send succeeded, so a failure loses nothing. Send and complete are not atomic: if
/// the complete fails the dead letter stays, and replaying it again sends the same MessageId
/// (`replayed` of the same body), which duplicate detection drops within its window.
pub(crate) struct ServiceBusDeadLetters {
    client: ServiceBusClient,
    /// Locked dead letters by handle (their lock URI).
    locked: Mutex<HashMap<String, ReceivedMessage>>,
}

impl ServiceBusDeadLetters {
    pub(crate) fn new(client: ServiceBusClient) -> Self {
        ServiceBusDeadLetters {
            client,
            locked: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, dead: &DeadLettered) -> Result<ReceivedMessage, QueueError> {
        self.locked
            .lock()
            .expect("dead-letter locks")
            .remove(&dead.handle)
            .ok_or_else(|| QueueError::LockLost(dead.message_id.clone()))
    }
}

/// A received dead letter as `replay` sees it. REST carries no dead-lettering time (the
/// broker's `EnqueuedTimeUtc` is the original send), so there is none.
fn dead_lettered(m: &ReceivedMessage) -> DeadLettered {
    DeadLettered {
        handle: m.lock_uri.clone(),
        message_id: m.broker.message_id.clone().unwrap_or_default(),
        reason: m.dead_letter_reason().unwrap_or_default().to_string(),
        delivery_count: m.broker.delivery_count.unwrap_or_default(),
        dead_lettered_at: None,
        message: StepMessage::decode(&m.body).map_err(|e| e.to_string()),
    }
}

#[async_trait]
impl DeadLetters for ServiceBusDeadLetters {
    async fn dead_lettered(&self) -> Result<Vec<DeadLettered>, QueueError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        while let Some(m) = self
            .client
            .receive_dead_letter(Duration::ZERO)
            .await
            .map_err(queue_error)?
        {
            // A lock that expired during a long listing hands its message out again: the
            // listing has gone round once.
            if !seen.insert(m.broker.sequence_number) {
                self.client.abandon(&m).await.map_err(queue_error)?;
                break;
            }
            out.push(dead_lettered(&m));
            self.locked
                .lock()
                .expect("dead-letter locks")
                .insert(m.lock_uri.clone(), m);
        }
        Ok(out)
    }

    async fn resend(&self, dead: &DeadLettered, message: Outgoing) -> Result<(), QueueError> {
        let m = self.take(dead)?;
        // A fresh message: the dead-letter properties are not copied (they live on the
        // received message, not in the step's body).
        if let Err(e) = self.client.send(&send_message(&message)).await {
            // Unlocked at once for the next replay; were the abandon lost too, the lock
            // would still expire and leave the dead letter where it is.
            if let Err(unlock) = self.client.abandon(&m).await {
                tracing::warn!("dead letter {}: {unlock}", dead.message_id);
            }
            return Err(queue_error(e));
        }
        self.client.complete(&m).await.map_err(queue_error)
    }

    async fn release(&self, dead: &DeadLettered) -> Result<(), QueueError> {
        let m = self.take(dead)?;
        self.client.abandon(&m).await.map_err(queue_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::servicebus::parse_rfc1123;
    use crate::azure::ResourceId;
    use crate::pipeline::message::{Origin, RunId, Step, StepMessage};

    #[test]
    fn step_message_maps_to_broker_properties() {
        let target = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/App1",
        )
        .unwrap();
        let m = StepMessage::new(RunId("r-1".into()), target, Step::Discover, Origin::Cli);
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let out = Outgoing {
            message: m.clone(),
            visible_at: later,
        };
        let bp = send_message(&out).broker_properties();
        assert_eq!(bp.message_id, Some(m.message_id()));
        assert_eq!(bp.session_id, Some(m.session_id()));
        assert_eq!(bp.content_type.as_deref(), Some("application/json"));
        let sched = parse_rfc1123(bp.scheduled_enqueue_time_utc.as_deref().unwrap()).unwrap();
        assert_eq!(sched.unix_timestamp(), later.unix_timestamp());
        let now = send_message(&Outgoing::now(m.clone())).broker_properties();
        assert_eq!(now.scheduled_enqueue_time_utc, None);
        assert_eq!(send_message(&out).body, m.encode());
    }

    #[test]
    fn lost_locks_stay_lost_locks() {
        assert!(matches!(
            queue_error(ServiceBusError::LockLost { op: "send" }),
            QueueError::LockLost(_)
        ));
        assert!(matches!(
            queue_error(ServiceBusError::Status {
                op: "send",
                status: 500,
                detail: String::new()
            }),
            QueueError::Service(_)
        ));
    }
}
