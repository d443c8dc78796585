//! Service Bus as the pipeline's [`StepSender`]: each outgoing step becomes one Service Bus
//! message (MessageId and SessionId from the step, the step's JSON as the body, scheduled
//! while it is not yet visible), sent with the pipeline-agnostic client in
//! [`crate::azure::servicebus`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::queue::{Outgoing, QueueError, StepSender};
use crate::azure::servicebus::{SendMessage, ServiceBusClient, ServiceBusError};

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
