//! The custom handler's HTTP surface (DESIGN §3.2, §7): one axum route per function. Every
//! answer is JSON; a non-2xx makes the host abandon a Service Bus message (redelivery is safe
//! because steps are idempotent, re-sends are deduplicated by MessageId, and a message already
//! recorded is not executed again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::eventgrid::{classify, EventAction};
use super::invocation::{decode_event_grid, decode_http, decode_service_bus, decode_timer};
use super::response::{json_response, InvocationResponse};
use crate::azure::ResourceId;
use crate::migration::Migration;
use crate::pipeline::controller::{Controller, ControllerError};
use crate::pipeline::engine::Engine;
use crate::pipeline::ledger::{Ledger, LedgerError, RunRecord, TargetRecord};
use crate::pipeline::message::{Origin, PlannedSubnet, RunId, Step, StepMessage, URGENT};
use crate::pipeline::queue::{Outgoing, StepSender};
use crate::pipeline::rollout::{Control, RolloutConfig, WaveChecks};
use crate::policy::{OnDeploy, Policy};
use crate::report::status::{run_status, Around};

/// How long a step waits before it re-sends itself after hitting the invocation deadline.
const DEADLINE_RETRY_DELAY: time::Duration = time::Duration::seconds(5);
/// Event bursts within one bucket map to one run id (and so one discover MessageId).
const EVENT_BUCKET_MINUTES: i64 = 5;
/// A target with no progress for this long is re-sent by `rollout-tick`.
const STALL_AFTER: Duration = Duration::from_secs(30 * 60);

pub(crate) struct Handler {
    engine: Engine<Migration>,
    sender: Arc<dyn StepSender>,
    ledger: Arc<dyn Ledger>,
    policy: Arc<Policy>,
    our_principal: Option<String>,
    deadline: Duration,
    rollouts: Rollouts,
}

/// How `rollout-tick` drives rollouts.
pub(crate) struct Rollouts {
    /// The policy's waves, bake and gates, the bake in the time of the ARM behind it (a
    /// simulator started with `--speed` shortens it as a rehearsal does; 1 for Azure).
    pub(crate) config: RolloutConfig,
    /// The checks of a wave's migrated targets after its bake (Key Vault references, probe).
    pub(crate) checks: Arc<dyn WaveChecks>,
    /// How long a step of a paused rollout is put off before it is looked at again: one
    /// period of the `rollout-tick` timer, shortened as the bake is.
    pub(crate) held_for: time::Duration,
}

impl Handler {
    pub(crate) fn new(
        engine: Engine<Migration>,
        sender: Arc<dyn StepSender>,
        ledger: Arc<dyn Ledger>,
        policy: Arc<Policy>,
        our_principal: Option<String>,
        deadline: Duration,
        rollouts: Rollouts,
    ) -> Self {
        Handler {
            engine,
            sender,
            ledger,
            policy,
            our_principal: our_principal.filter(|p| !p.trim().is_empty()),
            deadline,
            rollouts,
        }
    }
}

pub(crate) fn router(h: Arc<Handler>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { json_response(StatusCode::OK, &json!({})) }),
        )
        .route("/step", post(step))
        .route("/on-deploy", post(on_deploy))
        .route("/rollout-tick", post(rollout_tick))
        .route("/status", post(status))
        .with_state(h)
}

async fn step(State(h): State<Arc<Handler>>, body: Bytes) -> Response {
    let delivery = match decode_service_bus(&body, "msg") {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("step: undecodable invocation: {e}");
            return InvocationResponse::new()
                .log(format!("undecodable invocation: {e}"))
                .redeliver();
        }
    };
    let msg = match StepMessage::decode(&delivery.body) {
        Ok(m) => m,
        Err(e) => {
            let id = delivery.message_id.as_deref().unwrap_or("?");
            tracing::error!(message_id = id, "step: undecodable step message: {e}");
            return InvocationResponse::new()
                .log(format!("message {id}: {e}"))
                .redeliver();
        }
    };
    // A message is data anyone with send rights can forge: refused before any ARM call.
    // A custom handler cannot dead-letter (the host settles), so the refusal is answered
    // like an undecodable message, with the reason in the invocation's logs: the host
    // abandons, and every redelivery is refused again without work until Service Bus
    // dead-letters it at MaxDeliveryCount (functions-host reference §4.4).
    if let Err(refused) = h.engine.reconciler().admit(&msg) {
        let id = delivery.message_id.as_deref().unwrap_or("?");
        tracing::error!(message_id = id, "step: refused step message: {refused}");
        return InvocationResponse::new()
            .log(format!("message {id}: refused: {refused}"))
            .redeliver();
    }
    let label = format!("{} {} attempt {}", msg.target, msg.step, msg.attempt);
    match settled(&*h.ledger, &msg).await {
        Ok(Some(why)) => {
            return InvocationResponse::new()
                .log(format!("{label}: {why}; not executed"))
                .ok();
        }
        Ok(None) => {}
        Err(e) => {
            return InvocationResponse::new()
                .log(format!("{label}: ledger: {e}"))
                .redeliver();
        }
    }
    // `rollout pause` holds the steps already on the queue too, as the embedded runner does.
    if let Some(resp) = hold_if_paused(&h, &msg, &label).await {
        return resp;
    }
    if let Some(resp) = hold_if_vnet_full(&h, &msg, &label).await {
        return resp;
    }
    let mut executed = match tokio::time::timeout(h.deadline, h.engine.execute(&msg)).await {
        Ok(x) => x,
        Err(_) => {
            // The reconciler of the re-sent step re-reads ARM and continues from there.
            let again = Outgoing {
                message: msg.retry(),
                visible_at: OffsetDateTime::now_utc() + DEADLINE_RETRY_DELAY,
            };
            return match h.sender.send(vec![again]).await {
                Ok(()) => InvocationResponse::new()
                    .log(format!("{label}: deadline reached; step re-sent"))
                    .ok(),
                Err(e) => InvocationResponse::new()
                    .log(format!("{label}: deadline reached and re-send failed: {e}"))
                    .redeliver(),
            };
        }
    };
    // The next steps are sent before the step is recorded: a recorded message has sent its
    // successors, so `settled` can judge any later delivery of it done (a failed send leaves
    // no record, and the redelivery executes and sends again).
    if let Err(e) = h.sender.send(std::mem::take(&mut executed.next)).await {
        tracing::error!("{label}: send next: {e}");
        return InvocationResponse::new()
            .log(format!("{label}: send next: {e}"))
            .redeliver();
    }
    if let Some(record) = executed.ledger_record() {
        if let Err(e) = h.ledger.record(record).await {
            tracing::error!("{label}: ledger: {e}");
            return InvocationResponse::new()
                .log(format!("{label}: ledger: {e}"))
                .redeliver();
        }
    }
    let mut line = format!("{label}: {}", executed.record.detail);
    if let Some(o) = &executed.outcome {
        line.push_str(&format!(" => {o}"));
    }
    InvocationResponse::new().log(line).ok()
}

/// While `msg`'s rollout is paused, its step is not executed but put off a tick. A message
/// whose app may be off its VNet (a cut-over after its gateway connection went, a rollback) is
/// executed anyway, as the embedded runner delivers it: holding it would keep the app offline.
async fn hold_if_paused(h: &Handler, msg: &StepMessage, label: &str) -> Option<Response> {
    if msg.priority() >= URGENT {
        return None;
    }
    match h.ledger.control(&msg.run).await {
        Ok(Control::Paused) => Some(put_off(h, msg, label, "the rollout is paused").await),
        Ok(_) => None,
        Err(e) => Some(
            InvocationResponse::new()
                .log(format!("{label}: ledger: {e}"))
                .redeliver(),
        ),
    }
}

/// `concurrency.perVnet` in Azure, counted per target: a target's `prepare-subnet` starts its
/// work in its destination VNet, and is put off a tick while `perVnet` other targets of the run
/// are at work there (see [`started_in_vnets`]). It reads the run's targets once, and only for
/// such a message. That message runs in its VNet's session, one at a time per VNet, so no other
/// target of the VNet starts between the count and the step. Preparation ahead of a wave starts
/// no target, and a re-plan after the gateway connection went (the message carries the saved
/// connection) is not held: its app may be offline.
async fn hold_if_vnet_full(h: &Handler, msg: &StepMessage, label: &str) -> Option<Response> {
    let limit = h.policy.concurrency.per_vnet? as usize;
    let vnet = msg.vnet_key()?;
    if msg.step != Step::PrepareSubnet
        || msg.ahead
        || msg.gateway.is_some()
        || msg.priority() >= URGENT
    {
        return None;
    }
    let targets = match h.ledger.targets(&msg.run).await {
        Ok(t) => t,
        Err(e) => {
            return Some(
                InvocationResponse::new()
                    .log(format!("{label}: ledger: {e}"))
                    .redeliver(),
            )
        }
    };
    let others = started_in_vnets(targets.iter().filter(|t| t.target != msg.target))
        .get(vnet)
        .copied()
        .unwrap_or(0);
    if others < limit {
        return None;
    }
    let why = format!("{others} target(s) bound for its VNet are in progress (perVnet {limit})");
    Some(put_off(h, msg, label, &why).await)
}

/// Per lower-cased destination VNet, the targets at work in it: without an outcome and past
/// their `prepare-subnet` (a planned target waiting for it is not counted, or the targets held
/// would hold each other).
fn started_in_vnets<'a>(targets: impl Iterator<Item = &'a TargetRecord>) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for t in targets {
        let started = matches!(
            t.current_step,
            Some(
                Step::Disconnect | Step::Connect | Step::Configure | Step::Verify | Step::Rollback
            )
        );
        if let (None, true, Some(vnet)) = (
            &t.outcome,
            started,
            t.subnet.as_ref().and_then(|s| s.vnet()),
        ) {
            *n.entry(vnet.key().to_string()).or_default() += 1;
        }
    }
    n
}

/// Whether `t` waits for room in its destination VNet (its `prepare-subnet` is put off while
/// `limit` targets are at work there, `busy` counting them): waiting, not stalled, as a paused
/// rollout's targets are.
fn waits_for_its_vnet(t: &TargetRecord, busy: &HashMap<String, usize>, limit: Option<u32>) -> bool {
    let vnet = t.subnet.as_ref().and_then(|s| s.vnet());
    match (limit, vnet) {
        (Some(limit), Some(vnet)) if t.current_step == Some(Step::PrepareSubnet) => {
            busy.get(vnet.key()).is_some_and(|&n| n >= limit as usize)
        }
        _ => false,
    }
}

/// Sends `msg` again a tick later instead of executing it (its `waited` count bumped: every
/// delivery of this message makes the same MessageId, so a duplicate delivery sends nothing
/// more), and answers the delivery.
async fn put_off(h: &Handler, msg: &StepMessage, label: &str, why: &str) -> Response {
    let visible_at = OffsetDateTime::now_utc() + h.rollouts.held_for;
    let mut later = msg.deferred();
    later.not_before = Some(visible_at);
    match h
        .sender
        .send(vec![Outgoing {
            message: later,
            visible_at,
        }])
        .await
    {
        Ok(()) => InvocationResponse::new()
            .log(format!("{label}: {why}; put off until {visible_at}"))
            .ok(),
        Err(e) => InvocationResponse::new()
            .log(format!("{label}: {why}; the put-off failed: {e}"))
            .redeliver(),
    }
}

/// Why a delivery of `msg` must not execute, if it must not. Service Bus delivers a message
/// again after its settlement was lost (a host restart, an expired lock), possibly once the
/// steps after it ran or while they run in another session: a cut-over delivered again while
/// its target's rollback runs would remove the gateway connection the rollback is restoring.
/// So a message is not executed again once its target ended in the run (a late duplicate, or a
/// wave's first message after `rollout abort` cancelled it), nor once it was recorded in full:
/// its next steps were sent before its record (see `step`).
async fn settled(ledger: &dyn Ledger, msg: &StepMessage) -> Result<Option<String>, LedgerError> {
    let Some(t) = ledger.target(&msg.run, &msg.target).await? else {
        // A target no step has recorded yet (a slot its site's discover found).
        return Ok(None);
    };
    if let Some(o) = &t.outcome {
        return Ok(Some(format!("the target already ended in this run ({o})")));
    }
    let id = msg.message_id();
    let recorded = ledger.recorded(&msg.run, &msg.target, &id).await?;
    Ok(recorded.then(|| format!("message {id} was executed and recorded already")))
}

/// `ev-YYYYMMDDHHMM-<8 hex>`: minutes floored to the bucket, hex of the lowercased target.
pub(crate) fn event_run_id(target: &ResourceId, at: OffsetDateTime) -> RunId {
    let at = at.to_offset(time::UtcOffset::UTC);
    let minute = at.minute() as i64 - at.minute() as i64 % EVENT_BUCKET_MINUTES;
    let digest = target.key_digest();
    RunId(format!(
        "ev-{:04}{:02}{:02}{:02}{:02}-{}",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        minute,
        &digest[..8]
    ))
}

async fn on_deploy(State(h): State<Arc<Handler>>, body: Bytes) -> Response {
    let events = match decode_event_grid(&body, "event") {
        Ok(ev) => ev,
        Err(e) => {
            // Answering 200 stops Event Grid from retrying a body that will never parse.
            tracing::warn!("on-deploy: malformed event: {e}");
            return InvocationResponse::new()
                .log(format!("malformed event ignored: {e}"))
                .ok();
        }
    };
    let mut resp = InvocationResponse::new();
    for ev in &events {
        match classify(ev, h.our_principal.as_deref()) {
            EventAction::Validate(code) => {
                resp = resp.log(format!("subscription validation event (code {code})"));
            }
            EventAction::Ignore(why) => resp = resp.log(format!("ignored: {why}")),
            EventAction::Migrate(target) => match enqueue_discover(&h, &target).await {
                Ok(line) => resp = resp.log(line),
                Err(e) => {
                    tracing::error!("on-deploy {target}: {e}");
                    return resp.log(format!("{target}: {e}")).redeliver();
                }
            },
        }
    }
    resp.ok()
}

#[derive(Debug, thiserror::Error)]
enum EnqueueError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Queue(#[from] crate::pipeline::queue::QueueError),
    #[error("reading the tags of {0}: {1}")]
    Tags(String, crate::azure::arm::ArmError),
}

/// Starts an event run for one target unless policy, scope or an active run says not to.
async fn enqueue_discover(h: &Handler, target: &ResourceId) -> Result<String, EnqueueError> {
    if h.policy.on_deploy == OnDeploy::Ignore {
        return Ok(format!("ignored: {target}: policy onDeploy is ignore"));
    }
    let in_scope = if h.policy.scope.tags.is_empty() {
        h.policy.scope.includes(target, None)
    } else {
        // Tags are not in the event; a site that is gone cannot be migrated anyway.
        match h
            .engine
            .reconciler()
            .ctx
            .arm
            .get_json(target.as_str())
            .await
        {
            Ok(site) => h
                .policy
                .scope
                .includes(target, site.get("tags").and_then(Value::as_object)),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(EnqueueError::Tags(target.to_string(), e)),
        }
    };
    if !in_scope {
        return Ok(format!("ignored: {target} is out of the policy's scope"));
    }
    if let Some(run) = h.ledger.active_run_for(target).await? {
        return Ok(format!("ignored: {target} is already in run {run}"));
    }
    let now = OffsetDateTime::now_utc();
    let run = event_run_id(target, now);
    let dry_run = h.policy.on_deploy == OnDeploy::PlanOnly;
    h.ledger
        .start_run(&RunRecord {
            run: run.clone(),
            started_at: now,
            dry_run,
            origin: "event".into(),
        })
        .await?;
    h.ledger.add_target(&run, target, now).await?;
    let msg = StepMessage::new(run.clone(), target.clone(), Step::Discover, Origin::Event)
        .with_dry_run(dry_run);
    h.sender.send(vec![Outgoing::now(msg)]).await?;
    Ok(format!(
        "{target}: discover enqueued in run {run}{}",
        if dry_run { " (plan only)" } else { "" }
    ))
}

/// The message that resumes a stalled target: nothing is carried but what the ledger knows;
/// the reconcilers re-read ARM. `replay` makes the MessageId fresh.
pub(crate) fn resume_message(t: &TargetRecord, dry_run: bool, replay: u32) -> StepMessage {
    let recorded = t.current_step.unwrap_or(Step::Discover);
    // Discover is only safe before anything was written; once a subnet is planned, a target
    // mid-migration (gateway already removed) would be misread as having no integration.
    let (step, plan) = match (&t.subnet, recorded) {
        (_, Step::Discover) => (Step::Discover, None),
        (None, _) => (Step::Plan, None),
        (Some(subnet), step) => (
            step,
            subnet.vnet().map(|vnet| PlannedSubnet {
                vnet,
                subnet: subnet.clone(),
                prefix: t.prefix.clone().unwrap_or_default(),
                create: step == Step::PrepareSubnet,
                required_prefix_length: None,
            }),
        ),
    };
    let mut m = StepMessage::new(t.run.clone(), t.target.clone(), step, Origin::Replay)
        .with_dry_run(dry_run);
    m.plan = plan;
    m.gateway = t.gateway.clone();
    m.attempt = t.attempts;
    m.replay = replay.max(1);
    m
}

async fn rollout_tick(State(h): State<Arc<Handler>>, body: Bytes) -> Response {
    let mut resp = InvocationResponse::new();
    match decode_timer(&body, "timer") {
        Ok(t) if t.is_past_due => resp = resp.log("timer is past due"),
        Ok(_) => {}
        Err(e) => {
            resp = resp.log(format!(
                "timer payload not understood ({e}); ticking anyway"
            ))
        }
    }
    let now = OffsetDateTime::now_utc();
    let stall = time::Duration::try_from(STALL_AFTER).unwrap_or(time::Duration::MAX);
    // One replay number per bucket: a tick repeated within it is deduplicated by Service Bus.
    let replay = (now.unix_timestamp() / 60 / EVENT_BUCKET_MINUTES) as u32;
    let controller =
        Controller::new(&*h.ledger, &*h.sender, &h.rollouts.config).checking(&*h.rollouts.checks);
    let mut advanced = Vec::new();
    let result: Result<Vec<Outgoing>, ControllerError> = async {
        let mut out = Vec::new();
        for run in h.ledger.runs().await? {
            // Targets of a wave not yet released wait for it, however long, and a paused
            // rollout's targets wait for `resume` (their steps are put off, not lost).
            let waves = h.ledger.waves(&run.run).await?;
            let paused = h.ledger.control(&run.run).await? == Control::Paused;
            let waiting: Vec<u32> = waves
                .iter()
                .filter(|w| w.released_at.is_none())
                .map(|w| w.index)
                .collect();
            let targets = h.ledger.targets(&run.run).await?;
            let busy = started_in_vnets(targets.iter());
            for t in targets {
                let released = t.wave.is_none_or(|w| !waiting.contains(&w));
                // A rollout's untouched targets are started by its controller, as
                // `concurrency.perSubscription` admits them.
                let started = waves.is_empty() || t.steps > 0;
                if t.outcome.is_none()
                    && released
                    && started
                    && !paused
                    && !waits_for_its_vnet(&t, &busy, h.policy.concurrency.per_vnet)
                    && now - t.updated_at > stall
                {
                    out.push(Outgoing::now(resume_message(&t, run.dry_run, replay)));
                }
            }
            if !waves.is_empty() {
                let tick = controller.tick(&run.run, run.dry_run, now).await?;
                advanced.push(format!(
                    "run {} ({}): {:?}",
                    run.run,
                    tick.control.as_str(),
                    tick.decision
                ));
            }
        }
        Ok(out)
    }
    .await;
    for line in advanced {
        resp = resp.log(line);
    }
    let out = match result {
        Ok(o) => o,
        Err(e) => return resp.log(format!("rollout: {e}")).redeliver(),
    };
    for o in &out {
        resp = resp.log(format!(
            "re-sent {} {} (run {})",
            o.message.target, o.message.step, o.message.run
        ));
    }
    let n = out.len();
    if let Err(e) = h.sender.send(out).await {
        return resp.log(format!("send: {e}")).redeliver();
    }
    resp.log(format!("{n} stalled target(s) re-sent")).ok()
}

async fn status(State(h): State<Arc<Handler>>, body: Bytes) -> Response {
    let req = match decode_http(&body, "req") {
        Ok(r) => r,
        Err(e) => {
            return InvocationResponse::new()
                .http("res", 400, &json!({ "error": e.to_string() }))
                .ok()
        }
    };
    let report = async {
        let runs = h.ledger.runs().await?;
        let wanted = req.query.get("run").filter(|r| !r.is_empty());
        let run = match wanted {
            Some(w) => runs.into_iter().find(|r| r.run.as_str() == w),
            None => runs.into_iter().max_by_key(|r| r.started_at),
        };
        let Some(run) = run else {
            return Ok::<_, LedgerError>(None);
        };
        // The document of `status -o json` (and `rollout status` in Azure).
        Ok(Some(
            run_status(&*h.ledger, &run, Around::AZURE, &h.rollouts.config)
                .await?
                .0,
        ))
    }
    .await;
    match report {
        Ok(Some(r)) => {
            let body = serde_json::to_value(&r).unwrap_or_else(|_| json!({}));
            InvocationResponse::new().http("res", 200, &body).ok()
        }
        Ok(None) => InvocationResponse::new()
            .http("res", 404, &json!({ "error": "no such run" }))
            .ok(),
        Err(e) => InvocationResponse::new()
            .log(format!("ledger: {e}"))
            .http("res", 503, &json!({ "error": e.to_string() }))
            .ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Outcome;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    #[test]
    fn event_run_id_buckets_five_minutes_and_ignores_case() {
        let a = id("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Web/sites/App1");
        let b = id("/subscriptions/s/resourcegroups/rg/providers/microsoft.web/sites/app1");
        let t1 = time::macros::datetime!(2026-11-23 21:07:59 UTC);
        let t2 = time::macros::datetime!(2026-11-23 21:05:00 UTC);
        let t3 = time::macros::datetime!(2026-11-23 21:10:00 UTC);
        let r = event_run_id(&a, t1);
        assert_eq!(r, event_run_id(&b, t2));
        assert_ne!(r, event_run_id(&a, t3));
        assert!(r.as_str().starts_with("ev-202611232105-"), "{r}");
        assert_eq!(r.as_str().len(), "ev-202611232105-".len() + 8);
    }

    fn record(step: Option<Step>, subnet: Option<&str>) -> TargetRecord {
        let now = OffsetDateTime::now_utc();
        TargetRecord {
            run: RunId("r-1".into()),
            target: id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a"),
            outcome: None,
            current_step: step,
            steps: 3,
            attempts: 1,
            reason: None,
            subnet: subnet.map(id),
            prefix: subnet.map(|_| "10.0.4.0/26".to_string()),
            gateway: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
            cutover: Default::default(),
            wave: None,
            next_at: None,
        }
    }

    fn recorded(m: &StepMessage, outcome: Option<Outcome>) -> crate::pipeline::ledger::StepRecord {
        crate::pipeline::ledger::StepRecord {
            run: m.run.clone(),
            target: m.target.clone(),
            step: m.step,
            attempt: m.attempt,
            message_id: m.message_id(),
            detail: "done".into(),
            at: OffsetDateTime::now_utc(),
            duration_ms: 1,
            next: outcome.is_none().then_some(Step::Configure),
            next_at: None,
            outcome,
            subnet: None,
            prefix: None,
            gateway: None,
            cutover: Default::default(),
        }
    }

    /// A delivery of a message already recorded (its next steps were sent) or of a target that
    /// already ended is not executed; a target's first step, a retry or a replay is.
    #[tokio::test]
    async fn a_recorded_message_or_an_ended_target_is_not_executed_again() {
        use crate::pipeline::sqlite::test_support::{msg_in, now, store};
        let (_dir, ledger) = store();
        let cut_over = msg_in("s", "a", Step::Disconnect);
        assert_eq!(settled(&ledger, &cut_over).await.unwrap(), None, "no row");
        ledger
            .add_target(&cut_over.run, &cut_over.target, now())
            .await
            .unwrap();
        assert_eq!(settled(&ledger, &cut_over).await.unwrap(), None);
        ledger.record(&recorded(&cut_over, None)).await.unwrap();
        let why = settled(&ledger, &cut_over).await.unwrap().unwrap();
        assert!(why.contains("recorded already"), "{why}");
        let retried = cut_over.retry();
        assert_eq!(settled(&ledger, &retried).await.unwrap(), None);
        let mut replayed = cut_over.clone();
        replayed.replay = 1;
        assert_eq!(settled(&ledger, &replayed).await.unwrap(), None);
        let verify = cut_over.next(Step::Verify);
        ledger
            .record(&recorded(&verify, Some(Outcome::Migrated)))
            .await
            .unwrap();
        let why = settled(&ledger, &retried).await.unwrap().unwrap();
        assert!(
            why.contains("already ended in this run (migrated)"),
            "{why}"
        );
    }

    /// A VNet's targets at work are those past their `prepare-subnet` without an outcome: the
    /// ones waiting for it are not counted (they would hold each other), and while the VNet is
    /// full they wait rather than stall.
    #[test]
    fn a_vnets_targets_at_work_are_past_their_prepare_subnet() {
        let hub = "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/Hub/subnets/x";
        let other = "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/o/subnets/x";
        let ended = TargetRecord {
            outcome: Some(Outcome::Migrated),
            ..record(Some(Step::Verify), Some(hub))
        };
        let waiting = record(Some(Step::PrepareSubnet), Some(hub));
        let targets = [
            record(Some(Step::Disconnect), Some(hub)),
            record(Some(Step::Verify), Some(hub)),
            record(Some(Step::Rollback), Some(other)),
            waiting.clone(),
            ended,
            record(Some(Step::Plan), None),
        ];
        let busy = started_in_vnets(targets.iter());
        let key = |s: &str| id(s).vnet().unwrap().key().to_string();
        assert_eq!(busy.get(&key(hub)), Some(&2));
        assert_eq!(busy.get(&key(other)), Some(&1));
        assert_eq!(busy.len(), 2, "{busy:?}");
        assert!(waits_for_its_vnet(&waiting, &busy, Some(2)));
        assert!(!waits_for_its_vnet(&waiting, &busy, Some(3)));
        assert!(!waits_for_its_vnet(&waiting, &busy, None));
        assert!(!waits_for_its_vnet(&targets[0], &busy, Some(1)), "at work");
    }

    #[test]
    fn resume_replans_without_a_subnet_and_never_rediscovers_mid_migration() {
        let m = resume_message(&record(Some(Step::Disconnect), None), false, 7);
        assert_eq!(m.step, Step::Plan);
        assert_eq!(m.replay, 7);
        assert_eq!(m.origin, Origin::Replay);
        let subnet = "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/x";
        let m = resume_message(&record(Some(Step::Connect), Some(subnet)), true, 7);
        assert_eq!(m.step, Step::Connect);
        assert!(m.dry_run);
        let plan = m.plan.unwrap();
        assert_eq!(plan.subnet, id(subnet));
        assert_eq!(plan.vnet, id(subnet).vnet().unwrap());
        assert_eq!(plan.prefix, "10.0.4.0/26");
        let m = resume_message(&record(Some(Step::Discover), None), false, 0);
        assert_eq!(m.step, Step::Discover);
        assert_eq!(m.replay, 1, "a replay always gets a fresh MessageId");
    }
}
