//! One reconciler per step: observe ARM, compare with the desired state, act only on the
//! difference, and return the next step. Running any of them twice changes nothing the
//! second time, which is what makes duplicate deliveries, crashes and replays harmless.

use std::time::Duration;

use serde_json::{json, Value};

use super::ahead;
use super::context::{StepContext, StepError};
use super::cutover::{connect, disconnect};
use super::fleet_plan::{self, Forecast, VnetDigest};
use super::plan_cache::connections;
use super::subnet::prepare_subnet;
use crate::azure::arm::ArmClient;
use crate::azure::models::{KeyVaultReference, KeyVaultStatus, Site};
use crate::azure::ResourceId;
use crate::migration::discover::{discover, slot_discoveries, SlotFilter};
use crate::migration::health::{self, KvHealth};
use crate::migration::ipam;
use crate::migration::plan::{Integration, TargetDecision};
use crate::migration::rollback::rollback;
use crate::pipeline::message::{Baseline, PlannedSubnet, Step, StepMessage};
use crate::pipeline::reason::{
    BlockedReason, Cause, HealthFailure, ParkReason, RollbackReason, SkipReason,
};
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;
use crate::policy::{Policy, RollbackMode};

/// Dispatches a message to its step's reconciler.
pub(crate) async fn run(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    if msg.ahead {
        if let Some(why) = ahead::unwanted(ctx, msg).await? {
            return Ok(StepResult::end(why));
        }
    }
    match msg.step {
        Step::Discover => discover(ctx, msg).await,
        Step::Plan => plan(ctx, msg).await,
        Step::PrepareSubnet => prepare_subnet(ctx, msg).await,
        Step::Disconnect => disconnect(ctx, msg).await,
        Step::Connect => connect(ctx, msg).await,
        Step::Configure => configure(ctx, msg).await,
        Step::Verify => {
            let mut result = verify(ctx, msg).await?;
            if msg.target.kind() == crate::azure::ResourceKind::Site {
                // Slots created while the site migrated were not there when its `discover`
                // listed them: reconcile from what ARM shows now.
                let late = slot_discoveries(ctx, msg, SlotFilter::Unknown).await?;
                if !late.is_empty() {
                    result.detail.push_str(&format!(
                        "; {} slot(s) created during the run discovered",
                        late.len()
                    ));
                }
                result.spawn.extend(late);
            }
            Ok(result)
        }
        Step::Rollback => rollback(ctx, msg).await,
    }
}

pub(super) fn planned(msg: &StepMessage) -> Result<&PlannedSubnet, StepError> {
    msg.plan.as_ref().ok_or_else(|| {
        StepError::Unexpected(format!(
            "{} message without a plan (was it edited by hand?)",
            msg.step
        ))
    })
}

pub(crate) async fn key_vault_statuses(
    arm: &ArmClient,
    target: &ResourceId,
) -> Result<std::collections::BTreeMap<String, KeyVaultStatus>, StepError> {
    let refs: Vec<KeyVaultReference> = arm
        .list(&format!("{target}/config/configreferences/appsettings"))
        .await?;
    Ok(health::statuses(&refs))
}

/// The `plan` step held back: ARM no longer shows what the applied plan was made from.
fn drifted(why: &str) -> Result<StepResult, StepError> {
    Ok(StepResult::done(
        Outcome::Blocked(BlockedReason::Drifted),
        format!("{why}; nothing was written: run `plan` again and review it"),
    ))
}

async fn plan(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let gone = || {
        Ok(StepResult::done(
            Outcome::Skipped(SkipReason::NotFound),
            "target no longer exists",
        ))
    };
    // The site is read again rather than trusting the plan `discover` saw: a cached plan
    // decision can still list a target that moved to another plan since, and planning it under
    // the old one would be wrong (safety over one read per target).
    let Some(site) = ctx.arm.get_opt::<Site>(msg.target.as_str()).await? else {
        return gone();
    };
    let plan_id = site
        .properties
        .server_farm_id
        .clone()
        .ok_or_else(|| StepError::Unexpected("the app has no serverFarmId".into()))?;
    let mut decided = ctx.plans.decision(&ctx.arm, &ctx.policy, &plan_id).await?;
    if !decided.decision.targets.contains_key(&msg.target) {
        // Created after the decision was cached: decide again with it included.
        ctx.plans.invalidate(&plan_id);
        decided = ctx.plans.decision(&ctx.arm, &ctx.policy, &plan_id).await?;
    }
    let decision = &decided.decision;
    let warn = if decision.warnings.is_empty() {
        String::new()
    } else {
        format!(" (warnings: {})", decision.warnings.join("; "))
    };
    let (Some(live), Some(state)) = (
        decision.targets.get(&msg.target),
        decided.targets.iter().find(|t| t.id == msg.target),
    ) else {
        return Err(StepError::Unexpected(format!(
            "the target is not listed under its plan {plan_id}"
        )));
    };
    let vnet = || match live {
        TargetDecision::Migrate(c) => decided.vnets.iter().find(|v| v.id == c.vnet).map(|v| &**v),
        _ => None,
    };
    let no_subnets = Default::default();
    // A shared subnet is sized for all its plans: their sum is what the plan rests on.
    let (required_addresses, mut required_prefix_length) = match live {
        TargetDecision::Migrate(c) => (
            c.shared_addresses.unwrap_or(decision.required_addresses),
            c.required_prefix_length(decision.required_addresses),
        ),
        _ => (
            decision.required_addresses,
            ipam::prefix_len_for(decision.required_addresses),
        ),
    };
    // Only a plan being applied and a forecast being written use it.
    let fingerprint = |vnet: Option<&VnetDigest>| {
        fleet_plan::fingerprint(
            state,
            &plan_id,
            required_addresses,
            live,
            vnet,
            ctx.applied.as_ref().map_or(&no_subnets, |a| &a.creates),
        )
    };
    let mut target_decision = live.clone();
    if let Some(applied) = &ctx.applied {
        // Exactly the plan: its decision and reserved prefix, unless ARM drifted from it.
        let Some(planned) = applied.target(&msg.target) else {
            return drifted("the target is not in the plan");
        };
        if planned.fingerprint.as_deref() != Some(fingerprint(vnet()).as_str()) {
            return drifted("ARM no longer shows what the plan was computed from");
        }
        if let Some(d) = &planned.decision {
            target_decision = d.clone();
        }
        required_prefix_length = planned
            .required_prefix_length
            .unwrap_or(required_prefix_length);
    }
    let routing_differs = !routes_as(&desired_routing(&ctx.policy), &current_routing(&site));
    if let (true, Some(into)) = (msg.dry_run, &ctx.forecasts) {
        let vnet = vnet();
        into.push(Forecast {
            target: msg.target.clone(),
            app_service_plan: plan_id.clone(),
            decision: target_decision.clone(),
            required_prefix_length,
            gateway_connection: match &state.integration {
                Integration::Gateway { connection, .. } => Some(connection.clone()),
                _ => None,
            },
            fingerprint: fingerprint(vnet),
            vnet: vnet.cloned(),
            routing_differs,
        });
    }
    match &target_decision {
        TargetDecision::Blocked(reason) => Ok(StepResult::done(
            Outcome::Blocked(*reason),
            format!("blocked by plan {plan_id}{warn}"),
        )),
        TargetDecision::AlreadyRegional => Ok(StepResult::done(
            Outcome::Skipped(SkipReason::AlreadyRegional),
            "already regional",
        )),
        TargetDecision::NoIntegration => Ok(StepResult::done(
            Outcome::Skipped(SkipReason::NoIntegration),
            "no VNet integration",
        )),
        TargetDecision::Migrate(choice) => {
            let p = PlannedSubnet {
                vnet: choice.vnet.clone(),
                subnet: choice.subnet.clone(),
                prefix: choice.prefix.to_string(),
                create: choice.create,
                required_prefix_length: Some(required_prefix_length),
            };
            let detail = format!(
                "{} subnet {} ({}) for {} instance(s){warn}",
                if choice.create { "new" } else { "existing" },
                choice.subnet,
                choice.prefix,
                decision.expected_max_instances
            );
            if msg.dry_run {
                let mut r = StepResult::done(Outcome::Skipped(SkipReason::DryRun), detail);
                r.planned = Some(p);
                return Ok(r);
            }
            // Ahead of the wave only a new subnet is prepared (no baseline: nothing of the
            // app is compared, its own `plan` reads it when the wave is released).
            if msg.ahead {
                if !choice.create {
                    return Ok(StepResult::end(format!(
                        "{detail}: exists, nothing to prepare ahead"
                    )));
                }
                let mut next = msg.next(Step::PrepareSubnet);
                next.attempt = msg.attempt;
                next.plan = Some(p);
                return Ok(StepResult::next(next, detail));
            }
            // The baseline serves the Key Vault gate of `verify` only: without the gate it is
            // not read. A 404 there: the app was deleted since it was read above.
            let key_vault_references = if ctx.policy.gates.key_vault_references_must_resolve {
                match key_vault_statuses(&ctx.arm, &msg.target).await {
                    Err(StepError::Arm(e)) if e.status() == Some(404) => return gone(),
                    r => r?,
                }
            } else {
                Default::default()
            };
            let baseline = Baseline {
                key_vault_references,
            };
            let mut next = msg.next(Step::PrepareSubnet);
            // A re-plan (attempt > 0) reaches prepare-subnet a second time in this run: it
            // needs a MessageId of its own, or duplicate detection would drop it.
            next.attempt = msg.attempt;
            next.plan = Some(p);
            next.baseline = Some(baseline);
            Ok(StepResult::next(next, detail))
        }
    }
}

/// `outboundVnetRouting` as the policy wants it (api ≥ 2024-11-01 shape; all five fields, since
/// whether PATCH merges the nested object is not documented).
pub(super) fn desired_routing(policy: &Policy) -> Value {
    let r = &policy.routing;
    json!({
        "allTraffic": false,
        "applicationTraffic": r.all_traffic,
        "imagePullTraffic": r.image_pull,
        "contentShareTraffic": r.content_share,
        "backupRestoreTraffic": r.backup_restore,
    })
}

/// The site's routing in the `outboundVnetRouting` shape. We read sites at 2024-11-01, where
/// the live service answers with `outboundVnetRouting`; an answer in the older shape (legacy
/// `vnet*Enabled` flags, as the stored 2024-11-01 example still shows) is read as the same
/// thing (arm-vnet reference §0, §4). `allTraffic` switches every kind on.
pub(super) fn current_routing(site: &Site) -> Value {
    let p = &site.properties;
    let mut r = match &p.outbound_vnet_routing {
        Some(r) => serde_json::to_value(r).expect("serialises"),
        None => json!({
            "applicationTraffic": p.vnet_route_all_enabled.unwrap_or(false),
            "imagePullTraffic": p.vnet_image_pull_enabled.unwrap_or(false),
            "contentShareTraffic": p.vnet_content_share_enabled.unwrap_or(false),
            "backupRestoreTraffic": p.vnet_backup_restore_enabled.unwrap_or(false),
        }),
    };
    if r["allTraffic"] == true {
        for k in [
            "applicationTraffic",
            "imagePullTraffic",
            "contentShareTraffic",
            "backupRestoreTraffic",
        ] {
            r[k] = json!(true);
        }
    }
    r
}

/// Whether `current` (in the `outboundVnetRouting` shape) routes as `desired` does.
fn routes_as(desired: &Value, current: &Value) -> bool {
    desired
        .as_object()
        .expect("object")
        .iter()
        .all(|(k, v)| current.get(k).unwrap_or(&Value::Bool(false)) == v)
}

async fn configure(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let desired = desired_routing(&ctx.policy);
    let settle = ctx.scaled(Duration::from_secs(ctx.policy.settle_seconds));
    let done = || {
        Ok(StepResult::next_after(
            verify_next(msg),
            settle,
            "routing already as configured",
        ))
    };
    // The routing the cut-over's PATCH returned moments ago, trusted only when it needs no
    // write: one that does is read again, since an earlier delivery of this very message may
    // have configured it (a second delivery must write nothing). Not trusted either in a
    // message replayed by an operator, which may be days old, or in one without it (queued
    // by an earlier version).
    let carried = msg
        .routing
        .as_ref()
        .filter(|_| msg.replay == 0)
        .map(|r| serde_json::to_value(r).expect("routing serialises"));
    if carried.is_some_and(|r| routes_as(&desired, &r)) {
        return done();
    }
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    if routes_as(&desired, &current_routing(&site)) {
        return done();
    }
    ctx.arm
        .patch::<Value>(
            msg.target.as_str(),
            &json!({"properties": {"outboundVnetRouting": desired}}),
        )
        .await?;
    Ok(StepResult::next_after(
        verify_next(msg),
        settle,
        "outbound routing configured",
    ))
}

/// `verify` after `configure`: the routing seen at the cut-over is no fact of the steps after.
fn verify_next(msg: &StepMessage) -> StepMessage {
    let mut next = msg.next(Step::Verify);
    next.routing = None;
    next
}

async fn verify(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    let conns = connections(&ctx.arm, &msg.target).await?;
    let regional = conns
        .iter()
        .any(|c| !c.is_gateway() && c.properties.vnet_resource_id.as_ref() == Some(&p.subnet));
    let failed = |health: HealthFailure, detail: String| -> StepResult {
        if ctx.policy.rollback == RollbackMode::Auto {
            let mut rb = msg.next(Step::Rollback);
            rb.reason = Some(RollbackReason::Unhealthy(health));
            StepResult::next(rb, detail)
        } else {
            let reason = ParkReason::StepFailed {
                step: Step::Verify,
                cause: Cause::Health(health),
            };
            StepResult::done(Outcome::Parked(reason), detail)
        }
    };
    if !regional {
        return Ok(failed(
            HealthFailure::NotConnected,
            format!("no regional connection to {} after connect", p.subnet),
        ));
    }
    if conns.iter().any(|c| c.is_gateway()) {
        return Ok(failed(
            HealthFailure::GatewayStillPresent,
            "a gateway-based connection is present again".into(),
        ));
    }
    let baseline = msg.baseline.clone().unwrap_or_default();
    // Only references resolved before the migration are judged (`health::compare`): with none,
    // the list could not fail the gate and is not read.
    if ctx.policy.gates.key_vault_references_must_resolve
        && baseline
            .key_vault_references
            .values()
            .any(|s| *s == KeyVaultStatus::Resolved)
    {
        let now = key_vault_statuses(&ctx.arm, &msg.target).await?;
        match health::compare(&baseline.key_vault_references, &now) {
            KvHealth::Healthy => {}
            KvHealth::Pending(names) if msg.attempt + 1 < ctx.policy.max_attempts => {
                let delay = ctx.scaled(Duration::from_secs(ctx.policy.settle_seconds));
                return Ok(StepResult::next_after(
                    msg.retry(),
                    delay,
                    format!(
                        "Key Vault references still being evaluated: {}",
                        names.join(", ")
                    ),
                ));
            }
            KvHealth::Pending(names) | KvHealth::Broken(names) => {
                return Ok(failed(
                    HealthFailure::KvReferencesUnresolved,
                    format!(
                        "Key Vault references no longer resolve: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(probe) = &ctx.policy.gates.probe {
        let site: Site = ctx.arm.get(msg.target.as_str()).await?;
        let host = site
            .properties
            .default_host_name
            .clone()
            .unwrap_or_default();
        let client = reqwest::Client::new();
        if let Err(why) = health::probe(
            &client,
            &ctx.front_end,
            &host,
            &probe.path,
            probe.expected_status,
        )
        .await
        {
            return Ok(failed(HealthFailure::ProbeFailed, why));
        }
    }
    Ok(StepResult::done(
        Outcome::Migrated,
        format!("regional integration in {} verified", p.subnet),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(props: Value) -> Site {
        serde_json::from_value(json!({"id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a", "properties": props}))
            .unwrap()
    }

    #[test]
    fn routing_is_read_in_both_shapes() {
        let legacy = current_routing(&site(
            json!({"vnetRouteAllEnabled": true, "vnetImagePullEnabled": false}),
        ));
        assert_eq!(legacy["applicationTraffic"], true);
        assert_eq!(legacy["imagePullTraffic"], false);
        let new = current_routing(&site(
            json!({"outboundVnetRouting": {"applicationTraffic": true, "contentShareTraffic": false}}),
        ));
        assert_eq!(new["applicationTraffic"], true);
        assert_eq!(new["contentShareTraffic"], false);
        let all = current_routing(&site(json!({"outboundVnetRouting": {"allTraffic": true}})));
        assert_eq!(all["backupRestoreTraffic"], true);
    }
}
