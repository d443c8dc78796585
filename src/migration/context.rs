//! What a step runs with ([`StepContext`]), how it fails ([`StepError`]), and the migration as
//! the pipeline sees it: [`Migration`], the [`Reconciler`] that dispatches each message to its
//! step and decides what a failure means for the target.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::admission::{message_in_scope, MessageScope, OutOfScope};
use super::fleet_plan::{AppliedPlan, Forecasts};
use super::holds::VnetHolds;
use super::plan_cache::PlanCache;
use super::steps;
use crate::azure::arm::{ArmClient, ArmError};
use crate::pipeline::ledger::{Ledger, LedgerError};
use crate::pipeline::message::{GatewaySnapshot, Step, StepMessage};
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
    /// The message names an id outside the scope: nothing was read or written.
    #[error(transparent)]
    OutOfScope(#[from] OutOfScope),
    /// The cut-over failed after the gateway-based connection was gone: what the re-sent
    /// step (or the rollback) carries on, and when the connection went, for the ledger.
    #[error("{source}")]
    Disconnected {
        gateway: Box<GatewaySnapshot>,
        disconnected_at: OffsetDateTime,
        #[source]
        source: Box<StepError>,
    },
}

/// What a failed step may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Throttling, contention, 5xx, timeouts: re-send without limit (with the server's
    /// `Retry-After` when it sent one); these never park a target.
    Transient(Option<Duration>),
    /// A failure that may not recur: retried while attempts last (`maxAttempts`).
    Counted,
    Never,
}

impl StepError {
    fn retry(&self) -> Retry {
        match self {
            StepError::Arm(e) if e.is_transient() => Retry::Transient(e.retry_after()),
            // ARM reports the operation Failed, but a PUT/PATCH is idempotent and safe to send
            // again (arm-vnet reference §8), and a write left `Failed` is repaired by writing it
            // again; counted, so one that keeps failing stops.
            StepError::Arm(ArmError::LroFailed { .. }) => Retry::Counted,
            StepError::Arm(_) | StepError::Unexpected(_) | StepError::OutOfScope(_) => Retry::Never,
            StepError::Ledger(_) => Retry::Counted,
            StepError::Disconnected { source, .. } => source.retry(),
        }
    }

    /// The cause an outcome names: the ARM error code, or the HTTP status; a refusal of the
    /// client's own scope guard by that name (it sent nothing, so ARM was not unreachable).
    fn cause(&self) -> Cause {
        match self {
            StepError::Arm(ArmError::OutOfScope { .. }) | StepError::OutOfScope(_) => {
                Cause::OutOfScope
            }
            StepError::Arm(a) => match (a.code(), a.status()) {
                (Some(code), _) => Cause::Arm(code.to_string()),
                (None, Some(status)) => Cause::Http(status),
                (None, None) => Cause::ArmUnreachable,
            },
            StepError::Ledger(_) => Cause::LedgerUnavailable,
            StepError::Unexpected(_) => Cause::UnexpectedState,
            StepError::Disconnected { source, .. } => source.cause(),
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
    /// When this context was made: the origin of a compressed run's clock (`now`).
    started: OffsetDateTime,
    /// `run --plan`: the plan applied (targets that drifted from it are held back).
    pub(crate) applied: Option<Arc<AppliedPlan>>,
    /// `plan`: where a dry run's `plan` steps leave their forecasts.
    pub(crate) forecasts: Option<Arc<Forecasts>>,
    /// Where `verify`'s probe reaches the app.
    pub(crate) front_end: super::health::FrontEnd,
    /// The VNets this process's rollbacks are removing regional integration from.
    pub(crate) holds: VnetHolds,
}

impl StepContext {
    pub fn new(arm: ArmClient, policy: Arc<Policy>, ledger: Arc<dyn Ledger>) -> Self {
        StepContext {
            arm,
            policy,
            ledger,
            plans: PlanCache::default(),
            time_scale: 1.0,
            started: OffsetDateTime::now_utc(),
            applied: None,
            forecasts: None,
            front_end: Default::default(),
            holds: VnetHolds::default(),
        }
    }

    /// Probes apps through `front_end` (the simulator's, in rehearsals and tests).
    pub fn probing_through(mut self, front_end: super::health::FrontEnd) -> Self {
        self.front_end = front_end;
        self
    }

    /// Applies `plan` exactly (`run --plan`).
    pub fn applying(mut self, plan: Option<Arc<AppliedPlan>>) -> Self {
        self.applied = plan;
        self
    }

    /// Collects the forecasts of a dry run's `plan` steps into `into` (`plan`).
    pub fn forecasting(mut self, into: Option<Arc<Forecasts>>) -> Self {
        self.forecasts = into;
        self
    }

    /// Runs every delay `time_scale` times faster (rehearsals against a sped-up simulator).
    pub fn time_compressed(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }

    /// The clock maintenance windows are judged by: UTC against Azure; in a rehearsal the
    /// simulated time (the context's start plus the time since, times the speed), so a window
    /// a day away opens after a simulated day, as the scaled wait for it ends.
    pub(crate) fn now(&self) -> OffsetDateTime {
        let real = OffsetDateTime::now_utc();
        if self.time_scale <= 1.0 {
            return real;
        }
        self.started + (real - self.started) * self.time_scale
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

    /// Every id of the message lies in the client's write scope and the policy's scope
    /// ([`message_in_scope`]).
    pub(crate) fn admit(&self, msg: &StepMessage) -> Result<(), OutOfScope> {
        let scope = MessageScope {
            writable: self.ctx.arm.write_scope(),
            policy: &self.ctx.policy.scope,
        };
        message_in_scope(msg, scope)
    }
}

#[async_trait]
impl Reconciler for Migration {
    type Error = StepError;

    async fn reconcile(&self, msg: &StepMessage) -> Result<StepResult, StepError> {
        // Defence in depth on every path (the handler refuses such a message before this):
        // a message naming ids out of scope does nothing and ends as its step's failure.
        self.admit(msg)?;
        steps::run(&self.ctx, msg).await
    }

    /// Transient failures (throttling, contention, 5xx) re-send the step with a growing delay
    /// for as long as they last: they never park a target. Other retryable failures retry
    /// until `maxAttempts`; then a target whose gateway may already be gone is rolled back,
    /// and any other is parked for an operator.
    fn error_policy(&self, msg: &StepMessage, err: &StepError) -> StepResult {
        if let StepError::Disconnected {
            gateway,
            disconnected_at,
            source,
        } = err
        {
            // Whatever comes next (the step again, or rollback) starts from a connection that
            // is gone: it carries the snapshot, and the ledger learns when it went.
            let mut carried = msg.clone();
            carried.gateway = Some(gateway.as_ref().clone());
            let mut result = self.error_policy(&carried, source);
            result.cutover.disconnected_at = Some(*disconnected_at);
            return result;
        }
        let max = self.ctx.policy.max_attempts.max(1);
        let why = err.to_string();
        match err.retry() {
            Retry::Transient(retry_after) => {
                let delay = self
                    .ctx
                    .scaled(backoff(msg.transient))
                    .max(retry_after.unwrap_or_default())
                    .min(MAX_TRANSIENT_DELAY);
                return StepResult::next_after(
                    msg.resend(),
                    delay,
                    format!(
                        "transient failure {} of attempt {}, re-sending in {delay:?}: {why}",
                        msg.transient + 1,
                        msg.attempt
                    ),
                );
            }
            Retry::Counted if msg.attempt + 1 < max => {
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
            Retry::Counted | Retry::Never => {}
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

/// The longest wait before re-sending a step after a transient failure (a server's
/// `Retry-After` included).
const MAX_TRANSIENT_DELAY: Duration = Duration::from_secs(300);

/// Exponential backoff between attempts: 5 s, 10 s, 20 s … capped at 5 min.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(status: u16, code: &str, retry_after: Option<Duration>) -> StepError {
        StepError::Arm(ArmError::Status {
            status,
            code: code.into(),
            message: String::new(),
            method: "PATCH".into(),
            path: "/x".into(),
            retry_after,
        })
    }

    #[test]
    fn throttling_and_contention_are_transient_failed_operations_are_counted() {
        let ra = Some(Duration::from_secs(7));
        assert_eq!(
            arm(429, "SubscriptionRequestsThrottled", ra).retry(),
            Retry::Transient(ra)
        );
        for (s, c) in [
            (409, "AnotherOperationInProgress"),
            (400, "NetcfgInvalidSubnet"),
            (429, "429"),
            (503, "ServiceUnavailable"),
        ] {
            assert_eq!(arm(s, c, None).retry(), Retry::Transient(None), "{s} {c}");
        }
        let failed = StepError::Arm(ArmError::LroFailed {
            path: "/x".into(),
            code: "InternalServerError".into(),
            message: String::new(),
        });
        assert_eq!(failed.retry(), Retry::Counted);
        assert_eq!(arm(400, "BadRequest", None).retry(), Retry::Never);
    }

    #[test]
    fn causes_name_what_happened() {
        assert_eq!(
            arm(409, "Conflict", None).cause(),
            Cause::Arm("Conflict".into())
        );
        let refused = StepError::Arm(ArmError::OutOfScope {
            method: "PUT".into(),
            path: "/subscriptions/other/resourceGroups/rg".into(),
        });
        assert_eq!(refused.cause(), Cause::OutOfScope);
        assert_eq!(refused.retry(), Retry::Never);
        let unanswered = StepError::Arm(ArmError::Timeout {
            method: "GET".into(),
            path: "/x".into(),
        });
        assert_eq!(unanswered.cause(), Cause::ArmUnreachable);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
