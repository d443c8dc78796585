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
/// a crashed runner can be released at start.
struct StateLock {
    _held: File,
}

fn lock_state(state: &Path) -> Result<StateLock, LocalRunError> {
    let path = PathBuf::from(format!("{}.lock", state.display()));
    let f = File::create(&path).map_err(|source| LocalRunError::Lock {
        path: path.display().to_string(),
        source,
    })?;
    f.try_lock().map_err(|_| LocalRunError::InUse {
        path: state.display().to_string(),
    })?;
    Ok(StateLock { _held: f })
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
                store.add_targets(&run, &sites, now)?;
                let first = sites
                    .into_iter()
                    .map(|s| {
                        Outgoing::now(
                            StepMessage::new(run.clone(), s, Step::Discover, Origin::Cli)
                                .with_dry_run(self.dry_run),
                        )
                    })
                    .collect();
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
