//! One reconciler per step: observe ARM, compare with the desired state, act only on the
//! difference, and return the next step. Running any of them twice changes nothing the
//! second time, which is what makes duplicate deliveries, crashes and replays harmless.

use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::context::{StepContext, StepError};
use super::plan_cache::{connections, integration_of};
use crate::azure::arm::ArmError;
use crate::azure::models::{
    KeyVaultReference, KeyVaultStatus, Site, SubResource, Subnet, VirtualNetwork, WEB_DELEGATION,
};
use crate::azure::ResourceId;
use crate::migration::discover::{discover, slot_discoveries, SlotFilter};
use crate::migration::health::{self, KvHealth};
use crate::migration::ipam;
use crate::migration::plan::{Integration, TargetDecision};
use crate::migration::rollback::rollback;
use crate::pipeline::message::{Baseline, GatewaySnapshot, PlannedSubnet, Step, StepMessage};
use crate::pipeline::reason::{
    BlockedReason, Cause, HealthFailure, ParkReason, RollbackReason, SkipReason,
};
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;
use crate::policy::{Policy, RollbackMode};

/// Dispatches a message to its step's reconciler.
pub(crate) async fn run(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
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

fn planned(msg: &StepMessage) -> Result<&PlannedSubnet, StepError> {
    msg.plan.as_ref().ok_or_else(|| {
        StepError::Unexpected(format!(
            "{} message without a plan (was it edited by hand?)",
            msg.step
        ))
    })
}

pub(crate) async fn key_vault_statuses(
    ctx: &StepContext,
    target: &ResourceId,
) -> Result<std::collections::BTreeMap<String, KeyVaultStatus>, StepError> {
    let refs: Vec<KeyVaultReference> = ctx
        .arm
        .list(&format!("{target}/config/configreferences/appsettings"))
        .await?;
    Ok(health::statuses(&refs))
}

/// The target's plan as its site shows it now; `None` when the target no longer exists.
async fn plan_of_site(
    ctx: &StepContext,
    target: &ResourceId,
) -> Result<Option<ResourceId>, StepError> {
    let Some(site) = ctx.arm.get_opt::<Site>(target.as_str()).await? else {
        return Ok(None);
    };
    site.properties
        .server_farm_id
        .map(Some)
        .ok_or_else(|| StepError::Unexpected("the app has no serverFarmId".into()))
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
    let Some(plan_id) = plan_of_site(ctx, &msg.target).await? else {
        return gone();
    };
    let mut decision = ctx.plans.decision(&ctx.arm, &ctx.policy, &plan_id).await?;
    if !decision.targets.contains_key(&msg.target) {
        // Created after the decision was cached: decide again with it included.
        ctx.plans.invalidate(&plan_id);
        decision = ctx.plans.decision(&ctx.arm, &ctx.policy, &plan_id).await?;
    }
    let warn = if decision.warnings.is_empty() {
        String::new()
    } else {
        format!(" (warnings: {})", decision.warnings.join("; "))
    };
    match decision.targets.get(&msg.target) {
        None => Err(StepError::Unexpected(format!(
            "the target is not listed under its plan {plan_id}"
        ))),
        Some(TargetDecision::Blocked(reason)) => Ok(StepResult::done(
            Outcome::Blocked(*reason),
            format!("blocked by plan {plan_id}{warn}"),
        )),
        Some(TargetDecision::AlreadyRegional) => Ok(StepResult::done(
            Outcome::Skipped(SkipReason::AlreadyRegional),
            "already regional",
        )),
        Some(TargetDecision::NoIntegration) => Ok(StepResult::done(
            Outcome::Skipped(SkipReason::NoIntegration),
            "no VNet integration",
        )),
        Some(TargetDecision::Migrate(choice)) => {
            let p = PlannedSubnet {
                vnet: choice.vnet.clone(),
                subnet: choice.subnet.clone(),
                prefix: choice.prefix.to_string(),
                create: choice.create,
                required_prefix_length: Some(ipam::prefix_len_for(decision.required_addresses)),
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
            // The baseline serves the Key Vault gate of `verify` only: without the gate it is
            // not read. A 404 there: the app was deleted since it was read above.
            let key_vault_references = if ctx.policy.gates.key_vault_references_must_resolve {
                match key_vault_statuses(ctx, &msg.target).await {
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

/// The subnet as the policy wants it: Web delegation plus NSG / route table / NAT gateway.
fn desired_subnet(policy: &Policy, mut subnet: Subnet, prefix: &str) -> Subnet {
    if subnet.properties.address_prefix.is_none() && subnet.properties.address_prefixes.is_none() {
        subnet.properties.address_prefix = Some(prefix.to_string());
    }
    if !subnet.is_delegated_to_web() {
        let mut d: crate::azure::models::Delegation = serde_json::from_value(
            json!({"name": "delegation", "properties": {"serviceName": WEB_DELEGATION}}),
        )
        .expect("static delegation");
        if subnet
            .properties
            .delegations
            .iter()
            .flatten()
            .any(|x| x.name == d.name)
        {
            d.name = "webapp-delegation".into();
        }
        subnet
            .properties
            .delegations
            .get_or_insert_with(Vec::new)
            .push(d);
    }
    let attach = |id: &Option<ResourceId>| {
        id.as_ref().map(|id| SubResource {
            id: id.clone(),
            extra: Default::default(),
        })
    };
    if let Some(nsg) = attach(&policy.subnet.network_security_group_id) {
        subnet.properties.network_security_group = Some(nsg);
    }
    if let Some(rt) = attach(&policy.subnet.route_table_id) {
        subnet.properties.route_table = Some(rt);
    }
    if let Some(nat) = attach(&policy.subnet.nat_gateway_id) {
        subnet.properties.nat_gateway = Some(nat);
    }
    subnet
}

/// The lowest free block for a new subnet, from the VNet as it is now. Subnet writes in one
/// VNet run one at a time (the step's session is the VNet), so plans that forecast the same
/// block do not collide: the second one to get here takes the next free block.
fn allocate(vnet: &VirtualNetwork, p: &PlannedSubnet) -> Result<Option<String>, StepError> {
    let bad = |e: ipam::IpamError| StepError::Unexpected(format!("{}: {e}", p.vnet));
    let space =
        ipam::parse_prefixes(&vnet.properties.address_space.address_prefixes).map_err(bad)?;
    let existing: Vec<String> = vnet
        .properties
        .subnets
        .iter()
        .flat_map(|s| s.prefixes())
        .collect();
    let used = ipam::parse_prefixes(&existing).map_err(bad)?;
    let preferred: ipnet::Ipv4Net = p
        .prefix
        .parse()
        .map_err(|e| StepError::Unexpected(format!("planned prefix {}: {e}", p.prefix)))?;
    let required = p
        .required_prefix_length
        .unwrap_or(preferred.prefix_len())
        .max(preferred.prefix_len());
    Ok(ipam::choose_prefix(&space, &used, required, preferred.prefix_len()).map(|n| n.to_string()))
}

fn is_conflict(e: &ArmError) -> bool {
    matches!(
        e.code(),
        Some(
            "NetcfgSubnetRangesOverlap"
                | "NetcfgSubnetRangeOutsideVnet"
                | "InUseSubnetCannotBeUpdated"
        )
    )
}

async fn prepare_subnet(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    // One read serves both questions: a VNet GET holds its subnets as full subnet objects
    // (arm-vnet reference §5), and a new subnet's block is allocated from the same VNet.
    let vnet: VirtualNetwork = ctx.arm.get(p.vnet.as_str()).await?;
    let current: Option<Subnet> = vnet
        .properties
        .subnets
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(p.subnet.name()))
        .cloned();
    let prefix = match &current {
        Some(_) => p.prefix.clone(),
        None => match allocate(&vnet, p)? {
            Some(prefix) => prefix,
            None => {
                return Ok(StepResult::done(
                    Outcome::Blocked(BlockedReason::NoAddressSpace),
                    format!("no free block for {} left in {}", p.prefix, p.vnet),
                ))
            }
        },
    };
    let base = current.clone().unwrap_or_else(|| Subnet {
        name: p.subnet.name().to_string(),
        ..Default::default()
    });
    let desired = desired_subnet(&ctx.policy, base, &prefix);
    let mut next_plan = p.clone();
    // A subnet whose last write failed is written again, even if it shows what we want.
    if current.as_ref() == Some(&desired) && !desired.provisioning_failed() {
        next_plan.prefix = desired
            .prefixes()
            .first()
            .cloned()
            .unwrap_or(next_plan.prefix);
        let mut next = msg.next(Step::Disconnect);
        next.plan = Some(next_plan);
        return Ok(StepResult::next(
            next,
            format!("subnet {} already prepared", p.subnet),
        ));
    }
    let body = serde_json::to_value(&desired).expect("subnet serialises");
    match ctx.arm.put::<Subnet>(p.subnet.as_str(), &body).await {
        Ok(s) => {
            next_plan.prefix = s.prefixes().first().cloned().unwrap_or(next_plan.prefix);
            let mut next = msg.next(Step::Disconnect);
            next.plan = Some(next_plan);
            let verb = if current.is_some() {
                "updated"
            } else {
                "created"
            };
            Ok(StepResult::next(
                next,
                format!("{verb} subnet {} ({})", p.subnet, prefix),
            ))
        }
        // Contention (another write running in the VNet) is not about our subnet: retry.
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) if is_conflict(&e) => {
            // The VNet changed since planning (another plan took the range): plan again.
            ctx.plans.invalidate_target(&msg.target);
            let mut again = msg.next(Step::Plan);
            again.attempt = msg.attempt + 1;
            again.plan = None;
            if again.attempt >= ctx.policy.max_attempts {
                return Ok(StepResult::done(
                    Outcome::Parked(ParkReason::SubnetConflict),
                    e.to_string(),
                ));
            }
            Ok(StepResult::next(
                again,
                format!("subnet write refused, re-planning: {e}"),
            ))
        }
        Err(e) if matches!(e.status(), Some(400 | 409)) => Ok(StepResult::done(
            Outcome::Blocked(BlockedReason::SubnetInUse),
            e.to_string(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The gateway connection saved before `disconnect`: carried by the message, or (when the
/// message was sent before the save, e.g. a redelivery after a crash) kept in the ledger.
pub(crate) async fn saved_gateway(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<Option<GatewaySnapshot>, StepError> {
    Ok(match &msg.gateway {
        Some(g) => Some(g.clone()),
        None => ctx
            .ledger
            .target(&msg.run, &msg.target)
            .await?
            .and_then(|t| t.gateway),
    })
}

/// The cut-over, in one step: remove the gateway-based connection, then join the planned
/// subnet at once, so the app is off its VNet for the two ARM calls only, never for the time a
/// `connect` message would wait behind the backlog (issue 9). The snapshot is saved before the
/// DELETE, so a redelivery (after a crash, or a failure after the DELETE re-sent by the error
/// policy) finds the connection gone, takes the snapshot from the message or the ledger, and
/// continues with the connect part; one that finds the app already in the subnet goes on to
/// `configure`.
async fn disconnect(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    let conns = connections(&ctx.arm, &msg.target).await?;
    let (gateway, removed) = match conns.iter().find(|c| c.is_gateway()) {
        Some(c) => {
            let vnet = c.properties.vnet_resource_id.clone().ok_or_else(|| {
                StepError::Unexpected(format!(
                    "gateway connection {} has no vnetResourceId",
                    c.name
                ))
            })?;
            let snapshot = GatewaySnapshot {
                name: c.name.clone(),
                vnet_resource_id: vnet,
                dns_servers: c.properties.dns_servers.clone(),
                cert_thumbprint: c.properties.cert_thumbprint.clone(),
                cert_blob: c.properties.cert_blob.clone(),
                routes: c
                    .properties
                    .routes
                    .as_ref()
                    .map(|r| serde_json::to_value(r).expect("routes serialise")),
            };
            // Saved before the delete: a crash right after it must not lose the only copy.
            ctx.ledger
                .save_gateway(&msg.run, &msg.target, &snapshot)
                .await?;
            ctx.arm
                .delete(&format!(
                    "{}/virtualNetworkConnections/{}",
                    msg.target, c.name
                ))
                .await?;
            (snapshot, true)
        }
        None => match saved_gateway(ctx, msg).await? {
            Some(saved) => (saved, false),
            // Not removed by us: someone changed the app's integration since `plan`.
            // Nothing of ours happened to it, so end from what ARM shows, writing nothing.
            None => {
                let site: Site = ctx.arm.get(msg.target.as_str()).await?;
                return Ok(match integration_of(&site, &conns) {
                    Integration::Regional { subnet } => StepResult::done(
                        Outcome::Skipped(SkipReason::AlreadyRegional),
                        format!("made regional in {subnet} outside this run"),
                    ),
                    _ => StepResult::done(
                        Outcome::Skipped(SkipReason::NoIntegration),
                        "gateway-based connection removed outside this run",
                    ),
                });
            }
        },
    };
    // When the DELETE returned; on a redelivery, when the connection was seen gone (the ledger
    // keeps the time recorded first, which is the DELETE's unless that step never recorded).
    let disconnected_at = OffsetDateTime::now_utc();
    let mut carried = msg.clone();
    carried.gateway = Some(gateway.clone());
    // Right after our DELETE the app cannot be in the subnet yet: PATCH without reading first.
    let joined = if removed {
        join_subnet(ctx, &carried, p).await
    } else {
        connect(ctx, &carried).await
    };
    match joined {
        Ok(mut result) => {
            result.detail = if removed {
                format!(
                    "removed gateway-based connection {}; {}",
                    gateway.name, result.detail
                )
            } else {
                format!(
                    "no gateway-based connection left (already removed); {}",
                    result.detail
                )
            };
            result.cutover.disconnected_at = Some(disconnected_at);
            Ok(result)
        }
        Err(e) => Err(StepError::Disconnected {
            gateway: Box::new(gateway),
            disconnected_at,
            source: Box::new(e),
        }),
    }
}

/// The connect part of the cut-over on its own: joins the planned subnet unless the app is in
/// it already. Runs `connect` messages queued by earlier versions, which sent it as a step of
/// its own, and the cut-over redelivered after the gateway connection was gone.
async fn connect(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    if site.properties.virtual_network_subnet_id.as_ref() == Some(&p.subnet) {
        // The PATCH of an earlier delivery went through: the app has been back on a VNet since
        // then at the latest, which is all this delivery can tell.
        let mut result = StepResult::next(configure_next(msg, &site), "already connected");
        result.cutover.connected_at = Some(OffsetDateTime::now_utc());
        return Ok(result);
    }
    join_subnet(ctx, msg, p).await
}

/// The `configure` message after a cut-over that has just seen `site`, carrying its routing.
/// Carried rather than configured in the cut-over itself: the cut-over holds its VNet's
/// session, and another write there would keep the VNet's next cut-over (and its app, offline
/// meanwhile) waiting.
fn configure_next(msg: &StepMessage, site: &Site) -> StepMessage {
    let mut next = msg.next(Step::Configure);
    next.routing =
        Some(serde_json::from_value(current_routing(site)).expect("routing in its own shape"));
    next
}

/// `PATCH` the site into the planned subnet: `configure` next, or rollback when ARM refuses.
async fn join_subnet(
    ctx: &StepContext,
    msg: &StepMessage,
    p: &PlannedSubnet,
) -> Result<StepResult, StepError> {
    let body = json!({"properties": {"virtualNetworkSubnetId": p.subnet.as_str()}});
    // The PATCH answers with the site (200 with the full site, as the site PUT of the
    // recordings does: recording test_webapp_vnetE2E #22; or, after a 202, the final GET of
    // the LRO): its routing goes to `configure` in the message.
    match ctx.arm.patch::<Site>(msg.target.as_str(), &body).await {
        Ok(site) => {
            let mut result = StepResult::next(
                configure_next(msg, &site),
                format!("connected to {}", p.subnet),
            );
            result.cutover.connected_at = Some(OffsetDateTime::now_utc());
            Ok(result)
        }
        // The site or VNet busy with another operation is no rejection: retry.
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e)
            if matches!(e.status(), Some(400 | 404 | 409))
                || matches!(e, ArmError::LroFailed { .. }) =>
        {
            let mut rb = msg.next(Step::Rollback);
            rb.reason = Some(RollbackReason::ConnectRejected(
                e.code().unwrap_or("validation").to_string(),
            ));
            Ok(StepResult::next(
                rb,
                format!("ARM refused the connection: {e}"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `outboundVnetRouting` as the policy wants it (api ≥ 2024-11-01 shape; all five fields, since
/// whether PATCH merges the nested object is not documented).
fn desired_routing(policy: &Policy) -> Value {
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
fn current_routing(site: &Site) -> Value {
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
        let now = key_vault_statuses(ctx, &msg.target).await?;
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
        if let Err(why) = health::probe(&client, &host, &probe.path, probe.expected_status).await {
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
