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
use super::controller::{release_messages, Controller, ControllerError, Tick};
use super::engine::Engine;
use super::ledger::{Ledger, RunRecord};
use super::message::RunId;
use super::reconciler::Reconciler;
use super::rollout::{self, Candidate, Control, Decision, RolloutConfig, WaveChecks};
use super::runner::{RunStats, Runner, RunnerConfig};
use super::sqlite::SqliteStore;

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
    #[error(transparent)]
    Rollout(#[from] ControllerError),
    #[error("cannot list the targets in scope")]
    Targets(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub struct LocalRun {
    pub dry_run: bool,
    pub runner: RunnerConfig,
    pub origin: String,
    pub progress: bool,
    /// Waves, bake and gate of the policy.
    pub rollout: RolloutConfig,
    /// The checks of a wave's migrated targets its gate makes besides the failure rate.
    pub checks: Option<Arc<dyn WaveChecks>>,
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
    /// Why the run stopped before every wave was released, if it did.
    pub held: Option<Held>,
}

/// Why a local run returned with waves or targets left.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// An operator paused the rollout (`rollout resume` continues it).
    Paused,
    /// Wave `wave`'s gate tripped (`rollout resume` or `rollout abort` decides).
    Gate { wave: u32, reason: String },
    /// A released wave has targets without an outcome and nothing queued for them.
    Unfinished,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Paused => f.write_str("the rollout is paused: `rollout resume` continues it"),
            Held::Gate { wave, reason } => write!(
                f,
                "the rollout stopped at the gate of wave {wave}: {reason}; later waves are untouched (`rollout resume` goes on, `rollout abort` cancels them)"
            ),
            Held::Unfinished => f.write_str("targets of a released wave are unfinished with nothing queued for them: see `status`"),
        }
    }
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

/// The batch the runner left open is committed before the file's lock goes (the store
/// itself may outlive this, in a task not yet dropped).
impl Drop for StateFile {
    fn drop(&mut self) {
        if let Err(e) = self.store.flush() {
            tracing::error!("the state file's last steps were not committed: {e}");
        }
    }
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
        F: Future<Output = Result<Vec<Candidate>, E>>,
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
                let waves = rollout::assign(sites, &self.rollout.sizes);
                let first = release_messages(
                    &record.run,
                    self.dry_run,
                    waves.first().into_iter().flatten(),
                    waves.get(1).into_iter().flatten(),
                );
                store.begin_run(&record, &contract, &waves, &first)?;
                (record.run, false)
            }
        };
        let engine = Arc::new(Engine::new(reconciler(store.clone())));
        // Pause and abort come from other processes through the state file: a timer looks
        // every tick (never a busy loop) and holds the runner while the rollout is paused.
        let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch_control(
            store.clone(),
            run.clone(),
            self.rollout.tick,
            hold_tx,
        ));
        let mut runner =
            Runner::new(store.clone(), engine, self.runner.clone()).hold(hold_rx.clone());
        let mut bar = None;
        if self.progress {
            let (b, advance) = progress_bar();
            b.set_length(store.targets(&run).await?.len() as u64);
            runner = runner.on_step(advance);
            let waits = tokio::spawn(say_what_it_waits_for(store.clone(), b.clone()));
            bar = Some((b, waits));
        }
        let driven = self.drive(&store, &run, &runner, hold_rx).await;
        watcher.abort();
        if let Some((bar, waits)) = bar {
            waits.abort();
            bar.finish_and_clear();
        }
        let (stats, held) = driven?;
        Ok(Finished {
            run,
            store,
            makespan_seconds: started.elapsed().as_secs_f64(),
            stats,
            resumed,
            held,
        })
    }

    /// The rollout controller on the embedded runner: run the released waves until the queue
    /// is idle, then tick the [`Controller`] (which judges a baked wave's gate, releases the
    /// next wave or records a stop) and wait out a bake, or an approval, on a timer, until
    /// every wave is done or the rollout is held.
    async fn drive<R: Reconciler>(
        &self,
        store: &Arc<SqliteStore>,
        run: &RunId,
        runner: &Runner<R>,
        mut hold: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(RunStats, Option<Held>), LocalRunError> {
        let mut stats = RunStats::default();
        let mut controller = Controller::new(&**store, &**store, &self.rollout);
        if let Some(checks) = &self.checks {
            controller = controller.checking(&**checks);
        }
        loop {
            let s = runner.run_until_idle().await?;
            stats.steps += s.steps;
            stats.dead_lettered += s.dead_lettered;
            stats.polls += s.polls;
            let now = OffsetDateTime::now_utc();
            let Tick { decision, control } = controller.tick(run, self.dry_run, now).await?;
            match decision {
                Decision::Done => return Ok((stats, None)),
                Decision::Paused => return Ok((stats, Some(Held::Paused))),
                Decision::InFlight if control == Control::Paused => {
                    return Ok((stats, Some(Held::Paused)))
                }
                Decision::InFlight => return Ok((stats, Some(Held::Unfinished))),
                Decision::Stop { index, gate } => {
                    return Ok((
                        stats,
                        Some(Held::Gate {
                            wave: index,
                            reason: gate.reason,
                        }),
                    ));
                }
                Decision::Release { .. } | Decision::Judge { .. } => {}
                Decision::AwaitApproval { .. } => {
                    // `rollout promote` comes from another process: looked for every tick.
                    tokio::select! {
                        _ = tokio::time::sleep(self.rollout.tick) => {}
                        _ = hold.changed() => {}
                    }
                }
                Decision::Bake { until } => {
                    let wait = (until - now).max(time::Duration::ZERO).unsigned_abs();
                    // A pause or an abort during the bake is decided at once.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = hold.changed() => {}
                    }
                }
            }
        }
    }
}

/// Every `tick`, reads what an operator asked of the run: holds the runner while paused, and
/// carries out an abort (cancelling untouched targets) the moment it is seen. Stops when the
/// run's driver is dropped.
async fn watch_control(
    store: Arc<SqliteStore>,
    run: RunId,
    tick: std::time::Duration,
    hold: tokio::sync::watch::Sender<bool>,
) {
    let mut aborted = false;
    loop {
        // Receivers are woken only when the hold changes, not on every tick.
        let set = |held: bool| {
            hold.send_if_modified(|h| std::mem::replace(h, held) != held);
        };
        match Ledger::control(&*store, &run).await {
            Ok(Control::Paused) => set(true),
            Ok(Control::Running) => set(false),
            Ok(Control::Aborted) => {
                set(false);
                // Cancelled once here; `rollout abort` cancels what it can itself too.
                if !aborted {
                    aborted = true;
                    if let Err(e) = Ledger::abort(&*store, &run, OffsetDateTime::now_utc()).await {
                        tracing::warn!("cannot cancel the untouched targets yet: {e}");
                        aborted = false;
                    }
                    // The queue shrank: the runner may be idle now.
                    hold.send_modify(|_| {});
                }
            }
            Err(e) => tracing::warn!("cannot read the rollout's control: {e}"),
        }
        tokio::time::sleep(tick).await;
    }
}

/// Keeps the bar's message on what the run is doing or waiting for: steps running, steps
/// waiting, and when the next one is due (a settle time, a backoff, a bake), so a run that
/// waits does not look stuck.
async fn say_what_it_waits_for(store: Arc<SqliteStore>, bar: ProgressBar) {
    loop {
        let now = OffsetDateTime::now_utc();
        if let (Ok(c), Ok(next)) = (store.counts_at(now), store.next_due()) {
            let due = match next {
                Some(t) if t > now && c.locked == 0 => format!(
                    ", next step due in {:.0}s (settle time, backoff or bake)",
                    (t - now).as_seconds_f64().ceil()
                ),
                _ => String::new(),
            };
            bar.set_message(format!(
                "{} step(s) running, {} waiting{due}",
                c.locked, c.active
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A progress bar over the run's targets, and what advances it on every settled step.
fn progress_bar() -> (ProgressBar, super::runner::OnStep) {
    let bar = ProgressBar::new(0);
    // The clock and spinner keep moving through scheduled waits.
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} targets done {msg}",
        )
        .expect("template"),
    );
    let b = bar.clone();
    let advance: super::runner::OnStep = Arc::new(move |e| {
        if e.outcome.is_some() {
            b.inc(1);
        }
        let spawned = e
            .next
            .iter()
            .filter(|n| n.message.target != e.record.target)
            .count();
        if spawned > 0 {
            b.inc_length(spawned as u64);
        }
    });
    (bar, advance)
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
