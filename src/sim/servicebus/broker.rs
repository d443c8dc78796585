//! The in-memory broker: enqueue with duplicate detection and schedules, session-aware
//! peek-lock receive, complete / abandon / renew by lock token, delivery counts and
//! dead-lettering, plus the inspection tests use (counts, dead letters).

use std::collections::{BTreeMap, HashMap, HashSet};

use time::OffsetDateTime;

use crate::azure::servicebus::{parse_rfc1123, BrokerProperties};

use super::queue::{Entity, Lock, Message, Queue};
use super::{DeadLetter, QueueCounts, ServiceBusFake};

/// How a peek-locked message is settled (REST: DELETE, PUT, POST on its lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settlement {
    Complete,
    Abandon,
    Renew,
}

impl ServiceBusFake {
    pub fn counts(&self, queue: &str) -> QueueCounts {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, queue, now);
        counts_of(&queues, queue, now)
    }

    /// Whether `n` more messages would exceed the queue's quota.
    pub(super) fn over_quota(&self, queue: &str, n: usize) -> bool {
        let Some(max) = self.inner.opts.max_queue_messages else {
            return false;
        };
        let queues = self.inner.queues.lock().expect("queues");
        let held = queues
            .get(&queue.to_ascii_lowercase())
            .map_or(0, |q| q.messages.len());
        (held + n) as u64 > max
    }

    /// Dead-lettered messages of `queue`, oldest first, without locking them.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        let queues = self.inner.queues.lock().expect("queues");
        let Some(dlq) = queues.get(&Entity::dead_letters_of(queue).key()) else {
            return Vec::new();
        };
        dlq.messages
            .values()
            .map(|m| DeadLetter {
                message_id: m.message_id.clone(),
                session_id: m.session_id.clone(),
                body: m.body.clone(),
                reason: m
                    .properties
                    .get("DeadLetterReason")
                    .cloned()
                    .unwrap_or_default(),
                description: m.properties.get("DeadLetterErrorDescription").cloned(),
                delivery_count: m.delivery_count,
            })
            .collect()
    }

    fn lock_duration(&self) -> time::Duration {
        time::Duration::try_from(self.inner.opts.lock_duration).unwrap_or(time::Duration::MINUTE)
    }

    /// Expired locks are released; a message whose deliveries are spent is dead-lettered.
    fn expire_locks(&self, queues: &mut HashMap<String, Queue>, queue: &str, now: OffsetDateTime) {
        for dead_letter in [false, true] {
            let entity = Entity {
                queue: queue.to_string(),
                dead_letter,
            };
            let Some(q) = queues.get_mut(&entity.key()) else {
                continue;
            };
            let expired: Vec<i64> = q
                .messages
                .values()
                .filter(|m| m.lock.as_ref().is_some_and(|l| l.until <= now))
                .map(|m| m.seq)
                .collect();
            for seq in expired {
                self.release(queues, &entity, seq);
            }
        }
    }

    /// Unlocks a message (abandon or lock expiry).
    fn release(&self, queues: &mut HashMap<String, Queue>, entity: &Entity, seq: i64) {
        let Some(q) = queues.get_mut(&entity.key()) else {
            return;
        };
        let Some(m) = q.messages.get_mut(&seq) else {
            return;
        };
        m.lock = None;
        // The dead-letter queue itself never dead-letters.
        if !entity.dead_letter && m.delivery_count >= self.inner.opts.max_delivery_count {
            let desc = format!(
                "Message could not be consumed after {} delivery attempts.",
                m.delivery_count
            );
            move_to_dead_letters(
                queues,
                &entity.queue,
                seq,
                "MaxDeliveryCountExceeded",
                Some(&desc),
            );
        }
    }

    pub(super) fn enqueue(
        &self,
        queue: &str,
        items: Vec<(BrokerProperties, Vec<u8>, BTreeMap<String, String>)>,
    ) {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        let key = queue.to_ascii_lowercase();
        let q = queues.entry(key).or_insert_with(|| Queue {
            name: queue.to_string(),
            ..Default::default()
        });
        for (bp, body, properties) in items {
            let message_id = bp
                .message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            // Duplicate detection: accepted and silently dropped, as the service does.
            if !q.seen_ids.insert(message_id.clone()) {
                continue;
            }
            let visible_at = bp
                .scheduled_enqueue_time_utc
                .as_deref()
                .and_then(parse_rfc1123)
                .unwrap_or(now);
            q.push(Message {
                seq: 0,
                message_id,
                session_id: bp.session_id,
                correlation_id: bp.correlation_id,
                content_type: bp.content_type,
                label: bp.label,
                body,
                properties,
                enqueued: now,
                visible_at,
                lock: None,
                delivery_count: 0,
            });
        }
        drop(queues);
        self.inner.changed.notify_waiters();
    }

    /// Locks and returns the next deliverable message of `entity`, if any.
    pub(super) fn try_lock_next(&self, entity: &Entity) -> Option<(String, Message)> {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, &entity.queue, now);
        let q = queues.get_mut(&entity.key())?;
        let busy_sessions: HashSet<String> = q
            .messages
            .values()
            .filter(|m| m.lock.is_some())
            .filter_map(|m| m.session_id.clone())
            .collect();
        let until = now + self.lock_duration();
        let m = q.messages.values_mut().find(|m| {
            m.lock.is_none()
                && m.visible_at <= now
                && (entity.dead_letter
                    || m.session_id
                        .as_ref()
                        .is_none_or(|s| !busy_sessions.contains(s)))
        })?;
        m.lock = Some(Lock {
            token: uuid::Uuid::new_v4().to_string(),
            until,
        });
        m.delivery_count += 1;
        Some((q.name.clone(), m.clone()))
    }

    /// Complete / abandon / renew by lock token. `None` = lock not found (lost or settled).
    pub(super) fn settle(
        &self,
        entity: &Entity,
        id: &str,
        token: &str,
        how: Settlement,
    ) -> Option<OffsetDateTime> {
        let now = self.now();
        let mut queues = self.inner.queues.lock().expect("queues");
        self.expire_locks(&mut queues, &entity.queue, now);
        let q = queues.get_mut(&entity.key())?;
        let m = q.messages.values_mut().find(|m| {
            m.lock.as_ref().is_some_and(|l| l.token == token)
                && (m.seq.to_string() == id || m.message_id == id)
        })?;
        let seq = m.seq;
        let result = match how {
            Settlement::Complete => {
                q.messages.remove(&seq);
                q.completed += 1;
                now
            }
            Settlement::Abandon => {
                self.release(&mut queues, entity, seq);
                now
            }
            Settlement::Renew => {
                let until = now + self.lock_duration();
                if let Some(l) = m.lock.as_mut() {
                    l.until = until;
                }
                until
            }
        };
        drop(queues);
        self.inner.changed.notify_waiters();
        Some(result)
    }

    /// Display names of the queues that have messages or dead letters, for `GET /_sb/stats`.
    pub(super) fn queue_names(&self) -> Vec<String> {
        let queues = self.inner.queues.lock().expect("queues");
        let mut names: Vec<String> = queues
            .iter()
            .filter(|(k, _)| !k.contains('/'))
            .map(|(_, q)| q.name.clone())
            .collect();
        // A queue whose every message was dead-lettered still shows up.
        for (k, q) in queues.iter() {
            if k.contains('/') && !queues.contains_key(&q.name.to_ascii_lowercase()) {
                names.push(q.name.clone());
            }
        }
        names
    }
}

fn move_to_dead_letters(
    queues: &mut HashMap<String, Queue>,
    queue: &str,
    seq: i64,
    reason: &str,
    description: Option<&str>,
) {
    let main = Entity {
        queue: queue.to_string(),
        dead_letter: false,
    };
    let Some(mut m) = queues
        .get_mut(&main.key())
        .and_then(|q| q.messages.remove(&seq))
    else {
        return;
    };
    m.lock = None;
    m.properties
        .insert("DeadLetterReason".into(), reason.to_string());
    if let Some(d) = description {
        m.properties
            .insert("DeadLetterErrorDescription".into(), d.to_string());
    }
    let dlq = Entity::dead_letters_of(queue);
    queues
        .entry(dlq.key())
        .or_insert_with(|| Queue {
            name: queue.to_string(),
            ..Default::default()
        })
        .push(m);
}

fn counts_of(queues: &HashMap<String, Queue>, queue: &str, now: OffsetDateTime) -> QueueCounts {
    let mut c = QueueCounts::default();
    if let Some(q) = queues.get(&queue.to_ascii_lowercase()) {
        c.completed = q.completed;
        for m in q.messages.values() {
            if m.lock.is_some() {
                c.locked += 1;
            } else if m.visible_at > now {
                c.scheduled += 1;
            } else {
                c.active += 1;
            }
        }
    }
    if let Some(d) = queues.get(&Entity::dead_letters_of(queue).key()) {
        c.dead = d.messages.len() as u64;
    }
    c
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bp(id: &str, session: Option<&str>) -> BrokerProperties {
        BrokerProperties {
            message_id: Some(id.into()),
            session_id: session.map(str::to_string),
            ..Default::default()
        }
    }

    fn main(q: &str) -> Entity {
        Entity {
            queue: q.into(),
            dead_letter: false,
        }
    }

    #[test]
    fn lock_expiry_redelivers_and_counts_deliveries() {
        let fake = ServiceBusFake::default();
        fake.enqueue("q", vec![(bp("m1", None), b"x".to_vec(), BTreeMap::new())]);
        let (_, first) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(first.delivery_count, 1);
        assert!(fake.try_lock_next(&main("q")).is_none());
        assert_eq!(fake.counts("q").locked, 1);
        fake.advance_clock(Duration::from_secs(61));
        let (_, again) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(again.delivery_count, 2);
        assert_ne!(again.lock.unwrap().token, first.lock.unwrap().token);
    }

    #[test]
    fn session_messages_are_delivered_one_at_a_time_in_order() {
        let fake = ServiceBusFake::default();
        let items = ["a1", "a2", "b1"]
            .iter()
            .map(|id| (bp(id, Some(&id[..1])), Vec::new(), BTreeMap::new()))
            .collect();
        fake.enqueue("Q", items);
        let (_, a1) = fake.try_lock_next(&main("q")).unwrap();
        let (_, b1) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(
            (a1.message_id.as_str(), b1.message_id.as_str()),
            ("a1", "b1")
        );
        assert!(fake.try_lock_next(&main("q")).is_none(), "a2 waits for a1");
        let token = a1.lock.unwrap().token;
        assert!(fake
            .settle(&main("q"), "1", &token, Settlement::Complete)
            .is_some());
        let (_, a2) = fake.try_lock_next(&main("q")).unwrap();
        assert_eq!(a2.message_id, "a2");
    }
}
