//! The seam between the runtime and the domain (the kube-rs controller shape): the pipeline
//! hands each step message to a [`Reconciler`] and acts on the [`StepResult`] it returns; it
//! knows nothing of what a step does. `error_policy` turns a failed reconcile into a result
//! too (a delayed retry, another step, or an outcome), so every delivery ends in one.

use std::time::Duration;

use async_trait::async_trait;

use super::ledger::Cutover;
use super::message::{PlannedSubnet, StepMessage};
use super::outcome::Outcome;

#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Observes the world, acts only on the difference, and says what comes next.
    async fn reconcile(&self, msg: &StepMessage) -> Result<StepResult, Self::Error>;

    /// What to do when `reconcile` failed.
    fn error_policy(&self, msg: &StepMessage, err: &Self::Error) -> StepResult;
}

/// What a reconciler decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Continue with these messages (usually one: the next step), each after its delay.
    Continue(Vec<(StepMessage, Duration)>),
    /// The target reached a terminal outcome.
    Done(Outcome),
}

/// A reconciler's answer: the transition plus a short human detail for the step log.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub(crate) transition: Transition,
    pub(crate) detail: String,
    /// First steps of other targets found on the way (a site's slots).
    pub(crate) spawn: Vec<StepMessage>,
    /// The subnet decided for this target, recorded even when the step ends it (dry run).
    pub(crate) planned: Option<PlannedSubnet>,
    /// When this step cut the target off its VNet or put it back, for the ledger.
    pub(crate) cutover: Cutover,
}

impl StepResult {
    pub(crate) fn next(msg: StepMessage, detail: impl Into<String>) -> Self {
        Self::next_after(msg, Duration::ZERO, detail)
    }
    pub(crate) fn next_after(msg: StepMessage, delay: Duration, detail: impl Into<String>) -> Self {
        StepResult {
            transition: Transition::Continue(vec![(msg, delay)]),
            detail: detail.into(),
            spawn: Vec::new(),
            planned: None,
            cutover: Cutover::default(),
        }
    }
    /// Ends a chain that is no target's journey (preparation ahead of a wave): nothing next,
    /// no outcome.
    pub(crate) fn end(detail: impl Into<String>) -> Self {
        StepResult {
            transition: Transition::Continue(Vec::new()),
            detail: detail.into(),
            spawn: Vec::new(),
            planned: None,
            cutover: Cutover::default(),
        }
    }
    pub(crate) fn done(outcome: Outcome, detail: impl Into<String>) -> Self {
        StepResult {
            transition: Transition::Done(outcome),
            detail: detail.into(),
            spawn: Vec::new(),
            planned: None,
            cutover: Cutover::default(),
        }
    }
}
