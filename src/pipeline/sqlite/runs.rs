//! How a run begins and what a state file says of its runs: the run, its contract, its
//! targets and their first messages are written in one transaction, so a process killed
//! while a run starts leaves either the whole start or nothing (never targets without a
//! message that would drive them, which a resume would report done without doing).

use super::columns::Rfc3339;
use super::{lstorage, SqliteStore};
use crate::azure::ResourceId;
use crate::pipeline::contract::RunContract;
use crate::pipeline::ledger::{LedgerError, RunRecord};
use crate::pipeline::message::RunId;
use crate::pipeline::queue::Outgoing;
use rusqlite::{params, OptionalExtension};

/// The newest run of a state file and where it stands.
#[derive(Debug, Clone)]
pub struct RunState {
    pub record: RunRecord,
    /// None for runs written before contracts were recorded.
    pub contract: Option<RunContract>,
    /// Every target has an outcome and nothing is queued.
    pub finished: bool,
}

impl SqliteStore {
    /// Starts `run` with its contract, its targets (by wave) and the first messages of its
    /// first wave, which is released now, all or nothing.
    pub(crate) fn begin_run(
        &self,
        run: &RunRecord,
        contract: &RunContract,
        waves: &[Vec<ResourceId>],
        first: &[Outgoing],
    ) -> Result<(), LedgerError> {
        let contract = serde_json::to_string(contract).expect("contract serialises");
        self.transaction(lstorage, |tx| {
            tx.execute(
                "INSERT INTO runs (run, started_at, dry_run, origin) VALUES (?1, ?2, ?3, ?4)",
                params![run.run, Rfc3339(run.started_at), run.dry_run, run.origin],
            )
            .map_err(lstorage)?;
            tx.execute(
                "INSERT INTO run_contracts (run, contract) VALUES (?1, ?2)",
                params![run.run, contract],
            )
            .map_err(lstorage)?;
            super::rollout::insert_waves(tx, &run.run, waves, run.started_at)?;
            Self::insert(tx, first)
                .map_err(|e| LedgerError::storage("queueing the first steps", Some(Box::new(e))))
        })?;
        self.sent.notify_one();
        Ok(())
    }

    /// The newest run (by start time) and whether it is finished.
    pub fn newest_run(&self) -> Result<Option<RunState>, LedgerError> {
        self.run_state(None)
    }

    /// Run `run` (the newest when None) and whether it is finished.
    pub fn run_state(&self, run: Option<&RunId>) -> Result<Option<RunState>, LedgerError> {
        let conn = self.conn();
        let row: Option<(RunId, Rfc3339, bool, String, Option<String>)> = conn
            .query_row(
                "SELECT r.run, r.started_at, r.dry_run, r.origin, c.contract FROM runs r
                 LEFT JOIN run_contracts c ON c.run = r.run WHERE ?1 IS NULL OR r.run = ?1
                 ORDER BY r.started_at DESC, r.run DESC LIMIT 1",
                params![run],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(lstorage)?;
        let Some((run, started_at, dry_run, origin, contract)) = row else {
            return Ok(None);
        };
        let contract = contract
            .map(|c| serde_json::from_str::<RunContract>(&c))
            .transpose()
            .map_err(|e| LedgerError::storage("reading a run's contract", Some(Box::new(e))))?;
        let unfinished: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM targets WHERE run=?1 AND outcome IS NULL)
                     OR EXISTS(SELECT 1 FROM queue WHERE state='active')",
                params![run],
                |r| r.get(0),
            )
            .map_err(lstorage)?;
        Ok(Some(RunState {
            record: RunRecord {
                run,
                started_at: started_at.0,
                dry_run,
                origin,
            },
            contract,
            finished: !unfinished,
        }))
    }

    /// Targets whose outcome in the newest run that had them was a rollback: a new run leaves
    /// them out (their apps went through one outage already; retrying them is an explicit act).
    pub fn rolled_back_targets(&self) -> Result<Vec<ResourceId>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT t.target FROM targets t JOIN runs r ON r.run = t.run
                 WHERE t.outcome LIKE 'rolled-back%' AND NOT EXISTS (
                   SELECT 1 FROM targets t2 JOIN runs r2 ON r2.run = t2.run
                   WHERE t2.target_key = t.target_key AND r2.started_at > r.started_at)
                 ORDER BY lower(t.target)",
            )
            .map_err(lstorage)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, ResourceId>(0))
            .map_err(lstorage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(lstorage)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{msg, now, store, LEASE};
    use super::*;
    use crate::pipeline::ledger::{Ledger, StepRecord};
    use crate::pipeline::message::Step;
    use crate::pipeline::Outcome;
    use time::OffsetDateTime;

    fn contract() -> RunContract {
        RunContract {
            scope: "s".into(),
            arm_endpoint: "http://127.0.0.1:1".into(),
            dry_run: false,
            policy: "{}".into(),
            policy_hash: crate::pipeline::contract::hash(b"{}"),
            plan: None,
            simulated_speed: None,
        }
    }

    fn record(run: &str, at: OffsetDateTime) -> RunRecord {
        RunRecord {
            run: RunId(run.into()),
            started_at: at,
            dry_run: false,
            origin: "test".into(),
        }
    }

    #[tokio::test]
    async fn a_run_begins_whole_and_reports_where_it_stands() {
        let (_d, s) = store();
        assert!(s.newest_run().unwrap().is_none());
        let m = msg("a", Step::Discover);
        let r = RunRecord {
            run: m.run.clone(),
            ..record("x", now())
        };
        s.begin_run(
            &r,
            &contract(),
            &[vec![m.target.clone()]],
            &[Outgoing::now(m.clone())],
        )
        .unwrap();
        let st = s.newest_run().unwrap().unwrap();
        assert_eq!(st.record.run, m.run);
        assert_eq!(st.contract, Some(contract()));
        assert!(!st.finished);
        assert_eq!(s.targets(&m.run).await.unwrap().len(), 1);
        // Beginning the same run twice is refused, and leaves nothing half-written.
        assert!(s.begin_run(&r, &contract(), &[], &[]).is_err());
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let done = StepRecord {
            run: m.run.clone(),
            target: m.target.clone(),
            step: Step::Discover,
            attempt: 0,
            message_id: m.message_id(),
            detail: "done".into(),
            at: now(),
            duration_ms: 1,
            next: None,
            next_at: None,
            outcome: Some(Outcome::RolledBack(
                crate::pipeline::reason::RollbackReason::Unhealthy(
                    crate::pipeline::reason::HealthFailure::ProbeFailed,
                ),
            )),
            subnet: None,
            prefix: None,
            gateway: None,
            cutover: Default::default(),
        };
        s.commit(&d, &[], Some(&done)).unwrap();
        assert!(s.newest_run().unwrap().unwrap().finished);
        assert_eq!(s.rolled_back_targets().unwrap(), vec![m.target.clone()]);
        // A later run that had the target again decides its standing.
        let later = record("y", now() + time::Duration::seconds(1));
        s.begin_run(&later, &contract(), &[vec![m.target.clone()]], &[])
            .unwrap();
        assert!(s.rolled_back_targets().unwrap().is_empty());
        assert_eq!(s.newest_run().unwrap().unwrap().record.run, later.run);
    }
}
