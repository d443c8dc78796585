//! The embedded durable store of `run` and `rehearse`: one SQLite file holding the step queue
//! (duplicate detection by MessageId, sessions, scheduled visibility, leases, delivery counts,
//! dead letters) and the ledger. Settling a delivery, enqueuing its next steps and recording
//! the step happen in one transaction, so a crash leaves either all of it or none.
//!
//! `queue` is the queue half, `ledger` the ledger half, `runs` how a run begins (its contract,
//! targets and first messages in one transaction), `columns` how values are stored.

mod columns;
mod ledger;
mod operator;
mod queue;
mod rollout;
mod runs;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, Transaction};
use time::OffsetDateTime;
use tokio::sync::Notify;

use self::columns::UnixMs;
use super::ledger::LedgerError;
use super::queue::QueueError;

pub use self::queue::DeadLetter;
pub(crate) use self::queue::Delivery;
pub use self::runs::RunState;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueCounts {
    pub active: u64,
    pub locked: u64,
    pub completed: u64,
    pub dead: u64,
    /// When the first lease counted in `locked` ends.
    pub leased_until: Option<OffsetDateTime>,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    pub(crate) max_delivery_count: u32,
    /// Signalled when messages are sent from outside a settle (a settle wakes the runner
    /// through its finished worker).
    sent: Notify,
}

fn storage(e: rusqlite::Error) -> QueueError {
    QueueError::storage("SQLite", Some(Box::new(e)))
}

fn lstorage(e: rusqlite::Error) -> LedgerError {
    LedgerError::storage("SQLite", Some(Box::new(e)))
}

/// Connection settings: 2 KiB pages for new files (a WAL commit writes every page it
/// touched in full, and a step touches about a dozen pages for well under a kilobyte of data:
/// halving the page halves the bytes written, while a message or a target row still fits in
/// one page); WAL with `synchronous=NORMAL` (a commit is one WAL append without an
/// fsync: it survives the process being killed at once; a power loss may lose the last
/// commits but never consistency, and a lost settle is only a redelivery the reconcilers
/// absorb), and a 16 MiB page cache so the hot pages (active queue rows, their indexes, the
/// run's targets) stay in memory. The WAL is checkpointed every 8,192 pages (16 MiB) rather
/// than SQLite's 1,000: a checkpoint writes each page changed since the last one once, and
/// the pages every step changes (the queue's, its indexes', the step log's last) are then
/// copied to the file once per few thousand steps instead of once per few hundred (2,000
/// targets: 53 -> 41 KB written per step).
const PRAGMAS: &str = "
PRAGMA page_size=2048;
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA cache_size=-16384;
PRAGMA wal_autocheckpoint=8192;
";

/// The queue holds only live messages (active or dead-lettered): a completed message is
/// deleted and only its MessageId stays, in `message_ids`, for duplicate detection. `seq`
/// is the rowid (no AUTOINCREMENT: a new row takes the largest + 1, which keeps FIFO order
/// among the rows that exist). `head` marks the first active message (by visible_at, seq) of
/// each session: only heads are delivery candidates, so messages queued behind a busy session
/// are never looked at; `priority` is the step's scheduling level (`Step::priority`). Both
/// indexes are partial, on active rows only; neither covers the lease columns, so leasing a
/// message rewrites its row and nothing else. The step log is appended to by every settle and
/// read per target only to inspect one (a scan): it has no index, which on (run, target)
/// added a page in a random place of the file to every settle (files that have it lose it).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
  seq INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  subscription TEXT NOT NULL,
  body BLOB NOT NULL,
  visible_at INTEGER NOT NULL,
  head INTEGER NOT NULL DEFAULT 0,
  priority INTEGER NOT NULL DEFAULT 0,
  delivery_count INTEGER NOT NULL DEFAULT 0,
  lock_token TEXT,
  locked_until INTEGER,
  state TEXT NOT NULL DEFAULT 'active',
  dead_reason TEXT,
  dead_at INTEGER,
  vnet TEXT
);
CREATE TABLE IF NOT EXISTS message_ids (message_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_heads ON queue(subscription, priority, visible_at, seq) WHERE state='active' AND head=1;
CREATE INDEX IF NOT EXISTS queue_sessions ON queue(session_id, visible_at, seq) WHERE state='active';
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
  id INTEGER PRIMARY KEY, run TEXT NOT NULL, target_key TEXT NOT NULL, target TEXT NOT NULL,
  step TEXT NOT NULL, attempt INTEGER NOT NULL, message_id TEXT NOT NULL, detail TEXT NOT NULL,
  at TEXT NOT NULL, duration_ms INTEGER NOT NULL
);
DROP INDEX IF EXISTS step_log_target;
CREATE TABLE IF NOT EXISTS run_contracts (run TEXT PRIMARY KEY, contract TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollout_waves (
  run TEXT NOT NULL, wave INTEGER NOT NULL, released_at TEXT,
  gate_passed INTEGER, gate_reason TEXT, resumed INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (run, wave)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollout_control (run TEXT PRIMARY KEY, control TEXT NOT NULL) WITHOUT ROWID;
";

/// Moves a queue of the first shape (AUTOINCREMENT, completed rows kept whole, indexes led by
/// `state`), renamed `queue_old`, into the current one: every MessageId it ever accepted goes
/// to `message_ids`, live rows keep their seq, leases and delivery counts, and the first
/// active message of each session becomes its head.
const MIGRATE_QUEUE: &str = "
INSERT OR IGNORE INTO message_ids (message_id) SELECT message_id FROM queue_old;
INSERT INTO queue (seq, message_id, session_id, subscription, body, visible_at, delivery_count, lock_token, locked_until, state, dead_reason)
  SELECT seq, message_id, session_id, subscription, body, visible_at, delivery_count, lock_token, locked_until, state, dead_reason
  FROM queue_old WHERE state<>'completed';
DROP TABLE queue_old;
UPDATE queue SET head=1 WHERE seq IN (
  SELECT (SELECT h.seq FROM queue h WHERE h.session_id=s.session_id AND h.state='active' ORDER BY h.visible_at, h.seq LIMIT 1)
  FROM (SELECT DISTINCT session_id FROM queue WHERE state='active') s);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let mut conn = Connection::open(path).map_err(|e| {
            QueueError::storage(
                format!("cannot open state file {}", path.display()),
                Some(Box::new(e)),
            )
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        Self::initialise(&mut conn).map_err(|e| {
            QueueError::storage(
                format!(
                    "state file {} is not a vnet-migrate state file",
                    path.display()
                ),
                Some(Box::new(e)),
            )
        })?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            max_delivery_count: 10,
            sent: Notify::new(),
        })
    }

    /// Applies the settings and creates the tables, rebuilding a queue of the old shape in
    /// place first (one transaction: an interrupted migration leaves the old file as it was).
    fn initialise(conn: &mut Connection) -> rusqlite::Result<()> {
        conn.execute_batch(PRAGMAS)?;
        let tx = conn.transaction()?;
        let (columns, has_head, has_priority): (u32, bool, bool) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(name='head'), 0) > 0, COALESCE(SUM(name='priority'), 0) > 0 FROM pragma_table_info('queue')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let old_queue = columns > 0 && !has_head;
        if old_queue {
            tx.execute_batch(
                "DROP INDEX IF EXISTS queue_ready; DROP INDEX IF EXISTS queue_session;
                 ALTER TABLE queue RENAME TO queue_old;",
            )?;
        } else if columns > 0 && !has_priority {
            // The lean queue before scheduling levels: its heads index is rebuilt with them.
            tx.execute_batch(
                "DROP INDEX IF EXISTS queue_heads;
                 ALTER TABLE queue ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        tx.execute_batch(SCHEMA)?;
        ledger::add_target_columns(&tx)?;
        ledger::add_columns(&tx, "rollout_waves", &rollout::ADDED_WAVE_COLUMNS)?;
        // Files written before dead letters were timed.
        let timed: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('queue') WHERE name='dead_at'",
            [],
            |r| r.get(0),
        )?;
        if !timed {
            tx.execute_batch("ALTER TABLE queue ADD COLUMN dead_at INTEGER")?;
        }
        // Files written before per-VNet admission.
        let placed: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('queue') WHERE name='vnet'",
            [],
            |r| r.get(0),
        )?;
        if !placed {
            tx.execute_batch("ALTER TABLE queue ADD COLUMN vnet TEXT")?;
        }
        if old_queue {
            tx.execute_batch(MIGRATE_QUEUE)?;
        }
        if (columns > 0 && !has_priority) || old_queue || !placed {
            queue::classify_live(&tx)?;
        }
        tx.commit()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one (deferred) transaction: committed when `f` succeeds, rolled back when
    /// it fails. `to_err` turns rusqlite's own errors into the caller's error type.
    fn transaction<T, E>(
        &self,
        to_err: fn(rusqlite::Error) -> E,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(to_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(to_err)?;
        Ok(out)
    }

    /// Releases every lease: called by the single runner that owns the file when it starts,
    /// so work leased by a crashed process is delivered again at once.
    pub(crate) fn release_all_locks(&self) -> Result<u64, QueueError> {
        let n = self
            .conn()
            .execute("UPDATE queue SET lock_token=NULL, locked_until=NULL WHERE state='active' AND lock_token IS NOT NULL", [])
            .map_err(storage)?;
        Ok(n as u64)
    }

    #[cfg(test)]
    pub(crate) fn counts(&self) -> Result<QueueCounts, QueueError> {
        self.counts_at(OffsetDateTime::now_utc())
    }

    /// When the next waiting step becomes deliverable (a settle time, a backoff, a schedule).
    pub(crate) fn next_due(&self) -> Result<Option<OffsetDateTime>, QueueError> {
        self.conn()
            .query_row(
                "SELECT MIN(visible_at) FROM queue WHERE state='active' AND lock_token IS NULL",
                [],
                |r| r.get::<_, Option<UnixMs>>(0),
            )
            .map(|t| t.map(UnixMs::datetime))
            .map_err(storage)
    }

    /// The counts as of `now` (a lease that ends by `now` no longer counts as locked).
    pub(crate) fn counts_at(&self, now: OffsetDateTime) -> Result<QueueCounts, QueueError> {
        let conn = self.conn();
        let now = UnixMs::at(now);
        let mut c = QueueCounts::default();
        let mut stmt = conn
            .prepare_cached("SELECT state, (locked_until IS NOT NULL AND locked_until>?1), COUNT(*), MIN(locked_until) FROM queue GROUP BY 1, 2")
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, Option<UnixMs>>(3)?,
                ))
            })
            .map_err(storage)?;
        let mut live = 0;
        for row in rows {
            let (state, locked, n, until) = row.map_err(storage)?;
            live += n;
            match (state.as_str(), locked) {
                ("active", true) => {
                    c.locked += n;
                    c.leased_until = until.map(UnixMs::datetime);
                }
                ("active", false) => c.active += n,
                _ => c.dead += n,
            }
        }
        // Completed messages are deleted; their ids stay for duplicate detection.
        let accepted: u64 = conn
            .prepare_cached("SELECT COUNT(*) FROM message_ids")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(storage)?;
        c.completed = accepted.saturating_sub(live);
        Ok(c)
    }
}

/// What the tests of both halves share: a store in a throwaway directory and messages.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::SqliteStore;
    use crate::azure::ResourceId;
    use crate::pipeline::message::{Origin, RunId, Step, StepMessage};

    pub(crate) const LEASE: Duration = Duration::from_secs(60);

    pub(crate) fn store() -> (Dir, SqliteStore) {
        let dir = Dir::new();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    /// A throwaway directory removed on drop (keeps the tests free of extra crates).
    pub(crate) struct Dir(std::path::PathBuf);

    impl Dir {
        pub(crate) fn new() -> Self {
            let p =
                std::env::temp_dir().join(format!("vnet-migrate-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        pub(crate) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn msg(app: &str, step: Step) -> StepMessage {
        msg_in("s", app, step)
    }

    /// A message for site `app` in subscription `sub`.
    pub(crate) fn msg_in(sub: &str, app: &str, step: Step) -> StepMessage {
        let t = ResourceId::parse(&format!(
            "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/{app}"
        ))
        .unwrap();
        StepMessage::new(RunId("r-1".into()), t, step, Origin::Cli)
    }

    pub(crate) fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{msg, now, store, Dir, LEASE};
    use super::*;
    use crate::pipeline::message::Step;
    use crate::pipeline::queue::{Outgoing, StepSender};

    #[tokio::test]
    async fn survives_reopen() {
        let dir = Dir::new();
        let p = dir.path().join("s.db");
        {
            let s = SqliteStore::open(&p).unwrap();
            s.send(vec![Outgoing::now(msg("a", Step::Discover))])
                .await
                .unwrap();
            let _leased = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert!(
            s.receive(now(), LEASE, &[]).unwrap().is_none(),
            "still leased"
        );
        s.release_all_locks().unwrap();
        assert_eq!(
            s.receive(now(), LEASE, &[])
                .unwrap()
                .unwrap()
                .delivery_count,
            2
        );
    }

    #[test]
    fn a_file_that_is_not_a_state_file_is_refused() {
        let dir = Dir::new();
        let p = dir.path().join("not.db");
        std::fs::write(
            &p,
            b"definitely not sqlite, but long enough to have a header page",
        )
        .unwrap();
        let err = SqliteStore::open(&p).err().expect("refused");
        assert!(
            err.to_string().contains("not a vnet-migrate state file"),
            "{err}"
        );
    }

    /// Settles write no index page of the step log: a file that has the old index loses it.
    #[test]
    fn the_step_log_of_an_older_file_loses_its_index() {
        let dir = Dir::new();
        let p = dir.path().join("old.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("CREATE INDEX step_log_target ON step_log(run, target_key)")
                .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        let indexes: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type='index' AND tbl_name='step_log'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
    }

    #[tokio::test]
    async fn counts_by_state() {
        let (_d, s) = store();
        s.send(vec![
            Outgoing::now(msg("a", Step::Discover)),
            Outgoing::now(msg("b", Step::Discover)),
            Outgoing::now(msg("c", Step::Discover)),
        ])
        .await
        .unwrap();
        let done = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        s.commit(&done, &[], None).unwrap();
        let _leased = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.locked, c.completed, c.dead), (1, 1, 1, 0));
        assert_eq!(s.release_all_locks().unwrap(), 1);
        assert_eq!(s.counts().unwrap().active, 2);
    }
}
