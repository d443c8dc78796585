//! The embedded durable store of `run` and `rehearse`: one SQLite file holding the step queue
//! (duplicate detection by MessageId, sessions, scheduled visibility, leases, delivery counts,
//! dead letters) and the ledger. Settling a delivery, enqueuing its next steps and recording
//! the step happen in one transaction, so a crash leaves either all of it or none.
//!
//! `queue` is the queue half, `ledger` the ledger half, `columns` how values are stored.

mod columns;
mod ledger;
mod queue;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, Transaction};
use time::OffsetDateTime;

use self::columns::UnixMs;
use super::ledger::LedgerError;
use super::queue::QueueError;

pub use self::queue::DeadLetter;
pub(crate) use self::queue::Delivery;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueCounts {
    pub active: u64,
    pub locked: u64,
    pub completed: u64,
    pub dead: u64,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    pub(crate) max_delivery_count: u32,
}

fn storage(e: rusqlite::Error) -> QueueError {
    QueueError::storage("SQLite", Some(Box::new(e)))
}

fn lstorage(e: rusqlite::Error) -> LedgerError {
    LedgerError::storage("SQLite", Some(Box::new(e)))
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
            QueueError::storage(
                format!("cannot open state file {}", path.display()),
                Some(Box::new(e)),
            )
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| ledger::add_target_columns(&conn))
            .map_err(|e| {
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
        })
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

    pub(crate) fn counts(&self) -> Result<QueueCounts, QueueError> {
        let conn = self.conn();
        let now = UnixMs::at(OffsetDateTime::now_utc());
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
}

/// What the tests of both halves share: a store in a throwaway directory and messages.
#[cfg(test)]
mod test_support {
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
        let t = ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{app}"
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
        let done = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        s.commit(&done, &[], None).unwrap();
        let _leased = s.receive(now(), LEASE, |_, _| true).unwrap().unwrap();
        let c = s.counts().unwrap();
        assert_eq!((c.active, c.locked, c.completed, c.dead), (1, 1, 1, 0));
        assert_eq!(s.release_all_locks().unwrap(), 1);
        assert_eq!(s.counts().unwrap().active, 2);
    }
}
