//! A whole run on one machine: open (or resume) the state file, enqueue the first step for
//! every target in scope, drive the embedded runner until the queue is empty, and report.
//! What the targets are and what a step does come from the caller: the targets as a future
//! (awaited only when a new run starts) and the reconciler, built on the opened store.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use super::contract::RunContract;
use super::engine::Engine;
use super::ledger::{Ledger, RunRecord};
use super::message::{Origin, RunId, Step, StepMessage};
use super::queue::Outgoing;
use super::reconciler::Reconciler;
use super::runner::{RunStats, Runner, RunnerConfig};
use super::sqlite::SqliteStore;
use crate::azure::ResourceId;

#[derive(Debug, thiserror::Error)]
pub enum LocalRunError {
    #[error("cannot create the lock file {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is in use by another vnet-migrate process")]
    InUse { path: String },
    #[error(transparent)]
    Queue(#[from] super::queue::QueueError),
    #[error(transparent)]
    Ledger(#[from] super::ledger::LedgerError),
    #[error("cannot list the targets in scope")]
    Targets(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub struct LocalRun {
    pub dry_run: bool,
    pub runner: RunnerConfig,
    pub origin: String,
    pub progress: bool,
}

/// Which run `execute` drives: the newest one again, or a new one with this contract.
pub enum Start {
    Resume(RunId),
    New(RunContract),
}

pub struct Finished {
    pub run: RunId,
    pub store: Arc<SqliteStore>,
    pub(crate) makespan_seconds: f64,
    pub stats: RunStats,
    pub resumed: bool,
}

/// Holds `{state}.lock` for the life of the run: one runner per state file, so leases left by
/// a crashed runner can be released at start. The holder removes the file when it lets go, on
/// every way out of the run (errors, and Ctrl-C, which drops the run): it removes it while
/// still holding the lock, so the file removed is never one another process holds.
struct StateLock {
    path: PathBuf,
    /// Closed after `drop` has removed the path, which releases the lock.
    _held: File,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_state(state: &Path) -> Result<StateLock, LocalRunError> {
    let path = PathBuf::from(format!("{}.lock", state.display()));
    loop {
        let f = File::create(&path).map_err(|source| LocalRunError::Lock {
            path: path.display().to_string(),
            source,
        })?;
        f.try_lock().map_err(|_| LocalRunError::InUse {
            path: state.display().to_string(),
        })?;
        // A holder that let go between our open and our lock removed the file we locked: a
        // process opening the path now would create another, so lock that one instead.
        if is_at(&f, &path) {
            return Ok(StateLock { path, _held: f });
        }
    }
}

/// Whether `path` still names the open file `f`.
fn is_at(f: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (f.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    // Elsewhere an open file cannot be removed, so the path still names it.
    #[cfg(not(unix))]
    {
        let _ = (f, path);
        true
    }
}

/// Whether a process holds the state file's lock now (a runner is working on it). Never
/// creates the lock file: a state nobody runs has none, or one nobody holds.
pub fn held_by_a_runner(state: &Path) -> bool {
    let path = format!("{}.lock", state.display());
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    }
}

/// A state file opened by this process alone (it holds the file's lock until dropped).
pub struct StateFile {
    _lock: StateLock,
    store: Arc<SqliteStore>,
}

impl StateFile {
    /// Locks and opens (or creates) the state file, and releases the leases a crashed runner
    /// left: this process is the only runner on it.
    pub fn open(path: &Path) -> Result<Self, LocalRunError> {
        let lock = lock_state(path)?;
        let store = Arc::new(SqliteStore::open(path)?);
        store.release_all_locks()?;
        Ok(StateFile { _lock: lock, store })
    }

    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// The newest run if it is unfinished, else a new run with `contract`; no contract is
    /// checked (rehearsals and tests, whose state files no operator resumes).
    pub fn resume_or_new(&self, contract: RunContract) -> Result<Start, LocalRunError> {
        Ok(match self.store.newest_run()? {
            Some(r) if !r.finished => Start::Resume(r.record.run),
            _ => Start::New(contract),
        })
    }
}

impl LocalRun {
    /// Drives `start` on the state file until its queue is empty. A new run lists its targets
    /// first (`targets`, awaited only then) and records the run, its contract, the targets
    /// and their first messages in one transaction. `reconciler` builds the reconciler on the
    /// opened store (its ledger).
    pub(crate) async fn execute<R, E, F>(
        self,
        state: StateFile,
        start: Start,
        targets: F,
        reconciler: impl FnOnce(Arc<SqliteStore>) -> R,
    ) -> Result<Finished, LocalRunError>
    where
        R: Reconciler,
        E: std::error::Error + Send + Sync + 'static,
        F: Future<Output = Result<Vec<ResourceId>, E>>,
    {
        let store = state.store.clone();
        let started = Instant::now();
        let (run, resumed) = match start {
            Start::Resume(run) => (run, true),
            Start::New(contract) => {
                let sites = targets
                    .await
                    .map_err(|e| LocalRunError::Targets(Box::new(e)))?;
                let now = OffsetDateTime::now_utc();
                let record = RunRecord {
                    run: RunId::new(now),
                    started_at: now,
                    dry_run: self.dry_run,
                    origin: self.origin.clone(),
                };
                let first: Vec<Outgoing> = sites
                    .iter()
                    .map(|s| {
                        Outgoing::now(
                            StepMessage::new(
                                record.run.clone(),
                                s.clone(),
                                Step::Discover,
                                Origin::Cli,
                            )
                            .with_dry_run(self.dry_run),
                        )
                    })
                    .collect();
                store.begin_run(&record, &contract, &sites, &first)?;
                (record.run, false)
            }
        };
        let engine = Arc::new(Engine::new(reconciler(store.clone())));
        let mut runner = Runner::new(store.clone(), engine, self.runner.clone());
        if self.progress {
            let bar = ProgressBar::new(store.targets(&run).await?.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} targets done {msg}",
                )
                .expect("template"),
            );
            let b = bar.clone();
            runner = runner.on_step(Arc::new(move |e| {
                if let Some(o) = &e.outcome {
                    b.inc(1);
                    b.set_message(o.to_string());
                }
                let spawned = e
                    .next
                    .iter()
                    .filter(|n| n.message.target != e.record.target)
                    .count();
                if spawned > 0 {
                    b.inc_length(spawned as u64);
                }
            }));
            let stats = runner.run_until_idle().await;
            bar.finish_and_clear();
            let stats = stats?;
            return Ok(Finished {
                run,
                store,
                makespan_seconds: started.elapsed().as_secs_f64(),
                stats,
                resumed,
            });
        }
        let stats = runner.run_until_idle().await?;
        Ok(Finished {
            run,
            store,
            makespan_seconds: started.elapsed().as_secs_f64(),
            stats,
            resumed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock file exists while held, refuses a second holder, and goes with its holder.
    #[test]
    fn the_lock_file_lives_as_long_as_its_holder() {
        let dir = std::env::temp_dir().join(format!("vnet-migrate-lock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("s.db");
        let lock_file = dir.join("s.db.lock");
        let held = lock_state(&state).unwrap();
        assert!(lock_file.exists());
        assert!(matches!(
            lock_state(&state),
            Err(LocalRunError::InUse { .. })
        ));
        // The refused opener did not remove the holder's file.
        assert!(lock_file.exists());
        drop(held);
        assert!(!lock_file.exists());
        let again = lock_state(&state).unwrap();
        assert!(lock_file.exists());
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
