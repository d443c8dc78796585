//! The ledger: what happened to every target of every run. SQLite on one machine, Table
//! Storage in Azure. Each step appends to the step log and updates the target's row.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::message::{GatewaySnapshot, RunId, Step};
use super::outcome::Outcome;
use super::queue::Outgoing;
use super::rollout::{Control, Gate, WaveView};
use crate::azure::ResourceId;
use crate::error::{BoxError, Suffix};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run: RunId,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub dry_run: bool,
    /// Free text: the command line or trigger that started it.
    pub origin: String,
}

/// The current row of one target in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRecord {
    pub(crate) run: RunId,
    pub(crate) target: ResourceId,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) current_step: Option<Step>,
    /// Steps executed (including retries and duplicates that executed).
    pub(crate) steps: u32,
    /// Highest attempt number seen.
    pub(crate) attempts: u32,
    pub(crate) reason: Option<String>,
    pub(crate) subnet: Option<ResourceId>,
    pub(crate) prefix: Option<String>,
    pub(crate) gateway: Option<GatewaySnapshot>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) updated_at: OffsetDateTime,
    /// Absent, not null, in a Table Storage row (a property is left out when it has no value).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub(crate) finished_at: Option<OffsetDateTime>,
    /// When the cut-over cut the target off its VNet and when it was back on one.
    #[serde(flatten)]
    pub(crate) cutover: Cutover,
    /// The rollout wave it belongs to; None in runs written before rollouts.
    #[serde(default)]
    pub(crate) wave: Option<u32>,
    /// When its next step is due, if its last step put it off (a maintenance window, the
    /// settle time, a backoff); None when the next step was due at once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub(crate) next_at: Option<OffsetDateTime>,
}

/// A target's downtime as ARM's answers timed it (DESIGN §3): `disconnected_at` when the
/// DELETE of its gateway-based connection returned, `connected_at` when the PATCH joining the
/// planned subnet returned, or, when the target was rolled back, when its gateway connection
/// was back in sync. Neither is the time a step was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cutover {
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub(crate) disconnected_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub(crate) connected_at: Option<OffsetDateTime>,
}

impl Cutover {
    /// How long the target was off its VNet; None unless both ends are known.
    pub(crate) fn downtime(&self) -> Option<time::Duration> {
        Some(self.connected_at? - self.disconnected_at?)
    }
}

/// What one executed step reports to the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub(crate) run: RunId,
    pub(crate) target: ResourceId,
    pub(crate) step: Step,
    pub(crate) attempt: u32,
    pub(crate) message_id: String,
    /// Short human text: what the step saw and did.
    pub(crate) detail: String,
    pub(crate) at: OffsetDateTime,
    pub(crate) duration_ms: u64,
    /// The step the target moves to next (None when terminal).
    pub(crate) next: Option<Step>,
    /// When that step is due, when this one put it off.
    pub(crate) next_at: Option<OffsetDateTime>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) subnet: Option<ResourceId>,
    pub(crate) prefix: Option<String>,
    pub(crate) gateway: Option<GatewaySnapshot>,
    /// Cut-over times this step observed: the ledger keeps the first `disconnected_at` it is
    /// given (a redelivery observes later) and the last `connected_at` (a rollback ends the
    /// downtime again after a connect).
    pub(crate) cutover: Cutover,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepLogEntry {
    pub(crate) run: RunId,
    pub(crate) target: ResourceId,
    pub(crate) step: Step,
    pub(crate) attempt: u32,
    pub(crate) message_id: String,
    pub(crate) detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
    pub(crate) duration_ms: u64,
}

impl StepLogEntry {
    /// What the step saw and did (ARM's messages included).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Which step it was.
    pub fn step(&self) -> Step {
        self.step
    }

    /// When the step was taken.
    pub fn at(&self) -> OffsetDateTime {
        self.at
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage error: {message}{}", Suffix(.source))]
    Storage {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl LedgerError {
    /// A storage failure: what we were doing, and the error underneath (if any).
    pub(crate) fn storage(message: impl Into<String>, source: Option<BoxError>) -> Self {
        LedgerError::Storage {
            message: message.into(),
            source,
        }
    }
}

#[async_trait]
pub trait Ledger: Send + Sync {
    async fn start_run(&self, run: &RunRecord) -> Result<(), LedgerError>;
    async fn runs(&self) -> Result<Vec<RunRecord>, LedgerError>;
    /// Registers a target in a run (no-op when it is already there).
    async fn add_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        at: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    /// Logs a step and applies it to its target's row, except that a target's outcome is final:
    /// a step recorded after it (a late duplicate) is logged and counted only.
    async fn record(&self, step: &StepRecord) -> Result<(), LedgerError>;
    /// Keeps the gateway connection before it is deleted, so rollback can always find it.
    async fn save_gateway(
        &self,
        run: &RunId,
        target: &ResourceId,
        gateway: &GatewaySnapshot,
    ) -> Result<(), LedgerError>;
    async fn target(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Option<TargetRecord>, LedgerError>;
    async fn targets(&self, run: &RunId) -> Result<Vec<TargetRecord>, LedgerError>;
    async fn step_log(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Vec<StepLogEntry>, LedgerError>;
    /// Whether a step of message `message_id` is recorded in full: its log entry and its
    /// target's row, or its log entry and a later step of the target's (which it led to).
    async fn recorded(
        &self,
        run: &RunId,
        target: &ResourceId,
        message_id: &str,
    ) -> Result<bool, LedgerError>;
    /// A run in which this target has no terminal outcome yet.
    async fn active_run_for(&self, target: &ResourceId) -> Result<Option<RunId>, LedgerError>;

    // The rollout's records (DESIGN §9), which the one controller (`controller.rs`) reads and
    // writes whichever runner drives it.

    /// Records a run's waves: each target in its wave, the first wave released at `at`.
    async fn add_waves(
        &self,
        run: &RunId,
        waves: &[Vec<ResourceId>],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    /// The run's waves in index order, with their targets' standing now (none: no rollout).
    async fn waves(&self, run: &RunId) -> Result<Vec<WaveView>, LedgerError>;
    /// The targets of wave `index` no step has touched (its first messages go to them).
    async fn wave_sites(&self, run: &RunId, index: u32) -> Result<Vec<ResourceId>, LedgerError>;
    /// Records `gate` for wave `index` unless one is recorded (a gate is judged once).
    async fn record_gate(&self, run: &RunId, index: u32, gate: &Gate) -> Result<(), LedgerError>;
    /// Records the gate of wave `index - 1` (unless recorded) and releases wave `index` at
    /// `now` (its targets' clocks start now) unless it is released already: of two callers
    /// racing, one releases. `first` are the release's messages (the wave's first ones and
    /// the next wave's preparation, `controller::release_messages`): see [`Released`].
    async fn release_wave(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
        first: &[Outgoing],
        now: OffsetDateTime,
    ) -> Result<Released, LedgerError>;
    /// An operator's approval of wave `index` (`rollout promote`): it is released once its
    /// predecessor's gate passed.
    async fn approve(&self, run: &RunId, index: u32) -> Result<(), LedgerError>;
    /// What an operator asked of the run's rollout (running when nothing was asked).
    async fn control(&self, run: &RunId) -> Result<Control, LedgerError>;
    /// Pause or resume; resuming also lets the rollout past the gate it stopped at. An
    /// aborted rollout stays aborted. Returns the control now in force.
    async fn set_control(&self, run: &RunId, control: Control) -> Result<Control, LedgerError>;
    /// Aborts the rollout: every target no step has touched is `cancelled` (targets a step
    /// has touched go on to their outcome). How many targets were cancelled.
    async fn abort(&self, run: &RunId, now: OffsetDateTime) -> Result<usize, LedgerError>;
}

/// What [`Ledger::release_wave`] did with the wave's first messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Queued in the release's own transaction (the embedded store is also the queue).
    Queued,
    /// This call released the wave: the caller sends the first messages (their MessageIds
    /// are deterministic, so a repeat is dropped by duplicate detection).
    Send,
    /// Another caller released it already; nothing to send.
    Already,
}
