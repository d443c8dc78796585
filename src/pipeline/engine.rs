//! The engine: executes one step message and says what happens next. Transport-agnostic: the
//! embedded runner and the Functions handler both call [`Engine::execute`] and then deliver
//! `next` on their own queue.
//!
//! The engine asks its [`Reconciler`] for the step's result (or, when it failed, for the
//! reconciler's error policy) and turns it into messages to send and a record for the ledger.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tracing::Instrument;

use super::ledger::StepRecord;
use super::message::StepMessage;
use super::outcome::Outcome;
use super::queue::Outgoing;
use super::reconciler::{Reconciler, Transition};

/// The result of executing one message: what to enqueue and what to record.
#[derive(Debug, Clone)]
pub struct Executed {
    pub next: Vec<Outgoing>,
    pub(crate) record: StepRecord,
    pub outcome: Option<Outcome>,
    /// The message prepared the network ahead of its target's wave: no step of the target's.
    ahead: bool,
}

impl Executed {
    /// What the ledger records of this step: nothing for preparation ahead of a wave, which
    /// is no step of its target's (the target stays untouched until its wave is released).
    pub(crate) fn ledger_record(&self) -> Option<&StepRecord> {
        (!self.ahead).then_some(&self.record)
    }
}

pub struct Engine<R> {
    reconciler: R,
}

impl<R: Reconciler> Engine<R> {
    pub fn new(reconciler: R) -> Self {
        Engine { reconciler }
    }

    pub(crate) fn reconciler(&self) -> &R {
        &self.reconciler
    }

    /// Runs one step. Never fails: every error goes through the reconciler's error policy.
    pub async fn execute(&self, msg: &StepMessage) -> Executed {
        let span = tracing::debug_span!(
            "step",
            step = %msg.step,
            target = %msg.target,
            attempt = msg.attempt,
            trace = msg.trace.as_deref().unwrap_or("-"),
        );
        self.execute_in(msg).instrument(span).await
    }

    async fn execute_in(&self, msg: &StepMessage) -> Executed {
        let started = Instant::now();
        let result = match self.reconciler.reconcile(msg).await {
            Ok(r) => r,
            Err(e) => self.reconciler.error_policy(msg, &e),
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
            // Preparation ahead of a wave decides no outcome: whatever stopped it (a blocker,
            // a failure), the wave's own steps find and decide it again.
            Transition::Done(_) if msg.ahead => (Vec::new(), None),
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
            next_at: own.and_then(|m| m.not_before),
            outcome: outcome.clone(),
            subnet: planned.map(|p| p.subnet.clone()),
            prefix: planned.map(|p| p.prefix.clone()),
            gateway: own
                .and_then(|m| m.gateway.clone())
                .or_else(|| msg.gateway.clone()),
            cutover: result.cutover,
        };
        tracing::debug!(next = ?record.next, outcome = ?record.outcome, "{}", record.detail);
        Executed {
            next,
            record,
            outcome,
            ahead: msg.ahead,
        }
    }
}
