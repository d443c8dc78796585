//! `rollback`: remove regional integration and re-add the gateway-based connection saved by
//! `disconnect`, which is a handshake (arm-vnet reference §2.2): declare the VNet to the app,
//! make sure the VNet's VPN gateway trusts the app's certificate, generate a VPN client package
//! and hand it to the app; the target is rolled back only once the app reports the connection
//! in sync (`resyncRequired: false`).
//!
//! Every part observes ARM first and acts only on the difference, so a redelivered rollback
//! continues where the last one stopped. A part Azure refuses parks the target with what the
//! operator must do; transient failures go back to the error policy like any step's.

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::context::{StepContext, StepError};
use super::holds::{self, Work};
use super::plan_cache::connections;
use crate::azure::arm::ArmError;
use crate::azure::models::{Site, VirtualNetwork, VirtualNetworkGateway, VnetConnection};
use crate::azure::ResourceId;
use crate::migration::cutover::saved_gateway;
use crate::pipeline::message::{GatewaySnapshot, StepMessage};
use crate::pipeline::reason::{HandshakeFailure, ParkReason, RollbackReason};
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;

/// A part of the handshake Azure refused (or could not start): what the target parks with.
struct Refused {
    failure: HandshakeFailure,
    detail: String,
}

/// `Ok(Err(refused))` parks the target; `Err` goes to the error policy.
type Part<T> = Result<Result<T, Refused>, StepError>;

/// A final refusal (a 4xx, a failed LRO) becomes `failure`; transient and other errors are
/// left to the error policy (retries, then `rollback-failed:<cause>`).
fn refusal<T>(e: ArmError, failure: HandshakeFailure) -> Part<T> {
    let refused = !e.is_transient()
        && (matches!(e.status(), Some(400..=499)) || matches!(e, ArmError::LroFailed { .. }));
    if refused {
        Ok(Err(Refused {
            failure,
            detail: e.to_string(),
        }))
    } else {
        Err(e.into())
    }
}

pub(crate) async fn rollback(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<StepResult, StepError> {
    let reason = msg.reason.clone().unwrap_or(RollbackReason::Requested);
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    let mut did = Vec::new();
    if let Some(subnet) = &site.properties.virtual_network_subnet_id {
        // The removal holds the VNet for ~50 s: it waits for the cut-over in progress there,
        // and later cut-overs wait for it before removing their gateway connections (`holds`).
        let _hold = match subnet.vnet() {
            Some(vnet) => Some(
                ctx.holds
                    .enter(&vnet, Work::Removal, ctx.scaled(holds::LIMIT))
                    .await,
            ),
            None => None,
        };
        ctx.arm
            .delete(&format!("{}/networkConfig/virtualNetwork", msg.target))
            .await?;
        did.push("removed regional integration".to_string());
    }
    let mut in_sync_at = None;
    if let Some(g) = saved_gateway(ctx, msg).await? {
        if let Err(r) = reconnect(ctx, msg, &site, &g, &mut did).await? {
            did.push(r.detail);
            return Ok(StepResult::done(
                Outcome::Parked(ParkReason::Handshake(r.failure)),
                did.join("; "),
            ));
        }
        // The app is back on its VNet once ARM shows the connection in sync: its downtime
        // ends here (DESIGN §3).
        in_sync_at = Some(OffsetDateTime::now_utc());
    }
    let detail = if did.is_empty() {
        "nothing to undo".to_string()
    } else {
        did.join("; ")
    };
    let mut result = StepResult::done(Outcome::RolledBack(reason), detail);
    result.cutover.connected_at = in_sync_at;
    Ok(result)
}

/// The handshake, from whatever point ARM shows it reached.
async fn reconnect(
    ctx: &StepContext,
    msg: &StepMessage,
    site: &Site,
    g: &GatewaySnapshot,
    did: &mut Vec<String>,
) -> Part<()> {
    let conn_path = format!("{}/virtualNetworkConnections/{}", msg.target, g.name);
    let existing = connections(&ctx.arm, &msg.target)
        .await?
        .into_iter()
        .find(|c| c.is_gateway() && c.name.eq_ignore_ascii_case(&g.name));
    if existing
        .as_ref()
        .is_some_and(|c| c.properties.resync_required == Some(false))
    {
        return Ok(Ok(()));
    }
    // Read before any write: without a gateway nothing below can succeed.
    let Some(mut gateway) = gateway_of(ctx, &g.vnet_resource_id).await? else {
        return Ok(Err(Refused {
            failure: HandshakeFailure::GatewayMissing,
            detail: format!(
                "virtual network {} has no VPN gateway to reconnect {} through",
                g.vnet_resource_id, g.name
            ),
        }));
    };
    let conn = match existing {
        Some(c) => c,
        None => {
            let mut props = json!({"vnetResourceId": g.vnet_resource_id.as_str()});
            if let Some(dns) = &g.dns_servers {
                props["dnsServers"] = Value::String(dns.clone());
            }
            let c: VnetConnection = ctx
                .arm
                .put(
                    &conn_path,
                    &json!({"location": site.location, "properties": props}),
                )
                .await?;
            did.push(format!("declared gateway-based connection {}", g.name));
            c
        }
    };
    // The declare answer carries the app's certificate; the snapshot's is the same one (one per
    // subscription × VNet) and serves when ARM leaves it out.
    let cert = conn
        .properties
        .cert_blob
        .clone()
        .or_else(|| g.cert_blob.clone())
        .ok_or_else(|| {
            StepError::Unexpected(format!(
                "connection {} has no certBlob and none was saved",
                g.name
            ))
        })?;
    if !gateway.trusts(&cert) {
        let thumb = conn
            .properties
            .cert_thumbprint
            .as_deref()
            .or(g.cert_thumbprint.as_deref())
            .unwrap_or_default();
        let name = format!(
            "AppServiceCertificate-{}",
            thumb.get(..8).unwrap_or(g.name.as_str())
        );
        gateway.add_root_certificate(&name, &cert);
        let body = serde_json::to_value(&gateway).expect("gateway serialises");
        if let Err(e) = ctx.arm.put::<Value>(gateway.id.as_str(), &body).await {
            return refusal(e, HandshakeFailure::RootCertificateRefused);
        }
        did.push(format!("added root certificate {name} to {}", gateway.id));
    }
    // A package is a snapshot of the gateway's trust: generated after the certificate is on it.
    let package = match ctx
        .arm
        .post_json(
            &format!("{}/generatevpnclientpackage", gateway.id),
            &json!({"processorArchitecture": "Amd64"}),
        )
        .await
    {
        Ok(Value::String(url)) => url,
        Ok(other) => {
            return Err(StepError::Unexpected(format!(
                "generatevpnclientpackage on {} answered {other} instead of a package URL",
                gateway.id
            )))
        }
        Err(e) => return refusal(e, HandshakeFailure::PackageRefused),
    };
    let handed = ctx
        .arm
        .put::<Value>(
            &format!("{conn_path}/gateways/primary"),
            &json!({"location": site.location,
                "properties": {"vnetName": g.name, "vpnPackageUri": package}}),
        )
        .await;
    if let Err(e) = handed {
        return refusal(e, HandshakeFailure::PackageRefused);
    }
    did.push(format!(
        "handed a VPN package of {} to {}",
        gateway.id, g.name
    ));
    let now: VnetConnection = ctx.arm.get(&conn_path).await?;
    if now.properties.resync_required != Some(false) {
        return Ok(Err(Refused {
            failure: HandshakeFailure::NotConnected,
            detail: format!("connection {} still reports resyncRequired", g.name),
        }));
    }
    did.push(format!("gateway-based connection {} is in sync", g.name));
    Ok(Ok(()))
}

/// The VPN gateway of `vnet`, found as ARM exposes it: the gateway whose ip configuration the
/// VNet's `GatewaySubnet` lists, and which points back at a subnet of the VNet.
async fn gateway_of(
    ctx: &StepContext,
    vnet: &ResourceId,
) -> Result<Option<VirtualNetworkGateway>, StepError> {
    let Some(v) = ctx.arm.get_opt::<VirtualNetwork>(vnet.as_str()).await? else {
        return Ok(None);
    };
    for id in v.gateway_ids() {
        if let Some(gw) = ctx
            .arm
            .get_opt::<VirtualNetworkGateway>(id.as_str())
            .await?
        {
            if gw.is_attached_to(vnet) {
                return Ok(Some(gw));
            }
        }
    }
    Ok(None)
}
