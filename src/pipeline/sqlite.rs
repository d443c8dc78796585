//! The embedded durable store of `run` and `rehearse`: one SQLite file holding the step queue
//! (duplicate detection by MessageId, sessions, scheduled visibility, leases, delivery counts,
//! dead letters) and the ledger. Settling a delivery, enqueuing its next steps and recording
//! the step happen in one transaction, so a crash leaves either all of it or none.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::ledger::{Ledger, LedgerError, RunRecord, StepLogEntry, StepRecord, TargetRecord};
use super::message::{GatewaySnapshot, RunId};
use super::queue::{Outgoing, QueueError, StepSender};
use crate::azure::ResourceId;

/// A message handed to a worker, locked until `locked_until`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub message_id: String,
    pub session_id: String,
    pub body: Vec<u8>,
    pub delivery_count: u32,
    pub lock_token: String,
}

/// A dead-lettered message and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: Vec<u8>,
    pub reason: String,
    pub delivery_count: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub active: u64,
    pub locked: u64,
    pub completed: u64,
    pub dead: u64,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    pub max_delivery_count: u32,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

fn parse_rfc(s: &str) -> Result<OffsetDateTime, LedgerError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| LedgerError::Storage(format!("bad timestamp {s:?}: {e}")))
}

fn storage<E: std::fmt::Display>(e: E) -> QueueError {
    QueueError::Storage(e.to_string())
}

fn lstorage<E: std::fmt::Display>(e: E) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

const SCHEMA: &str = "
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS queue (
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
CREATE INDEX IF NOT EXISTS queue_ready ON queue(state, visible_at);
CREATE INDEX IF NOT EXISTS queue_session ON queue(session_id, state);
CREATE TABLE IF NOT EXISTS runs (
  run TEXT PRIMARY KEY, started_at TEXT NOT NULL, dry_run INTEGER NOT NULL, origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
  run TEXT NOT NULL, target_key TEXT NOT NULL, target TEXT NOT NULL,
  outcome TEXT, current_step TEXT, steps INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
  reason TEXT, subnet TEXT, prefix TEXT, gateway TEXT,
  started_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT,
  PRIMARY KEY (run, target_key)
);
CREATE TABLE IF NOT EXISTS step_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, target_key TEXT NOT NULL, target TEXT NOT NULL,
  step TEXT NOT NULL, attempt INTEGER NOT NULL, message_id TEXT NOT NULL, detail TEXT NOT NULL,
  at TEXT NOT NULL, duration_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS step_log_target ON step_log(run, target_key);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let conn = Connection::open(path).map_err(|e| {
            QueueError::Storage(format!("cannot open state file {}: {e}", path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(|e| {
            QueueError::Storage(format!(
                "state file {} is not a vnet-migrate state file: {e}",
                path.display()
            ))
        })?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),

            max_delivery_count: 10,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases every lease: called by the single runner that owns the file when it starts,
    /// so work leased by a crashed process is delivered again at once.
    pub fn release_all_locks(&self) -> Result<u64, QueueError> {
        let n = self
            .conn()
            .execute("UPDATE queue SET lock_token=NULL, locked_until=NULL WHERE state='active' AND lock_token IS NOT NULL", [])
            .map_err(storage)?;
        Ok(n as u64)
    }

    fn insert(tx: &rusqlite::Transaction<'_>, messages: &[Outgoing]) -> Result<(), QueueError> {
        let mut stmt = tx
            .prepare_cached("INSERT OR IGNORE INTO queue (message_id, session_id, subscription, body, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(storage)?;
        for m in messages {
            stmt.execute(params![
                m.message.message_id(),
                m.message.session_id(),
                m.message.target.subscription().to_ascii_lowercase(),
                m.message.encode(),
                ms(m.visible_at)
            ])
            .map_err(storage)?;
        }
        Ok(())
    }

    /// Locks and returns the first visible message whose session has nothing in flight and
    /// which `admit(session, subscription)` accepts (the runner's per-subscription
    /// concurrency), or None. Candidates are judged without reading their bodies.
    /// A message already delivered `max_delivery_count` times is dead-lettered instead.
    pub fn receive(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        mut admit: impl FnMut(&str, &str) -> bool,
    ) -> Result<Option<Delivery>, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage)?;
        let now_ms = ms(now);
        let candidates: Vec<(i64, String, String, String, u32)> = {
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
                .query_map(params![now_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(storage)?;
            rows.collect::<Result<_, _>>().map_err(storage)?
        };
        let mut chosen = None;
        let mut sessions_seen = std::collections::HashSet::new();
        for (seq, message_id, session_id, subscription, count) in candidates {
            // Sessions are FIFO: only the first ready message of a session is a candidate.
            if !sessions_seen.insert(session_id.clone()) {
                continue;
            }
            if count >= self.max_delivery_count {
                tx.execute(
                    "UPDATE queue SET state='dead', dead_reason='MaxDeliveryCountExceeded', lock_token=NULL, locked_until=NULL WHERE seq=?1",
                    params![seq],
                )
                .map_err(storage)?;
                continue;
            }
            if admit(&session_id, &subscription) {
                let body: Vec<u8> = tx
                    .query_row("SELECT body FROM queue WHERE seq=?1", params![seq], |r| {
                        r.get(0)
                    })
                    .map_err(storage)?;
                chosen = Some((seq, message_id, session_id, body, count));
                break;
            }
        }
        let delivery = match chosen {
            None => None,
            Some((seq, message_id, session_id, body, count)) => {
                let token = uuid::Uuid::new_v4().to_string();
                let until = now_ms + lease.as_millis() as i64;
                tx.execute(
                    "UPDATE queue SET lock_token=?1, locked_until=?2, delivery_count=delivery_count+1 WHERE seq=?3",
                    params![token, until, seq],
                )
                .map_err(storage)?;
                Some(Delivery {
                    seq,
                    message_id,
                    session_id,
                    body,
                    delivery_count: count + 1,
                    lock_token: token,
                })
            }
        };
        tx.commit().map_err(storage)?;
        Ok(delivery)
    }

    fn check_lock(tx: &rusqlite::Transaction<'_>, d: &Delivery) -> Result<(), QueueError> {
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
    pub fn commit(
        &self,
        d: &Delivery,
        next: &[Outgoing],
        record: Option<&StepRecord>,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage)?;
        Self::check_lock(&tx, d)?;
        tx.execute(
            "UPDATE queue SET state='completed', lock_token=NULL, locked_until=NULL WHERE seq=?1",
            params![d.seq],
        )
        .map_err(storage)?;
        Self::insert(&tx, next)?;
        if let Some(r) = record {
            record_tx(&tx, r).map_err(|e| QueueError::Storage(e.to_string()))?;
        }
        tx.commit().map_err(storage)
    }

    /// Gives a delivery back: visible again after `delay`.
    pub fn abandon(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage)?;
        Self::check_lock(&tx, d)?;
        let visible = ms(OffsetDateTime::now_utc()) + delay.as_millis() as i64;
        tx.execute(
            "UPDATE queue SET lock_token=NULL, locked_until=NULL, visible_at=?2 WHERE seq=?1",
            params![d.seq, visible],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    pub fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage)?;
        Self::check_lock(&tx, d)?;
        tx.execute("UPDATE queue SET state='dead', dead_reason=?2, lock_token=NULL, locked_until=NULL WHERE seq=?1", params![d.seq, reason]).map_err(storage)?;
        tx.commit().map_err(storage)
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT message_id, body, dead_reason, delivery_count FROM queue WHERE state='dead' ORDER BY seq").map_err(storage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetter {
                    message_id: r.get(0)?,
                    body: r.get(1)?,
                    reason: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    delivery_count: r.get(3)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)
    }

    /// Removes a dead letter once it has been replayed.
    pub fn complete_dead_letter(&self, message_id: &str) -> Result<(), QueueError> {
        self.conn()
            .execute(
                "UPDATE queue SET state='completed' WHERE message_id=?1 AND state='dead'",
                params![message_id],
            )
            .map_err(storage)?;
        Ok(())
    }

    pub fn counts(&self) -> Result<QueueCounts, QueueError> {
        let conn = self.conn();
        let now = ms(OffsetDateTime::now_utc());
        let mut c = QueueCounts::default();
        let mut stmt = conn
            .prepare("SELECT state, (locked_until IS NOT NULL AND locked_until>?1), COUNT(*) FROM queue GROUP BY 1, 2")
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, u64>(2)?,
                ))
            })
            .map_err(storage)?;
        for row in rows {
            let (state, locked, n) = row.map_err(storage)?;
            match (state.as_str(), locked) {
                ("active", true) => c.locked += n,
                ("active", false) => c.active += n,
                ("completed", _) => c.completed += n,
                _ => c.dead += n,
            }
        }
        Ok(c)
    }

    /// When the next active message becomes visible (None when the queue is empty).
    pub fn next_visible_at(&self) -> Result<Option<OffsetDateTime>, QueueError> {
        let v: Option<i64> = self
            .conn()
            .query_row("SELECT MIN(MAX(visible_at, COALESCE(locked_until, 0))) FROM queue WHERE state='active'", [], |r| r.get(0))
            .map_err(storage)?;
        Ok(v.map(|m| {
            OffsetDateTime::from_unix_timestamp_nanos(m as i128 * 1_000_000).expect("valid time")
        }))
    }
}

#[async_trait]
impl StepSender for SqliteStore {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage)?;
        Self::insert(&tx, &messages)?;
        tx.commit().map_err(storage)
    }
}

fn record_tx(tx: &rusqlite::Transaction<'_>, r: &StepRecord) -> Result<(), LedgerError> {
    let at = rfc(r.at);
    tx.execute(
        "INSERT INTO step_log (run, target_key, target, step, attempt, message_id, detail, at, duration_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
        params![r.run.as_str(), r.target.key(), r.target.as_str(), r.step.as_str(), r.attempt, r.message_id, r.detail, at, r.duration_ms as i64],
    )
    .map_err(lstorage)?;
    let gateway = r
        .gateway
        .as_ref()
        .map(|g| serde_json::to_string(g).expect("serialises"));
    let outcome = r.outcome.as_ref().map(|o| o.to_string());
    let reason = r.outcome.as_ref().and_then(|o| o.reason());
    let finished = r.outcome.as_ref().map(|_| at.clone());
    tx.execute(
        "INSERT INTO targets (run, target_key, target, outcome, current_step, steps, attempts, reason, subnet, prefix, gateway, started_at, updated_at, finished_at)
         VALUES (?1,?2,?3,?4,?5,1,?6,?7,?8,?9,?10,?11,?11,?12)
         ON CONFLICT(run, target_key) DO UPDATE SET
           outcome=excluded.outcome, current_step=excluded.current_step, steps=targets.steps+1,
           attempts=MAX(targets.attempts, excluded.attempts), reason=COALESCE(excluded.reason, targets.reason),
           subnet=COALESCE(excluded.subnet, targets.subnet), prefix=COALESCE(excluded.prefix, targets.prefix),
           gateway=COALESCE(excluded.gateway, targets.gateway), updated_at=excluded.updated_at, finished_at=excluded.finished_at",
        params![
            r.run.as_str(),
            r.target.key(),
            r.target.as_str(),
            outcome,
            r.next.map(|s| s.as_str()),
            r.attempt,
            reason,
            r.subnet.as_ref().map(|s| s.as_str().to_string()),
            r.prefix,
            gateway,
            at,
            finished
        ],
    )
    .map_err(lstorage)?;
    Ok(())
}

fn target_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<[Option<String>; 12]> {
    Ok([
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get::<_, Option<i64>>(4)?.map(|v| v.to_string()),
        r.get::<_, Option<i64>>(5)?.map(|v| v.to_string()),
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ])
}

const TARGET_COLS: &str = "run, target, outcome, current_step, steps, attempts, reason, subnet, prefix, gateway, started_at, updated_at, finished_at";

fn decode_target(
    cols: [Option<String>; 12],
    finished: Option<String>,
) -> Result<TargetRecord, LedgerError> {
    let [run, target, outcome, step, steps, attempts, reason, subnet, prefix, gateway, started, updated] =
        cols;
    let bad = |what: &str, e: String| LedgerError::Storage(format!("corrupt ledger {what}: {e}"));
    Ok(TargetRecord {
        run: RunId(run.unwrap_or_default()),
        target: ResourceId::parse(&target.unwrap_or_default())
            .map_err(|e| bad("target", e.to_string()))?,
        outcome: outcome
            .map(|o| o.parse())
            .transpose()
            .map_err(|e| bad("outcome", e))?,
        current_step: step
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| bad("step", e))?,
        steps: steps.and_then(|s| s.parse().ok()).unwrap_or(0),
        attempts: attempts.and_then(|s| s.parse().ok()).unwrap_or(0),
        reason,
        subnet: subnet
            .map(|s| ResourceId::parse(&s))
            .transpose()
            .map_err(|e| bad("subnet", e.to_string()))?,
        prefix,
        gateway: gateway
            .map(|g| serde_json::from_str(&g))
            .transpose()
            .map_err(|e| bad("gateway", e.to_string()))?,
        started_at: parse_rfc(&started.unwrap_or_default())?,
        updated_at: parse_rfc(&updated.unwrap_or_default())?,
        finished_at: finished.map(|f| parse_rfc(&f)).transpose()?,
    })
}

impl SqliteStore {
    fn query_targets(
        &self,
        where_: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TargetRecord>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TARGET_COLS} FROM targets WHERE {where_} ORDER BY target_key"
            ))
            .map_err(lstorage)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((target_row(r)?, r.get::<_, Option<String>>(12)?))
            })
            .map_err(lstorage)?;
        let mut out = Vec::new();
        for row in rows {
            let (cols, finished) = row.map_err(lstorage)?;
            out.push(decode_target(cols, finished)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn start_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO runs (run, started_at, dry_run, origin) VALUES (?1, ?2, ?3, ?4)",
                params![run.run.as_str(), rfc(run.started_at), run.dry_run, run.origin],
            )
            .map_err(lstorage)?;
        Ok(())
    }

    async fn runs(&self) -> Result<Vec<RunRecord>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT run, started_at, dry_run, origin FROM runs ORDER BY started_at")
            .map_err(lstorage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(lstorage)?;
        let mut out = Vec::new();
        for row in rows {
            let (run, started, dry_run, origin) = row.map_err(lstorage)?;
            out.push(RunRecord {
                run: RunId(run),
                started_at: parse_rfc(&started)?,
                dry_run,
                origin,
            });
        }
        Ok(out)
    }

    async fn add_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let at = rfc(at);
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO targets (run, target_key, target, current_step, started_at, updated_at) VALUES (?1, ?2, ?3, 'discover', ?4, ?4)",
                params![run.as_str(), target.key(), target.as_str(), at],
            )
            .map_err(lstorage)?;
        Ok(())
    }

    async fn record(&self, step: &StepRecord) -> Result<(), LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(lstorage)?;
        record_tx(&tx, step)?;
        tx.commit().map_err(lstorage)
    }

    async fn save_gateway(
        &self,
        run: &RunId,
        target: &ResourceId,
        gateway: &GatewaySnapshot,
    ) -> Result<(), LedgerError> {
        let now = rfc(OffsetDateTime::now_utc());
        let g = serde_json::to_string(gateway).expect("serialises");
        self.conn()
            .execute(
                "INSERT INTO targets (run, target_key, target, gateway, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(run, target_key) DO UPDATE SET gateway=excluded.gateway, updated_at=excluded.updated_at",
                params![run.as_str(), target.key(), target.as_str(), g, now],
            )
            .map_err(lstorage)?;
        Ok(())
    }

    async fn target(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Option<TargetRecord>, LedgerError> {
        Ok(self
            .query_targets("run=?1 AND target_key=?2", &[&run.as_str(), &target.key()])?
            .pop())
    }

    async fn targets(&self, run: &RunId) -> Result<Vec<TargetRecord>, LedgerError> {
        self.query_targets("run=?1", &[&run.as_str()])
    }

    async fn step_log(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Vec<StepLogEntry>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT target, step, attempt, message_id, detail, at, duration_ms FROM step_log WHERE run=?1 AND target_key=?2 ORDER BY id")
            .map_err(lstorage)?;
        let rows = stmt
            .query_map(params![run.as_str(), target.key()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(lstorage)?;
        let mut out = Vec::new();
        for row in rows {
            let (t, step, attempt, message_id, detail, at, duration) = row.map_err(lstorage)?;
            out.push(StepLogEntry {
                run: run.clone(),
                target: ResourceId::parse(&t).map_err(lstorage)?,
                step: step.parse().map_err(LedgerError::Storage)?,
                attempt,
                message_id,
                detail,
                at: parse_rfc(&at)?,
                duration_ms: duration as u64,
            });
        }
        Ok(out)
    }

    async fn active_run_for(&self, target: &ResourceId) -> Result<Option<RunId>, LedgerError> {
        let run: Option<String> = self
            .conn()
            .query_row(
                "SELECT run FROM targets WHERE target_key=?1 AND outcome IS NULL ORDER BY started_at DESC LIMIT 1",
                params![target.key()],
                |r| r.get(0),
            )
            .optional()
            .map_err(lstorage)?;
        Ok(run.map(RunId))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::message::{Origin, Step, StepMessage};

    fn store() -> (tempdir::Dir, SqliteStore) {
        let dir = tempdir::Dir::new();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    /// A throwaway directory removed on drop (keeps the test free of extra crates).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir()
                    .join(format!("vnet-migrate-test-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn msg(app: &str, step: Step) -> StepMessage {
        let t = ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{app}"
        ))
        .unwrap();
        StepMessage::new(RunId("r-1".into()), t, step, Origin::Cli)
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    const LEASE: Duration = Duration::from_secs(60);

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
        let first = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        let second = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        assert_ne!(first.session_id, second.session_id);
        assert!(
            s.receive(now(), LEASE, |_, _| true).unwrap().is_none(),
            "session a is busy"
        );
        let (a, _) = if first.session_id.ends_with("/a") {
            (first, second)
        } else {
            (second, first)
        };
        s.commit(&a, &[], None).unwrap();
        let again = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        assert!(again.session_id.ends_with("/a"));
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
    async fn survives_reopen() {
        let dir = tempdir::Dir::new();
        let p = dir.path().join("s.db");
        {
            let s = SqliteStore::open(&p).unwrap();
            s.send(vec![Outgoing::now(msg("a", Step::Discover))])
                .await
                .unwrap();
            let _leased = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert!(
            s.receive(now(), LEASE, |_, _| true).unwrap().is_none(),
            "still leased"
        );
        s.release_all_locks().unwrap();
        assert_eq!(
            s.receive(now(), LEASE, |_, _| true)
                .unwrap()
                .unwrap()
                .delivery_count,
            2
        );
    }
}
