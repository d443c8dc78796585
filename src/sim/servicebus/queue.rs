//! The broker's records: messages with their peek-lock, queues, and entity naming (a queue or
//! its dead-letter sub-queue; names are case-insensitive).

use std::collections::{BTreeMap, HashSet};

use time::OffsetDateTime;

use crate::azure::servicebus::DEAD_LETTER_QUEUE;

#[derive(Debug, Clone)]
pub(super) struct Lock {
    pub(super) token: String,
    pub(super) until: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(super) struct Message {
    pub(super) seq: i64,
    pub(super) message_id: String,
    pub(super) session_id: Option<String>,
    pub(super) correlation_id: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) label: Option<String>,
    pub(super) body: Vec<u8>,
    pub(super) properties: BTreeMap<String, String>,
    pub(super) enqueued: OffsetDateTime,
    pub(super) visible_at: OffsetDateTime,
    pub(super) lock: Option<Lock>,
    pub(super) delivery_count: u32,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Name as first used (entity names are case-insensitive).
    pub(super) name: String,
    pub(super) messages: BTreeMap<i64, Message>,
    pub(super) seen_ids: HashSet<String>,
    pub(super) next_seq: i64,
    pub(super) completed: u64,
}

impl Queue {
    pub(super) fn push(&mut self, mut m: Message) {
        self.next_seq += 1;
        m.seq = self.next_seq;
        self.messages.insert(m.seq, m);
    }
}

/// Entity = a queue or its dead-letter sub-queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Entity {
    pub(super) queue: String,
    pub(super) dead_letter: bool,
}

impl Entity {
    pub(super) fn key(&self) -> String {
        let q = self.queue.to_ascii_lowercase();
        if self.dead_letter {
            format!("{q}/{}", DEAD_LETTER_QUEUE.to_ascii_lowercase())
        } else {
            q
        }
    }

    pub(super) fn dead_letters_of(queue: &str) -> Entity {
        Entity {
            queue: queue.to_string(),
            dead_letter: true,
        }
    }

    pub(super) fn path(&self, name: &str) -> String {
        if self.dead_letter {
            format!("{name}/{DEAD_LETTER_QUEUE}")
        } else {
            name.to_string()
        }
    }
}
