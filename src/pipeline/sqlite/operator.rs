//! What operators do to a state file by hand: start a finished target again (`retry`,
//! `rollback --app`) and resend dead-lettered messages (`replay`). Each is one transaction:
//! the target's row, its step log and the message it will run are changed together, and a
//! dead-lettered copy is removed in the transaction that enqueues its resend.

use async_trait::async_trait;
use rusqlite::params;
use time::OffsetDateTime;

use super::columns::{Body, Detail, Rfc3339, UnixMs};
use super::{lstorage, storage, SqliteStore};
use crate::pipeline::dead_letters::{DeadLettered, DeadLetters};
use crate::pipeline::ledger::LedgerError;
use crate::pipeline::message::StepMessage;
use crate::pipeline::queue::{Outgoing, QueueError};

impl SqliteStore {
    /// Opens `message`'s target again in its run: its outcome is cleared, the step log says
    /// why (`note`, which names the outcome it had), and `message` is queued, all at once.
    pub(crate) fn reopen_target(&self, note: &str, message: Outgoing) -> Result<(), LedgerError> {
        let m = &message.message;
        let now = Rfc3339(OffsetDateTime::now_utc());
        self.transaction(lstorage, |tx| {
            let changed = tx
                .execute(
                    // The cut-over times start again too: the downtime is the new attempt's.
                    "UPDATE targets SET outcome=NULL, reason=NULL, finished_at=NULL, current_step=?3, updated_at=?4,
                       disconnected_at=NULL, connected_at=NULL, retries=retries+1
                     WHERE run=?1 AND target_key=?2",
                    params![m.run, m.target.key_digest(), m.step, now],
                )
                .map_err(lstorage)?;
            if changed != 1 {
                return Err(LedgerError::storage(
                    format!("{} is not a target of run {}", m.target, m.run),
                    None,
                ));
            }
            tx.execute(
                "INSERT INTO step_log (run, target_key, step, attempt, message_id, detail, at, duration_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,0)",
                params![m.run, m.target.key_digest(), m.step, m.attempt, m.message_id(), Detail(note.into()), now],
            )
            .map_err(lstorage)?;
            Self::insert(tx, std::slice::from_ref(&message))
                .map_err(|e| LedgerError::storage("queueing the step", Some(Box::new(e))))
        })?;
        self.sent.notify_one();
        Ok(())
    }

    /// How many times the target was started again by hand in its run.
    pub(crate) fn retries(&self, message: &StepMessage) -> Result<u32, LedgerError> {
        self.conn()
            .query_row(
                "SELECT retries FROM targets WHERE run=?1 AND target_key=?2",
                params![message.run, message.target.key_digest()],
                |r| r.get(0),
            )
            .map_err(lstorage)
    }
}

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn dead_lettered(&self) -> Result<Vec<DeadLettered>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT seq, message_id, dead_reason, delivery_count, dead_at, body FROM queue WHERE state='dead' ORDER BY seq")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, Option<UnixMs>>(4)?,
                    r.get::<_, Body>(5)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, message_id, reason, delivery_count, at, body) = row.map_err(storage)?;
            out.push(DeadLettered {
                handle: seq.to_string(),
                message_id,
                reason: reason.unwrap_or_default(),
                delivery_count,
                dead_lettered_at: at.map(UnixMs::datetime),
                message: StepMessage::decode(&body.0).map_err(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    async fn resend(&self, dead: &DeadLettered, message: Outgoing) -> Result<(), QueueError> {
        let seq: i64 = dead
            .handle
            .parse()
            .map_err(|_| QueueError::storage(format!("no dead letter {}", dead.handle), None))?;
        self.transaction(storage, |tx| {
            Self::insert(tx, std::slice::from_ref(&message))?;
            let removed = tx
                .execute(
                    "DELETE FROM queue WHERE seq=?1 AND state='dead'",
                    params![seq],
                )
                .map_err(storage)?;
            if removed == 1 {
                Ok(())
            } else {
                // Replayed meanwhile by someone else: undo our resend with the transaction.
                Err(QueueError::storage(
                    format!(
                        "dead letter {} is gone (replayed already?)",
                        dead.message_id
                    ),
                    None,
                ))
            }
        })?;
        self.sent.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{msg, now, store, LEASE};
    use super::*;
    use crate::pipeline::ledger::Ledger;
    use crate::pipeline::message::Step;
    use crate::pipeline::queue::StepSender;

    #[tokio::test]
    async fn a_dead_letter_is_resent_and_removed_in_one_go() {
        let (_d, s) = store();
        let m = msg("a", Step::Plan);
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.dead_letter(&d, "MaxDeliveryCountExceeded").unwrap();
        let dead = s.dead_lettered().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "MaxDeliveryCountExceeded");
        assert!(dead[0].dead_lettered_at.is_some());
        assert_eq!(dead[0].message.as_ref().unwrap(), &m);
        let mut again = m.clone();
        again.replay = 1;
        s.resend(&dead[0], Outgoing::now(again.clone()))
            .await
            .unwrap();
        assert!(s.dead_lettered().await.unwrap().is_empty());
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(StepMessage::decode(&d.body).unwrap(), again);
        // A second resend of the same dead letter fails and leaves nothing queued.
        assert!(s.resend(&dead[0], Outgoing::now(m)).await.is_err());
    }

    #[tokio::test]
    async fn a_reopened_target_has_no_outcome_and_its_step_queued() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        assert_eq!(s.retries(&m).unwrap(), 0);
        s.reopen_target("retry of parked:x", Outgoing::now(m.clone()))
            .unwrap();
        assert_eq!(s.retries(&m).unwrap(), 1);
        let t = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert!(t.outcome.is_none());
        let log = s.step_log(&m.run, &m.target).await.unwrap();
        assert_eq!(log.last().unwrap().detail, "retry of parked:x");
        assert!(s.receive(now(), LEASE, &[]).unwrap().is_some());
        let other = msg("b", Step::Discover);
        assert!(s.reopen_target("x", Outgoing::now(other)).is_err());
    }
}
