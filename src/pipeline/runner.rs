//! The embedded runner: a bounded pool of workers that take step messages from the SQLite
//! queue, execute them with the engine, and settle them (complete + next steps + ledger) in
//! one transaction. Stop it at any point (Ctrl-C, SIGKILL) and start it again on the same
//! state file: leased work is delivered again and the reconcilers pick up where ARM is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::engine::Engine;
use super::message::StepMessage;
use super::queue::QueueError;
use super::reconciler::Reconciler;
use super::sqlite::{Delivery, SqliteStore};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Steps executing at once across the fleet.
    pub max_in_flight: usize,
    /// Steps executing at once per subscription (ARM limits are per subscription).
    pub per_subscription: usize,
    /// How long a delivery stays locked to its worker.
    pub lease: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_in_flight: 64,
            per_subscription: 16,
            lease: Duration::from_secs(600),
        }
    }
}

/// Called after every settled step (progress bars, tests).
pub(crate) type OnStep = Arc<dyn Fn(&super::engine::Executed) + Send + Sync>;

pub(crate) struct Runner<R> {
    store: Arc<SqliteStore>,
    engine: Arc<Engine<R>>,
    config: RunnerConfig,
    on_step: Option<OnStep>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub steps: u64,
    pub(crate) dead_lettered: u64,
}

impl<R: Reconciler> Runner<R> {
    pub(crate) fn new(
        store: Arc<SqliteStore>,
        engine: Arc<Engine<R>>,
        config: RunnerConfig,
    ) -> Self {
        Runner {
            store,
            engine,
            config,
            on_step: None,
        }
    }

    pub(crate) fn on_step(mut self, f: OnStep) -> Self {
        self.on_step = Some(f);
        self
    }

    /// Works until the queue is empty (no active, scheduled or leased message).
    pub(crate) async fn run_until_idle(&self) -> Result<RunStats, QueueError> {
        let busy: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let mut tasks: JoinSet<Result<bool, QueueError>> = JoinSet::new();
        let mut stats = RunStats::default();
        loop {
            // Fill the pool.
            while tasks.len() < self.config.max_in_flight {
                let per_sub = self.config.per_subscription;
                let mut admitted_sub = None;
                let delivery = {
                    let busy_now = busy.lock().unwrap_or_else(|p| p.into_inner());
                    self.store
                        .receive(OffsetDateTime::now_utc(), self.config.lease, |_, sub| {
                            let ok = busy_now.get(sub).copied().unwrap_or(0) < per_sub;
                            if ok {
                                admitted_sub = Some(sub.to_string());
                            }
                            ok
                        })?
                };
                let Some(delivery) = delivery else { break };
                let sub = admitted_sub.unwrap_or_default();
                *busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(sub.clone())
                    .or_default() += 1;
                let (store, engine, busy, wake, on_step) = (
                    self.store.clone(),
                    self.engine.clone(),
                    busy.clone(),
                    wake.clone(),
                    self.on_step.clone(),
                );
                tasks.spawn(async move {
                    let r = work(&store, &engine, delivery, on_step.as_ref()).await;
                    if let Some(n) = busy.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&sub) {
                        *n = n.saturating_sub(1);
                    }
                    wake.notify_one();
                    r
                });
            }
            if tasks.is_empty() {
                let counts = self.store.counts()?;
                if counts.active == 0 && counts.locked == 0 {
                    return Ok(stats);
                }
            }
            // Sleep until a worker finishes or the next scheduled message is due.
            let until_next = self
                .store
                .next_visible_at()?
                .map(|t| (t - OffsetDateTime::now_utc()).max(time::Duration::ZERO))
                .map(|d| Duration::from_millis(d.whole_milliseconds().clamp(0, 250) as u64))
                .unwrap_or(Duration::from_millis(250));
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok(Ok(true)) => stats.steps += 1,
                        Ok(Ok(false)) => stats.dead_lettered += 1,
                        Ok(Err(e)) => return Err(e),
                        Err(join) => return Err(QueueError::storage("a worker panicked", Some(Box::new(join)))),
                    }
                }
                _ = wake.notified() => {}
                _ = tokio::time::sleep(until_next) => {}
            }
        }
    }
}

/// Executes one delivery. Ok(true) = settled, Ok(false) = dead-lettered (undecodable).
async fn work<R: Reconciler>(
    store: &SqliteStore,
    engine: &Engine<R>,
    d: Delivery,
    on_step: Option<&OnStep>,
) -> Result<bool, QueueError> {
    let msg = match StepMessage::decode(&d.body) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(
                message_id = %d.message_id,
                delivery_count = d.delivery_count,
                "undecodable step message: {e}"
            );
            store.dead_letter(&d, &e.to_string())?;
            return Ok(false);
        }
    };
    let executed = engine.execute(&msg).await;
    match store.commit(&d, &executed.next, Some(&executed.record)) {
        Ok(()) => {}
        // Another worker got it after our lease expired; its result stands.
        Err(QueueError::LockLost(id)) => {
            tracing::warn!(message_id = %id, "lease lost before settling; the step will be judged by its redelivery")
        }
        Err(e) => return Err(e),
    }
    if let Some(f) = on_step {
        f(&executed);
    }
    Ok(true)
}
