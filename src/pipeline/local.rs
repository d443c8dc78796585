//! A whole run on one machine: open (or resume) the state file, enqueue `discover` for every
//! site in scope, drive the embedded runner until the queue is empty, and report.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use super::engine::{Engine, StepContext};
use super::ledger::{Ledger, RunRecord};
use super::message::{Origin, RunId, Step, StepMessage};
use super::queue::{Outgoing, StepSender};
use super::runner::{RunStats, Runner, RunnerConfig};
use super::sqlite::SqliteStore;
use crate::azure::arm::ArmClient;
use crate::azure::ResourceId;
use crate::migration::context::PlanCache;
use crate::migration::discover::sites_in_scope;
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum LocalRunError {
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Queue(#[from] super::queue::QueueError),
    #[error(transparent)]
    Ledger(#[from] super::ledger::LedgerError),
    #[error("cannot list the sites in scope: {0}")]
    Discovery(#[from] super::engine::StepError),
}

pub struct LocalRun {
    pub arm: ArmClient,
    pub policy: Arc<Policy>,
    pub state: PathBuf,
    pub subscriptions: Vec<String>,
    pub apps: Vec<ResourceId>,
    pub dry_run: bool,
    pub time_scale: f64,
    pub runner: RunnerConfig,
    pub origin: String,
    pub progress: bool,
}

pub struct Finished {
    pub run: RunId,
    pub store: Arc<SqliteStore>,
    pub makespan_seconds: f64,
    pub stats: RunStats,
    pub resumed: bool,
}

/// Holds `{state}.lock` for the life of the run: one runner per state file, so leases left by
/// a crashed runner can be released at start.
struct StateLock(#[allow(dead_code)] File);

fn lock_state(state: &Path) -> Result<StateLock, LocalRunError> {
    let path = PathBuf::from(format!("{}.lock", state.display()));
    let f = File::create(&path)
        .map_err(|e| LocalRunError::State(format!("cannot create {}: {e}", path.display())))?;
    f.try_lock().map_err(|_| {
        LocalRunError::State(format!(
            "{} is in use by another vnet-migrate process",
            state.display()
        ))
    })?;
    Ok(StateLock(f))
}

impl LocalRun {
    pub async fn execute(self) -> Result<Finished, LocalRunError> {
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
                let sites =
                    sites_in_scope(&self.arm, &self.subscriptions, &self.policy, &self.apps)
                        .await?;
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
        let engine = Arc::new(Engine::new(StepContext {
            arm: self.arm.clone(),
            policy: self.policy.clone(),
            ledger: store.clone(),
            plans: PlanCache::default(),
            time_scale: self.time_scale,
        }));
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
