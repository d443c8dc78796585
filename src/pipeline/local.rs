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

use super::engine::Engine;
use super::ledger::{Ledger, RunRecord};
use super::message::{Origin, RunId, Step, StepMessage};
use super::queue::{Outgoing, StepSender};
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
    pub state: PathBuf,
    pub dry_run: bool,
    pub runner: RunnerConfig,
    pub origin: String,
    pub progress: bool,
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

impl LocalRun {
    /// Runs (or resumes) on the state file. `targets` lists the targets of a new run;
    /// `reconciler` builds the reconciler on the opened store (its ledger).
    pub(crate) async fn execute<R, E, F>(
        self,
        targets: F,
        reconciler: impl FnOnce(Arc<SqliteStore>) -> R,
    ) -> Result<Finished, LocalRunError>
    where
        R: Reconciler,
        E: std::error::Error + Send + Sync + 'static,
        F: Future<Output = Result<Vec<ResourceId>, E>>,
    {
        let _lock = lock_state(&self.state)?;
        let store = Arc::new(SqliteStore::open(&self.state)?);
        store.release_all_locks()?;
        let started = Instant::now();
        // Resume the newest run that still has work; otherwise start a new one.
        let mut resumed = None;
        for r in store.runs().await?.into_iter().rev() {
            let unfinished = store
                .targets(&r.run)
                .await?
                .iter()
                .any(|t| t.outcome.is_none());
            if unfinished || store.counts()?.active > 0 {
                resumed = Some(r.run);
                break;
            }
        }
        let run = match resumed.clone() {
            Some(run) => run,
            None => {
                let run = RunId::new(OffsetDateTime::now_utc());
                let now = OffsetDateTime::now_utc();
                store
                    .start_run(&RunRecord {
                        run: run.clone(),
                        started_at: now,
                        dry_run: self.dry_run,
                        origin: self.origin.clone(),
                    })
                    .await?;
                let sites = targets
                    .await
                    .map_err(|e| LocalRunError::Targets(Box::new(e)))?;
                let mut first = Vec::with_capacity(sites.len());
                for s in sites {
                    store.add_target(&run, &s, now).await?;
                    first.push(Outgoing::now(
                        StepMessage::new(run.clone(), s, Step::Discover, Origin::Cli)
                            .with_dry_run(self.dry_run),
                    ));
                }
                store.send(first).await?;
                run
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
                resumed: resumed.is_some(),
            });
        }
        let stats = runner.run_until_idle().await?;
        Ok(Finished {
            run,
            store,
            makespan_seconds: started.elapsed().as_secs_f64(),
            stats,
            resumed: resumed.is_some(),
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
