//! The engine: executes one step message and says what happens next. Transport-agnostic: the
//! embedded runner and the Functions handler both call [`Engine::execute`] and then deliver
//! `next` on their own queue.
//!
//! Each step is a reconciler (`migration::steps`) returning a [`Transition`]; one retry policy
//! ([`Engine::error_policy`]) turns failures into a delayed retry, a rollback or a parked target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::ledger::{Ledger, StepRecord};
use super::message::{PlannedSubnet, Step, StepMessage};
use super::outcome::Outcome;
use super::queue::Outgoing;
use crate::azure::arm::{ArmClient, ArmError};
use crate::migration::context::PlanCache;
use crate::migration::steps;
use crate::policy::Policy;

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
    pub transition: Transition,
    pub detail: String,
    /// First steps of other targets found on the way (a site's slots).
    pub spawn: Vec<StepMessage>,
    /// The subnet decided for this target, recorded even when the step ends it (dry run).
    pub planned: Option<PlannedSubnet>,
}

impl StepResult {
    pub fn next(msg: StepMessage, detail: impl Into<String>) -> Self {
        Self::next_after(msg, Duration::ZERO, detail)
    }
    pub fn next_after(msg: StepMessage, delay: Duration, detail: impl Into<String>) -> Self {
        StepResult {
            transition: Transition::Continue(vec![(msg, delay)]),
            detail: detail.into(),
            spawn: Vec::new(),
            planned: None,
        }
    }
    pub fn done(outcome: Outcome, detail: impl Into<String>) -> Self {
        StepResult {
            transition: Transition::Done(outcome),
            detail: detail.into(),
            spawn: Vec::new(),
            planned: None,
        }
    }
}

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Arm(#[from] ArmError),
    #[error(transparent)]
    Ledger(#[from] super::ledger::LedgerError),
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
}

/// Everything a step needs besides its message.
pub struct StepContext {
    pub arm: ArmClient,
    pub policy: Arc<Policy>,
    pub ledger: Arc<dyn Ledger>,
    pub plans: PlanCache,
    /// Divides every delay (settle time, backoff): 1.0 in Azure, the simulator's speed in rehearsals.
    pub time_scale: f64,
}

impl StepContext {
    pub fn scaled(&self, d: Duration) -> Duration {
        if self.time_scale <= 1.0 {
            d
        } else {
            d.div_f64(self.time_scale)
        }
    }
}

/// The result of executing one message: what to enqueue and what to record.
#[derive(Debug, Clone)]
pub struct Executed {
    pub next: Vec<Outgoing>,
    pub record: StepRecord,
    pub outcome: Option<Outcome>,
}

pub struct Engine {
    pub ctx: StepContext,
}

impl Engine {
    pub fn new(ctx: StepContext) -> Self {
        Engine { ctx }
    }

    /// Runs one step. Never fails: every error becomes a retry, a rollback or an outcome.
    pub async fn execute(&self, msg: &StepMessage) -> Executed {
        let started = Instant::now();
        let result = steps::run(&self.ctx, msg).await;
        let result = match result {
            Ok(r) => r,
            Err(e) => self.error_policy(msg, &e),
        };
        let now = OffsetDateTime::now_utc();
        let spawned = result.spawn.iter().map(|m| (m.clone(), Duration::ZERO));
        let (next, outcome): (Vec<Outgoing>, _) = match &result.transition {
            Transition::Continue(msgs) => (
                msgs.iter()
                    .cloned()
                    .chain(spawned)
                    .map(|(m, d)| {
                        let visible_at = now + d;
                        let mut m = m;
                        m.not_before = (!d.is_zero()).then_some(visible_at);
                        Outgoing {
                            message: m,
                            visible_at,
                        }
                    })
                    .collect(),
                None,
            ),
            Transition::Done(o) => (
                spawned
                    .map(|(m, _)| Outgoing {
                        message: m,
                        visible_at: now,
                    })
                    .collect(),
                Some(o.clone()),
            ),
        };
        // The step this target moves to (fan-out messages for other targets do not count).
        let next_step = next
            .iter()
            .find(|o| o.message.target == msg.target)
            .map(|o| o.message.step);
        let own = next
            .iter()
            .find(|o| o.message.target == msg.target)
            .map(|o| &o.message);
        let planned = own
            .and_then(|m| m.plan.as_ref())
            .or(result.planned.as_ref())
            .or(msg.plan.as_ref());
        let record = StepRecord {
            run: msg.run.clone(),
            target: msg.target.clone(),
            step: msg.step,
            attempt: msg.attempt,
            message_id: msg.message_id(),
            detail: result.detail.clone(),
            at: now,
            duration_ms: started.elapsed().as_millis() as u64,
            next: next_step,
            outcome: outcome.clone(),
            subnet: planned.map(|p| p.subnet.clone()),
            prefix: planned.map(|p| p.prefix.clone()),
            gateway: own
                .and_then(|m| m.gateway.clone())
                .or_else(|| msg.gateway.clone()),
        };
        Executed {
            next,
            record,
            outcome,
        }
    }

    /// The one retry policy for all steps.
    pub fn error_policy(&self, msg: &StepMessage, err: &StepError) -> StepResult {
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
        let reason = short_reason(err);
        match msg.step {
            // Nothing has been changed before disconnect: stop and ask an operator.
            Step::Discover | Step::Plan | Step::PrepareSubnet => StepResult::done(
                Outcome::Parked(format!("{}-failed:{reason}", msg.step)),
                why,
            ),
            // The gateway may be gone: put it back before giving up.
            Step::Disconnect | Step::Connect | Step::Configure | Step::Verify => {
                let mut rb = msg.next(Step::Rollback);
                rb.reason = Some(format!("{}-failed:{reason}", msg.step));
                StepResult::next(rb, why)
            }
            Step::Rollback => {
                StepResult::done(Outcome::Parked(format!("rollback-failed:{reason}")), why)
            }
        }
    }
}

/// Exponential backoff between attempts: 5 s, 10 s, 20 s … capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(300))
}

/// A reason token for outcomes: the ARM error code, or the HTTP status.
fn short_reason(err: &StepError) -> String {
    match err {
        StepError::Arm(a) => a
            .code()
            .map(str::to_string)
            .or_else(|| a.status().map(|s| format!("http-{s}")))
            .unwrap_or_else(|| "arm-unreachable".into()),
        StepError::Ledger(_) => "ledger-unavailable".into(),
        StepError::Unexpected(_) => "unexpected-state".into(),
    }
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
