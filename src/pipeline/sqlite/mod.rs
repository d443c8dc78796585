//! The embedded durable store of `run` and `rehearse`: one SQLite file holding the step queue
//! (duplicate detection by MessageId, sessions, scheduled visibility, leases, delivery counts,
//! dead letters) and the ledger. Settling a delivery, enqueuing its next steps and recording
//! the step happen in one atomic unit, so a crash leaves either all of it or none; the runner's
//! units are committed in batches (`Db`).
//!
//! `queue` is the queue half, `ledger` the ledger half, `runs` how a run begins (its contract,
//! targets and first messages in one transaction), `columns` how values are stored,
//! `gateway_log` how a gateway snapshot is made durable without committing the batch.

mod columns;
mod gateway_log;
mod ledger;
mod operator;
mod queue;
mod rollout;
mod runs;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection};
use time::OffsetDateTime;
use tokio::sync::Notify;

use self::columns::UnixMs;
use self::gateway_log::GatewayLog;
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
    db: Arc<Db>,
    /// Commits a batch that reached its age while no unit came to commit it (`commit_aged`).
    committer: Option<JoinHandle<()>>,
    pub(crate) max_delivery_count: u32,
    /// Signalled when messages are sent from outside a settle (a settle wakes the runner
    /// through its finished worker).
    sent: Notify,
    gateways: GatewayLog,
}

fn storage(e: rusqlite::Error) -> QueueError {
    QueueError::storage("SQLite", Some(Box::new(e)))
}

fn lstorage(e: rusqlite::Error) -> LedgerError {
    LedgerError::storage("SQLite", Some(Box::new(e)))
}

/// The connection, and the batch transaction open on it. Units of work (a settle, a lease,
/// an operator's command) run inside the batch, each in a SAVEPOINT of its own, so a unit is
/// atomic and the connection's next unit sees it at once, committed or not; the batch is
/// committed when it reaches `BATCH_UNITS` units or `BATCH_AGE` (whichever first), when a
/// durable unit ends (`SqliteStore::transaction`), when the runner goes idle and when the
/// store is dropped (`SqliteStore::flush`).
///
/// Why: a settle changes a dozen pages of which several (the queue's last page, the
/// freelist, the header, the step log's last page) are the same pages every settle changes; a
/// WAL commit writes each page it touched in full, so one commit per settle wrote them once
/// per step. Committing a batch writes them once per batch, and no worker waits for it.
///
/// Crash semantics: a crash (the process killed, power lost) loses at most the batch not yet
/// committed: its settles were never recorded, so their messages are delivered again and
/// their steps, which are idempotent (they observe ARM and act on the difference), run again
/// to the same outcomes; a lease lost with it is released at the next start anyway. What must
/// not be lost once an external effect follows (the run's registration, an operator's command
/// another process acts on, a rollout's decision) is written by a durable unit, which commits
/// the batch with it before returning; the gateway snapshot before the cut-over's DELETE, the
/// most frequent of them, goes to the gateway log instead (`gateway_log`).
/// Other connections (`status`, an operator's command, a second process) see the runner's
/// progress up to `BATCH_AGE` late, and an operator's write waits at most that long for the
/// batch to release the write lock.
struct Db {
    open: Mutex<Open>,
    /// Signalled when a batch opens or the store closes: wakes the committer thread.
    changed: Condvar,
}

struct Open {
    conn: Connection,
    batch: Option<Batch>,
    /// `BATCH_AGE`, but for tests that must see a batch still open.
    batch_age: Duration,
    closing: bool,
    /// Set by `crash` (tests): the drop then leaves the files as a killed process would.
    crashed: bool,
}

/// The batch transaction open on the connection.
struct Batch {
    since: Instant,
    units: u32,
}

/// A batch is committed once it is this old: the run's progress reaches other connections,
/// and a crash loses, at most 200 ms of work (done again: see `Db`). Most pages a settle
/// changes are in random places of large b-trees (its target's row, its MessageId, its
/// session's index entry) and cost a page per settle however long the batch; a longer batch
/// saves the rest, written once per batch (10,000 targets, 1 KiB pages: 10.7 KB written per
/// step at 50 ms, 9.9 KB at 200 ms, with no change in the downtime of the cut-overs).
const BATCH_AGE: Duration = Duration::from_millis(200);
/// ...or this large: a batch's changed pages stay in the page cache until it commits, and
/// 256 settles touch a few thousand pages at most, well inside the cache's 12,288 (a spill would
/// write pages to the WAL before the commit, and again at it).
const BATCH_UNITS: u32 = 256;

impl Open {
    /// Commits the open batch, if any.
    fn commit(&mut self) -> rusqlite::Result<()> {
        if self.batch.is_some() {
            let committed = self.conn.execute_batch("COMMIT");
            // A failed COMMIT leaves the batch open to be committed again, unless SQLite
            // rolled it back (`fresh` with it).
            if committed.is_ok() || self.conn.is_autocommit() {
                self.batch = None;
            }
            committed?;
            // Its messages are in the file now. Cleared after the COMMIT, not in it: a COMMIT
            // that fails leaves them counted as fresh.
            self.conn.execute_batch("DELETE FROM temp.fresh")?;
        }
        Ok(())
    }
}

impl std::ops::Deref for Open {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// The committer thread: commits each batch that reaches `BATCH_AGE` without a unit to commit
/// it (the workers are all waiting on ARM, the runner on them), so other connections never
/// wait long for the runner's progress or its write lock. A thread, not a task: a caller that
/// blocks the async runtime's only thread must not keep the batch open.
fn commit_aged(db: &Db) {
    let mut open = db.open.lock().unwrap_or_else(|p| p.into_inner());
    while !open.closing {
        let wait = open
            .batch
            .as_ref()
            .map(|b| open.batch_age.saturating_sub(b.since.elapsed()));
        open = match wait {
            None => db.changed.wait(open).unwrap_or_else(|p| p.into_inner()),
            Some(left) if left.is_zero() => {
                if let Err(e) = open.commit() {
                    tracing::warn!("cannot commit the state file's batch yet: {e}");
                    // Tried again a batch's age later, not in a loop.
                    if let Some(batch) = open.batch.as_mut() {
                        batch.since = Instant::now();
                    }
                }
                open
            }
            Some(left) => {
                db.changed
                    .wait_timeout(open, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

/// Connection settings: 512-byte pages for new files (a WAL commit writes every page it
/// touched in full, and a settle touches pages in random places: the target's row, the message
/// id's leaf, the session index's leaf, the queue rows and their neighbours when a B-tree
/// rebalances; the smaller the page, the fewer bytes each costs, even though queue rows and
/// gateway snapshots now spill into overflow pages. 2,000 targets with batched settles: 29.7
/// KB written per step with 4 KiB pages, 19.4 with 2 KiB, 14.6 with 1 KiB; 10,000 targets with
/// 200 ms batches: 10.5 KB with 1 KiB, 8.2 with 512 bytes; files created with another size keep
/// it); WAL with `synchronous=NORMAL` (a commit is one WAL append without an fsync: it
/// survives the process being killed at once; a power loss may lose the last commits but never
/// consistency, and a lost settle is only a redelivery the reconcilers absorb; the runner's
/// settles are committed in batches on top of that, see `Db` for what a crash loses and what is
/// committed at once), and a 6 MiB page cache (12,288 pages) so the hot pages (active queue
/// rows, their indexes, the run's targets) stay in memory (10,000 targets: peak RSS 154 MB with
/// 8 MiB, 142 with 6, the same bytes written). The WAL is checkpointed every
/// 524,288 pages (256 MiB of WAL with 512-byte pages, the size the WAL file then keeps until
/// the store closes) rather than SQLite's 1,000: a checkpoint writes each page changed since
/// the last one once, and the pages settles change (the queue's, the targets', the message
/// ids') are then copied to the file once per many thousand steps (2,000 targets, 2 KiB pages:
/// 53 -> 41 KB written per step at 8,192 pages, 21.9 -> 19.2 KB from 8,192 to 32,768 with
/// batches; 10,000 targets, 1 KiB pages: 18.1 -> 15.5 KB from 32,768 to 131,072, and, with
/// deflated bodies, 14.5 -> 13.6 KB from 131,072 to 262,144). The price: the commit that
/// crosses the threshold runs the checkpoint with the store locked, for longer the larger it
/// is (10,000 targets, 1 KiB pages: one commit over 40 ms in the run, 0.37 s, against four of
/// 0.05–0.23 s at 131,072).
/// Prepared statements the connection keeps (`SqliteStore::open`).
const STATEMENTS: usize = 64;

const PRAGMAS: &str = "
PRAGMA page_size=512;
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA cache_size=-6144;
PRAGMA wal_autocheckpoint=524288;
PRAGMA temp_store=MEMORY;
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
/// Its rows carry the target's key only (the digest of its id; the id as written is in
/// `targets`) and the detail compressed (`columns::Detail`). A target's gateway snapshot has a
/// table of its own: written once per cut-over, it made the target's row spill into an
/// overflow page that every later step rewrote with the row (files that kept it in `targets`
/// have it moved, `ledger::move_gateways`).
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
  reason TEXT, subnet TEXT, prefix TEXT,
  started_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT,
  PRIMARY KEY (run, target_key)
);
CREATE TABLE IF NOT EXISTS gateways (
  run TEXT NOT NULL, target_key TEXT NOT NULL, gateway TEXT NOT NULL, saved_at INTEGER NOT NULL,
  PRIMARY KEY (run, target_key)
);
CREATE TABLE IF NOT EXISTS step_log (
  id INTEGER PRIMARY KEY, run TEXT NOT NULL, target_key TEXT NOT NULL,
  step TEXT NOT NULL, attempt INTEGER NOT NULL, message_id TEXT NOT NULL, detail BLOB NOT NULL,
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

/// The `user_version` of files whose targets are keyed, and whose sessions named, by the
/// digest of the id (`ResourceId::key_digest`, in SQL `key_digest(key)`).
const KEYED_BY_DIGEST: u32 = 1;

/// The `user_version` of files that may hold bodies and details stored as LZ4
/// (`columns::Body`): a version that knows only deflated ones would dead-letter every such
/// message, so it must refuse the file. Bodies a file of format 1 holds are read as they are.
const LZ4_BODIES: u32 = 2;

/// The format this version writes, and the latest it reads.
const FORMAT: u32 = LZ4_BODIES;

/// Turns the ids of a version-0 file into their digests, one to one: a session's head stays its
/// head, a target's rows stay together. A key is a lowercased id, so it starts with '/'; a
/// run's own session keeps its name. A lowercased id (~130 bytes, most of it a prefix shared
/// by every target) did not fit in an index entry of a 512-byte page, so every comparison in a
/// lookup of `targets`, `gateways` or the queue's sessions read an overflow page (10,000
/// targets: 5.4 % of the run's CPU in index searches).
const DIGEST_KEYS: &str = "
UPDATE queue SET session_id=key_digest(session_id) WHERE session_id LIKE '/%';
UPDATE targets SET target_key=key_digest(target_key) WHERE target_key LIKE '/%';
UPDATE gateways SET target_key=key_digest(target_key) WHERE target_key LIKE '/%';
UPDATE step_log SET target_key=key_digest(target_key) WHERE target_key LIKE '/%';
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
        // Room for every statement a settle, a lease and a step's record prepare (two dozen):
        // rusqlite keeps 16 by default, and a statement pushed out is parsed and planned again
        // at its next use.
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        // A file a later version has rekeyed would look empty of targets to this one.
        if let Ok(version) = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0)) {
            if version > FORMAT {
                return Err(QueueError::storage(
                    format!(
                        "state file {} was written by a later vnet-migrate (format {version}; this one reads formats up to {FORMAT}): run it with that version or a later one",
                        path.display()
                    ),
                    None,
                ));
            }
        }
        Self::initialise(&mut conn).map_err(|e| {
            // Upgrading a file writes to it, and waits for a process that is writing it.
            let what = if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                "is being written by another process (a run of an earlier version?); open it again once that has stopped"
            } else {
                "is not a vnet-migrate state file"
            };
            QueueError::storage(
                format!("state file {} {what}", path.display()),
                Some(Box::new(e)),
            )
        })?;
        let db = Arc::new(Db {
            open: Mutex::new(Open {
                conn,
                batch: None,
                batch_age: BATCH_AGE,
                closing: false,
                crashed: false,
            }),
            changed: Condvar::new(),
        });
        let committer = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("state-file-commit".into())
                .spawn(move || commit_aged(&db))
                .map_err(|e| {
                    QueueError::storage(
                        "cannot start the state file's committer",
                        Some(Box::new(e)),
                    )
                })?
        };
        let store = SqliteStore {
            db,
            committer: Some(committer),
            max_delivery_count: 10,
            sent: Notify::new(),
            gateways: GatewayLog::beside(path),
        };
        // Snapshots a crash kept only in the log.
        store.fold_gateways().map_err(|e| {
            QueueError::storage(
                format!(
                    "cannot fold the gateway log into state file {}",
                    path.display()
                ),
                Some(Box::new(e)),
            )
        })?;
        Ok(store)
    }

    /// Applies the settings and creates the tables, rebuilding a queue of the old shape in
    /// place first (one transaction: an interrupted migration leaves the old file as it was).
    fn initialise(conn: &mut Connection) -> rusqlite::Result<()> {
        conn.execute_batch(PRAGMAS)?;
        // `ResourceId::key_digest` of a key: how targets are keyed and sessions named.
        conn.create_scalar_function(
            "key_digest",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| {
                Ok(crate::azure::resource_id::key_digest(
                    &ctx.get::<String>(0)?,
                ))
            },
        )?;
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
        ledger::drop_moved_columns(&tx)?;
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
        // Files of version 0 keyed targets and named sessions by the lowercased id itself;
        // only then is anything written (a write would wait for a run that has the file open).
        let version: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < KEYED_BY_DIGEST {
            tx.execute_batch(DIGEST_KEYS)?;
        }
        if version < FORMAT {
            tx.pragma_update(None, "user_version", FORMAT)?;
        }
        tx.commit()?;
        // The targets a message was queued for in the open batch (`save_gateway`): this
        // connection's own, in memory.
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS fresh (target_key TEXT PRIMARY KEY) WITHOUT ROWID",
        )
    }

    /// The connection, for reads (they see the open batch). Every write goes through
    /// `transaction` or `batched`.
    fn conn(&self) -> MutexGuard<'_, Open> {
        self.db.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` as a durable unit: atomic, and committed, with the batch open before it, by
    /// the time it returns. For what must survive a crash once the caller acts on it (see
    /// `Db`). `to_err` turns rusqlite's own errors into the caller's error type.
    fn transaction<T, E>(
        &self,
        to_err: fn(rusqlite::Error) -> E,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.unit(true, to_err, f)
    }

    /// Runs `f` as a unit of the open batch: atomic, seen at once by this store's next
    /// units, committed with the batch (see `Db`). For what a crash may lose because it is
    /// done again: settles and leases.
    fn batched<T, E>(
        &self,
        to_err: fn(rusqlite::Error) -> E,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.unit(false, to_err, f)
    }

    /// `f` in a SAVEPOINT of the batch (opened if none is): released when `f` succeeds,
    /// rolled back when it fails, leaving the batch's earlier units as they were.
    fn unit<T, E>(
        &self,
        durable: bool,
        to_err: fn(rusqlite::Error) -> E,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = self.conn();
        let open = &mut *guard;
        if open.batch.is_none() {
            // IMMEDIATE: the write lock is taken (or waited for) here, so a batch that has
            // read never finds another connection's commit in its way when it first writes.
            open.conn.execute_batch("BEGIN IMMEDIATE").map_err(to_err)?;
            open.batch = Some(Batch {
                since: Instant::now(),
                units: 0,
            });
            self.db.changed.notify_one();
        }
        let out = Self::in_savepoint(&mut open.conn, to_err, f);
        if open.conn.is_autocommit() {
            // An error SQLite answers by rolling back the whole transaction (a full disk, an
            // I/O error) ended the batch: its units are lost as in a crash, and done again.
            open.batch = None;
        }
        let out = out?;
        let Some(batch) = open.batch.as_mut() else {
            return Ok(out);
        };
        batch.units += 1;
        if durable || batch.units >= BATCH_UNITS || batch.since.elapsed() >= open.batch_age {
            open.commit().map_err(to_err)?;
        }
        Ok(out)
    }

    fn in_savepoint<T, E>(
        conn: &mut Connection,
        to_err: fn(rusqlite::Error) -> E,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let savepoint = conn.savepoint().map_err(to_err)?;
        let out = f(&savepoint)?;
        savepoint.commit().map_err(to_err)?;
        Ok(out)
    }

    /// Commits the open batch now: when the runner goes idle and before the runner gives up
    /// the state file.
    pub(crate) fn flush(&self) -> Result<(), QueueError> {
        self.conn().commit().map_err(storage)
    }

    /// Keeps batches open until a durable unit, `flush` or the drop: what a test that looks
    /// at an open batch needs (the committer would otherwise commit it 200 ms in).
    #[cfg(test)]
    pub(crate) fn hold_batches(&self) {
        self.conn().batch_age = Duration::from_secs(3600);
    }

    /// Ends the store as a crash would: the open batch is never committed.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        let mut open = self.conn();
        if open.batch.take().is_some() {
            open.conn.execute_batch("ROLLBACK").expect("rolled back");
        }
        open.crashed = true;
    }

    /// Releases every lease: called by the single runner that owns the file when it starts,
    /// so work leased by a crashed process is delivered again at once.
    pub(crate) fn release_all_locks(&self) -> Result<u64, QueueError> {
        let n = self.transaction(storage, |tx| {
            tx.execute("UPDATE queue SET lock_token=NULL, locked_until=NULL WHERE state='active' AND lock_token IS NOT NULL", [])
                .map_err(storage)
        })?;
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

/// Nothing recorded is lost on a clean exit (Ctrl-C included: the store goes with the
/// command's future): the committer stops, then the batch is committed.
impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.conn().closing = true;
        self.db.changed.notify_one();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
        if self.conn().crashed {
            return;
        }
        if let Err(e) = self.flush() {
            tracing::error!("the state file's last steps were not committed: {e}");
        }
        if let Err(e) = self.fold_gateways() {
            tracing::error!("the gateway log stays beside the state file for its next open: {e}");
        }
    }
}

/// What the tests of both halves share: a store in a throwaway directory and messages.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::SqliteStore;
    use crate::azure::ResourceId;
    use crate::pipeline::ledger::StepRecord;
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

    /// The record of `m`'s `discover` step, which found a gateway connection.
    pub(crate) fn discovered(m: &StepMessage) -> StepRecord {
        StepRecord {
            run: m.run.clone(),
            target: m.target.clone(),
            step: Step::Discover,
            attempt: 0,
            message_id: m.message_id(),
            detail: "gateway-based: v1".into(),
            at: now(),
            duration_ms: 3,
            next: Some(Step::Plan),
            next_at: None,
            outcome: None,
            subnet: None,
            prefix: None,
            gateway: None,
            cutover: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{discovered, msg, now, store, Dir, LEASE};
    use super::*;
    use crate::azure::ResourceId;
    use crate::pipeline::ledger::Ledger;
    use crate::pipeline::message::{GatewaySnapshot, Step, StepMessage};
    use crate::pipeline::queue::{Outgoing, StepSender};

    /// The rows of `table` another connection to the file sees: what is committed.
    fn committed_rows(path: &Path, table: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A store at `s.db` in a throwaway directory, its batches kept open until something
    /// commits them.
    fn held_store() -> (Dir, std::path::PathBuf, SqliteStore) {
        let dir = Dir::new();
        let p = dir.path().join("s.db");
        let s = SqliteStore::open(&p).unwrap();
        s.hold_batches();
        (dir, p, s)
    }

    #[tokio::test]
    async fn settles_wait_in_the_batch_which_is_committed_when_the_store_goes() {
        let (_dir, p, s) = held_store();
        s.send(vec![
            Outgoing::now(msg("a", Step::Discover)),
            Outgoing::now(msg("b", Step::Discover)),
        ])
        .await
        .unwrap();
        for _ in 0..2 {
            let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
            s.commit(&d, &[], None).unwrap();
        }
        // The store sees its settles at once; the file has them only once the batch commits.
        assert_eq!(s.counts().unwrap().completed, 2);
        assert_eq!(committed_rows(&p, "queue"), 2);
        drop(s);
        assert_eq!(committed_rows(&p, "queue"), 0);
    }

    /// A cut-over's message, queued by the settle of the step before it (then committed, or
    /// left in the open batch) and leased, and the snapshot its cut-over saves.
    async fn leased_cut_over(s: &SqliteStore, committed: bool) -> (StepMessage, GatewaySnapshot) {
        let prepare = msg("a", Step::PrepareSubnet);
        s.add_targets(&prepare.run, std::slice::from_ref(&prepare.target), now())
            .unwrap();
        s.send(vec![Outgoing::now(prepare.clone())]).await.unwrap();
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let m = prepare.next(Step::Disconnect);
        s.commit(&d, &[Outgoing::now(m.clone())], None).unwrap();
        if committed {
            s.flush().unwrap();
        }
        let _leased = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        let snapshot = GatewaySnapshot {
            name: "v".into(),
            vnet_resource_id: vnet,
            dns_servers: None,
            cert_thumbprint: None,
            cert_blob: None,
            routes: None,
        };
        (m, snapshot)
    }

    /// The cut-over deletes the gateway connection once `save_gateway` returns: by then the
    /// snapshot is in the gateway log, without the batch being committed for it, and a crash
    /// right after keeps it: the next open folds it into the ledger.
    #[tokio::test]
    async fn a_gateway_snapshot_is_logged_before_save_gateway_returns() {
        let (dir, p, s) = held_store();
        let (m, snapshot) = leased_cut_over(&s, true).await;
        s.save_gateway(&m.run, &m.target, &snapshot).await.unwrap();
        // The store sees it at once; the file only once the batch commits (never, here).
        let seen = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!(seen.gateway.unwrap().name, "v");
        assert_eq!(committed_rows(&p, "gateways"), 0);
        let log = std::fs::read_to_string(dir.path().join("s.db-gateways")).unwrap();
        assert!(log.contains(m.target.as_str()), "{log}");
        s.crash();
        let s = SqliteStore::open(&p).unwrap();
        let saved = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!(saved.gateway.unwrap().name, "v");
        // Folded: committed, and the log emptied.
        assert_eq!(committed_rows(&p, "gateways"), 1);
        let log = std::fs::read(dir.path().join("s.db-gateways")).unwrap();
        assert!(log.is_empty());
    }

    /// A cut-over whose message was queued in the open batch commits the batch with its
    /// snapshot: a crash after its DELETE must not send the target back to its earlier step.
    #[tokio::test]
    async fn a_cut_over_queued_in_the_open_batch_commits_it_before_the_delete() {
        let (_dir, p, s) = held_store();
        let (m, snapshot) = leased_cut_over(&s, false).await;
        let queued = |p: &Path| -> i64 {
            Connection::open(p)
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM queue WHERE message_id=?1",
                    [m.message_id()],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(queued(&p), 0);
        s.save_gateway(&m.run, &m.target, &snapshot).await.unwrap();
        assert_eq!(queued(&p), 1);
        assert_eq!(committed_rows(&p, "gateways"), 1);
        // The batch after it starts with nothing fresh: the next cut-over only logs.
        let m2 = msg("b", Step::Disconnect);
        s.add_targets(&m2.run, std::slice::from_ref(&m2.target), now())
            .unwrap();
        s.save_gateway(&m2.run, &m2.target, &snapshot)
            .await
            .unwrap();
        assert_eq!(committed_rows(&p, "gateways"), 1);
    }

    /// A crash before the batch commits loses its settle and its lease: the message is
    /// delivered again, and its settle, done again, leaves what one settle leaves (one step
    /// recorded, the next message queued once).
    #[tokio::test]
    async fn a_crash_before_the_batch_commits_redelivers_to_the_same_state() {
        let dir = Dir::new();
        let p = dir.path().join("s.db");
        let m = msg("a", Step::Discover);
        let rec = discovered(&m);
        let settle = |s: &SqliteStore| {
            let d = s.receive(now(), LEASE, &[]).unwrap().expect("delivered");
            s.commit(&d, &[Outgoing::now(m.next(Step::Plan))], Some(&rec))
                .unwrap();
            d.delivery_count
        };
        let s = SqliteStore::open(&p).unwrap();
        s.hold_batches();
        s.send(vec![Outgoing::now(m.clone())]).await.unwrap();
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        assert_eq!(settle(&s), 1);
        s.crash();
        let s = SqliteStore::open(&p).unwrap();
        s.release_all_locks().unwrap();
        assert_eq!(settle(&s), 1, "delivered again, as if for the first time");
        drop(s);
        let s = SqliteStore::open(&p).unwrap();
        let t = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!((t.current_step, t.steps), (Some(Step::Plan), 1));
        assert_eq!(s.step_log(&m.run, &m.target).await.unwrap().len(), 1);
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.completed), (1, 1));
    }

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

    /// A file as another version left it: `sql` run on a new file, in a directory of its own.
    fn file_written_by(sql: &str) -> (Dir, std::path::PathBuf) {
        let dir = Dir::new();
        let p = dir.path().join("other.db");
        Connection::open(&p).unwrap().execute_batch(sql).unwrap();
        (dir, p)
    }

    /// Settles write no index page of the step log: a file that has the old index loses it.
    #[test]
    fn the_step_log_of_an_older_file_loses_its_index() {
        let (_dir, p) = file_written_by(&format!(
            "{SCHEMA}; CREATE INDEX step_log_target ON step_log(run, target_key);"
        ));
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

    /// A file of format 0 that another process is writing cannot be upgraded yet: said so, not
    /// called a foreign file.
    #[test]
    fn a_file_being_written_elsewhere_is_not_upgraded_under_it() {
        let dir = Dir::new();
        let p = dir.path().join("busy.db");
        let writer = Connection::open(&p).unwrap();
        writer.execute_batch(PRAGMAS).unwrap();
        writer.execute_batch(SCHEMA).unwrap();
        // Holds the write lock as a running process would.
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = SqliteStore::open(&p).err().unwrap().to_string();
        assert!(err.contains("is being written by another process"), "{err}");
        writer.execute_batch("ROLLBACK").unwrap();
        SqliteStore::open(&p).unwrap();
    }

    #[test]
    fn a_file_of_a_later_format_is_refused_untouched() {
        let (_dir, p) = file_written_by("CREATE TABLE t (x); PRAGMA user_version=3;");
        let err = SqliteStore::open(&p).err().unwrap().to_string();
        assert!(
            err.contains("written by a later vnet-migrate (format 3"),
            "{err}"
        );
        let tables: i64 = Connection::open(&p)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1, "nothing created in it");
    }

    /// Sessions named by a lowercased id (files of earlier versions) are renamed by its digest,
    /// the name `StepMessage::stored_session` gives them; a run's own session keeps its name.
    #[test]
    fn sessions_named_by_an_id_are_renamed_by_its_digest() {
        let key = "/subscriptions/s/resourcegroups/g/providers/microsoft.web/sites/a";
        let (_dir, p) = file_written_by(&format!(
            "{SCHEMA}; INSERT INTO queue (seq, message_id, session_id, subscription, body, visible_at, head)
             VALUES (1, 'm1', '{key}', 's', x'00', 0, 1), (2, 'm2', 'r-1', 's', x'00', 0, 1);"
        ));
        let s = SqliteStore::open(&p).unwrap();
        let sessions: Vec<String> = s
            .conn()
            .prepare("SELECT session_id FROM queue ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            sessions,
            [crate::azure::resource_id::key_digest(key), "r-1".into()]
        );
    }

    /// A file of format 1 is marked format 2 when opened, and the messages it holds, their
    /// bodies deflated, are delivered as they were sent.
    #[tokio::test]
    async fn a_format_1_file_opens_as_format_2_and_its_deflated_bodies_are_read() {
        use rusqlite::types::{FromSql, ValueRef};
        let (dir, s) = store();
        let sent = msg("a", Step::Discover);
        s.send(vec![Outgoing::now(sent.clone())]).await.unwrap();
        drop(s);
        let p = dir.path().join("state.db");
        {
            let c = Connection::open(&p).unwrap();
            let stored: Vec<u8> = c
                .query_row("SELECT body FROM queue", [], |r| r.get(0))
                .unwrap();
            let json = columns::Body::column_result(ValueRef::Blob(&stored))
                .unwrap()
                .0;
            c.execute(
                "UPDATE queue SET body=?1",
                [columns::tests::deflated(&json)],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        let version: u32 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, FORMAT);
        let d = s.receive(now(), LEASE, &[]).unwrap().unwrap();
        assert_eq!(StepMessage::decode(&d.body).unwrap(), sent);
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
