//! The one rollout controller (issue 12): carries out what [`rollout::decide`] says, through
//! the [`Ledger`], the [`StepSender`] and the [`WaveChecks`] alone, so the embedded runner
//! (`local.rs`, on the SQLite store that is both) and the Functions host (`rollout-tick`, on
//! the Table ledger and Service Bus) drive a rollout with the same code: judging a wave's gate
//! after its bake, waiting for `rollout promote`, releasing the next wave or stopping.
//!
//! A release is recorded before its first messages are sent: of two ticks racing, the ledger
//! lets one release the wave and only that one sends; the messages' MessageIds are
//! deterministic, so a repeat is dropped by duplicate detection anyway. The embedded store
//! queues them in the release's own transaction; in Azure, a tick that dies between the two
//! leaves the wave's targets untouched with their clocks restarted, and the next tick starts
//! them.
//!
//! In Azure no runner admits steps, so the controller keeps `concurrency.perSubscription`
//! ([`RolloutConfig::in_azure`]): a release starts at most that many targets of one
//! subscription, and each tick with the waves in flight starts as many more as have finished
//! (the untouched targets of released waves are the controller's to start, not the stalled
//! re-send's).

use std::collections::HashMap;

use time::OffsetDateTime;

use super::ledger::{Ledger, LedgerError, Released, RunRecord, TargetRecord};
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

/// What a wave's release sends: the first message of each of its sites, one resource group
/// at a time in turn ([`in_turn_by_group`]), and, unless in a dry run (which never writes),
/// the preparation of the next wave's network ahead of it (`migration/ahead.rs`): while this
/// wave runs and bakes, the next one's new subnets are created, so its own steps find them
/// ready.
pub(crate) fn release_messages<'a>(
    run: &RunId,
    dry_run: bool,
    sites: impl IntoIterator<Item = &'a ResourceId>,
    next_wave: impl IntoIterator<Item = &'a ResourceId>,
) -> Vec<Outgoing> {
    let first = in_turn_by_group(sites).into_iter().map(|s| {
        StepMessage::new(run.clone(), s.clone(), Step::Discover, Origin::Rollout)
            .with_dry_run(dry_run)
    });
    let ahead = next_wave
        .into_iter()
        .filter(|_| !dry_run)
        .map(|s| StepMessage::ahead_of_wave(run.clone(), s.clone()));
    first.chain(ahead).map(Outgoing::now).collect()
}

/// `sites` taken one per (subscription, resource group) in turn, each group's in their
/// order. Discovery goes in the order of the first messages; in id order it went through a
/// subscription one resource group after another, while a hub VNet serves apps of many
/// groups: its serial chain of subnet writes and cut-overs, the bound of a large run, began
/// only when discovery reached the first of them (4.5 s into a 10,000-target rehearsal).
fn in_turn_by_group<'a>(sites: impl IntoIterator<Item = &'a ResourceId>) -> Vec<&'a ResourceId> {
    let mut groups: Vec<std::collections::VecDeque<&ResourceId>> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for s in sites {
        let key = (
            s.subscription().to_ascii_lowercase(),
            s.resource_group().unwrap_or_default().to_ascii_lowercase(),
        );
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Default::default());
            groups.len() - 1
        });
        groups[i].push_back(s);
    }
    let total = groups.iter().map(|g| g.len()).sum();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        out.extend(groups.iter_mut().filter_map(|g| g.pop_front()));
    }
    out
}

/// Of `sites` (untouched targets of released waves, in the order they are to start), those
/// that may start now: with targets of their subscription in progress (touched, without an
/// outcome) counted from `targets`, at most `limit` of one subscription at once. The choice
/// is stable: a site chosen but not yet started is chosen again, and its first message, sent
/// again with its deterministic MessageId, is dropped by duplicate detection.
fn admissible(targets: &[TargetRecord], sites: Vec<ResourceId>, limit: usize) -> Vec<ResourceId> {
    let mut in_progress: HashMap<String, usize> = HashMap::new();
    for t in targets
        .iter()
        .filter(|t| t.outcome.is_none() && t.steps > 0)
    {
        *in_progress
            .entry(t.target.subscription().to_ascii_lowercase())
            .or_default() += 1;
    }
    sites
        .into_iter()
        .filter(|s| {
            let n = in_progress
                .entry(s.subscription().to_ascii_lowercase())
                .or_default();
            *n += 1;
            *n <= limit
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
        let mut starting = waves.first().cloned().unwrap_or_default();
        if let Some(limit) = self.config.per_subscription {
            starting = admissible(&[], starting, limit);
        }
        let first = release_messages(
            &run.run,
            run.dry_run,
            &starting,
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
                let mut sites = self.ledger.wave_sites(run, *index).await?;
                if let Some(limit) = self.config.per_subscription {
                    sites = admissible(&self.ledger.targets(run).await?, sites, limit);
                }
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
            Decision::InFlight if control == Control::Running => {
                if let Some(limit) = self.config.per_subscription {
                    self.start_more(run, dry_run, limit).await?;
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

    /// With the waves in flight, starts the untouched targets of the released waves that
    /// `concurrency.perSubscription` admits now, in wave then id order, as others finish.
    async fn start_more(
        &self,
        run: &RunId,
        dry_run: bool,
        limit: usize,
    ) -> Result<(), ControllerError> {
        let targets = self.ledger.targets(run).await?;
        let released: Vec<u32> = self
            .ledger
            .waves(run)
            .await?
            .iter()
            .filter(|w| w.released_at.is_some())
            .map(|w| w.index)
            .collect();
        let mut untouched: Vec<&TargetRecord> = targets
            .iter()
            .filter(|t| t.outcome.is_none() && t.steps == 0)
            .filter(|t| t.wave.is_some_and(|w| released.contains(&w)))
            .collect();
        untouched.sort_by(|a, b| (a.wave, a.target.key()).cmp(&(b.wave, b.target.key())));
        let sites = untouched.into_iter().map(|t| t.target.clone()).collect();
        let starting = admissible(&targets, sites, limit);
        if !starting.is_empty() {
            let first = release_messages(run, dry_run, &starting, std::iter::empty());
            self.sender.send(first).await?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_messages_take_resource_groups_in_turn() {
        let site = |sub: &str, rg: &str, name: &str| {
            ResourceId::parse(&format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{name}"
            ))
            .unwrap()
        };
        let sites = [
            site("s1", "rg-a", "a1"),
            site("s1", "rg-a", "a2"),
            site("s1", "rg-a", "a3"),
            site("s1", "RG-B", "b1"),
            site("s1", "rg-b", "b2"),
            site("s2", "rg-a", "c1"),
        ];
        let run = RunId("r".into());
        let order: Vec<String> = release_messages(&run, false, &sites, std::iter::empty())
            .iter()
            .map(|o| o.message.target.name().to_string())
            .collect();
        // Groups in the order they first appear, each in its own order; case-insensitive.
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
    }
}
