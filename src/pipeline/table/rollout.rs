//! The rollout's records in Table Storage. Table `rollouts`, PartitionKey = run (beside the
//! run's `targets` partition): RowKey `wave~{index}` (zero-padded, so the partition reads back
//! in wave order) holds a wave's release and gate, RowKey `control` what an operator asked.
//! A target's wave is a property of its `targets` row, so a wave's standing is read from the
//! run's targets as in the SQLite ledger.
//!
//! Every change to a wave or the control is a read-modify-write under `If-Match: {etag}`: of
//! two rollout ticks (or a tick and `rollout pause`) racing, one write lands and the other
//! reads again, so a wave is released once and an abort is never undone by a resume.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::client::{key, literal};
use super::ledger::{entity, from_entity, storage, untouched, TableLedger};
use crate::azure::ResourceId;
use crate::pipeline::ledger::{Ledger, LedgerError, Released};
use crate::pipeline::message::RunId;
use crate::pipeline::rollout::{Control, Gate, WaveView};
use crate::pipeline::Outcome;

pub(super) const ROLLOUTS: &str = "rollouts";
const CONTROL: &str = "control";
/// Read-modify-write tries before giving up on a row that keeps changing under us.
const TRIES: u32 = 64;
/// Targets written at once when a rollout starts, releases or aborts.
const PARALLEL: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaveRow {
    index: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    released_at: Option<OffsetDateTime>,
    #[serde(default)]
    gate_passed: Option<bool>,
    #[serde(default)]
    gate_reason: Option<String>,
    /// The gate's checks ([`Gate::checks_text`]): a property holds no list.
    #[serde(default)]
    gate_checks: Option<String>,
    /// An operator resumed the rollout past this wave's tripped gate.
    #[serde(default)]
    resumed: bool,
    /// An operator promoted the rollout to this wave (`rollout promote`).
    #[serde(default)]
    approved: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct ControlRow {
    control: String,
}

fn wave_key(index: u32) -> String {
    format!("wave~{index:010}")
}

impl TableLedger {
    async fn read_wave(
        &self,
        run: &RunId,
        index: u32,
    ) -> Result<Option<(WaveRow, String)>, LedgerError> {
        let found = self
            .client
            .get(ROLLOUTS, &key(run.as_str()), &wave_key(index))
            .await
            .map_err(storage(format!("reading wave {index} of run {run}")))?;
        found
            .map(|e| Ok((from_entity(ROLLOUTS, e.properties)?, e.etag)))
            .transpose()
    }

    /// Applies `change` to wave `index` until the write lands on the row it was computed
    /// from; `change` answers None when there is nothing to write. Whether a write landed.
    async fn update_wave(
        &self,
        run: &RunId,
        index: u32,
        change: impl Fn(&WaveRow) -> Option<WaveRow>,
    ) -> Result<bool, LedgerError> {
        for _ in 0..TRIES {
            let Some((row, etag)) = self.read_wave(run, index).await? else {
                return Err(LedgerError::storage(
                    format!("run {run} has no wave {index}"),
                    None,
                ));
            };
            let Some(new) = change(&row) else {
                return Ok(false);
            };
            let props = entity(key(run.as_str()), wave_key(index), &new)?;
            if self
                .client
                .replace_if(ROLLOUTS, &props, &etag)
                .await
                .map_err(storage(format!("writing wave {index} of run {run}")))?
            {
                return Ok(true);
            }
        }
        Err(LedgerError::storage(
            format!("wave {index} of run {run} kept changing over {TRIES} tries"),
            None,
        ))
    }

    async fn wave_rows(&self, run: &RunId) -> Result<Vec<WaveRow>, LedgerError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey ge 'wave~' and RowKey lt 'wave~~'",
            literal(&key(run.as_str()))
        );
        let rows = self
            .client
            .query(ROLLOUTS, Some(&filter))
            .await
            .map_err(storage(format!("listing the waves of run {run}")))?;
        let mut waves = rows
            .into_iter()
            .map(|r| from_entity::<WaveRow>(ROLLOUTS, r))
            .collect::<Result<Vec<_>, _>>()?;
        waves.sort_by_key(|w| w.index);
        Ok(waves)
    }

    pub(super) async fn add_rollout_waves(
        &self,
        run: &RunId,
        waves: &[Vec<ResourceId>],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        // Targets first: a wave row is only read with its targets there.
        // Owned items: a stream of borrowed ones is not `Send` enough for an async trait.
        let targets: Vec<(u32, ResourceId)> = waves
            .iter()
            .enumerate()
            .flat_map(|(i, w)| w.iter().map(move |t| (i as u32, t.clone())))
            .collect();
        futures::stream::iter(targets)
            .map(|(i, t)| async move { self.insert_target(run, &t, at, Some(i)).await })
            .buffer_unordered(PARALLEL)
            .try_collect::<()>()
            .await?;
        for i in 0..waves.len() as u32 {
            let row = WaveRow {
                index: i,
                released_at: (i == 0).then_some(at),
                gate_passed: None,
                gate_reason: None,
                gate_checks: None,
                resumed: false,
                approved: false,
            };
            // A wave recorded already is kept as it is.
            self.client
                .insert(ROLLOUTS, &entity(key(run.as_str()), wave_key(i), &row)?)
                .await
                .map_err(storage(format!("recording wave {i} of run {run}")))?;
        }
        Ok(())
    }

    /// The waves with their targets' standing, the same figures as the SQLite ledger's.
    pub(super) async fn rollout_waves(&self, run: &RunId) -> Result<Vec<WaveView>, LedgerError> {
        let rows = self.wave_rows(run).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let targets = self.targets(run).await?;
        Ok(rows
            .into_iter()
            .map(|w| {
                let mine: Vec<_> = targets.iter().filter(|t| t.wave == Some(w.index)).collect();
                let terminal = mine.iter().filter(|t| t.outcome.is_some()).count();
                let failed = mine
                    .iter()
                    .filter(|t| {
                        matches!(
                            t.outcome.as_ref().map(Outcome::kind),
                            Some("rolled-back" | "parked")
                        )
                    })
                    .count();
                let last = mine.iter().filter_map(|t| t.finished_at).max();
                WaveView {
                    index: w.index,
                    targets: mine.len() as u32,
                    failed: failed as u32,
                    released_at: w.released_at,
                    ended_at: last.filter(|_| terminal == mine.len()),
                    gate: w.gate_passed.zip(w.gate_reason).map(|(passed, reason)| {
                        Gate::recorded(passed, reason, w.gate_checks.as_deref())
                    }),
                    resumed: w.resumed,
                    approved: w.approved,
                }
            })
            .collect())
    }

    /// Targets no step has touched, of wave `index` or of every wave, in key order.
    pub(super) async fn untouched(
        &self,
        run: &RunId,
        index: Option<u32>,
    ) -> Result<Vec<ResourceId>, LedgerError> {
        Ok(self
            .targets(run)
            .await?
            .into_iter()
            .filter(|t| t.steps == 0 && t.outcome.is_none())
            .filter(|t| index.is_none() || t.wave == index)
            .map(|t| t.target)
            .collect())
    }

    pub(super) async fn record_wave_gate(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
    ) -> Result<(), LedgerError> {
        self.update_wave(run, index, |w| {
            w.gate_passed.is_none().then(|| WaveRow {
                gate_passed: Some(gate.passed),
                gate_reason: Some(gate.reason.clone()),
                gate_checks: Some(gate.checks_text()),
                ..w.clone()
            })
        })
        .await?;
        Ok(())
    }

    pub(super) async fn approve_wave(&self, run: &RunId, index: u32) -> Result<(), LedgerError> {
        self.update_wave(run, index, |w| {
            (!w.approved).then(|| WaveRow {
                approved: true,
                ..w.clone()
            })
        })
        .await?;
        Ok(())
    }

    pub(super) async fn release_rollout_wave(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
        now: OffsetDateTime,
    ) -> Result<Released, LedgerError> {
        if let Some(previous) = index.checked_sub(1) {
            self.record_wave_gate(run, previous, gate).await?;
        }
        let released = self
            .update_wave(run, index, |w| {
                w.released_at.is_none().then(|| WaveRow {
                    released_at: Some(now),
                    ..w.clone()
                })
            })
            .await?;
        if !released {
            return Ok(Released::Already);
        }
        // The targets' clocks start now: a target is measured, and counted as stalled, from
        // its wave's release.
        let targets = self.untouched(run, Some(index)).await?;
        futures::stream::iter(targets)
            .map(|t| async move {
                self.update_target(run, &t, |before| match before {
                    Some(b) if b.steps == 0 => crate::pipeline::ledger::TargetRecord {
                        started_at: now,
                        updated_at: now,
                        ..b
                    },
                    Some(b) => b,
                    None => untouched(run, &t, now, Some(index)),
                })
                .await
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<()>()
            .await?;
        Ok(Released::Send)
    }

    /// The control and the ETag of its row (None: nothing was asked yet).
    pub(super) async fn read_control(
        &self,
        run: &RunId,
    ) -> Result<(Control, Option<String>), LedgerError> {
        let found = self
            .client
            .get(ROLLOUTS, &key(run.as_str()), CONTROL)
            .await
            .map_err(storage(format!("reading the rollout control of run {run}")))?;
        let Some(e) = found else {
            return Ok((Control::Running, None));
        };
        let row: ControlRow = from_entity(ROLLOUTS, e.properties)?;
        let control = Control::parse(&row.control).ok_or_else(|| {
            LedgerError::storage(format!("unknown rollout control {:?}", row.control), None)
        })?;
        Ok((control, Some(e.etag)))
    }

    /// Writes `control` unless `keep` says the current one stays; the control in force.
    async fn put_control(
        &self,
        run: &RunId,
        control: Control,
        keep: impl Fn(Control) -> bool,
    ) -> Result<Control, LedgerError> {
        let row: Map<String, Value> = entity(
            key(run.as_str()),
            CONTROL.into(),
            &ControlRow {
                control: control.as_str().into(),
            },
        )?;
        let what = || format!("writing the rollout control of run {run}");
        for _ in 0..TRIES {
            let (now, etag) = self.read_control(run).await?;
            if keep(now) {
                return Ok(now);
            }
            let landed = match etag {
                None => self.client.insert(ROLLOUTS, &row).await,
                Some(etag) => self.client.replace_if(ROLLOUTS, &row, &etag).await,
            }
            .map_err(storage(what()))?;
            if landed {
                return Ok(control);
            }
        }
        Err(LedgerError::storage(
            format!("the rollout control of run {run} kept changing over {TRIES} tries"),
            None,
        ))
    }

    pub(super) async fn write_control(
        &self,
        run: &RunId,
        control: Control,
    ) -> Result<Control, LedgerError> {
        if control == Control::Running {
            // Past the tripped gate first: a tick that sees the rollout running again must
            // also see it may go on.
            if self.read_control(run).await?.0 == Control::Aborted {
                return Ok(Control::Aborted);
            }
            for w in self.wave_rows(run).await? {
                if w.gate_passed == Some(false) && !w.resumed {
                    self.update_wave(run, w.index, |w| {
                        (!w.resumed).then(|| WaveRow {
                            resumed: true,
                            ..w.clone()
                        })
                    })
                    .await?;
                }
            }
        }
        // An aborted rollout stays aborted.
        self.put_control(run, control, |now| now == Control::Aborted)
            .await
    }

    pub(super) async fn abort_rollout(
        &self,
        run: &RunId,
        now: OffsetDateTime,
    ) -> Result<usize, LedgerError> {
        self.put_control(run, Control::Aborted, |_| false).await?;
        let targets = self.untouched(run, None).await?;
        let cancelled = futures::stream::iter(targets)
            .map(|t| async move {
                let hit = AtomicBool::new(false);
                self.update_target(run, &t, |before| {
                    let b = before.unwrap_or_else(|| untouched(run, &t, now, None));
                    // A step that landed meanwhile touched it: it goes on to its outcome.
                    let cancel = b.steps == 0 && b.outcome.is_none();
                    hit.store(cancel, Ordering::SeqCst);
                    if !cancel {
                        return b;
                    }
                    crate::pipeline::ledger::TargetRecord {
                        outcome: Some(Outcome::Cancelled),
                        current_step: None,
                        finished_at: Some(now),
                        updated_at: now,
                        ..b
                    }
                })
                .await?;
                Ok::<_, LedgerError>(usize::from(hit.load(Ordering::SeqCst)))
            })
            .buffer_unordered(PARALLEL)
            .try_fold(0, |n, c| async move { Ok(n + c) })
            .await?;
        Ok(cancelled)
    }
}
