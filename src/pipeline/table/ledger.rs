//! The ledger over Table Storage, for a function app that scales out to many instances.
//!
//! Tables and keys:
//! - `runs`: PartitionKey = run, RowKey = "" (a handful of rows, read whole).
//! - `targets`: PartitionKey = run, RowKey = the target's key (lower-cased id), so a run's
//!   targets are one partition query and one target is a point read.
//! - `steplog`: PartitionKey = run + SHA-256 of the target's key, so each target's log is its
//!   own partition (the writes of a run spread over as many partitions as it has targets);
//!   RowKey = time (nanoseconds, zero-padded), message id and a nonce, so a partition reads
//!   back in time order and two records never collide.
//! - `rollouts`: a run's waves and rollout control (see `rollout.rs`).
//!
//! A target's row is changed by read-modify-write under `If-Match: {etag}`: an instance that
//! lost the race (412) reads again and re-applies its change, so two instances settling the
//! same target never lose an update. The rules are the SQLite ledger's (`record_tx`).

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::client::{key, literal, TableAuth, TableClient, TableError};
use crate::azure::ResourceId;
use crate::pipeline::ledger::{
    Ledger, LedgerError, Released, RunRecord, StepLogEntry, StepRecord, TargetRecord,
};
use crate::pipeline::message::{GatewaySnapshot, RunId, Step};
use crate::pipeline::queue::Outgoing;
use crate::pipeline::rollout::{Control, Gate, WaveView};

const RUNS: &str = "runs";
const TARGETS: &str = "targets";
const STEPLOG: &str = "steplog";
/// Read-modify-write tries before giving up on a target row that keeps changing under us.
const RMW_TRIES: u32 = 64;
/// The property naming the last write to a target row (see [`TableLedger::update_target`]).
const RECORD_ID: &str = "recordId";

/// The ledger in Azure Table Storage.
#[derive(Debug)]
pub struct TableLedger {
    pub(super) client: TableClient,
}

pub(super) fn storage(what: String) -> impl FnOnce(TableError) -> LedgerError {
    move |e| LedgerError::storage(what, Some(Box::new(e)))
}

impl TableLedger {
    /// Connects to the account at `endpoint` and creates the ledger's tables if missing.
    pub async fn open(endpoint: &str, auth: TableAuth) -> Result<Self, LedgerError> {
        let client = TableClient::new(endpoint, auth)
            .map_err(|e| LedgerError::storage("cannot use the Table ledger", Some(Box::new(e))))?;
        for table in [RUNS, TARGETS, STEPLOG, super::rollout::ROLLOUTS] {
            client
                .create_table(table)
                .await
                .map_err(storage(format!("creating table {table} at {endpoint}")))?;
        }
        Ok(TableLedger { client })
    }

    pub(super) async fn read_target(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Option<(TargetRecord, Map<String, Value>, String)>, LedgerError> {
        let found = self
            .client
            .get(TARGETS, &key(run.as_str()), &key(target.key()))
            .await
            .map_err(storage(format!("reading {target} in run {run}")))?;
        let Some(entity) = found else {
            return Ok(None);
        };
        let record = target_from_entity(entity.properties.clone())?;
        Ok(Some((record, entity.properties, entity.etag)))
    }

    /// Registers a target untouched by any step, in `wave`; one registered already is left
    /// as it is.
    pub(super) async fn insert_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        at: OffsetDateTime,
        wave: Option<u32>,
    ) -> Result<(), LedgerError> {
        let record = untouched(run, target, at, wave);
        let row = target_entity(&record, &uuid::Uuid::new_v4().to_string())?;
        self.client
            .insert(TARGETS, &row)
            .await
            .map_err(storage(format!("adding {target} to run {run}")))?;
        Ok(())
    }

    /// Applies `change` to the target's row (None: there is none yet) until a write lands on
    /// the row it was computed from: an insert that finds a row (409) or a replace whose ETag
    /// is stale (412) reads again. Each call stamps the row with its own id, so a write that
    /// landed although its answer was lost (and was sent again) is recognised, not applied
    /// twice.
    pub(super) async fn update_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        change: impl Fn(Option<TargetRecord>) -> TargetRecord,
    ) -> Result<(), LedgerError> {
        let record_id = uuid::Uuid::new_v4().to_string();
        self.write_target(run, target, &record_id, change).await
    }

    /// [`Self::update_target`] stamping the row with `record_id`.
    async fn write_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        record_id: &str,
        change: impl Fn(Option<TargetRecord>) -> TargetRecord,
    ) -> Result<(), LedgerError> {
        for tried in 1..=RMW_TRIES {
            let current = self.read_target(run, target).await?;
            if let Some((_, props, _)) = &current {
                if props.get(RECORD_ID).and_then(Value::as_str) == Some(record_id) {
                    return Ok(());
                }
            }
            let what = || format!("writing {target} in run {run}");
            let landed = match current {
                None => {
                    let row = target_entity(&change(None), record_id)?;
                    self.client
                        .insert(TARGETS, &row)
                        .await
                        .map_err(storage(what()))?
                }
                Some((record, _, etag)) => {
                    let row = target_entity(&change(Some(record)), record_id)?;
                    self.client
                        .replace_if(TARGETS, &row, &etag)
                        .await
                        .map_err(storage(what()))?
                }
            };
            if landed {
                return Ok(());
            }
            // Another instance wrote first: pause a little (more after each loss, with
            // jitter so the two do not collide again in step), then read its write.
            let ms = rand::random_range(1..=10) * u64::from(tried.min(8));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Err(LedgerError::storage(
            format!("{target} in run {run}: the row kept changing over {RMW_TRIES} tries"),
            None,
        ))
    }
}

/// How a row's record id begins when a step of message `message_id` wrote it last.
fn recorded_by(message_id: &str) -> String {
    format!("{message_id}~")
}

/// The row of a target no step has touched yet.
pub(super) fn untouched(
    run: &RunId,
    target: &ResourceId,
    at: OffsetDateTime,
    wave: Option<u32>,
) -> TargetRecord {
    TargetRecord {
        run: run.clone(),
        target: target.clone(),
        outcome: None,
        current_step: Some(Step::Discover),
        steps: 0,
        attempts: 0,
        reason: None,
        subnet: None,
        prefix: None,
        gateway: None,
        started_at: at,
        updated_at: at,
        finished_at: None,
        cutover: Default::default(),
        wave,
        next_at: None,
    }
}

/// The target's row after `r`, from the row before it (None when there is none; `site_wave`
/// is then the wave of the target's site, which a slot first seen here joins). The same rules
/// as the SQLite ledger's `record_tx`.
fn apply(before: Option<TargetRecord>, r: &StepRecord, site_wave: Option<u32>) -> TargetRecord {
    let finished_at = r.outcome.as_ref().map(|_| r.at);
    let reason = r.outcome.as_ref().and_then(|o| o.reason());
    match before {
        None => TargetRecord {
            run: r.run.clone(),
            target: r.target.clone(),
            outcome: r.outcome.clone(),
            current_step: r.next,
            steps: 1,
            attempts: r.attempt,
            reason,
            subnet: r.subnet.clone(),
            prefix: r.prefix.clone(),
            gateway: r.gateway.clone(),
            started_at: r.at,
            updated_at: r.at,
            finished_at,
            cutover: r.cutover,
            wave: site_wave,
            next_at: r.next_at,
        },
        // A target's outcome is final (only an operator reopens it): a step recorded after it
        // is a late duplicate, logged but never undoing the end (see `record_tx`).
        Some(t) if t.outcome.is_some() => TargetRecord {
            steps: t.steps + 1,
            attempts: t.attempts.max(r.attempt),
            ..t
        },
        Some(t) => TargetRecord {
            outcome: r.outcome.clone(),
            current_step: r.next,
            steps: t.steps + 1,
            attempts: t.attempts.max(r.attempt),
            reason: reason.or(t.reason),
            subnet: r.subnet.clone().or(t.subnet),
            prefix: r.prefix.clone().or(t.prefix),
            // The snapshot saved before a disconnect is never dropped by a later step that
            // carries none: rollback needs it.
            gateway: r.gateway.clone().or(t.gateway),
            updated_at: r.at,
            finished_at,
            // The first disconnect observed is kept (a redelivery observes the connection
            // gone later); the last connect wins (a rollback after a connect ends the
            // downtime again).
            cutover: crate::pipeline::ledger::Cutover {
                disconnected_at: t.cutover.disconnected_at.or(r.cutover.disconnected_at),
                connected_at: r.cutover.connected_at.or(t.cutover.connected_at),
            },
            next_at: r.next_at,
            ..t
        },
    }
}

/// A serialized record as entity properties: nulls left out (an absent property reads back as
/// None) and the keys added.
pub(super) fn entity(
    partition: String,
    row: String,
    value: &impl Serialize,
) -> Result<Map<String, Value>, LedgerError> {
    let value = serde_json::to_value(value)
        .map_err(|e| LedgerError::storage("encoding a ledger row", Some(Box::new(e))))?;
    let Value::Object(fields) = value else {
        return Err(LedgerError::storage(
            "a ledger row is not a JSON object",
            None,
        ));
    };
    let mut props: Map<String, Value> = fields.into_iter().filter(|(_, v)| !v.is_null()).collect();
    props.insert("PartitionKey".into(), Value::String(partition));
    props.insert("RowKey".into(), Value::String(row));
    Ok(props)
}

pub(super) fn from_entity<T: DeserializeOwned>(
    table: &str,
    props: Map<String, Value>,
) -> Result<T, LedgerError> {
    let at = format!(
        "{table} row (PartitionKey={:?}, RowKey={:?})",
        props
            .get("PartitionKey")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        props
            .get("RowKey")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    serde_path_to_error::deserialize(Value::Object(props))
        .map_err(|e| LedgerError::storage(format!("{at}: bad value"), Some(Box::new(e))))
}

/// Properties are scalars: the gateway snapshot is kept as its JSON text.
fn target_entity(t: &TargetRecord, record_id: &str) -> Result<Map<String, Value>, LedgerError> {
    let mut props = entity(key(t.run.as_str()), key(t.target.key()), t)?;
    if let Some(gateway) = props.get_mut("gateway") {
        *gateway = Value::String(gateway.to_string());
    }
    props.insert(RECORD_ID.into(), Value::String(record_id.into()));
    Ok(props)
}

fn target_from_entity(mut props: Map<String, Value>) -> Result<TargetRecord, LedgerError> {
    if let Some(gateway) = props.get_mut("gateway") {
        if let Some(text) = gateway.as_str() {
            *gateway = serde_json::from_str(text).map_err(|e| {
                LedgerError::storage("targets row: gateway is not JSON", Some(Box::new(e)))
            })?;
        }
    }
    from_entity(TARGETS, props)
}

/// `durationMs` is a u64: sent as `Edm.Int64` (a JSON string with its type annotation), which
/// a query without metadata returns as a string (Table service REST API, "Payload format for
/// Table service operations").
const DURATION: &str = "durationMs";

fn log_entry(r: &StepRecord) -> StepLogEntry {
    StepLogEntry {
        run: r.run.clone(),
        target: r.target.clone(),
        step: r.step,
        attempt: r.attempt,
        message_id: r.message_id.clone(),
        detail: r.detail.clone(),
        at: r.at,
        duration_ms: r.duration_ms,
    }
}

fn step_log_entity(e: &StepLogEntry) -> Result<Map<String, Value>, LedgerError> {
    let row = format!(
        "{:020}~{}~{}",
        e.at.unix_timestamp_nanos().max(0),
        key(&e.message_id),
        uuid::Uuid::new_v4().simple()
    );
    let mut props = entity(step_log_partition(&e.run, &e.target), row, e)?;
    props.insert(DURATION.into(), Value::String(e.duration_ms.to_string()));
    props.insert(
        format!("{DURATION}@odata.type"),
        Value::String("Edm.Int64".into()),
    );
    Ok(props)
}

fn step_log_from_entity(mut props: Map<String, Value>) -> Result<StepLogEntry, LedgerError> {
    if let Some(d) = props.get_mut(DURATION) {
        if let Some(n) = d.as_str().and_then(|s| s.parse::<u64>().ok()) {
            *d = Value::from(n);
        }
    }
    from_entity(STEPLOG, props)
}

fn step_log_partition(run: &RunId, target: &ResourceId) -> String {
    format!("{}~{}", key(run.as_str()), target.key_digest())
}

#[async_trait]
impl Ledger for TableLedger {
    async fn start_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        let row = entity(key(run.run.as_str()), String::new(), run)?;
        // A run already there is kept as it was (INSERT OR IGNORE in the SQLite ledger).
        self.client
            .insert(RUNS, &row)
            .await
            .map_err(storage(format!("starting run {}", run.run)))?;
        Ok(())
    }

    async fn runs(&self) -> Result<Vec<RunRecord>, LedgerError> {
        let rows = self
            .client
            .query(RUNS, None)
            .await
            .map_err(storage("listing runs".into()))?;
        let mut runs = rows
            .into_iter()
            .map(|r| from_entity::<RunRecord>(RUNS, r))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by_key(|r| r.started_at);
        Ok(runs)
    }

    async fn add_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        self.insert_target(run, target, at, None).await
    }

    async fn record(&self, r: &StepRecord) -> Result<(), LedgerError> {
        // The log entry first: if the row's update then fails, the step is redelivered and
        // logged again, which is what happened; the other order could lose the entry.
        self.client
            .insert(STEPLOG, &step_log_entity(&log_entry(r))?)
            .await
            .map_err(storage(format!(
                "logging a step of {} in run {}",
                r.target, r.run
            )))?;
        // A slot first seen here joins its site's wave.
        let site_wave = match r.target.site().filter(|s| s != &r.target) {
            Some(site) => self
                .read_target(&r.run, &site)
                .await?
                .and_then(|(t, _, _)| t.wave),
            None => None,
        };
        // The row names the message that last changed it (see `recorded`).
        let record_id = format!("{}{}", recorded_by(&r.message_id), uuid::Uuid::new_v4());
        self.write_target(&r.run, &r.target, &record_id, |before| {
            apply(before, r, site_wave)
        })
        .await
    }

    async fn recorded(
        &self,
        run: &RunId,
        target: &ResourceId,
        message_id: &str,
    ) -> Result<bool, LedgerError> {
        let log = self.step_log(run, target).await?;
        Ok(match log.iter().rposition(|e| e.message_id == message_id) {
            None => false,
            Some(i) if i + 1 < log.len() => true,
            // Logged last: in full once the row update, which follows the log entry, landed.
            Some(_) => self
                .read_target(run, target)
                .await?
                .is_some_and(|(_, props, _)| {
                    props
                        .get(RECORD_ID)
                        .and_then(Value::as_str)
                        .is_some_and(|id| id.starts_with(&recorded_by(message_id)))
                }),
        })
    }

    async fn save_gateway(
        &self,
        run: &RunId,
        target: &ResourceId,
        gateway: &GatewaySnapshot,
    ) -> Result<(), LedgerError> {
        let now = OffsetDateTime::now_utc();
        self.update_target(run, target, |before| match before {
            Some(t) => TargetRecord {
                gateway: Some(gateway.clone()),
                updated_at: now,
                ..t
            },
            None => TargetRecord {
                run: run.clone(),
                target: target.clone(),
                outcome: None,
                current_step: None,
                steps: 0,
                attempts: 0,
                reason: None,
                subnet: None,
                prefix: None,
                gateway: Some(gateway.clone()),
                started_at: now,
                updated_at: now,
                finished_at: None,
                cutover: Default::default(),
                wave: None,
                next_at: None,
            },
        })
        .await
    }

    async fn target(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Option<TargetRecord>, LedgerError> {
        Ok(self.read_target(run, target).await?.map(|(t, _, _)| t))
    }

    async fn targets(&self, run: &RunId) -> Result<Vec<TargetRecord>, LedgerError> {
        let filter = format!("PartitionKey eq {}", literal(&key(run.as_str())));
        let rows = self
            .client
            .query(TARGETS, Some(&filter))
            .await
            .map_err(storage(format!("listing the targets of run {run}")))?;
        let mut targets = rows
            .into_iter()
            .map(target_from_entity)
            .collect::<Result<Vec<_>, _>>()?;
        // In key order, as the SQLite ledger lists them (escaped keys sort differently).
        targets.sort_by(|a, b| a.target.key().cmp(b.target.key()));
        Ok(targets)
    }

    async fn step_log(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Vec<StepLogEntry>, LedgerError> {
        let filter = format!(
            "PartitionKey eq {}",
            literal(&step_log_partition(run, target))
        );
        let rows = self
            .client
            .query(STEPLOG, Some(&filter))
            .await
            .map_err(storage(format!(
                "reading the step log of {target} in run {run}"
            )))?;
        // A partition comes back in RowKey order: time, then message id.
        rows.into_iter().map(step_log_from_entity).collect()
    }

    async fn active_run_for(&self, target: &ResourceId) -> Result<Option<RunId>, LedgerError> {
        // One row per run for this target: a query across the runs' partitions.
        let filter = format!("RowKey eq {}", literal(&key(target.key())));
        let rows = self
            .client
            .query(TARGETS, Some(&filter))
            .await
            .map_err(storage(format!("looking up the runs of {target}")))?;
        let mut open = Vec::new();
        for row in rows {
            let t = target_from_entity(row)?;
            if t.outcome.is_none() {
                open.push(t);
            }
        }
        Ok(open.into_iter().max_by_key(|t| t.started_at).map(|t| t.run))
    }

    // The rollout's records are in `rollout.rs`.

    async fn add_waves(
        &self,
        run: &RunId,
        waves: &[Vec<ResourceId>],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        self.add_rollout_waves(run, waves, at).await
    }

    async fn waves(&self, run: &RunId) -> Result<Vec<WaveView>, LedgerError> {
        self.rollout_waves(run).await
    }

    async fn wave_sites(&self, run: &RunId, index: u32) -> Result<Vec<ResourceId>, LedgerError> {
        self.untouched(run, Some(index)).await
    }

    async fn record_gate(&self, run: &RunId, index: u32, gate: &Gate) -> Result<(), LedgerError> {
        self.record_wave_gate(run, index, gate).await
    }

    async fn release_wave(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
        _first: &[Outgoing],
        now: OffsetDateTime,
    ) -> Result<Released, LedgerError> {
        // The queue is Service Bus: the caller sends.
        self.release_rollout_wave(run, index, gate, now).await
    }

    async fn approve(&self, run: &RunId, index: u32) -> Result<(), LedgerError> {
        self.approve_wave(run, index).await
    }

    async fn control(&self, run: &RunId) -> Result<Control, LedgerError> {
        Ok(self.read_control(run).await?.0)
    }

    async fn set_control(&self, run: &RunId, control: Control) -> Result<Control, LedgerError> {
        self.write_control(run, control).await
    }

    async fn abort(&self, run: &RunId, now: OffsetDateTime) -> Result<usize, LedgerError> {
        self.abort_rollout(run, now).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::ledger::Cutover;
    use crate::pipeline::reason::ParkReason;
    use crate::pipeline::sqlite::test_support::{msg_in, now, store};
    use crate::pipeline::Outcome;
    use crate::sim::azurite::Azurite;

    /// Azurite, or the test fails saying why it could not run.
    fn azurite() -> Azurite {
        Azurite::start().unwrap_or_else(|e| panic!("{}", crate::error::Chain(&e)))
    }

    async fn table(az: &Azurite) -> TableLedger {
        TableLedger::open(az.endpoint(), Azurite::auth())
            .await
            .unwrap_or_else(|e| panic!("{}", crate::error::Chain(&e)))
    }

    fn site(sub: &str, app: &str) -> ResourceId {
        msg_in(sub, app, Step::Discover).target
    }

    fn gateway(name: &str) -> GatewaySnapshot {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "vnetResourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v",
            "dnsServers": "10.0.0.4"
        }))
        .unwrap()
    }

    fn step(run: &RunId, target: &ResourceId, step: Step, message_id: &str) -> StepRecord {
        StepRecord {
            run: run.clone(),
            target: target.clone(),
            step,
            attempt: 0,
            message_id: message_id.into(),
            detail: format!("{step} done"),
            at: now(),
            duration_ms: 5,
            next: Some(Step::Configure),
            next_at: None,
            outcome: None,
            subnet: None,
            prefix: None,
            gateway: None,
            cutover: Cutover::default(),
        }
    }

    /// The cases every ledger passes, run against SQLite and Table Storage alike: the
    /// `run` prefix keeps the cases apart in a shared Azurite.
    async fn contract(l: &dyn Ledger, prefix: &str) {
        // Run ids are free text: the characters a key may not hold are in them.
        let run_id = |n: &str| RunId(format!("{prefix}/{n}'#?"));

        // Runs: start_run keeps the first record, runs() lists in start order.
        let first = RunRecord {
            run: run_id("b"),
            started_at: time::macros::datetime!(2026-11-23 10:20:30.123456789 UTC),
            dry_run: true,
            origin: "vnet-migrate rehearse".into(),
        };
        let second = RunRecord {
            run: run_id("a"),
            started_at: time::macros::datetime!(2026-11-23 11:00:00 UTC),
            dry_run: false,
            origin: "o'brien's run".into(),
        };
        l.start_run(&second).await.unwrap();
        l.start_run(&first).await.unwrap();
        l.start_run(&RunRecord {
            dry_run: false,
            ..first.clone()
        })
        .await
        .unwrap();
        let runs: Vec<_> = l
            .runs()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.run.0.starts_with(prefix))
            .collect();
        assert_eq!(runs, vec![first.clone(), second.clone()]);

        // add_target is idempotent: the second call changes nothing.
        let run = first.run.clone();
        let a = site("s", "a");
        let started = now();
        l.add_target(&run, &a, started).await.unwrap();
        l.add_target(&run, &a, started + time::Duration::hours(1))
            .await
            .unwrap();
        let t = l.target(&run, &a).await.unwrap().unwrap();
        assert_eq!(
            (t.started_at, t.current_step, t.steps),
            (started, Some(Step::Discover), 0)
        );
        assert_eq!(l.active_run_for(&a).await.unwrap(), Some(run.clone()));

        // The gateway snapshot is kept through steps that carry none.
        l.save_gateway(&run, &a, &gateway("gw")).await.unwrap();
        let subnet = ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/apps").unwrap();
        let mut disconnect = step(&run, &a, Step::Disconnect, "m-1");
        disconnect.attempt = 2;
        disconnect.subnet = Some(subnet.clone());
        disconnect.prefix = Some("10.0.1.0/26".into());
        disconnect.cutover.disconnected_at = Some(now());
        l.record(&disconnect).await.unwrap();
        let mut parked = step(&run, &a, Step::PrepareSubnet, "m-2");
        parked.next = None;
        parked.outcome = Some(Outcome::Parked(ParkReason::SubnetConflict));
        parked.cutover.disconnected_at = Some(now());
        parked.duration_ms = u64::MAX;
        l.record(&parked).await.unwrap();
        let t = l.target(&run, &a).await.unwrap().unwrap();
        assert_eq!(t.outcome, parked.outcome);
        assert_eq!(t.current_step, None);
        assert_eq!((t.steps, t.attempts), (2, 2));
        assert_eq!(t.reason.as_deref(), Some("subnet-conflict"));
        assert_eq!(t.subnet, Some(subnet));
        assert_eq!(t.prefix.as_deref(), Some("10.0.1.0/26"));
        assert_eq!(
            t.gateway,
            Some(gateway("gw")),
            "kept when a step records none"
        );
        assert_eq!(t.started_at, started);
        assert_eq!((t.updated_at, t.finished_at), (parked.at, Some(parked.at)));
        assert_eq!(
            t.cutover.disconnected_at, disconnect.cutover.disconnected_at,
            "the first is kept"
        );
        // A terminal outcome ends the target's active run.
        assert_eq!(l.active_run_for(&a).await.unwrap(), None);

        // The step log, in the order the steps happened, with every field.
        let log = l.step_log(&run, &a).await.unwrap();
        let seen: Vec<_> = log
            .iter()
            .map(|e| {
                (
                    e.step,
                    e.attempt,
                    e.message_id.as_str(),
                    e.at,
                    e.duration_ms,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (Step::Disconnect, 2, "m-1", disconnect.at, 5),
                (Step::PrepareSubnet, 0, "m-2", parked.at, u64::MAX)
            ]
        );
        assert_eq!(
            (log[0].run.clone(), log[0].target.clone()),
            (run.clone(), a.clone())
        );
        assert_eq!(log[0].detail, "disconnect done");

        // A slot and a site whose names need escaping, listed in key order; another run's
        // target is not listed, and each target's log is its own.
        let slot = ResourceId::parse(&format!("{}/slots/staging", a.as_str())).unwrap();
        let b = site("s", "a-b");
        l.record(&step(&run, &slot, Step::Discover, "m-3"))
            .await
            .unwrap();
        l.add_target(&run, &b, now()).await.unwrap();
        l.add_target(&second.run, &site("s", "other"), now())
            .await
            .unwrap();
        let listed: Vec<_> = l
            .targets(&run)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.target)
            .collect();
        assert_eq!(listed, vec![a.clone(), b.clone(), slot.clone()]);
        assert_eq!(l.step_log(&run, &slot).await.unwrap().len(), 1);
        assert!(l.step_log(&run, &b).await.unwrap().is_empty());

        // active_run_for: the latest run in which the target has no outcome.
        let later = run_id("c");
        l.add_target(&later, &b, now() + time::Duration::seconds(5))
            .await
            .unwrap();
        assert_eq!(l.active_run_for(&b).await.unwrap(), Some(later));
        assert_eq!(l.active_run_for(&site("s", "nowhere")).await.unwrap(), None);

        // Cut-over times: the first disconnect is kept, the last connect wins.
        let c = site("s", "c");
        let t = |secs: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs);
        let times = |d: Option<i64>, c: Option<i64>| Cutover {
            disconnected_at: d.map(t),
            connected_at: c.map(t),
        };
        for (observed, expected) in [
            (times(Some(10), None), times(Some(10), None)),
            (times(Some(12), Some(19)), times(Some(10), Some(19))),
            (times(None, Some(40)), times(Some(10), Some(40))),
            (times(None, None), times(Some(10), Some(40))),
        ] {
            let mut s = step(&run, &c, Step::Connect, "m-c");
            s.cutover = observed;
            l.record(&s).await.unwrap();
            let got = l.target(&run, &c).await.unwrap().unwrap().cutover;
            assert_eq!(got, expected);
        }

        // An outcome is final: a step recorded after it (a cut-over delivered again, recorded
        // after the verify it led to) is logged and counted, and the target stays ended.
        let d = site("s", "d");
        let cut_over = step(&run, &d, Step::Disconnect, "m-d1");
        let mut verified = step(&run, &d, Step::Verify, "m-d2");
        verified.next = None;
        verified.outcome = Some(Outcome::Migrated);
        l.record(&cut_over).await.unwrap();
        assert!(l.recorded(&run, &d, "m-d1").await.unwrap());
        assert!(!l.recorded(&run, &d, "m-d2").await.unwrap());
        l.record(&verified).await.unwrap();
        let mut again = step(&run, &d, Step::Disconnect, "m-d1");
        again.attempt = 1;
        again.cutover.connected_at = Some(now());
        l.record(&again).await.unwrap();
        let t = l.target(&run, &d).await.unwrap().unwrap();
        assert_eq!(
            (t.outcome, t.current_step, t.finished_at, t.updated_at),
            (
                Some(Outcome::Migrated),
                None,
                Some(verified.at),
                verified.at
            )
        );
        assert_eq!((t.steps, t.attempts), (3, 1));
        assert_eq!(t.cutover, Cutover::default());
        assert_eq!(l.step_log(&run, &d).await.unwrap().len(), 3);
        assert_eq!(l.active_run_for(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_sqlite_ledger_passes_the_contract() {
        let (_d, s) = store();
        contract(&s, "sqlite").await;
    }

    #[tokio::test]
    async fn the_table_ledger_passes_the_contract_in_azurite() {
        let az = azurite();
        let l = table(&az).await;
        contract(&l, "table").await;
        // Opening again finds the tables there (409 TableAlreadyExists is fine) and the rows.
        let again = table(&az).await;
        assert_eq!(again.runs().await.unwrap().len(), 2);
    }

    /// A step logged whose row update never landed (the instance stopped between the two
    /// writes) is not recorded in full, until a later step of its target is logged.
    #[tokio::test]
    async fn a_record_cut_short_before_its_row_is_not_recorded_in_full() {
        let az = azurite();
        let l = table(&az).await;
        let run = RunId("r-cut".into());
        let a = site("s", "cut");
        l.add_target(&run, &a, now()).await.unwrap();
        l.record(&step(&run, &a, Step::Plan, "m-1")).await.unwrap();
        let cut = log_entry(&step(&run, &a, Step::PrepareSubnet, "m-2"));
        l.client
            .insert(STEPLOG, &step_log_entity(&cut).unwrap())
            .await
            .unwrap();
        assert!(l.recorded(&run, &a, "m-1").await.unwrap());
        assert!(!l.recorded(&run, &a, "m-2").await.unwrap());
        l.record(&step(&run, &a, Step::Disconnect, "m-3"))
            .await
            .unwrap();
        assert!(l.recorded(&run, &a, "m-2").await.unwrap());
        assert!(l.recorded(&run, &a, "m-3").await.unwrap());
    }

    /// Two instances settling the same target at once: every record lands (the steps counter
    /// equals the number of records, the log holds each), the first disconnect is kept, the
    /// last connect wins, and a gateway snapshot saved meanwhile is not lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_recording_the_same_target_lose_no_update() {
        let az = azurite();
        let instances = [Arc::new(table(&az).await), Arc::new(table(&az).await)];
        let run = RunId("r-race".into());
        let target = site("s", "contended");
        instances[0].add_target(&run, &target, now()).await.unwrap();
        const EACH: u32 = 15;
        let base = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut tasks = Vec::new();
        for (i, l) in instances.iter().enumerate() {
            let (l, run, target) = (l.clone(), run.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..EACH {
                    let mut s = step(&run, &target, Step::Connect, &format!("m-{i}-{n}"));
                    s.attempt = n;
                    // Instance 0 observes the disconnect at 0 s first; every record observes a
                    // connect, the latest at 100 s.
                    let k = i64::from(n) + i as i64 * 50;
                    s.cutover.disconnected_at = Some(base + time::Duration::seconds(k));
                    s.cutover.connected_at = Some(base + time::Duration::seconds(100 - k));
                    l.record(&s).await.unwrap();
                }
            }));
        }
        let saver = instances[1].clone();
        let (srun, starget) = (run.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            saver
                .save_gateway(&srun, &starget, &gateway("saved"))
                .await
                .unwrap();
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let t = instances[0].target(&run, &target).await.unwrap().unwrap();
        assert_eq!(t.steps, 2 * EACH, "no record lost");
        assert_eq!(t.attempts, EACH - 1);
        assert_eq!(t.gateway, Some(gateway("saved")));
        let log = instances[1].step_log(&run, &target).await.unwrap();
        assert_eq!(log.len(), 2 * EACH as usize);
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
        // Which record landed first is the race's; the times kept follow the rules.
        let disconnects: Vec<_> = (0..EACH)
            .flat_map(|n| [i64::from(n), i64::from(n) + 50])
            .map(|k| base + time::Duration::seconds(k))
            .collect();
        assert!(disconnects.contains(&t.cutover.disconnected_at.unwrap()));
        assert!(t.cutover.connected_at.is_some());
    }

    /// The rollout's records, the same on SQLite and Table Storage: waves and their standing,
    /// a gate judged once with its checks, a wave released once when two ticks race, an
    /// operator's approval, the control with resume past a tripped gate, and an abort that
    /// cancels only untouched targets and stays.
    async fn rollout_contract(l: &dyn Ledger, prefix: &str) {
        use crate::pipeline::ledger::Released;
        use crate::pipeline::rollout::{Control, Gate, GateCheck, GateKind};
        let run = RunId(format!("{prefix}/rollout'#"));
        let t = |secs: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_000_000 + secs);
        l.start_run(&RunRecord {
            run: run.clone(),
            started_at: t(0),
            dry_run: false,
            origin: "test".into(),
        })
        .await
        .unwrap();
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| site("s", n));
        assert!(l.waves(&run).await.unwrap().is_empty(), "no rollout yet");
        l.add_waves(
            &run,
            &[vec![a.clone()], vec![b.clone(), c.clone()], vec![d.clone()]],
            t(0),
        )
        .await
        .unwrap();
        let waves = l.waves(&run).await.unwrap();
        let standing: Vec<_> = waves
            .iter()
            .map(|w| {
                (
                    w.index,
                    w.targets,
                    w.released_at,
                    w.ended_at,
                    w.gate.clone(),
                )
            })
            .collect();
        assert_eq!(
            standing,
            vec![
                (0, 1, Some(t(0)), None, None),
                (1, 2, None, None, None),
                (2, 1, None, None, None)
            ]
        );
        assert_eq!(
            l.wave_sites(&run, 1).await.unwrap(),
            vec![b.clone(), c.clone()]
        );

        // Wave 0 ends with its target's outcome; a rolled-back target counts as failed.
        let mut done = step(&run, &a, Step::Rollback, "m-a");
        done.at = t(10);
        done.next = None;
        done.outcome = Some(Outcome::RolledBack(
            crate::pipeline::reason::RollbackReason::Requested,
        ));
        l.record(&done).await.unwrap();
        let w0 = l.waves(&run).await.unwrap().remove(0);
        assert_eq!((w0.ended_at, w0.failed), (Some(t(10)), 1));

        // A gate is judged once, and keeps each check it made.
        let tripped = Gate::of(vec![
            GateCheck::failure_rate(1, 1, 0.5),
            GateCheck {
                kind: GateKind::Probe,
                passed: false,
                detail: "a: GET /health answered 503, not 200 \"'#".into(),
            },
        ]);
        l.record_gate(&run, 0, &tripped).await.unwrap();
        l.record_gate(&run, 0, &Gate::of(Vec::new())).await.unwrap();
        assert_eq!(l.waves(&run).await.unwrap()[0].gate, Some(tripped.clone()));

        // Two ticks releasing wave 1 at once: one releases it.
        let (x, y) = tokio::join!(
            l.release_wave(&run, 1, &tripped, &[], t(20)),
            l.release_wave(&run, 1, &tripped, &[], t(20))
        );
        let results = [x.unwrap(), y.unwrap()];
        assert_eq!(
            results.iter().filter(|r| **r == Released::Already).count(),
            1,
            "{results:?}"
        );
        assert_eq!(l.waves(&run).await.unwrap()[1].released_at, Some(t(20)));
        // An approval is recorded on its wave alone, and twice is once.
        assert!(!l.waves(&run).await.unwrap()[2].approved);
        l.approve(&run, 2).await.unwrap();
        l.approve(&run, 2).await.unwrap();
        let approved: Vec<bool> = l
            .waves(&run)
            .await
            .unwrap()
            .iter()
            .map(|w| w.approved)
            .collect();
        assert_eq!(approved, vec![false, false, true]);
        let started = l.target(&run, &b).await.unwrap().unwrap();
        assert_eq!(
            (started.started_at, started.updated_at),
            (t(20), t(20)),
            "its clock restarted"
        );

        // Pause, then resume: past the tripped gate of wave 0.
        assert_eq!(l.control(&run).await.unwrap(), Control::Running);
        assert_eq!(
            l.set_control(&run, Control::Paused).await.unwrap(),
            Control::Paused
        );
        assert_eq!(l.control(&run).await.unwrap(), Control::Paused);
        assert!(!l.waves(&run).await.unwrap()[0].resumed);
        assert_eq!(
            l.set_control(&run, Control::Running).await.unwrap(),
            Control::Running
        );
        assert!(l.waves(&run).await.unwrap()[0].resumed);

        // Abort: b was touched by a step and goes on; c (released) and d (not) are cancelled.
        l.record(&step(&run, &b, Step::Discover, "m-b"))
            .await
            .unwrap();
        assert_eq!(l.abort(&run, t(30)).await.unwrap(), 2);
        for (target, outcome) in [
            (&b, None),
            (&c, Some(Outcome::Cancelled)),
            (&d, Some(Outcome::Cancelled)),
        ] {
            let r = l.target(&run, target).await.unwrap().unwrap();
            assert_eq!(r.outcome, outcome, "{target}");
        }
        assert_eq!(
            l.target(&run, &d).await.unwrap().unwrap().finished_at,
            Some(t(30))
        );
        assert!(l.wave_sites(&run, 2).await.unwrap().is_empty());
        // An aborted rollout stays aborted.
        assert_eq!(
            l.set_control(&run, Control::Running).await.unwrap(),
            Control::Aborted
        );
        assert_eq!(l.control(&run).await.unwrap(), Control::Aborted);
    }

    #[tokio::test]
    async fn the_sqlite_ledger_passes_the_rollout_contract() {
        let (_d, s) = store();
        rollout_contract(&s, "sqlite").await;
    }

    #[tokio::test]
    async fn the_table_ledger_passes_the_rollout_contract_in_azurite() {
        let az = azurite();
        rollout_contract(&table(&az).await, "table").await;
    }

    #[test]
    fn a_slot_first_seen_by_a_step_joins_its_sites_wave() {
        let slot =
            ResourceId::parse(&format!("{}/slots/staging", site("s", "a").as_str())).unwrap();
        let r = step(&RunId("r".into()), &slot, Step::Discover, "m");
        let t = apply(None, &r, Some(3));
        assert_eq!((t.wave, t.steps, t.started_at), (Some(3), 1, r.at));
        // Later steps keep the wave and the start.
        let later = apply(
            Some(t.clone()),
            &step(&r.run, &slot, Step::Plan, "m2"),
            None,
        );
        assert_eq!(
            (later.wave, later.steps, later.started_at),
            (Some(3), 2, r.at)
        );
    }
}
