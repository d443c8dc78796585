//! The queue half of the store: send, receive (sessions, scheduled visibility, leases,
//! delivery counts, per-subscription admission), settle and dead-letter.
//!
//! Every hot path is an index lookup: `receive` walks the session heads of each subscription
//! with room (`queue_heads`), sending and settling find a session's first message through
//! `queue_sessions`, and duplicate detection is a primary-key probe in `message_ids`.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};
use time::OffsetDateTime;

use super::columns::UnixMs;
use super::ledger::record_tx;
use super::{storage, SqliteStore};
use crate::pipeline::ledger::StepRecord;
use crate::pipeline::queue::{Outgoing, QueueError, StepSender};

/// A message handed to a worker, locked until its lease ends.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) seq: i64,
    pub(crate) message_id: String,
    session_id: String,
    /// The lower-cased subscription of the target: the runner's admission unit.
    pub(crate) subscription: String,
    pub(crate) body: Vec<u8>,
    pub(crate) delivery_count: u32,
    pub(crate) lock_token: String,
}

/// A dead-lettered message and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub delivery_count: u32,
}

/// A deliverable session head as `receive` picks it, before its body is read.
struct Candidate {
    seq: i64,
    message_id: String,
    session_id: String,
    subscription: String,
    delivery_count: u32,
}

/// The subscriptions that have messages waiting, one index seek each (a skip-scan of
/// `queue_heads`, which is led by the subscription): no scan of the queue.
const SUBSCRIPTIONS: &str = "
WITH RECURSIVE subs(s) AS (
  SELECT (SELECT subscription FROM queue WHERE state='active' AND head=1 ORDER BY subscription LIMIT 1)
  UNION ALL
  SELECT (SELECT subscription FROM queue WHERE state='active' AND head=1 AND subscription>subs.s ORDER BY subscription LIMIT 1)
  FROM subs WHERE subs.s IS NOT NULL
)";

impl SqliteStore {
    /// Enqueues messages, dropping those whose MessageId the queue has accepted before
    /// (active, completed or dead: Service Bus duplicate detection). A message becomes its
    /// session's head when the session has no active message or when it orders before the
    /// current head; a leased head keeps its place (the message is made visible no earlier
    /// than it), so a session never has two messages in flight.
    fn insert(tx: &Transaction<'_>, messages: &[Outgoing]) -> Result<(), QueueError> {
        let mut accept = tx
            .prepare_cached("INSERT OR IGNORE INTO message_ids (message_id) VALUES (?1)")
            .map_err(storage)?;
        let mut head_of = tx
            .prepare_cached(
                "SELECT seq, visible_at, lock_token IS NOT NULL FROM queue
                 WHERE session_id=?1 AND state='active' ORDER BY visible_at, seq LIMIT 1",
            )
            .map_err(storage)?;
        let mut demote = tx
            .prepare_cached("UPDATE queue SET head=0 WHERE seq=?1")
            .map_err(storage)?;
        let mut add = tx
            .prepare_cached("INSERT INTO queue (message_id, session_id, subscription, body, visible_at, head) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .map_err(storage)?;
        for m in messages {
            let id = m.message.message_id();
            if accept.execute(params![id]).map_err(storage)? == 0 {
                continue;
            }
            let session = m.message.session_id();
            let mut visible_at = UnixMs::at(m.visible_at);
            let head: Option<(i64, UnixMs, bool)> = head_of
                .query_row(params![session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(storage)?;
            let is_head = match head {
                None => true,
                Some((_, at, true)) => {
                    visible_at = visible_at.max(at);
                    false
                }
                Some((seq, at, false)) if visible_at < at => {
                    demote.execute(params![seq]).map_err(storage)?;
                    true
                }
                Some(_) => false,
            };
            add.execute(params![
                id,
                session,
                m.message.target.subscription().to_ascii_lowercase(),
                m.message.encode(),
                visible_at,
                is_head
            ])
            .map_err(storage)?;
        }
        Ok(())
    }

    /// Makes the first active message of `session` (if any) its head: called when the head
    /// leaves (settled or dead-lettered).
    fn promote(tx: &Transaction<'_>, session: &str) -> Result<(), QueueError> {
        tx.prepare_cached(
            "UPDATE queue SET head=1 WHERE seq=(SELECT seq FROM queue WHERE session_id=?1 AND state='active' ORDER BY visible_at, seq LIMIT 1)",
        )
        .and_then(|mut s| s.execute(params![session]))
        .map_err(storage)?;
        Ok(())
    }

    /// Locks and returns the oldest visible, unleased session head among the subscriptions
    /// not in `full` (those at the runner's per-subscription limit), or None. Each
    /// subscription offers its own oldest head and the oldest of those wins, so a backlog in
    /// a full subscription never hides another subscription's work. A message already
    /// delivered `max_delivery_count` times is dead-lettered instead.
    pub(crate) fn receive(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        full: &[&str],
    ) -> Result<Option<Delivery>, QueueError> {
        let now = UnixMs::at(now);
        let full = serde_json::to_string(full).expect("strings serialise");
        self.transaction(storage, |tx| {
            while let Some(c) = Self::candidate(tx, now, &full)? {
                if c.delivery_count < self.max_delivery_count {
                    return Self::lock(tx, c, now.after(lease)).map(Some);
                }
                Self::retire_dead(tx, c.seq, &c.session_id, "MaxDeliveryCountExceeded")?;
            }
            Ok(None)
        })
    }

    /// The oldest deliverable head of the subscriptions not in `full` (a JSON array).
    fn candidate(
        tx: &Transaction<'_>,
        now: UnixMs,
        full: &str,
    ) -> Result<Option<Candidate>, QueueError> {
        // Per subscription, the walk skips only the leased heads (at most the subscription's
        // in-flight limit) before it finds a deliverable one.
        let sql = format!(
            "{SUBSCRIPTIONS}
            SELECT q.seq, q.message_id, q.session_id, q.subscription, q.delivery_count
            FROM subs JOIN queue q ON q.seq=(
              SELECT h.seq FROM queue h
              WHERE h.state='active' AND h.head=1 AND h.subscription=subs.s AND h.visible_at<=?1
                AND (h.locked_until IS NULL OR h.locked_until<=?1)
              ORDER BY h.visible_at, h.seq LIMIT 1)
            WHERE subs.s NOT IN (SELECT value FROM json_each(?2))
            ORDER BY q.visible_at, q.seq LIMIT 1"
        );
        tx.prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![now, full], |r| {
                    Ok(Candidate {
                        seq: r.get(0)?,
                        message_id: r.get(1)?,
                        session_id: r.get(2)?,
                        subscription: r.get(3)?,
                        delivery_count: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(storage)
    }

    /// Leases a candidate until `until` under a fresh lock token and reads its body. Only the
    /// row changes: no index covers the lease columns.
    fn lock(tx: &Transaction<'_>, c: Candidate, until: UnixMs) -> Result<Delivery, QueueError> {
        let token = uuid::Uuid::new_v4().to_string();
        let body: Vec<u8> = tx
            .prepare_cached("UPDATE queue SET lock_token=?1, locked_until=?2, delivery_count=delivery_count+1 WHERE seq=?3 RETURNING body")
            .and_then(|mut s| s.query_row(params![token, until, c.seq], |r| r.get(0)))
            .map_err(storage)?;
        Ok(Delivery {
            seq: c.seq,
            message_id: c.message_id,
            session_id: c.session_id,
            subscription: c.subscription,
            body,
            delivery_count: c.delivery_count + 1,
            lock_token: token,
        })
    }

    /// When the runner should look again: the earliest future visibility of a session head
    /// in a subscription not in `full` (one index seek per subscription). Heads of full
    /// subscriptions wait for a worker to finish; messages behind a head for the head.
    pub(crate) fn next_visible_at(
        &self,
        now: OffsetDateTime,
        full: &[&str],
    ) -> Result<Option<OffsetDateTime>, QueueError> {
        let sql = format!(
            "{SUBSCRIPTIONS}
            SELECT MIN((SELECT h.visible_at FROM queue h
                        WHERE h.state='active' AND h.head=1 AND h.subscription=subs.s AND h.visible_at>?1
                        ORDER BY h.visible_at LIMIT 1))
            FROM subs WHERE subs.s IS NOT NULL AND subs.s NOT IN (SELECT value FROM json_each(?2))"
        );
        let full = serde_json::to_string(full).expect("strings serialise");
        let v: Option<UnixMs> = self
            .conn()
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params![UnixMs::at(now), full], |r| r.get(0)))
            .map_err(storage)?;
        Ok(v.map(UnixMs::datetime))
    }

    fn check_lock(tx: &Transaction<'_>, d: &Delivery) -> Result<(), QueueError> {
        let token: Option<String> = tx
            .prepare_cached("SELECT lock_token FROM queue WHERE seq=?1 AND state='active'")
            .and_then(|mut s| s.query_row(params![d.seq], |r| r.get(0)).optional())
            .map_err(storage)?
            .flatten();
        if token.as_deref() != Some(d.lock_token.as_str()) {
            return Err(QueueError::LockLost(d.message_id.clone()));
        }
        Ok(())
    }

    /// Completes a delivery, enqueues its next steps and records the step, atomically. The
    /// completed row is deleted; its MessageId stays in `message_ids`, so a re-sent copy is
    /// still dropped.
    pub(crate) fn commit(
        &self,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
    ) -> Result<(), QueueError> {
        self.transaction(storage, |tx| {
            Self::check_lock(tx, d)?;
            tx.prepare_cached("DELETE FROM queue WHERE seq=?1")
                .and_then(|mut s| s.execute(params![d.seq]))
                .map_err(storage)?;
            Self::promote(tx, &d.session_id)?;
            Self::insert(tx, next)?;
            if let Some(r) = record {
                record_tx(tx, r)
                    .map_err(|e| QueueError::storage("recording the step", Some(Box::new(e))))?;
            }
            Ok(())
        })
    }

    pub(crate) fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.transaction(storage, |tx| {
            Self::check_lock(tx, d)?;
            Self::retire_dead(tx, d.seq, &d.session_id, reason)
        })
    }

    /// Moves a session head to the dead letters; the next message of its session leads.
    fn retire_dead(
        tx: &Transaction<'_>,
        seq: i64,
        session: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        tx.execute(
            "UPDATE queue SET state='dead', head=0, dead_reason=?2, lock_token=NULL, locked_until=NULL WHERE seq=?1",
            params![seq, reason],
        )
        .map_err(storage)?;
        Self::promote(tx, session)
    }

    /// Messages the runner could not execute (undecodable, or delivered too often), oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT message_id, dead_reason, delivery_count FROM queue WHERE state='dead' ORDER BY seq").map_err(storage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetter {
                    message_id: r.get(0)?,
                    reason: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    delivery_count: r.get(2)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)
    }

    /// Signalled when `send` enqueued messages.
    pub(crate) fn sent(&self) -> &tokio::sync::Notify {
        &self.sent
    }
}

#[async_trait]
impl StepSender for SqliteStore {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        self.transaction(storage, |tx| Self::insert(tx, &messages))?;
        self.sent.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{msg, now, store, LEASE};
    use super::*;
    use crate::pipeline::ledger::Ledger;
    use crate::pipeline::message::{Step, StepMessage};

    #[tokio::test]
    async fn duplicate_message_ids_are_dropped() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.send(vec![Outgoing::now(m.clone()), Outgoing::now(m.clone())])
            .await
            .unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.commit(&d, &[], None).unwrap();
        // Re-sending after completion is still a duplicate.
        s.send(vec![Outgoing::now(m)]).await.unwrap();
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none());
        assert_eq!(s.counts().unwrap().completed, 1);
    }

    #[tokio::test]
    async fn one_message_in_flight_per_session() {
        let (_d, s) = store();
        let a1 = msg("a", Step::Discover);
        let mut a2 = msg("a", Step::Plan);
        a2.attempt = 3;
        let b = msg("b", Step::Discover);
        s.send(vec![Outgoing::now(a1), Outgoing::now(a2), Outgoing::now(b)])
            .await
            .unwrap();
        let session = |d: &Delivery| StepMessage::decode(&d.body).unwrap().session_id();
        let first = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let second = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_ne!(session(&first), session(&second));
        assert!(
            s.receive(now(), LEASE, &[]).unwrap().is_none(),
            "session a is busy"
        );
        let (a, _) = if session(&first).ends_with("/a") {
            (first, second)
        } else {
            (second, first)
        };
        s.commit(&a, &[], None).unwrap();
        let again = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert!(session(&again).ends_with("/a"));
    }

    #[tokio::test]
    async fn scheduled_messages_wait_and_admit_filters() {
        let (_d, s) = store();
        let later = now() + time::Duration::seconds(30);
        s.send(vec![Outgoing {
            message: msg("a", Step::Verify),
            visible_at: later,
        }])
        .await
        .unwrap();
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none());
        assert!(s.next_visible_at(now(), &[]).unwrap().unwrap() > now());
        assert!(
            s.receive(later, LEASE, &["s"]).unwrap().is_none(),
            "admit refused"
        );
        assert!(s
            .receive(later + time::Duration::seconds(1), LEASE, &[])
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn expired_lease_redelivers_and_counts_deliveries_then_dead_letters() {
        let (_d, mut s) = store();
        s.max_delivery_count = 3;
        s.send(vec![Outgoing::now(msg("a", Step::Connect))])
            .await
            .unwrap();
        let short = Duration::from_millis(0);
        let mut t = now();
        for expected in 1..=3 {
            let d = s.receive(t, short, &[]).unwrap().unwrap();
            assert_eq!(d.delivery_count, expected);
            t += time::Duration::milliseconds(5);
        }
        assert!(s.receive(t, short, &[]).unwrap().is_none());
        let dead = s.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "MaxDeliveryCountExceeded");
    }

    #[tokio::test]
    async fn stale_lock_cannot_settle() {
        let (_d, s) = store();
        s.send(vec![Outgoing::now(msg("a", Step::Connect))])
            .await
            .unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(s.release_all_locks().unwrap(), 1);
        let d2 = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert!(matches!(
            s.commit(&d, &[], None),
            Err(QueueError::LockLost(_))
        ));
        s.commit(&d2, &[], None).unwrap();
    }

    #[tokio::test]
    async fn dead_letter_needs_the_lock_and_keeps_the_reason() {
        let (_d, s) = store();
        s.send(vec![Outgoing::now(msg("a", Step::Connect))])
            .await
            .unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.dead_letter(&d, "undecodable").unwrap();
        assert!(matches!(
            s.dead_letter(&d, "again"),
            Err(QueueError::LockLost(_))
        ));
        let dead = s.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].reason.as_str(), dead[0].delivery_count),
            ("undecodable", 1)
        );
        assert_eq!(s.counts().unwrap().dead, 1);
        assert!(s.next_visible_at(now(), &[]).unwrap().is_none());
    }

    #[tokio::test]
    async fn commit_is_atomic_with_next_steps_and_ledger() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let rec = StepRecord {
            run: m.run.clone(),
            target: m.target.clone(),
            step: Step::Discover,
            attempt: 0,
            message_id: m.message_id(),
            detail: "gateway-based: v1".into(),
            at: now(),
            duration_ms: 3,
            next: Some(Step::Plan),
            outcome: None,
            subnet: None,
            prefix: None,
            gateway: None,
        };
        s.commit(&d, &[Outgoing::now(m.next(Step::Plan))], Some(&rec))
            .unwrap();
        let t = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!(t.current_step, Some(Step::Plan));
        assert_eq!(t.steps, 1);
        assert_eq!(
            s.active_run_for(&m.target).await.unwrap(),
            Some(m.run.clone())
        );
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let done = StepRecord {
            step: Step::Plan,
            next: None,
            outcome: Some(crate::pipeline::Outcome::Blocked(
                crate::pipeline::reason::BlockedReason::ClassicVnet,
            )),
            ..rec
        };
        s.commit(&d, &[], Some(&done)).unwrap();
        let t = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!(t.outcome.unwrap().to_string(), "blocked:classic-vnet");
        assert!(t.finished_at.is_some());
        assert_eq!(s.active_run_for(&m.target).await.unwrap(), None);
        assert_eq!(s.step_log(&m.run, &m.target).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_lost_lock_enqueues_nothing() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.release_all_locks().unwrap();
        let next = Outgoing::now(m.next(Step::Plan));
        assert!(s.commit(&d, &[next], None).is_err());
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.completed), (1, 0), "no next step was enqueued");
    }
}
