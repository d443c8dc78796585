//! What a step runs with ([`StepContext`]), how it fails ([`StepError`]), and the migration as
//! the pipeline sees it: [`Migration`], the [`Reconciler`] that dispatches each message to its
//! step and decides what a failure means for the target.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::plan_cache::PlanCache;
use super::steps;
use crate::azure::arm::{ArmClient, ArmError};
use crate::pipeline::ledger::{Ledger, LedgerError};
use crate::pipeline::message::{Step, StepMessage};
use crate::pipeline::outcome::Outcome;
use crate::pipeline::reason::{Cause, ParkReason, RollbackReason};
use crate::pipeline::reconciler::{Reconciler, StepResult};
use crate::policy::Policy;

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Arm(#[from] ArmError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// ARM state the step cannot work with (say what, for the operator).
    #[error("{0}")]
    Unexpected(String),
}

impl StepError {
    fn is_transient(&self) -> bool {
        match self {
            StepError::Arm(e) => e.is_transient(),
            StepError::Ledger(_) => true,
            StepError::Unexpected(_) => false,
        }
    }

    /// The cause an outcome names: the ARM error code, or the HTTP status.
    fn cause(&self) -> Cause {
        match self {
            StepError::Arm(a) => match (a.code(), a.status()) {
                (Some(code), _) => Cause::Arm(code.to_string()),
                (None, Some(status)) => Cause::Http(status),
                (None, None) => Cause::ArmUnreachable,
            },
            StepError::Ledger(_) => Cause::LedgerUnavailable,
            StepError::Unexpected(_) => Cause::UnexpectedState,
        }
    }
}

/// Everything a step needs besides its message.
pub struct StepContext {
    pub(crate) arm: ArmClient,
    pub(crate) policy: Arc<Policy>,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) plans: PlanCache,
    /// Divides every delay (settle time, backoff): 1.0 in Azure, the simulator's speed in rehearsals.
    pub(crate) time_scale: f64,
}

impl StepContext {
    pub fn new(arm: ArmClient, policy: Arc<Policy>, ledger: Arc<dyn Ledger>) -> Self {
        StepContext {
            arm,
            policy,
            ledger,
            plans: PlanCache::default(),
            time_scale: 1.0,
        }
    }

    /// Runs every delay `time_scale` times faster (rehearsals against a sped-up simulator).
    pub fn time_compressed(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        if self.time_scale <= 1.0 {
            d
        } else {
            d.div_f64(self.time_scale)
        }
    }
}

/// The migration's reconciler: one step per message (`steps`), one error policy for all.
pub struct Migration {
    pub(crate) ctx: StepContext,
}

impl Migration {
    pub fn new(ctx: StepContext) -> Self {
        Migration { ctx }
    }
}

#[async_trait]
impl Reconciler for Migration {
    type Error = StepError;

    async fn reconcile(&self, msg: &StepMessage) -> Result<StepResult, StepError> {
        steps::run(&self.ctx, msg).await
    }

    /// Transient failures retry with backoff until `maxAttempts`; then a target whose gateway
    /// may already be gone is rolled back, and any other is parked for an operator.
    fn error_policy(&self, msg: &StepMessage, err: &StepError) -> StepResult {
        let max = self.ctx.policy.max_attempts.max(1);
        let why = err.to_string();
        if err.is_transient() && msg.attempt + 1 < max {
            let delay = self.ctx.scaled(backoff(msg.attempt));
            return StepResult::next_after(
                msg.retry(),
                delay,
                format!(
                    "attempt {} failed, retrying in {:?}: {why}",
                    msg.attempt, delay
                ),
            );
        }
        let cause = err.cause();
        match msg.step {
            // Nothing has been changed before disconnect: stop and ask an operator.
            Step::Discover | Step::Plan | Step::PrepareSubnet | Step::Rollback => StepResult::done(
                Outcome::Parked(ParkReason::StepFailed {
                    step: msg.step,
                    cause,
                }),
                why,
            ),
            // The gateway may be gone: put it back before giving up.
            Step::Disconnect | Step::Connect | Step::Configure | Step::Verify => {
                let mut rb = msg.next(Step::Rollback);
                rb.reason = Some(RollbackReason::StepFailed {
                    step: msg.step,
                    cause,
                });
                StepResult::next(rb, why)
            }
        }
    }
}

/// Exponential backoff between attempts: 5 s, 10 s, 20 s … capped at 5 min.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
