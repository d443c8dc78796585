//! The cut-over: remove the gateway-based connection and join the planned subnet in one
//! invocation, so an app is offline for the two ARM calls only; idempotent across redeliveries.

use serde_json::json;
use time::OffsetDateTime;

use super::context::{StepContext, StepError};
use super::holds::{self, Work};
use super::plan_cache::{connections, integration_of};
use super::steps::{current_routing, planned};
use super::window;
use crate::azure::arm::ArmError;
use crate::azure::models::Site;
use crate::migration::plan::Integration;
use crate::pipeline::message::{GatewaySnapshot, PlannedSubnet, Step, StepMessage};
use crate::pipeline::reason::{RollbackReason, SkipReason};
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;

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
pub(super) async fn disconnect(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    // Observed after any removal of ours in the destination VNet ends, and none starts until
    // the join does (`holds`): the app must not go offline for the rest of a removal.
    let _hold = ctx
        .holds
        .enter(&p.vnet, Work::CutOver, ctx.scaled(holds::LIMIT))
        .await;
    let conns = connections(&ctx.arm, &msg.target).await?;
    let (gateway, removed) = match conns.iter().find(|c| c.is_gateway()) {
        Some(c) => {
            // Not cut yet: it starts only inside the target's maintenance window (a cut-over
            // already under way, its connection gone, is never held).
            if let Some(wait) = outside_window(ctx, msg).await? {
                return Ok(wait);
            }
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

/// When the policy has windows and none that covers the target is open: the cut-over again,
/// scheduled for the next opening (the site is read for its tags only then).
async fn outside_window(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<Option<StepResult>, StepError> {
    if ctx.policy.windows.is_empty() {
        return Ok(None);
    }
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    let now = ctx.now();
    Ok(
        match window::admission(&ctx.policy.windows, site.tags.as_ref(), now) {
            window::Admission::Now => None,
            window::Admission::Until(opens) => {
                let wait = (opens - now).unsigned_abs();
                Some(StepResult::next_after(
                    msg.deferred(),
                    ctx.scaled(wait),
                    format!(
                        "outside its maintenance window: the cut-over waits until {}",
                        opens
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    ),
                ))
            }
        },
    )
}

/// The connect part of the cut-over on its own: joins the planned subnet unless the app is in
/// it already. Runs `connect` messages queued by earlier versions, which sent it as a step of
/// its own, and the cut-over redelivered after the gateway connection was gone.
pub(super) async fn connect(ctx: &StepContext, msg: &StepMessage) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    if site.properties.virtual_network_subnet_id.as_ref() == Some(&p.subnet) {
        // The PATCH of an earlier delivery went through: the app has been back on a VNet since
        // then at the latest, which is all this delivery can tell.
        let mut result = StepResult::next(configure_next(msg, Some(&site)), "already connected");
        result.cutover.connected_at = Some(OffsetDateTime::now_utc());
        return Ok(result);
    }
    join_subnet(ctx, msg, p).await
}

/// The `configure` message after a cut-over, carrying the routing of the site it has just
/// seen (if it saw it). Carried rather than configured in the cut-over itself: the cut-over
/// holds its VNet's session, and another write there would keep the VNet's next cut-over (and
/// its app, offline meanwhile) waiting.
fn configure_next(msg: &StepMessage, site: Option<&Site>) -> StepMessage {
    let mut next = msg.next(Step::Configure);
    next.routing = site.map(|site| {
        serde_json::from_value(current_routing(site)).expect("routing in its own shape")
    });
    next
}

/// `PATCH` the site into the planned subnet: `configure` next, or rollback when ARM refuses.
async fn join_subnet(
    ctx: &StepContext,
    msg: &StepMessage,
    p: &PlannedSubnet,
) -> Result<StepResult, StepError> {
    let body = json!({"properties": {"virtualNetworkSubnetId": p.subnet.as_str()}});
    // A 200 answers with the site (the full site, as the site PUT of the recordings does:
    // recording test_webapp_vnetE2E #22): its routing goes to `configure` in the message.
    // After a 202 the join is done when its operation says so; the site is not read again
    // here but by `configure`, since the VNet's next cut-over (its app about to go offline)
    // waits for this step to end.
    match ctx.arm.patch_done::<Site>(msg.target.as_str(), &body).await {
        Ok(site) => {
            let mut result = StepResult::next(
                configure_next(msg, site.as_ref()),
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
