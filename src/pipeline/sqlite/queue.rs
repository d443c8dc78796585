//! The queue half of the store: send, receive (sessions, scheduled visibility, leases,
//! delivery counts), settle and dead-letter.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};
use time::OffsetDateTime;

use super::columns::UnixMs;
use super::ledger::record_tx;
use super::{storage, SqliteStore};
use crate::pipeline::ledger::StepRecord;
use crate::pipeline::queue::{Outgoing, QueueError, StepSender};

/// A message handed to a worker, locked until `locked_until`.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) seq: i64,
    pub(crate) message_id: String,
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

/// A ready message as `receive` judges it, before its body is read.
struct Candidate {
    seq: i64,
    message_id: String,
    session_id: String,
    subscription: String,
    delivery_count: u32,
}

impl SqliteStore {
    fn insert(tx: &Transaction<'_>, messages: &[Outgoing]) -> Result<(), QueueError> {
        let mut stmt = tx
            .prepare_cached("INSERT OR IGNORE INTO queue (message_id, session_id, subscription, body, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(storage)?;
        for m in messages {
            stmt.execute(params![
                m.message.message_id(),
                m.message.session_id(),
                m.message.target.subscription().to_ascii_lowercase(),
                m.message.encode(),
                UnixMs::at(m.visible_at)
            ])
            .map_err(storage)?;
        }
        Ok(())
    }

    /// Locks and returns the first visible message whose session has nothing in flight and
    /// which `admit(session, subscription)` accepts (the runner's per-subscription
    /// concurrency), or None. Candidates are judged without reading their bodies.
    /// A message already delivered `max_delivery_count` times is dead-lettered instead.
    pub(crate) fn receive(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        mut admit: impl FnMut(&str, &str) -> bool,
    ) -> Result<Option<Delivery>, QueueError> {
        let now = UnixMs::at(now);
        self.transaction(storage, |tx| {
            let mut sessions_seen = HashSet::new();
            for c in Self::candidates(tx, now)? {
                // Sessions are FIFO: only the first ready message of a session is a candidate.
                if !sessions_seen.insert(c.session_id.clone()) {
                    continue;
                }
                if c.delivery_count >= self.max_delivery_count {
                    tx.execute(
                        "UPDATE queue SET state='dead', dead_reason='MaxDeliveryCountExceeded', lock_token=NULL, locked_until=NULL WHERE seq=?1",
                        params![c.seq],
                    )
                    .map_err(storage)?;
                    continue;
                }
                if admit(&c.session_id, &c.subscription) {
                    return Self::lock(tx, c, now.after(lease)).map(Some);
                }
            }
            Ok(None)
        })
    }

    /// Up to 64 visible, unlocked messages of sessions with nothing in flight, oldest first.
    fn candidates(tx: &Transaction<'_>, now: UnixMs) -> Result<Vec<Candidate>, QueueError> {
        let mut stmt = tx
            .prepare_cached(
                "SELECT q.seq, q.message_id, q.session_id, q.subscription, q.delivery_count FROM queue q
                 WHERE q.state='active' AND q.visible_at<=?1 AND (q.locked_until IS NULL OR q.locked_until<=?1)
                   AND NOT EXISTS (SELECT 1 FROM queue l WHERE l.session_id=q.session_id AND l.state='active'
                                   AND l.locked_until IS NOT NULL AND l.locked_until>?1)
                 ORDER BY q.visible_at, q.seq LIMIT 64",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![now], |r| {
                Ok(Candidate {
                    seq: r.get(0)?,
                    message_id: r.get(1)?,
                    session_id: r.get(2)?,
                    subscription: r.get(3)?,
                    delivery_count: r.get(4)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)
    }

    /// Leases a candidate until `until` under a fresh lock token and reads its body.
    fn lock(tx: &Transaction<'_>, c: Candidate, until: UnixMs) -> Result<Delivery, QueueError> {
        let body: Vec<u8> = tx
            .query_row("SELECT body FROM queue WHERE seq=?1", params![c.seq], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        let token = uuid::Uuid::new_v4().to_string();
        tx.execute(
            "UPDATE queue SET lock_token=?1, locked_until=?2, delivery_count=delivery_count+1 WHERE seq=?3",
            params![token, until, c.seq],
        )
        .map_err(storage)?;
        Ok(Delivery {
            seq: c.seq,
            message_id: c.message_id,
            body,
            delivery_count: c.delivery_count + 1,
            lock_token: token,
        })
    }

    fn check_lock(tx: &Transaction<'_>, d: &Delivery) -> Result<(), QueueError> {
        let token: Option<String> = tx
            .query_row(
                "SELECT lock_token FROM queue WHERE seq=?1 AND state='active'",
                params![d.seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?
            .flatten();
        if token.as_deref() != Some(d.lock_token.as_str()) {
            return Err(QueueError::LockLost(d.message_id.clone()));
        }
        Ok(())
    }

    /// Completes a delivery, enqueues its next steps and records the step, atomically.
    pub(crate) fn commit(
        &self,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
    ) -> Result<(), QueueError> {
        self.transaction(storage, |tx| {
            Self::check_lock(tx, d)?;
            tx.execute(
                "UPDATE queue SET state='completed', lock_token=NULL, locked_until=NULL WHERE seq=?1",
                params![d.seq],
            )
            .map_err(storage)?;
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
            tx.execute("UPDATE queue SET state='dead', dead_reason=?2, lock_token=NULL, locked_until=NULL WHERE seq=?1", params![d.seq, reason]).map_err(storage)?;
            Ok(())
        })
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

    /// When the next active message becomes visible (None when the queue is empty).
    pub(crate) fn next_visible_at(&self) -> Result<Option<OffsetDateTime>, QueueError> {
        let v: Option<UnixMs> = self
            .conn()
            .query_row("SELECT MIN(MAX(visible_at, COALESCE(locked_until, 0))) FROM queue WHERE state='active'", [], |r| r.get(0))
            .map_err(storage)?;
        Ok(v.map(UnixMs::datetime))
    }
}

#[async_trait]
impl StepSender for SqliteStore {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        self.transaction(storage, |tx| Self::insert(tx, &messages))
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
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        s.commit(&d, &[], None).unwrap();
        // Re-sending after completion is still a duplicate.
        s.send(vec![Outgoing::now(m)]).await.unwrap();
        assert!(s.receive(now(), LEASE, |_, _| true).unwrap().is_none());
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
        let first = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        let second = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        assert_ne!(session(&first), session(&second));
        assert!(
            s.receive(now(), LEASE, |_, _| true).unwrap().is_none(),
            "session a is busy"
        );
        let (a, _) = if session(&first).ends_with("/a") {
            (first, second)
        } else {
            (second, first)
        };
        s.commit(&a, &[], None).unwrap();
        let again = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
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
        assert!(s.receive(now(), LEASE, |_, _| true).unwrap().is_none());
        assert!(s.next_visible_at().unwrap().unwrap() > now());
        assert!(
            s.receive(later, LEASE, |_, _| false).unwrap().is_none(),
            "admit refused"
        );
        assert!(s
            .receive(later + time::Duration::seconds(1), LEASE, |_, _| true)
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
            let d = s.receive(t, short, |_, _| true).unwrap().unwrap();
            assert_eq!(d.delivery_count, expected);
            t += time::Duration::milliseconds(5);
        }
        assert!(s.receive(t, short, |_, _| true).unwrap().is_none());
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
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        assert_eq!(s.release_all_locks().unwrap(), 1);
        let d2 = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
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
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
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
        assert!(s.next_visible_at().unwrap().is_none());
    }

    #[tokio::test]
    async fn commit_is_atomic_with_next_steps_and_ledger() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
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
            cutover: Default::default(),
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
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
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
        let d = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        s.release_all_locks().unwrap();
        let next = Outgoing::now(m.next(Step::Plan));
        assert!(s.commit(&d, &[next], None).is_err());
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.completed), (1, 0), "no next step was enqueued");
    }
}
