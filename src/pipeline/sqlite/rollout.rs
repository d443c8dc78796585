//! The rollout half of the store: each wave's release and gate (`rollout_waves`), what an
//! operator asked (`rollout_control`), and the waves' standing read from the targets. A
//! release records itself, restarts its targets' clocks and queues their first messages in
//! one transaction, so a crash leaves a wave either released with its messages or not at all.

use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use super::columns::Rfc3339;
use super::{lstorage, SqliteStore};
use crate::azure::ResourceId;
use crate::pipeline::ledger::{LedgerError, Released};
use crate::pipeline::message::RunId;
use crate::pipeline::queue::Outgoing;
use crate::pipeline::rollout::{Control, Gate, WaveView};

/// Columns of `rollout_waves` added after the first rollouts were written, with their types:
/// a wave promoted by an operator, and the checks its gate made (JSON).
pub(super) const ADDED_WAVE_COLUMNS: [(&str, &str); 2] = [
    ("approved", "INTEGER NOT NULL DEFAULT 0"),
    ("gate_checks", "TEXT"),
];

/// The run's control as recorded (running when nothing was asked).
fn read_control(conn: &rusqlite::Connection, run: &RunId) -> Result<Control, LedgerError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT control FROM rollout_control WHERE run=?1",
            params![run],
            |r| r.get(0),
        )
        .optional()
        .map_err(lstorage)?;
    text.map_or(Ok(Control::Running), |t| {
        Control::parse(&t)
            .ok_or_else(|| LedgerError::storage(format!("unknown rollout control {t:?}"), None))
    })
}

/// Records the run's targets in their waves and the waves, the first released at `at`.
pub(super) fn insert_waves(
    tx: &rusqlite::Connection,
    run: &RunId,
    waves: &[Vec<ResourceId>],
    at: OffsetDateTime,
) -> Result<(), LedgerError> {
    let mut add = tx
        .prepare_cached("INSERT OR IGNORE INTO targets (run, target_key, target, current_step, started_at, updated_at, wave) VALUES (?1, ?2, ?3, 'discover', ?4, ?4, ?5)")
        .map_err(lstorage)?;
    let mut wave = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO rollout_waves (run, wave, released_at) VALUES (?1, ?2, ?3)",
        )
        .map_err(lstorage)?;
    for (i, targets) in waves.iter().enumerate() {
        let released = (i == 0).then_some(Rfc3339(at));
        wave.execute(params![run, i as u32, released])
            .map_err(lstorage)?;
        for t in targets {
            add.execute(params![run, t.key_digest(), t, Rfc3339(at), i as u32])
                .map_err(lstorage)?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// [`insert_waves`] in a transaction of its own.
    pub(crate) fn add_waves(
        &self,
        run: &RunId,
        waves: &[Vec<ResourceId>],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| insert_waves(tx, run, waves, at))
    }

    /// The run's waves in index order, with their targets' standing now.
    pub fn waves(&self, run: &RunId) -> Result<Vec<WaveView>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT w.wave, w.released_at, w.gate_passed, w.gate_reason, w.resumed,
                   COUNT(t.target_key), COALESCE(SUM(t.outcome IS NOT NULL), 0),
                   COALESCE(SUM(t.outcome LIKE 'rolled-back%' OR t.outcome LIKE 'parked%'), 0),
                   MAX(t.finished_at), w.approved, w.gate_checks
                 FROM rollout_waves w LEFT JOIN targets t ON t.run = w.run AND t.wave = w.wave
                 WHERE w.run = ?1 GROUP BY w.wave ORDER BY w.wave",
            )
            .map_err(lstorage)?;
        let rows = stmt
            .query_map(params![run], |r| {
                let targets: u32 = r.get(5)?;
                let terminal: u32 = r.get(6)?;
                let last: Option<Rfc3339> = r.get(8)?;
                let passed: Option<bool> = r.get(2)?;
                let reason: Option<String> = r.get(3)?;
                let checks: Option<String> = r.get(10)?;
                Ok(WaveView {
                    index: r.get(0)?,
                    targets,
                    failed: r.get(7)?,
                    released_at: r.get::<_, Option<Rfc3339>>(1)?.map(|t| t.0),
                    ended_at: last.filter(|_| terminal == targets).map(|t| t.0),
                    gate: passed
                        .zip(reason)
                        .map(|(passed, reason)| Gate::recorded(passed, reason, checks.as_deref())),
                    resumed: r.get(4)?,
                    approved: r.get(9)?,
                })
            })
            .map_err(lstorage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(lstorage)
    }

    /// The sites of wave `index` (its first messages go to them).
    pub(crate) fn wave_sites(
        &self,
        run: &RunId,
        index: u32,
    ) -> Result<Vec<ResourceId>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT target FROM targets WHERE run=?1 AND wave=?2 AND steps=0 AND outcome IS NULL ORDER BY lower(target)")
            .map_err(lstorage)?;
        let rows = stmt
            .query_map(params![run, index], |r| r.get::<_, ResourceId>(0))
            .map_err(lstorage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(lstorage)
    }

    /// Records `gate` for wave `index` unless one is recorded (a gate is judged once).
    pub(crate) fn record_gate(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
    ) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| {
            tx.execute(
                "UPDATE rollout_waves SET gate_passed=?3, gate_reason=?4, gate_checks=?5 WHERE run=?1 AND wave=?2 AND gate_passed IS NULL",
                params![run, index, gate.passed, gate.reason, gate.checks_text()],
            )
            .map_err(lstorage)
        })?;
        Ok(())
    }

    /// An operator's approval of wave `index` (`rollout promote`): it is released once its
    /// predecessor's gate passed.
    pub fn approve(&self, run: &RunId, index: u32) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| {
            tx.execute(
                "UPDATE rollout_waves SET approved=1 WHERE run=?1 AND wave=?2",
                params![run, index],
            )
            .map_err(lstorage)
        })?;
        Ok(())
    }

    /// Records the gate of wave `index - 1` (unless recorded) and releases wave `index` at
    /// `now`: its targets' clocks start now and `first` is queued, in one transaction.
    pub(crate) fn release_wave(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
        first: &[Outgoing],
        now: OffsetDateTime,
    ) -> Result<Released, LedgerError> {
        let released = self.transaction(lstorage, |tx| {
            tx.execute(
                "UPDATE rollout_waves SET gate_passed=?3, gate_reason=?4, gate_checks=?5 WHERE run=?1 AND wave=?2 AND gate_passed IS NULL",
                params![run, index.saturating_sub(1), gate.passed, gate.reason, gate.checks_text()],
            )
            .map_err(lstorage)?;
            let released = tx
                .execute(
                    "UPDATE rollout_waves SET released_at=?3 WHERE run=?1 AND wave=?2 AND released_at IS NULL",
                    params![run, index, Rfc3339(now)],
                )
                .map_err(lstorage)?;
            if released == 0 {
                // Released already (by a process that crashed before it could say so).
                return Ok(Released::Already);
            }
            tx.execute(
                "UPDATE targets SET started_at=?3, updated_at=?3 WHERE run=?1 AND wave=?2 AND steps=0",
                params![run, index, Rfc3339(now)],
            )
            .map_err(lstorage)?;
            Self::insert(tx, first)
                .map_err(|e| LedgerError::storage("queueing a wave's first steps", Some(Box::new(e))))?;
            Ok(Released::Queued)
        })?;
        self.sent.notify_one();
        Ok(released)
    }

    /// What an operator asked of the run's rollout (running when nothing was asked).
    pub(crate) fn control(&self, run: &RunId) -> Result<Control, LedgerError> {
        read_control(&self.conn(), run)
    }

    /// Pause or resume; resuming also lets the rollout past the gate it stopped at. An
    /// aborted rollout stays aborted (its untouched targets are cancelled already).
    pub fn set_control(&self, run: &RunId, control: Control) -> Result<Control, LedgerError> {
        self.transaction(lstorage, |tx| {
            if read_control(tx, run)? == Control::Aborted {
                return Ok(Control::Aborted);
            }
            tx.execute(
                "INSERT INTO rollout_control (run, control) VALUES (?1, ?2)
                 ON CONFLICT(run) DO UPDATE SET control=excluded.control",
                params![run, control.as_str()],
            )
            .map_err(lstorage)?;
            if control == Control::Running {
                tx.execute(
                    "UPDATE rollout_waves SET resumed=1 WHERE run=?1 AND gate_passed=0",
                    params![run],
                )
                .map_err(lstorage)?;
            }
            Ok(control)
        })
    }

    /// Aborts the rollout: every target no step has touched (in unreleased waves, or released
    /// but not yet delivered) is `cancelled` and its queued first message removed; targets a
    /// step has touched, or whose first step is being delivered now, go on to their outcome.
    /// How many targets were cancelled.
    pub fn abort(&self, run: &RunId, now: OffsetDateTime) -> Result<usize, LedgerError> {
        let at = Rfc3339(now);
        self.transaction(lstorage, |tx| {
            tx.execute(
                "INSERT INTO rollout_control (run, control) VALUES (?1, 'aborted')
                 ON CONFLICT(run) DO UPDATE SET control='aborted'",
                params![run],
            )
            .map_err(lstorage)?;
            let untouched = "run=?1 AND outcome IS NULL AND steps=0 AND NOT EXISTS (
                SELECT 1 FROM queue q WHERE q.session_id = targets.target_key AND q.state='active' AND q.lock_token IS NOT NULL)";
            // An untouched target's session holds only its first message.
            tx.execute(
                &format!("DELETE FROM queue WHERE state='active' AND lock_token IS NULL AND session_id IN (SELECT target_key FROM targets WHERE {untouched})"),
                params![run],
            )
            .map_err(lstorage)?;
            tx.execute(
                &format!("UPDATE targets SET outcome='cancelled', current_step=NULL, finished_at=?2, updated_at=?2 WHERE {untouched}"),
                params![run, at],
            )
            .map_err(lstorage)
        })
    }
}
