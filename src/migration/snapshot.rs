//! Exports the fleet in scope from ARM in the fleet-file format, so a team can rehearse on a
//! copy of its own estate (VPN gateways included, which rollback needs). Only reads.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::azure::arm::{ArmClient, ArmError};
use crate::azure::models::VirtualNetwork;
use crate::azure::{ResourceId, ResourceKind};
use crate::fleet::Fleet;

fn id_of(v: &Value) -> Option<ResourceId> {
    v.get("id")
        .and_then(Value::as_str)
        .and_then(|s| ResourceId::parse(s).ok())
}

pub(crate) async fn collect(arm: &ArmClient, subscriptions: &[String]) -> Result<Fleet, ArmError> {
    let mut out: Vec<Value> = Vec::new();
    let mut have: BTreeSet<ResourceId> = BTreeSet::new();
    let mut push = |v: Value, out: &mut Vec<Value>| {
        if let Some(id) = id_of(&v) {
            if have.insert(id) {
                out.push(v);
            }
        }
    };
    for sub in subscriptions {
        for path in [
            format!("/subscriptions/{sub}/resourcegroups"),
            format!("/subscriptions/{sub}/providers/Microsoft.Web/serverfarms"),
            format!("/subscriptions/{sub}/providers/Microsoft.Network/virtualNetworks"),
            format!("/subscriptions/{sub}/providers/Microsoft.Insights/autoscalesettings"),
        ] {
            for v in arm.list::<Value>(&path).await? {
                push(v, &mut out);
            }
        }
        let sites: Vec<Value> = arm
            .list(&format!(
                "/subscriptions/{sub}/providers/Microsoft.Web/sites"
            ))
            .await?;
        for site in sites {
            let Some(site_id) = id_of(&site) else {
                continue;
            };
            push(site, &mut out);
            let slots: Vec<Value> = arm.list(&format!("{site_id}/slots")).await?;
            let mut targets = vec![site_id];
            for slot in slots {
                if let Some(id) = id_of(&slot) {
                    targets.push(id);
                }
                push(slot, &mut out);
            }
            for t in targets {
                for c in arm
                    .list::<Value>(&format!("{t}/virtualNetworkConnections"))
                    .await?
                {
                    // Regional entries are derived from the site by ARM; only gateway-based
                    // connections are resources of their own.
                    if c.pointer("/properties/isSwift").and_then(Value::as_bool) == Some(true) {
                        continue;
                    }
                    if let Some(vnet) = c
                        .pointer("/properties/vnetResourceId")
                        .and_then(Value::as_str)
                        .and_then(|s| ResourceId::parse(s).ok())
                    {
                        if vnet.kind() == ResourceKind::ClassicVirtualNetwork
                            && !have_id(&out, &vnet)
                        {
                            if let Some(v) = arm.get_opt::<Value>(vnet.as_str()).await? {
                                push(v, &mut out);
                            }
                        }
                    }
                    push(c, &mut out);
                }
                for r in arm
                    .list::<Value>(&format!("{t}/config/configreferences/appsettings"))
                    .await?
                {
                    push(r, &mut out);
                }
            }
        }
    }
    // VNets peered from elsewhere (another subscription) that planning may need.
    let remotes: Vec<ResourceId> = out
        .iter()
        .filter(|v| id_of(v).map(|i| i.kind()) == Some(ResourceKind::VirtualNetwork))
        .flat_map(|v| {
            v.pointer("/properties/virtualNetworkPeerings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| {
            p.pointer("/properties/remoteVirtualNetwork/id")
                .and_then(Value::as_str)
                .and_then(|s| ResourceId::parse(s).ok())
        })
        .collect();
    for r in remotes {
        if !have_id(&out, &r) {
            if let Some(v) = arm.get_opt::<Value>(r.as_str()).await? {
                push(v, &mut out);
            }
        }
    }
    // The VPN gateways of those VNets (found from their GatewaySubnet, as rollback finds
    // them): rolling back re-adds gateway-based connections through them.
    let gateways: Vec<ResourceId> = out
        .iter()
        .filter(|v| id_of(v).map(|i| i.kind()) == Some(ResourceKind::VirtualNetwork))
        .filter_map(|v| serde_json::from_value::<VirtualNetwork>(v.clone()).ok())
        .flat_map(|v| v.gateway_ids())
        .collect();
    for g in gateways {
        if !have_id(&out, &g) {
            if let Some(v) = arm.get_opt::<Value>(g.as_str()).await? {
                push(v, &mut out);
            }
        }
    }
    Ok(Fleet { resources: out })
}

fn have_id(out: &[Value], id: &ResourceId) -> bool {
    out.iter().any(|v| id_of(v).as_ref() == Some(id))
}
