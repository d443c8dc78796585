//! Dead-lettered step messages, as `replay` sees them: one trait for the state file's dead
//! letters and (in Azure) the Service Bus dead-letter queue; which to resend and how they
//! group (pure).

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::message::StepMessage;
use super::queue::{Outgoing, QueueError};
use crate::azure::ResourceId;

/// One dead-lettered message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    /// Where the back end finds it again (a queue row, a lock token).
    pub handle: String,
    pub message_id: String,
    pub reason: String,
    pub delivery_count: u32,
    pub dead_lettered_at: Option<OffsetDateTime>,
    /// The step message, or why its body could not be read (then it cannot be replayed).
    pub message: Result<StepMessage, String>,
}

/// A dead-letter queue: list, and resend one with a new message (the dead-lettered copy is
/// removed only once the resend is committed).
#[async_trait]
pub trait DeadLetters: Send + Sync {
    async fn dead_lettered(&self) -> Result<Vec<DeadLettered>, QueueError>;
    async fn resend(&self, dead: &DeadLettered, message: Outgoing) -> Result<(), QueueError>;

    /// Gives back a listed dead letter that is not resent, untouched (a Service Bus lock is
    /// released at once instead of when it expires). Nothing to do for a state file.
    async fn release(&self, _dead: &DeadLettered) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Which dead letters to replay: every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub run: Option<String>,
    pub apps: Vec<ResourceId>,
    /// Prefix of the dead-letter reason (case-insensitive).
    pub reason: Option<String>,
}

impl Selection {
    pub fn matches(&self, d: &DeadLettered) -> bool {
        let reason_ok = self.reason.as_ref().is_none_or(|r| {
            d.reason
                .to_ascii_lowercase()
                .starts_with(&r.to_ascii_lowercase())
        });
        let (run_ok, app_ok) = match &d.message {
            Ok(m) => (
                self.run.as_ref().is_none_or(|r| m.run.as_str() == r),
                self.apps.is_empty() || self.apps.iter().any(|a| m.target.is_within(a)),
            ),
            // An unreadable message has no run or app to match.
            Err(_) => (self.run.is_none(), self.apps.is_empty()),
        };
        reason_ok && run_ok && app_ok
    }
}

/// Per dead-letter reason: how many, and the first and last time one was dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub count: usize,
    pub first: Option<OffsetDateTime>,
    pub last: Option<OffsetDateTime>,
}

pub fn group(dead: &[&DeadLettered]) -> BTreeMap<String, Group> {
    let mut out: BTreeMap<String, Group> = BTreeMap::new();
    for d in dead {
        let g = out.entry(d.reason.clone()).or_insert(Group {
            count: 0,
            first: None,
            last: None,
        });
        g.count += 1;
        if let Some(at) = d.dead_lettered_at {
            g.first = Some(g.first.map_or(at, |f| f.min(at)));
            g.last = Some(g.last.map_or(at, |l| l.max(at)));
        }
    }
    out
}

/// The message a replay sends: the same step with a fresh MessageId, without anything of
/// its dead-lettering (a dead letter's properties live on the queue row, not in the body).
pub fn replayed(message: &StepMessage) -> StepMessage {
    let mut m = message.clone();
    m.replay += 1;
    m.origin = super::message::Origin::Replay;
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::message::{Origin, RunId, Step};

    fn dead(reason: &str, app: &str, at: i64) -> DeadLettered {
        let target = ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/{app}"
        ))
        .unwrap();
        DeadLettered {
            handle: "1".into(),
            message_id: "m".into(),
            reason: reason.into(),
            delivery_count: 10,
            dead_lettered_at: Some(OffsetDateTime::from_unix_timestamp(at).unwrap()),
            message: Ok(StepMessage::new(
                RunId("r-1".into()),
                target,
                Step::Plan,
                Origin::Cli,
            )),
        }
    }

    #[test]
    fn selection_and_groups() {
        let all = [
            dead("MaxDeliveryCountExceeded", "a", 10),
            dead("MaxDeliveryCountExceeded", "b", 30),
            dead("undecodable", "a", 20),
        ];
        let by_reason = Selection {
            reason: Some("maxdelivery".into()),
            ..Selection::default()
        };
        assert_eq!(all.iter().filter(|d| by_reason.matches(d)).count(), 2);
        let by_app = Selection {
            apps: vec![ResourceId::parse(
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a",
            )
            .unwrap()],
            run: Some("r-1".into()),
            ..Selection::default()
        };
        assert_eq!(all.iter().filter(|d| by_app.matches(d)).count(), 2);
        let other_run = Selection {
            run: Some("r-2".into()),
            ..Selection::default()
        };
        assert_eq!(all.iter().filter(|d| other_run.matches(d)).count(), 0);
        let g = group(&all.iter().collect::<Vec<_>>());
        let max = &g["MaxDeliveryCountExceeded"];
        assert_eq!(max.count, 2);
        assert_eq!(max.first.unwrap().unix_timestamp(), 10);
        assert_eq!(max.last.unwrap().unix_timestamp(), 30);
    }

    #[test]
    fn a_replay_has_a_fresh_message_id_and_the_same_step() {
        let d = dead("x", "a", 1);
        let m = d.message.unwrap();
        let r = replayed(&m);
        assert_ne!(r.message_id(), m.message_id());
        assert_eq!((r.step, &r.target, &r.run), (m.step, &m.target, &m.run));
        assert_ne!(replayed(&r).message_id(), r.message_id());
    }
}
