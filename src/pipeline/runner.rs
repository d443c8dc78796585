//! The embedded runner: a bounded pool of workers that take step messages from the SQLite
//! queue, execute them with the engine, and settle them (complete + next steps + ledger) in
//! one atomic unit (committed with the store's batch). Stop it at any point (Ctrl-C, SIGKILL)
//! and start it again on the same state file: leased work is delivered again and the
//! reconcilers pick up where ARM is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::engine::Engine;
use super::message::{StepMessage, PLANNED, URGENT};
use super::queue::QueueError;
use super::reconciler::Reconciler;
use super::sqlite::{Delivery, SqliteStore};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Steps executing at once across the fleet.
    pub max_in_flight: usize,
    /// Steps executing at once per subscription (ARM limits are per subscription).
    pub per_subscription: usize,
    /// Planned targets' steps executing at once per destination VNet (`concurrency.perVnet`);
    /// None = no limit but the subscription's.
    pub per_vnet: Option<usize>,
    /// Steps below `message::PLANNED` (discovery, planning) executing at once. A run starts
    /// with thousands of them; a pool full of them takes the CPU that the cut-overs wait for,
    /// with apps offline meanwhile (10,000 targets at speed 50, idle machine: migrated
    /// downtime over the join p99 1.175 with 64, 1.094 with 8; makespan 143.9 and 142.8 s).
    pub max_unplanned_in_flight: usize,
    /// How long a delivery stays locked to its worker.
    pub lease: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_in_flight: 64,
            per_subscription: 16,
            per_vnet: None,
            max_unplanned_in_flight: 8,
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
        // Steps in flight per admission unit; a unit at its limit is `full`.
        let mut in_flight: HashMap<Unit, usize> = HashMap::new();
        let mut tasks: JoinSet<(Vec<Unit>, bool, Result<RunStats, QueueError>)> = JoinSet::new();
        // Tasks in flight that began with a step below `PLANNED`.
        let mut unplanned = 0;
        let mut stats = RunStats::default();
        let mut hold = self.hold.clone();
        loop {
            let held = hold.as_mut().is_some_and(|h| *h.borrow_and_update());
            // Held (a paused rollout), nothing new starts, but a message whose app may be off
            // its VNet is still delivered: holding it would keep the app offline until resume.
            let min_level = if held { URGENT } else { 0 };
            if held && tasks.is_empty() && !self.store.has_active_at_least(URGENT)? {
                self.store.flush()?;
                return Ok(stats);
            }
            let now = OffsetDateTime::now_utc();
            let full = |in_flight: &HashMap<Unit, usize>| -> Vec<String> {
                in_flight
                    .iter()
                    .filter(|(unit, n)| **n >= self.limit(unit))
                    .map(|(unit, _)| unit.key().to_string())
                    .collect()
            };
            // Fill the pool.
            let mut exhausted = false;
            while tasks.len() < self.config.max_in_flight {
                let full = full(&in_flight);
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                stats.polls += 1;
                let Some(delivery) = self.store.receive_at_least(
                    now,
                    self.config.lease,
                    &full,
                    self.floor(min_level, unplanned),
                )?
                else {
                    exhausted = true;
                    break;
                };
                let early = delivery.priority < PLANNED;
                unplanned += usize::from(early);
                let units: Vec<Unit> =
                    std::iter::once(Unit::Subscription(delivery.subscription.clone()))
                        .chain(delivery.vnet.clone().map(Unit::Vnet))
                        .collect();
                for unit in &units {
                    *in_flight.entry(unit.clone()).or_default() += 1;
                }
                let (store, engine, on_step, lease, held) = (
                    self.store.clone(),
                    self.engine.clone(),
                    self.on_step.clone(),
                    self.config.lease,
                    self.hold.clone(),
                );
                tasks.spawn(async move {
                    let r = work(&store, &engine, delivery, lease, on_step.as_ref(), held).await;
                    (units, early, r)
                });
            }
            // With the pool full only a finishing worker matters; otherwise also the moment
            // the next scheduled head becomes visible.
            let mut wake_at = None;
            if exhausted {
                let full = full(&in_flight);
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                wake_at = self.store.next_visible_at_least(
                    now,
                    &full,
                    self.floor(min_level, unplanned),
                )?;
                if tasks.is_empty() {
                    let counts = self.store.counts_at(now)?;
                    if counts.active == 0 && counts.locked == 0 {
                        self.store.flush()?;
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
            if tasks.is_empty() {
                // Idle until `wake_at`: what the run did reaches other connections now.
                self.store.flush()?;
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
                    let (units, early, result) = done.map_err(|join| QueueError::storage("a worker panicked", Some(Box::new(join))))?;
                    unplanned -= usize::from(early);
                    for unit in units {
                        if let Some(n) = in_flight.get_mut(&unit) {
                            *n -= 1;
                            if *n == 0 {
                                in_flight.remove(&unit);
                            }
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

    /// The least level the runner takes next: `min_level`, or `PLANNED` while the pool holds
    /// as many unplanned steps as it may.
    fn floor(&self, min_level: u8, unplanned: usize) -> u8 {
        if unplanned >= self.config.max_unplanned_in_flight {
            min_level.max(PLANNED)
        } else {
            min_level
        }
    }

    fn limit(&self, unit: &Unit) -> usize {
        match (unit, self.config.per_vnet) {
            (Unit::Vnet(_), Some(n)) => n,
            (Unit::Vnet(_), None) => usize::MAX,
            (Unit::Subscription(_), _) => self.config.per_subscription,
        }
    }
}

/// What the runner admits steps by: each has its own in-flight limit. The queue takes the keys
/// of the full ones in one list (a subscription id never looks like a VNet id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Unit {
    Subscription(String),
    /// The lower-cased id of a planned target's destination VNet.
    Vnet(String),
}

impl Unit {
    fn key(&self) -> &str {
        match self {
            Unit::Subscription(k) | Unit::Vnet(k) => k,
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
            executed.ledger_record(),
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
                per_vnet: None,
                max_unplanned_in_flight: 8,
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

    /// A runner that goes idle has committed its batch: another connection sees every step.
    #[tokio::test]
    async fn an_idle_runner_has_committed_its_steps() {
        let (dir, store) = store();
        store.hold_batches();
        let store = Arc::new(store);
        let work = (0..3)
            .map(|i| Outgoing::now(msg_in("s2", &format!("a{i}"), Step::Verify)))
            .collect();
        store.send(work).await.unwrap();
        let engine = Arc::new(Engine::new(Gated {
            gate: Arc::new(Semaphore::new(0)),
        }));
        let stats = Runner::new(store.clone(), engine, RunnerConfig::default())
            .run_until_idle()
            .await
            .unwrap();
        assert_eq!(stats.steps, 3);
        let left: i64 = rusqlite::Connection::open(dir.path().join("state.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Most steps seen running at once, per destination VNet ("unplanned" for none).
    type MaxRunning = Arc<std::sync::Mutex<HashMap<String, (usize, usize)>>>;

    /// Takes a simulated second per step and records the most steps running at once per VNet.
    struct PerVnet {
        running: MaxRunning,
    }

    #[async_trait]
    impl Reconciler for PerVnet {
        type Error = std::io::Error;

        async fn reconcile(&self, msg: &StepMessage) -> Result<StepResult, Self::Error> {
            let vnet = msg.vnet_key().unwrap_or("unplanned").to_string();
            {
                let mut running = self.running.lock().unwrap();
                let (now, max) = running.entry(vnet.clone()).or_default();
                *now += 1;
                *max = (*max).max(*now);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.running.lock().unwrap().get_mut(&vnet).unwrap().0 -= 1;
            Ok(StepResult::done(Outcome::Migrated, "done"))
        }

        fn error_policy(&self, _: &StepMessage, _: &Self::Error) -> StepResult {
            StepResult::done(Outcome::Cancelled, "reconcile never fails here")
        }
    }

    /// Ten planned targets bound for each of VNets `hub` and `spoke` and ten unplanned ones,
    /// run 8 at a time with `per_vnet` and `max_unplanned`: the most steps seen at once per
    /// VNet.
    async fn most_at_once(per_vnet: Option<usize>, max_unplanned: usize) -> HashMap<String, usize> {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let planned = |app: &str, vnet: &str| {
            let mut m = msg_in("s1", app, Step::Verify);
            let vnet = crate::azure::resource_id::ResourceId::parse(&format!(
                "/subscriptions/s1/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/{vnet}"
            ))
            .unwrap();
            m.plan = Some(crate::pipeline::message::PlannedSubnet {
                subnet: vnet.child("subnets", "snet").unwrap(),
                vnet,
                prefix: "10.0.0.0/26".into(),
                create: false,
                required_prefix_length: None,
            });
            Outgoing::now(m)
        };
        let mut backlog: Vec<Outgoing> =
            (0..10).map(|i| planned(&format!("a{i}"), "hub")).collect();
        backlog.extend((0..10).map(|i| planned(&format!("b{i}"), "spoke")));
        backlog.extend((0..10).map(|i| Outgoing::now(msg_in("s1", &format!("c{i}"), Step::Plan))));
        store.send(backlog).await.unwrap();
        let running = MaxRunning::default();
        let config = RunnerConfig {
            max_in_flight: 8,
            per_subscription: 8,
            per_vnet,
            max_unplanned_in_flight: max_unplanned,
            lease: Duration::from_secs(600),
        };
        let engine = Arc::new(Engine::new(PerVnet {
            running: running.clone(),
        }));
        let stats = Runner::new(store, engine, config)
            .run_until_idle()
            .await
            .unwrap();
        assert_eq!(stats.steps, 30);
        let max = running.lock().unwrap();
        max.iter().map(|(k, (_, m))| (k.clone(), *m)).collect()
    }

    /// `concurrency.perVnet`: at most N steps of targets bound for one VNet execute at once,
    /// while unplanned targets (no VNet yet) and other VNets' targets use the rest of the
    /// pool; without the limit one VNet's targets take the whole pool.
    #[tokio::test(start_paused = true)]
    async fn at_most_per_vnet_targets_of_one_vnet_run_at_once() {
        let hub =
            "/subscriptions/s1/resourcegroups/n/providers/microsoft.network/virtualnetworks/hub";
        let spoke = hub.replace("hub", "spoke");
        let limited = most_at_once(Some(2), 8).await;
        assert_eq!((limited[hub], limited[&spoke]), (2, 2), "{limited:?}");
        assert!(limited["unplanned"] >= 4, "{limited:?}");
        let unlimited = most_at_once(None, 8).await;
        assert!(unlimited[hub] > 2, "{unlimited:?}");
    }

    /// Discovery and planning take at most `max_unplanned_in_flight` of the pool, and the
    /// steps of planned targets the rest.
    #[tokio::test(start_paused = true)]
    async fn unplanned_steps_take_at_most_their_share_of_the_pool() {
        let hub =
            "/subscriptions/s1/resourcegroups/n/providers/microsoft.network/virtualnetworks/hub";
        let most = most_at_once(None, 2).await;
        assert_eq!(most["unplanned"], 2, "{most:?}");
        assert!(most[hub] > 2, "{most:?}");
    }
}
