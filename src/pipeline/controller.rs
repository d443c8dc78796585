//! The one rollout controller (issue 12): carries out what [`rollout::decide`] says, through
//! the [`Ledger`], the [`StepSender`] and the [`WaveChecks`] alone, so the embedded runner
//! (`local.rs`, on the SQLite store that is both) and the Functions host (`rollout-tick`, on
//! the Table ledger and Service Bus) drive a rollout with the same code: judging a wave's gate
//! after its bake, waiting for `rollout promote`, releasing the next wave or stopping.
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
use super::rollout::{self, Candidate, Control, Decision, RolloutConfig, WaveChecks, WaveView};
use super::Outcome;
use crate::azure::ResourceId;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a wave's release sends: the first message of each of its sites and, unless in a dry
/// run (which never writes), the preparation of the next wave's network ahead of it
/// (`migration/ahead.rs`): while this wave runs and bakes, the next one's new subnets are
/// created, so its own steps find them ready.
pub(crate) fn release_messages<'a>(
    run: &RunId,
    dry_run: bool,
    sites: impl IntoIterator<Item = &'a ResourceId>,
    next_wave: impl IntoIterator<Item = &'a ResourceId>,
) -> Vec<Outgoing> {
    let first = sites.into_iter().map(|s| {
        StepMessage::new(run.clone(), s.clone(), Step::Discover, Origin::Rollout)
            .with_dry_run(dry_run)
    });
    let ahead = next_wave
        .into_iter()
        .filter(|_| !dry_run)
        .map(|s| StepMessage::ahead_of_wave(run.clone(), s.clone()));
    first.chain(ahead).map(Outgoing::now).collect()
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
    /// The gate's checks besides the failure rate (none: the failure rate alone).
    checks: Option<&'a dyn WaveChecks>,
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
            checks: None,
        }
    }

    /// Judges each wave's gate with `checks` of its migrated targets too.
    pub fn checking(mut self, checks: &'a dyn WaveChecks) -> Self {
        self.checks = Some(checks);
        self
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
        let first = release_messages(
            &run.run,
            run.dry_run,
            waves.first().into_iter().flatten(),
            waves.get(1).into_iter().flatten(),
        );
        self.sender.send(first).await?;
        Ok(waves.len())
    }

    /// Reads the waves and the control, asks [`rollout::decide`], and carries out a judge (then
    /// decides again, so a passed gate releases the next wave in the same tick), a release or
    /// a stop; waiting (in flight, baking, for approval, paused) is the caller's.
    pub async fn tick(
        &self,
        run: &RunId,
        dry_run: bool,
        now: OffsetDateTime,
    ) -> Result<Tick, ControllerError> {
        let (waves, control, decision) = standing(self.ledger, run, self.config, now).await?;
        let (control, decision) = match decision {
            Decision::Judge { index } => {
                self.judge(run, &waves, index).await?;
                let (_, control, decision) = standing(self.ledger, run, self.config, now).await?;
                (control, decision)
            }
            d => (control, d),
        };
        match &decision {
            Decision::Stop { index, gate } => self.ledger.record_gate(run, *index, gate).await?,
            Decision::Release { index, gate } => {
                let sites = self.ledger.wave_sites(run, *index).await?;
                let next = self.ledger.wave_sites(run, index + 1).await?;
                let first = release_messages(run, dry_run, &sites, &next);
                let released = self
                    .ledger
                    .release_wave(run, *index, gate, &first, now)
                    .await?;
                if released == Released::Send {
                    self.sender.send(first).await?;
                }
            }
            Decision::InFlight
            | Decision::Bake { .. }
            | Decision::Judge { .. }
            | Decision::AwaitApproval { .. }
            | Decision::Paused
            | Decision::Done => {}
        }
        Ok(Tick { decision, control })
    }

    /// Judges wave `index`'s gate after its bake (its failure rate, then the checks of its
    /// migrated targets) and records it; of two ticks judging at once, the first record stays.
    async fn judge(
        &self,
        run: &RunId,
        waves: &[WaveView],
        index: u32,
    ) -> Result<(), ControllerError> {
        let Some(wave) = waves.iter().find(|w| w.index == index) else {
            return Ok(());
        };
        let checks = match self.checks {
            Some(c) => {
                let mut migrated: Vec<ResourceId> = self
                    .ledger
                    .targets(run)
                    .await?
                    .into_iter()
                    .filter(|t| t.wave == Some(index) && t.outcome == Some(Outcome::Migrated))
                    .map(|t| t.target)
                    .collect();
                migrated.sort_by(|a, b| a.key().cmp(b.key()));
                c.check(&migrated).await
            }
            None => Vec::new(),
        };
        let gate = rollout::judge(wave, self.config, checks);
        self.ledger.record_gate(run, index, &gate).await?;
        Ok(())
    }
}

/// The waves of `run`, its control, and what its rollout does or waits for now.
pub(crate) async fn standing(
    ledger: &dyn Ledger,
    run: &RunId,
    config: &RolloutConfig,
    now: OffsetDateTime,
) -> Result<(Vec<WaveView>, Control, Decision), LedgerError> {
    let waves = ledger.waves(run).await?;
    let control = ledger.control(run).await?;
    let decision = rollout::decide(&waves, control, config, now);
    Ok((waves, control, decision))
}

/// `rollout promote`: approves the wave the rollout waits for approval at, which the next tick
/// releases; otherwise what the rollout does or waits for instead. Judged as if the policy
/// asked for approval, whatever `config` says: a rollout that asks for none is never seen with
/// a passed gate and the next wave unreleased (the tick that records the gate releases it),
/// so an operator need not hold the policy the function app runs with.
pub(crate) async fn promote(
    ledger: &dyn Ledger,
    run: &RunId,
    config: &RolloutConfig,
    now: OffsetDateTime,
) -> Result<Result<u32, Decision>, LedgerError> {
    let config = RolloutConfig {
        manual_approval: true,
        ..config.clone()
    };
    match standing(ledger, run, &config, now).await?.2 {
        Decision::AwaitApproval { index } => {
            ledger.approve(run, index).await?;
            Ok(Ok(index))
        }
        other => Ok(Err(other)),
    }
}
