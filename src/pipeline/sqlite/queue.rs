//! The queue half of the store: send, receive (sessions, scheduled visibility, leases,
//! delivery counts, per-subscription and per-VNet admission), settle and dead-letter.
//!
//! Every hot path is an index lookup: `receive` walks the session heads of each subscription
//! with room (`queue_heads`), sending and settling find a session's first message through
//! `queue_sessions`, and duplicate detection is a primary-key probe in `message_ids`.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::columns::{Body, UnixMs};
use super::ledger::record_tx;
use super::{storage, SqliteStore};
use crate::pipeline::ledger::StepRecord;
use crate::pipeline::message::{Step, StepMessage};
use crate::pipeline::queue::{Outgoing, QueueError, StepSender};

/// A message handed to a worker, locked until its lease ends.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) seq: i64,
    pub(crate) message_id: String,
    session_id: String,
    /// The lower-cased subscription of the target: the runner's admission unit.
    pub(crate) subscription: String,
    /// The lower-cased destination VNet of a planned target's step: its other admission unit.
    pub(crate) vnet: Option<String>,
    /// The message's scheduling level (`StepMessage::priority`), as queued.
    pub(crate) priority: u8,
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
    vnet: Option<String>,
}

impl Candidate {
    /// From a row of `seq, message_id, session_id, subscription, delivery_count, vnet`.
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Candidate {
            seq: r.get(0)?,
            message_id: r.get(1)?,
            session_id: r.get(2)?,
            subscription: r.get(3)?,
            delivery_count: r.get(4)?,
            vnet: r.get(5)?,
        })
    }
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

/// The scheduling levels (`Step::priority`) as a second table of the `WITH` clause.
fn levels() -> String {
    let rows: Vec<String> = Step::PRIORITIES.iter().map(|p| format!("({p})")).collect();
    format!(", levels(p) AS (VALUES {})", rows.join(","))
}

/// The keys of the admission units at their limit as one parameter: each between two unit
/// separators (U+001F, in no subscription or VNet id), so that `instr` finds a key only whole.
/// A `NOT IN` over a JSON array built an ephemeral table at every run of a statement, and
/// those runs are the runner's most frequent (500 targets: 26 allocations per step in SQLite's
/// B-tree opens, 1.5 % of all).
fn unit_list(full: &[&str]) -> String {
    let mut list = String::from('\u{1f}');
    for key in full {
        list.push_str(key);
        list.push('\u{1f}');
    }
    list
}

/// The best deliverable head of the subscriptions not in ?2 (`unit_list`: the admission
/// units at their limit), outside the VNets in ?2: the highest level, oldest first within it.
/// One index seek per subscription and level, each skipping only the leased heads (at most
/// the subscription's in-flight limit) and the heads of full VNets. ?1 is now.
fn candidate_sql() -> String {
    format!(
        "{SUBSCRIPTIONS}{}
        SELECT q.seq, q.message_id, q.session_id, q.subscription, q.delivery_count, q.vnet
        FROM subs CROSS JOIN levels JOIN queue q ON q.seq=(
          SELECT h.seq FROM queue h
          WHERE h.state='active' AND h.head=1 AND h.subscription=subs.s AND h.priority=levels.p
            AND h.visible_at<=?1 AND (h.locked_until IS NULL OR h.locked_until<=?1)
            AND (h.vnet IS NULL OR instr(?2, char(31)||h.vnet||char(31))=0)
          ORDER BY h.visible_at, h.seq LIMIT 1)
        WHERE instr(?2, char(31)||subs.s||char(31))=0 AND levels.p>=?3
        ORDER BY q.priority DESC, q.visible_at, q.seq LIMIT 1",
        levels()
    )
}

/// The earliest visibility after ?1 of a head in a subscription and VNet not in ?2.
fn next_visible_sql() -> String {
    format!(
        "{SUBSCRIPTIONS}{}
        SELECT MIN((SELECT h.visible_at FROM queue h
                    WHERE h.state='active' AND h.head=1 AND h.subscription=subs.s
                      AND h.priority=levels.p AND h.visible_at>?1
                      AND (h.vnet IS NULL OR instr(?2, char(31)||h.vnet||char(31))=0)
                    ORDER BY h.visible_at LIMIT 1))
        FROM subs CROSS JOIN levels
        WHERE subs.s IS NOT NULL AND instr(?2, char(31)||subs.s||char(31))=0
          AND levels.p>=?3",
        levels()
    )
}

/// Sets the level and the destination VNet of every live message of a queue written before
/// levels or per-VNet admission existed.
pub(super) fn classify_live(tx: &Connection) -> rusqlite::Result<()> {
    let live: Vec<(i64, Body)> = tx
        .prepare("SELECT seq, body FROM queue WHERE state='active'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut set = tx.prepare("UPDATE queue SET priority=?2, vnet=?3 WHERE seq=?1")?;
    for (seq, body) in live {
        // An undecodable body keeps level 0 and no VNet; it is dead-lettered when delivered.
        if let Ok(m) = StepMessage::decode(&body.0) {
            set.execute(params![seq, m.priority(), m.vnet_key()])?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Enqueues messages, dropping those whose MessageId the queue has accepted before
    /// (active, completed or dead: Service Bus duplicate detection). A message becomes its
    /// session's head when the session has no active message or when it orders before the
    /// current head; a leased head keeps its place (the message is made visible no earlier
    /// than it), so a session never has two messages in flight.
    pub(super) fn insert(tx: &Connection, messages: &[Outgoing]) -> Result<(), QueueError> {
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
            .prepare_cached("INSERT INTO queue (message_id, session_id, subscription, body, visible_at, head, priority, vnet) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
            .map_err(storage)?;
        let mut fresh = tx
            .prepare_cached("INSERT OR IGNORE INTO temp.fresh (target_key) VALUES (?1)")
            .map_err(storage)?;
        for m in messages {
            let id = m.message.message_id();
            if accept.execute(params![id]).map_err(storage)? == 0 {
                continue;
            }
            let session = m.message.stored_session();
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
                Body(m.message.encode()),
                visible_at,
                is_head,
                m.message.priority(),
                m.message.vnet_key()
            ])
            .map_err(storage)?;
            fresh
                .execute(params![m.message.target.key_digest()])
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Makes the first active message of `session` (if any) its head: called when the head
    /// leaves (settled or dead-lettered).
    fn promote(tx: &Connection, session: &str) -> Result<(), QueueError> {
        tx.prepare_cached(
            "UPDATE queue SET head=1 WHERE seq=(SELECT seq FROM queue WHERE session_id=?1 AND state='active' ORDER BY visible_at, seq LIMIT 1)",
        )
        .and_then(|mut s| s.execute(params![session]))
        .map_err(storage)?;
        Ok(())
    }

    /// Locks and returns the best visible, unleased session head among the subscriptions
    /// not in `full` (the admission units at the runner's limits: subscription ids and the
    /// keys of destination VNets; a head bound for a VNet in `full` waits too), or None: the highest
    /// scheduling level (`Step::priority`), oldest first within it. Each subscription offers
    /// its own best head, so a backlog in a full subscription never hides another
    /// subscription's work. A message already delivered `max_delivery_count` times is
    /// dead-lettered instead.
    #[cfg(test)]
    pub(crate) fn receive(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        full: &[&str],
    ) -> Result<Option<Delivery>, QueueError> {
        self.receive_at_least(now, lease, full, 0)
    }

    /// `receive`, among messages of level `min_level` or above only (a paused run takes
    /// only `message::URGENT` ones).
    pub(crate) fn receive_at_least(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        full: &[&str],
        min_level: u8,
    ) -> Result<Option<Delivery>, QueueError> {
        let now = UnixMs::at(now);
        let full = unit_list(full);
        self.batched(storage, |tx| {
            self.lease_first(tx, now.after(lease), |tx| {
                Self::candidate(tx, now, &full, min_level)
            })
        })
    }

    /// Leases the first candidate `next` offers that has been delivered fewer than
    /// `max_delivery_count` times, dead-lettering those delivered too often on the way.
    fn lease_first(
        &self,
        tx: &Connection,
        until: UnixMs,
        next: impl Fn(&Connection) -> Result<Option<Candidate>, QueueError>,
    ) -> Result<Option<Delivery>, QueueError> {
        while let Some(c) = next(tx)? {
            if c.delivery_count < self.max_delivery_count {
                return Self::lock(tx, c, until).map(Some);
            }
            Self::retire_dead(tx, c.seq, &c.session_id, "MaxDeliveryCountExceeded")?;
        }
        Ok(None)
    }

    /// The best deliverable head of the subscriptions not in `full` (a JSON array).
    fn candidate(
        tx: &Connection,
        now: UnixMs,
        full: &str,
        min_level: u8,
    ) -> Result<Option<Candidate>, QueueError> {
        let sql = candidate_sql();
        tx.prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![now, full, min_level], Candidate::read)
                    .optional()
            })
            .map_err(storage)
    }

    /// Leases a candidate until `until` under a fresh lock token and reads its body. Only the
    /// row changes: no index covers the lease columns.
    fn lock(tx: &Connection, c: Candidate, until: UnixMs) -> Result<Delivery, QueueError> {
        let token = uuid::Uuid::new_v4().to_string();
        let (Body(body), priority) = tx
            .prepare_cached("UPDATE queue SET lock_token=?1, locked_until=?2, delivery_count=delivery_count+1 WHERE seq=?3 RETURNING body, priority")
            .and_then(|mut s| {
                s.query_row(params![token, until, c.seq], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .map_err(storage)?;
        Ok(Delivery {
            seq: c.seq,
            message_id: c.message_id,
            session_id: c.session_id,
            subscription: c.subscription,
            vnet: c.vnet,
            priority,
            body,
            delivery_count: c.delivery_count + 1,
            lock_token: token,
        })
    }

    /// When the runner should look again: the earliest future visibility of a session head
    /// in a subscription not in `full` (one index seek per subscription). Heads of full
    /// subscriptions wait for a worker to finish; messages behind a head for the head.
    #[cfg(test)]
    pub(crate) fn next_visible_at(
        &self,
        now: OffsetDateTime,
        full: &[&str],
    ) -> Result<Option<OffsetDateTime>, QueueError> {
        self.next_visible_at_least(now, full, 0)
    }

    /// Whether a live message of level `min_level` or above is waiting or leased.
    pub(crate) fn has_active_at_least(&self, min_level: u8) -> Result<bool, QueueError> {
        self.conn()
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM queue WHERE state='active' AND priority>=?1)",
            )
            .and_then(|mut s| s.query_row(params![min_level], |r| r.get(0)))
            .map_err(storage)
    }

    /// `next_visible_at` among messages of level `min_level` or above only.
    pub(crate) fn next_visible_at_least(
        &self,
        now: OffsetDateTime,
        full: &[&str],
        min_level: u8,
    ) -> Result<Option<OffsetDateTime>, QueueError> {
        let sql = next_visible_sql();
        let full = unit_list(full);
        let v: Option<UnixMs> = self
            .conn()
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params![UnixMs::at(now), full, min_level], |r| r.get(0)))
            .map_err(storage)?;
        Ok(v.map(UnixMs::datetime))
    }

    fn check_lock(tx: &Connection, d: &Delivery) -> Result<(), QueueError> {
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

    /// `settle` on its own: what the tests of settling use; the runner always asks for the
    /// session's next message too (`commit_and_continue`).
    #[cfg(test)]
    pub(crate) fn commit(
        &self,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
    ) -> Result<(), QueueError> {
        self.batched(storage, |tx| Self::settle(tx, d, next, record))
    }

    /// `commit`, then, in the same transaction, leases the next message of the delivery's
    /// session when it is visible at `now` and in the same subscription and VNet (so the
    /// runner's admission counts stay true): the worker that
    /// held the session keeps it, as a Service Bus session receiver does, so a serial chain
    /// (a VNet's subnet writes and cut-overs, a target's discover and plan) goes on without a
    /// round through the runner and with one transaction per step instead of two.
    pub(crate) fn commit_and_continue(
        &self,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
        now: OffsetDateTime,
        lease: Duration,
        min_level: u8,
    ) -> Result<Option<Delivery>, QueueError> {
        let now = UnixMs::at(now);
        self.batched(storage, |tx| {
            Self::settle(tx, d, next, record)?;
            self.lease_first(tx, now.after(lease), |tx| {
                tx.prepare_cached(
                    "SELECT seq, message_id, session_id, subscription, delivery_count, vnet FROM queue
                     WHERE session_id=?1 AND state='active' AND head=1 AND subscription=?2
                       AND visible_at<=?3 AND (locked_until IS NULL OR locked_until<=?3)
                       AND priority>=?4 AND vnet IS ?5",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![d.session_id, d.subscription, now, min_level, d.vnet],
                        Candidate::read,
                    )
                    .optional()
                })
                .map_err(storage)
            })
        })
    }

    /// Completes a delivery, enqueues its next steps and records the step, atomically. The
    /// completed row is deleted; its MessageId stays in `message_ids`, so a re-sent copy is
    /// still dropped.
    fn settle(
        tx: &Connection,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
    ) -> Result<(), QueueError> {
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
    }

    pub(crate) fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.batched(storage, |tx| {
            Self::check_lock(tx, d)?;
            Self::retire_dead(tx, d.seq, &d.session_id, reason)
        })
    }

    /// Moves a session head to the dead letters; the next message of its session leads.
    fn retire_dead(
        tx: &Connection,
        seq: i64,
        session: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        tx.execute(
            "UPDATE queue SET state='dead', head=0, dead_reason=?2, dead_at=?3, lock_token=NULL, locked_until=NULL WHERE seq=?1",
            params![seq, reason, UnixMs::at(OffsetDateTime::now_utc())],
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
    use super::super::test_support::{discovered, msg, msg_in, now, store, Dir, LEASE};
    use super::*;
    use crate::azure::ResourceId;
    use crate::pipeline::ledger::Ledger;

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
        let target = |d: &Delivery| StepMessage::decode(&d.body).unwrap().target;
        let session = |d: &Delivery| StepMessage::decode(&d.body).unwrap().session_id();
        let first = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let second = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_ne!(session(&first), session(&second));
        assert!(
            s.receive(now(), LEASE, &[]).unwrap().is_none(),
            "session a is busy"
        );
        let (a, _) = if target(&first).key().ends_with("/a") {
            (first, second)
        } else {
            (second, first)
        };
        s.commit(&a, &[], None).unwrap();
        let again = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert!(target(&again).key().ends_with("/a"));
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

    /// A full unit holds back its own messages only: not those of a unit whose key it is a
    /// part of.
    #[tokio::test]
    async fn a_full_unit_holds_back_only_its_own_whole_key() {
        let (_d, s) = store();
        s.send(vec![Outgoing::now(msg_in("s1", "a", Step::Verify))])
            .await
            .unwrap();
        assert!(s.receive(now(), LEASE, &["s1"]).unwrap().is_none());
        let d = s.receive(now(), LEASE, &["s", "1", "s1x"]).unwrap();
        assert_eq!(d.unwrap().subscription, "s1");
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
        let rec = discovered(&m);
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

    fn target_of(d: &Delivery) -> String {
        StepMessage::decode(&d.body)
            .unwrap()
            .target
            .name()
            .to_string()
    }

    #[tokio::test]
    async fn a_subscription_with_room_is_served_behind_a_full_ones_backlog() {
        let (_d, s) = store();
        let backlog: Vec<Outgoing> = (0..100)
            .map(|i| Outgoing::now(msg_in("s1", &format!("a{i}"), Step::Discover)))
            .collect();
        s.send(backlog).await.unwrap();
        s.send(vec![Outgoing::now(msg_in("s2", "b", Step::Discover))])
            .await
            .unwrap();
        let first = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(
            (first.subscription.as_str(), target_of(&first).as_str()),
            ("s1", "a0"),
            "oldest first"
        );
        // s1 is at its limit: its 99 older ready messages do not hide s2's.
        let second = s.receive(now(), LEASE, &["s1"]).unwrap().unwrap();
        assert_eq!(
            (second.subscription.as_str(), target_of(&second).as_str()),
            ("s2", "b")
        );
        assert!(s.receive(now(), LEASE, &["s1", "s2"]).unwrap().is_none());
        assert!(s.receive(now(), LEASE, &["s1"]).unwrap().is_none());
        let third = s.receive(now(), LEASE, &["s2"]).unwrap().unwrap();
        assert_eq!(target_of(&third), "a1");
    }

    #[tokio::test]
    async fn only_the_head_of_a_session_is_a_candidate() {
        let (_d, s) = store();
        let later = now() + time::Duration::seconds(30);
        let mut retry = msg("a", Step::Verify);
        retry.attempt = 1;
        // Sent first but visible later: the message sent after it leads the session.
        s.send(vec![
            Outgoing {
                message: retry.clone(),
                visible_at: later,
            },
            Outgoing::now(msg("a", Step::Connect)),
            Outgoing::now(msg("b", Step::Connect)),
        ])
        .await
        .unwrap();
        let heads: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM queue WHERE head=1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(heads, 2, "one head per session");
        let a = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let b = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(
            (
                StepMessage::decode(&a.body).unwrap().step,
                target_of(&b).as_str()
            ),
            (Step::Connect, "b")
        );
        // A message sent into a session whose head is leased waits behind it, even when it
        // is visible earlier.
        let mut early = msg("a", Step::Configure);
        early.attempt = 7;
        s.send(vec![Outgoing {
            message: early,
            visible_at: now() - time::Duration::hours(1),
        }])
        .await
        .unwrap();
        assert!(s.receive(later, LEASE, &[]).unwrap().is_none(), "a is busy");
        s.commit(&a, &[], None).unwrap();
        let next = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(
            StepMessage::decode(&next.body).unwrap().step,
            Step::Configure
        );
        s.commit(&next, &[], None).unwrap();
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none());
        assert_eq!(
            s.next_visible_at(now(), &[]).unwrap(),
            Some(UnixMs::at(later).datetime())
        );
        let d = s.receive(later, LEASE, &[]).unwrap().unwrap();
        assert_eq!(d.message_id, retry.message_id());
    }

    /// The hot statements are index searches: no plan step scans the queue table.
    #[test]
    fn hot_queries_use_the_indexes() {
        let (_d, s) = store();
        let plan = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> String {
            let conn = s.conn();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
        };
        let full_scan = |p: &str| {
            p.lines().any(|l| {
                l.starts_with("SCAN")
                    && !l.contains("USING")
                    && !l.contains("subs")
                    && !l.contains("levels")
                    && !l.contains("CONSTANT")
            })
        };
        let next = plan(&next_visible_sql(), &[&0i64, &unit_list(&[]), &0i64]);
        assert!(
            next.contains("INDEX queue_heads (subscription=? AND priority=? AND visible_at>?)"),
            "{next}"
        );
        let cand = plan(&candidate_sql(), &[&0i64, &unit_list(&[]), &0i64]);
        assert!(
            cand.contains("INDEX queue_heads (subscription=? AND priority=? AND visible_at<?)"),
            "{cand}"
        );
        let head = plan(
            "SELECT seq, visible_at, lock_token IS NOT NULL FROM queue WHERE session_id=?1 AND state='active' ORDER BY visible_at, seq LIMIT 1",
            &[&"x"],
        );
        assert!(
            head.contains("INDEX queue_sessions (session_id=?)"),
            "{head}"
        );
        for p in [&next, &cand, &head] {
            assert!(!full_scan(p), "{p}");
        }
    }

    #[tokio::test]
    async fn a_resent_next_step_of_a_completed_message_is_dropped() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        let plan = m.next(Step::Plan);
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.commit(&d, &[Outgoing::now(plan.clone())], None).unwrap();
        let p = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.commit(&p, &[], None).unwrap();
        // A redelivered discover (its settle was lost) sends plan again: dropped.
        s.send(vec![Outgoing::now(plan), Outgoing::now(m)])
            .await
            .unwrap();
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none());
        let body_rows: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body_rows, 0, "completed messages keep only their ids");
        assert_eq!(s.counts().unwrap().completed, 2);
    }

    /// The queue table of state files written before the lean queue, as it was created then.
    const OLD_QUEUE: &str = "
    PRAGMA journal_mode=WAL;
    CREATE TABLE queue (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      message_id TEXT NOT NULL UNIQUE,
      session_id TEXT NOT NULL,
      subscription TEXT NOT NULL DEFAULT '',
      body BLOB NOT NULL,
      visible_at INTEGER NOT NULL,
      delivery_count INTEGER NOT NULL DEFAULT 0,
      lock_token TEXT,
      locked_until INTEGER,
      state TEXT NOT NULL DEFAULT 'active',
      dead_reason TEXT
    );
    CREATE INDEX queue_ready ON queue(state, visible_at);
    CREATE INDEX queue_session ON queue(session_id, state);";

    #[tokio::test]
    async fn a_state_file_with_the_old_queue_opens_and_resumes() {
        let dir = Dir::new();
        let p = dir.path().join("old.db");
        let done = msg("a", Step::Discover);
        let leased = done.next(Step::Plan);
        let mut behind = msg("a", Step::Verify);
        behind.attempt = 2;
        let other = msg("b", Step::Discover);
        let dead = msg("c", Step::Discover);
        {
            let conn = rusqlite::Connection::open(&p).unwrap();
            conn.execute_batch(OLD_QUEUE).unwrap();
            let t = UnixMs::at(now() - time::Duration::minutes(1));
            let rows: [(&StepMessage, &str, u32, Option<&str>); 5] = [
                (&done, "completed", 1, None),
                (&leased, "active", 1, Some("old-token")),
                (&behind, "active", 0, None),
                (&other, "active", 0, None),
                (&dead, "dead", 10, None),
            ];
            for (m, state, count, token) in rows {
                conn.execute(
                    "INSERT INTO queue (message_id, session_id, subscription, body, visible_at, delivery_count, lock_token, locked_until, state) VALUES (?1,?2,'s',?3,?4,?5,?6,?7,?8)",
                    params![m.message_id(), m.stored_session(), m.encode(), t, count, token, token.map(|_| UnixMs::at(now() + time::Duration::hours(1))), state],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&p).unwrap();
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.locked, c.completed, c.dead), (2, 1, 1, 1));
        assert_eq!(s.dead_letters().unwrap()[0].message_id, dead.message_id());
        // The completed message and the live ones are still known: re-sending them is a no-op.
        s.send(vec![Outgoing::now(done), Outgoing::now(other.clone())])
            .await
            .unwrap();
        assert_eq!(s.counts().unwrap().completed, 1);
        // Resume: the lease of the crashed run is released; session a delivers its leased
        // message again before the one behind it, and b's message is served alongside.
        assert_eq!(s.release_all_locks().unwrap(), 1);
        let first = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(
            (first.message_id.as_str(), first.delivery_count),
            (leased.message_id().as_str(), 2)
        );
        let second = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(second.message_id, other.message_id());
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none());
        s.commit(&first, &[], None).unwrap();
        let third = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(third.message_id, behind.message_id());
        // A new message takes the next seq after the migrated rows.
        s.send(vec![Outgoing::now(msg("d", Step::Discover))])
            .await
            .unwrap();
        let max_seq: i64 = s
            .conn()
            .query_row("SELECT MAX(seq) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max_seq, 6);
        drop(s);
        // Opening the migrated file again changes nothing.
        let s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.counts().unwrap().completed, 2);
    }

    /// The worker that settles a session's message gets the session's next one in the same
    /// transaction when it is visible and in the same subscription; otherwise the runner
    /// admits it as any other.
    #[tokio::test]
    async fn a_settled_session_hands_its_next_message_to_the_same_worker() {
        let (_d, s) = store();
        let (first, second) = (msg("a", Step::Discover), msg("a", Step::Plan));
        s.send(vec![Outgoing::now(first), Outgoing::now(second.clone())])
            .await
            .unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let next = s
            .commit_and_continue(&d, &[], None, now(), LEASE, 0)
            .unwrap()
            .expect("the session's next message");
        assert_eq!(
            (next.message_id.as_str(), next.delivery_count),
            (second.message_id().as_str(), 1)
        );
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_none(), "leased");
        // Its next step is scheduled for later: the session is let go.
        let later = Outgoing {
            message: msg("a", Step::Verify),
            visible_at: now() + time::Duration::seconds(30),
        };
        assert!(s
            .commit_and_continue(&next, &[later], None, now(), LEASE, 0)
            .unwrap()
            .is_none());
        assert_eq!(s.counts().unwrap().active, 1);
        // A VNet's session holds targets of two subscriptions: the message of the other one is
        // left to the runner, which admits per subscription.
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        let plan = crate::pipeline::message::PlannedSubnet {
            subnet: vnet.child("subnets", "apps").unwrap(),
            vnet,
            prefix: "10.0.0.0/26".into(),
            create: true,
            required_prefix_length: None,
        };
        let [mut own, mut other] = [
            msg("b", Step::PrepareSubnet),
            msg_in("s2", "c", Step::PrepareSubnet),
        ];
        own.plan = Some(plan.clone());
        other.plan = Some(plan);
        assert_eq!(own.session_id(), other.session_id());
        s.send(vec![Outgoing::now(own), Outgoing::now(other.clone())])
            .await
            .unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert!(s
            .commit_and_continue(&d, &[], None, now(), LEASE, 0)
            .unwrap()
            .is_none());
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(d.message_id, other.message_id());
    }

    /// A paused run takes only messages whose app may be off its VNet (a cut-over re-sent
    /// with its saved gateway connection, a rollback): they go first anyway, and nothing else
    /// is delivered, continued in its session, or waited for.
    #[tokio::test]
    async fn a_paused_run_takes_only_the_messages_whose_app_may_be_offline() {
        let (_d, s) = store();
        let gateway: crate::pipeline::message::GatewaySnapshot =
            serde_json::from_value(serde_json::json!({
                "name": "hub",
                "vnetResourceId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/hub"
            }))
            .unwrap();
        let mut cut = msg("b", Step::Disconnect);
        cut.gateway = Some(gateway);
        let later = now() + time::Duration::seconds(30);
        s.send(vec![
            Outgoing::now(msg("a", Step::Disconnect)),
            Outgoing::now(msg("c", Step::Plan)),
            Outgoing {
                message: cut.clone(),
                visible_at: later,
            },
        ])
        .await
        .unwrap();
        let urgent = crate::pipeline::message::URGENT;
        assert!(s
            .receive_at_least(now(), LEASE, &[], urgent)
            .unwrap()
            .is_none());
        assert!(s.has_active_at_least(urgent).unwrap());
        assert_eq!(
            s.next_visible_at_least(now(), &[], urgent)
                .unwrap()
                .map(|t| t.unix_timestamp()),
            Some(later.unix_timestamp())
        );
        let d = s
            .receive_at_least(later, LEASE, &[], urgent)
            .unwrap()
            .unwrap();
        assert_eq!(target_of(&d), "b");
        // Settled, the session goes on only with another urgent message.
        let next = Outgoing {
            message: msg("b", Step::Configure),
            visible_at: later,
        };
        let cont = s
            .commit_and_continue(&d, &[next], None, later, LEASE, urgent)
            .unwrap();
        assert!(cont.is_none());
        assert!(!s.has_active_at_least(urgent).unwrap());
        // Unpaused, the rest is delivered as before.
        assert!(s.receive_at_least(later, LEASE, &[], 0).unwrap().is_some());
    }

    /// Targets past planning go first, then planning, then discovery; oldest first within a
    /// level, and a subscription at its limit still does not hide another's work.
    #[tokio::test]
    async fn later_steps_go_first_and_oldest_first_within_a_level() {
        let (_d, s) = store();
        s.send(
            [
                ("a", Step::Discover),
                ("b", Step::Plan),
                ("c", Step::Verify),
                ("d", Step::Discover),
                ("e", Step::Disconnect),
                ("f", Step::Plan),
            ]
            .into_iter()
            .map(|(app, step)| Outgoing::now(msg(app, step)))
            .collect(),
        )
        .await
        .unwrap();
        s.send(vec![Outgoing::now(msg_in("s2", "g", Step::Discover))])
            .await
            .unwrap();
        let mut order = Vec::new();
        while let Some(d) = s.receive(now(), LEASE, &[]).unwrap() {
            order.push(target_of(&d));
        }
        assert_eq!(order, ["c", "e", "b", "f", "a", "d", "g"]);
        // With subscription s at its limit, s2's discover is served although s has a plan.
        let (_d, s) = store();
        s.send(vec![
            Outgoing::now(msg_in("s2", "g", Step::Discover)),
            Outgoing::now(msg("b", Step::Plan)),
        ])
        .await
        .unwrap();
        let d = s.receive(now(), LEASE, &["s"]).unwrap().unwrap();
        assert_eq!(target_of(&d), "g");
        assert_eq!(
            s.next_visible_at(now(), &["s"]).unwrap(),
            None,
            "nothing scheduled"
        );
    }

    /// The lean queue as it was before scheduling levels.
    const QUEUE_WITHOUT_LEVELS: &str = "
    PRAGMA journal_mode=WAL;
    CREATE TABLE queue (
      seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
      subscription TEXT NOT NULL, body BLOB NOT NULL, visible_at INTEGER NOT NULL,
      head INTEGER NOT NULL DEFAULT 0, delivery_count INTEGER NOT NULL DEFAULT 0,
      lock_token TEXT, locked_until INTEGER, state TEXT NOT NULL DEFAULT 'active', dead_reason TEXT
    );
    CREATE TABLE message_ids (message_id TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE INDEX queue_heads ON queue(subscription, visible_at, seq) WHERE state='active' AND head=1;
    CREATE INDEX queue_sessions ON queue(session_id, visible_at, seq) WHERE state='active';";

    #[tokio::test]
    async fn a_queue_from_before_scheduling_levels_gets_them_on_open() {
        let dir = Dir::new();
        let p = dir.path().join("lean.db");
        let (discover, verify) = (msg("a", Step::Discover), msg("b", Step::Verify));
        {
            let conn = rusqlite::Connection::open(&p).unwrap();
            conn.execute_batch(QUEUE_WITHOUT_LEVELS).unwrap();
            for (m, minutes) in [(&discover, 2), (&verify, 1)] {
                let t = UnixMs::at(now() - time::Duration::minutes(minutes));
                conn.execute(
                    "INSERT INTO queue (message_id, session_id, subscription, body, visible_at, head) VALUES (?1,?2,'s',?3,?4,1)",
                    params![m.message_id(), m.stored_session(), m.encode(), t],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO message_ids VALUES (?1)",
                    params![m.message_id()],
                )
                .unwrap();
            }
        }
        for _ in 0..2 {
            let s = SqliteStore::open(&p).unwrap();
            let index: String = s
                .conn()
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name='queue_heads'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(index.contains("priority"), "{index}");
            // The older discover waits: the verify of a target past planning goes first.
            let first = s.receive(now(), LEASE, &[]).unwrap().unwrap();
            assert_eq!(first.message_id, verify.message_id());
            s.release_all_locks().unwrap();
        }
    }

    /// A file written before per-VNet admission: on open, each live message gets its
    /// destination VNet, and a full VNet's message then waits.
    #[tokio::test]
    async fn a_queue_from_before_per_vnet_admission_learns_each_messages_vnet_on_open() {
        let dir = Dir::new();
        let p = dir.path().join("unplaced.db");
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/Hub",
        )
        .unwrap();
        let mut planned = msg("a", Step::Verify);
        planned.plan = Some(crate::pipeline::message::PlannedSubnet {
            subnet: vnet.child("subnets", "snet").unwrap(),
            vnet: vnet.clone(),
            prefix: "10.0.0.0/26".into(),
            create: false,
            required_prefix_length: None,
        });
        {
            let s = SqliteStore::open(&p).unwrap();
            s.send(vec![Outgoing::now(planned)]).await.unwrap();
            s.conn()
                .execute_batch("ALTER TABLE queue DROP COLUMN vnet")
                .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert!(s.receive(now(), LEASE, &[vnet.key()]).unwrap().is_none());
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(d.vnet.as_deref(), Some(vnet.key()));
    }
}
