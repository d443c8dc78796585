//! `rollback`: remove regional integration and re-create the gateway-based connection from the
//! snapshot saved by `disconnect` (reference/arm-vnet.md §2.2, step 1: declare the VNet to the
//! app; the gateway keeps the root certificate it already had, one per subscription × VNet).

use serde_json::{json, Value};

use super::context::{StepContext, StepError};
use super::plan_cache::connections;
use crate::azure::models::Site;
use crate::migration::steps::saved_gateway;
use crate::pipeline::message::StepMessage;
use crate::pipeline::reason::RollbackReason;
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;

pub(crate) async fn rollback(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<StepResult, StepError> {
    let reason = msg.reason.clone().unwrap_or(RollbackReason::Requested);
    let site: Site = ctx.arm.get(msg.target.as_str()).await?;
    let mut did = Vec::new();
    if site.properties.virtual_network_subnet_id.is_some() {
        ctx.arm
            .delete(&format!("{}/networkConfig/virtualNetwork", msg.target))
            .await?;
        did.push("removed regional integration".to_string());
    }
    let snapshot = saved_gateway(ctx, msg).await?;
    if let Some(g) = snapshot {
        let conns = connections(&ctx.arm, &msg.target).await?;
        let present = conns
            .iter()
            .any(|c| c.is_gateway() && c.name.eq_ignore_ascii_case(&g.name));
        if !present {
            let mut props = json!({"vnetResourceId": g.vnet_resource_id.as_str()});
            if let Some(dns) = &g.dns_servers {
                props["dnsServers"] = Value::String(dns.clone());
            }
            ctx.arm
                .put::<Value>(
                    &format!("{}/virtualNetworkConnections/{}", msg.target, g.name),
                    &json!({"location": site.location, "properties": props}),
                )
                .await?;
            did.push(format!("re-created gateway-based connection {}", g.name));
        }
    }
    let detail = if did.is_empty() {
        "nothing to undo".to_string()
    } else {
        did.join("; ")
    };
    Ok(StepResult::done(Outcome::RolledBack(reason), detail))
}
