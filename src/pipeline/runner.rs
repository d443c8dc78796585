//! The embedded runner: a bounded pool of workers that take step messages from the SQLite
//! queue, execute them with the engine, and settle them (complete + next steps + ledger) in
//! one transaction. Stop it at any point (Ctrl-C, SIGKILL) and start it again on the same
//! state file: leased work is delivered again and the reconcilers pick up where ARM is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::engine::Engine;
use super::message::{StepMessage, URGENT};
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
    /// While true no new delivery is taken (a paused rollout); steps in flight finish.
    hold: Option<tokio::sync::watch::Receiver<bool>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub steps: u64,
    pub(crate) dead_lettered: u64,
    /// Times the runner asked the queue for a delivery: about one per step when it never
    /// spins.
    pub(crate) polls: u64,
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
            hold: None,
        }
    }

    pub(crate) fn hold(mut self, hold: tokio::sync::watch::Receiver<bool>) -> Self {
        self.hold = Some(hold);
        self
    }

    pub(crate) fn on_step(mut self, f: OnStep) -> Self {
        self.on_step = Some(f);
        self
    }

    /// Works until the queue is empty (no active, scheduled or leased message). Never polls:
    /// when the queue has nothing admissible it waits for a worker to finish, a `send`, or the
    /// next future visibility of a session head the queue could deliver. Held, it takes
    /// nothing new and returns once the steps in flight are settled.
    pub(crate) async fn run_until_idle(&self) -> Result<RunStats, QueueError> {
        // Steps in flight per subscription; a subscription at the limit is `full`.
        let mut in_flight: HashMap<String, usize> = HashMap::new();
        let mut tasks: JoinSet<(String, Result<RunStats, QueueError>)> = JoinSet::new();
        let mut stats = RunStats::default();
        let mut hold = self.hold.clone();
        loop {
            let held = hold.as_mut().is_some_and(|h| *h.borrow_and_update());
            // Held (a paused rollout), nothing new starts, but a message whose app may be off
            // its VNet is still delivered: holding it would keep the app offline until resume.
            let min_level = if held { URGENT } else { 0 };
            if held && tasks.is_empty() && !self.store.has_active_at_least(URGENT)? {
                return Ok(stats);
            }
            let now = OffsetDateTime::now_utc();
            let full = |in_flight: &HashMap<String, usize>| -> Vec<String> {
                in_flight
                    .iter()
                    .filter(|(_, n)| **n >= self.config.per_subscription)
                    .map(|(s, _)| s.clone())
                    .collect()
            };
            // Fill the pool.
            let mut exhausted = false;
            while tasks.len() < self.config.max_in_flight {
                let full = full(&in_flight);
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                stats.polls += 1;
                let Some(delivery) =
                    self.store
                        .receive_at_least(now, self.config.lease, &full, min_level)?
                else {
                    exhausted = true;
                    break;
                };
                let sub = delivery.subscription.clone();
                *in_flight.entry(sub.clone()).or_default() += 1;
                let (store, engine, on_step, lease, held) = (
                    self.store.clone(),
                    self.engine.clone(),
                    self.on_step.clone(),
                    self.config.lease,
                    self.hold.clone(),
                );
                tasks.spawn(async move {
                    let r = work(&store, &engine, delivery, lease, on_step.as_ref(), held).await;
                    (sub, r)
                });
            }
            // With the pool full only a finishing worker matters; otherwise also the moment
            // the next scheduled head becomes visible.
            let mut wake_at = None;
            if exhausted {
                let full = full(&in_flight);
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                wake_at = self.store.next_visible_at_least(now, &full, min_level)?;
                if tasks.is_empty() {
                    let counts = self.store.counts_at(now)?;
                    if counts.active == 0 && counts.locked == 0 {
                        return Ok(stats);
                    }
                    // A lease left by a worker that is gone ends; its message is then due.
                    wake_at = wake_at.into_iter().chain(counts.leased_until).min();
                    if wake_at.is_none() {
                        return Err(QueueError::storage(
                            format!(
                                "{} active message(s) but none deliverable or scheduled",
                                counts.active
                            ),
                            None,
                        ));
                    }
                }
            }
            let due = async {
                match wake_at {
                    Some(t) => {
                        let wait = (t - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                        tokio::time::sleep(wait.unsigned_abs()).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let (sub, result) = done.map_err(|join| QueueError::storage("a worker panicked", Some(Box::new(join))))?;
                    if let Some(n) = in_flight.get_mut(&sub) {
                        *n -= 1;
                        if *n == 0 {
                            in_flight.remove(&sub);
                        }
                    }
                    let done = result?;
                    stats.steps += done.steps;
                    stats.dead_lettered += done.dead_lettered;
                }
                _ = self.store.sent().notified() => {}
                _ = due => {}
                Ok(()) = async { hold.as_mut().expect("guarded").changed().await }, if hold.is_some() => {}
            }
        }
    }
}

/// Executes a delivery and, as long as its session has its next message ready, that one too
/// (`SqliteStore::commit_and_continue`). Counts the steps settled and the messages
/// dead-lettered (undecodable).
async fn work<R: Reconciler>(
    store: &SqliteStore,
    engine: &Engine<R>,
    first: Delivery,
    lease: Duration,
    on_step: Option<&OnStep>,
    hold: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<RunStats, QueueError> {
    let mut done = RunStats::default();
    let mut delivery = Some(first);
    while let Some(d) = delivery.take() {
        let msg = match StepMessage::decode(&d.body) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(
                    message_id = %d.message_id,
                    delivery_count = d.delivery_count,
                    "undecodable step message: {e}"
                );
                store.dead_letter(&d, &e.to_string())?;
                done.dead_lettered += 1;
                break;
            }
        };
        let executed = engine.execute(&msg).await;
        let now = OffsetDateTime::now_utc();
        // A held run continues a session only with a message that may not wait.
        let min_level = match &hold {
            Some(h) if *h.borrow() => URGENT,
            _ => 0,
        };
        match store.commit_and_continue(
            &d,
            &executed.next,
            Some(&executed.record),
            now,
            lease,
            min_level,
        ) {
            Ok(next) => delivery = next,
            // Another worker got it after our lease expired; its result stands.
            Err(QueueError::LockLost(id)) => {
                tracing::warn!(message_id = %id, "lease lost before settling; the step will be judged by its redelivery")
            }
            Err(e) => return Err(e),
        }
        done.steps += 1;
        if let Some(f) = on_step {
            f(&executed);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::pipeline::message::Step;
    use crate::pipeline::queue::{Outgoing, StepSender};
    use crate::pipeline::reconciler::StepResult;
    use crate::pipeline::sqlite::test_support::{msg_in, store};
    use crate::pipeline::Outcome;

    /// Finishes every step at once, except that steps in subscription `s1` wait for `gate`.
    struct Gated {
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl Reconciler for Gated {
        type Error = std::io::Error;

        async fn reconcile(&self, msg: &StepMessage) -> Result<StepResult, Self::Error> {
            if msg.target.subscription() == "s1" {
                let _pass = self.gate.acquire().await.expect("gate open");
            }
            Ok(StepResult::done(Outcome::Migrated, "done"))
        }

        fn error_policy(&self, _: &StepMessage, _: &Self::Error) -> StepResult {
            StepResult::done(Outcome::Cancelled, "reconcile never fails here")
        }
    }

    /// A ready backlog the runner may not admit (its subscription is at its limit while one
    /// step hangs for an hour) costs no queue calls: the runner waits for the worker. Time is
    /// paused and jumps ahead whenever every task waits, so a runner that polled on a timer
    /// would call `receive` thousands of times here.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_that_cannot_be_admitted_is_awaited_not_polled() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let mut backlog: Vec<Outgoing> = (0..20)
            .map(|i| Outgoing::now(msg_in("s1", &format!("a{i}"), Step::Verify)))
            .collect();
        backlog.push(Outgoing::now(msg_in("s2", "b", Step::Verify)));
        store.send(backlog).await.unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let runner = Runner::new(
            store.clone(),
            Arc::new(Engine::new(Gated { gate: gate.clone() })),
            RunnerConfig {
                max_in_flight: 8,
                per_subscription: 1,
                lease: Duration::from_secs(7200),
            },
        );
        let run = tokio::spawn(async move { runner.run_until_idle().await });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!run.is_finished(), "s1's first step is still held");
        let b_done = store.counts().unwrap();
        assert_eq!(
            (b_done.completed, b_done.locked),
            (1, 1),
            "s2 was served meanwhile"
        );
        // One permit serves every s1 step in turn (each returns it when done).
        gate.add_permits(1);
        let stats = run.await.unwrap().unwrap();
        assert_eq!(stats.steps, 21);
        // One receive that delivers and one that finds nothing admissible per step, plus the
        // first fill and the wake-up of the initial send.
        assert!(stats.polls <= 2 * stats.steps + 2, "{stats:?}");
    }
}
