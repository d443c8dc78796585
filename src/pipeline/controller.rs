//! The one rollout controller (issue 12): carries out what [`rollout::decide`] says, through
//! the [`Ledger`] and the [`StepSender`] alone, so the embedded runner (`local.rs`, on the
//! SQLite store that is both) and the Functions host (`rollout-tick`, on the Table ledger and
//! Service Bus) drive a rollout with the same code.
//!
//! A release is recorded before its first messages are sent: of two ticks racing, the ledger
//! lets one release the wave and only that one sends; the messages' MessageIds are
//! deterministic, so a repeat is dropped by duplicate detection anyway. A tick that dies
//! between the two leaves the wave's targets untouched with their clocks restarted, and the
//! stalled-target re-send of `rollout-tick` sends them later.

use time::OffsetDateTime;

use super::ledger::{Ledger, LedgerError, Released, RunRecord};
use super::message::{Origin, RunId, Step, StepMessage};
use super::queue::{Outgoing, QueueError, StepSender};
use super::rollout::{self, Candidate, Control, Decision, RolloutConfig};
use crate::azure::ResourceId;
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The policy's waves, bake (in the runner's time: a rehearsal runs `time_scale` times
/// faster) and gate, with how often a running rollout looks for pause and abort.
pub(crate) fn config(policy: &Policy, time_scale: f64, tick: std::time::Duration) -> RolloutConfig {
    RolloutConfig {
        sizes: policy.waves.clone(),
        bake: time::Duration::seconds_f64(f64::from(policy.bake_minutes) * 60.0 / time_scale),
        max_failure_rate: policy.gates.max_failure_rate,
        tick,
    }
}

/// The first message of each site, sent when its wave is released.
pub(crate) fn first_messages<'a>(
    run: &RunId,
    dry_run: bool,
    sites: impl IntoIterator<Item = &'a ResourceId>,
) -> Vec<Outgoing> {
    sites
        .into_iter()
        .map(|s| {
            Outgoing::now(
                StepMessage::new(run.clone(), s.clone(), Step::Discover, Origin::Rollout)
                    .with_dry_run(dry_run),
            )
        })
        .collect()
}

/// What one tick found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub decision: Decision,
    pub control: Control,
}

pub struct Controller<'a> {
    ledger: &'a dyn Ledger,
    sender: &'a dyn StepSender,
    config: &'a RolloutConfig,
}

impl<'a> Controller<'a> {
    pub fn new(
        ledger: &'a dyn Ledger,
        sender: &'a dyn StepSender,
        config: &'a RolloutConfig,
    ) -> Self {
        Controller {
            ledger,
            sender,
            config,
        }
    }

    /// Starts a rollout run: records the run and its waves (sites ordered as
    /// [`rollout::assign`] orders them), then sends the first wave's messages. How many waves.
    pub async fn start(
        &self,
        run: &RunRecord,
        sites: Vec<Candidate>,
    ) -> Result<usize, ControllerError> {
        let waves = rollout::assign(sites, &self.config.sizes);
        self.ledger.start_run(run).await?;
        self.ledger
            .add_waves(&run.run, &waves, run.started_at)
            .await?;
        let first = first_messages(&run.run, run.dry_run, waves.first().into_iter().flatten());
        self.sender.send(first).await?;
        Ok(waves.len())
    }

    /// Reads the waves and the control, asks [`rollout::decide`], and carries out a release
    /// or a stop; waiting (in flight, baking, paused) is the caller's.
    pub async fn tick(
        &self,
        run: &RunId,
        dry_run: bool,
        now: OffsetDateTime,
    ) -> Result<Tick, ControllerError> {
        let waves = self.ledger.waves(run).await?;
        let control = self.ledger.control(run).await?;
        let decision = rollout::decide(&waves, control, self.config, now);
        match &decision {
            Decision::Stop { index, gate } => self.ledger.record_gate(run, *index, gate).await?,
            Decision::Release { index, gate } => {
                let sites = self.ledger.wave_sites(run, *index).await?;
                let first = first_messages(run, dry_run, &sites);
                let released = self
                    .ledger
                    .release_wave(run, *index, gate, &first, now)
                    .await?;
                if released == Released::Send {
                    self.sender.send(first).await?;
                }
            }
            Decision::InFlight | Decision::Bake { .. } | Decision::Paused | Decision::Done => {}
        }
        Ok(Tick { decision, control })
    }
}
