//! `virtualNetworkConnections` of sites, slots and plans: the stored gateway-based entries
//! plus the entry App Service derives from regional integration.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::regional::{apply_integration, regional_name, set_vnet_name};
use super::{bad_request, current_subnet, gateway_connections, parse_id, plan_members};
use crate::azure::{ResourceId, ResourceKind};
use crate::sim::reply::Reply;
use crate::sim::state::State;

/// The derived regional entry of `target`'s connection list.
fn regional_entry(st: &State, target: &ResourceId, site: &Value) -> Option<Value> {
    let subnet = current_subnet(site)?;
    let name = regional_name(st, &subnet);
    Some(json!({
        "id": format!("{}/virtualNetworkConnections/{name}", target.as_str()),
        "name": name,
        "type": "Microsoft.Web/sites/virtualNetworkConnections",
        "location": site["location"],
        "properties": {
            "vnetResourceId": subnet.as_str(),
            "certThumbprint": null, "certBlob": null, "routes": null,
            "resyncRequired": false, "dnsServers": null, "isSwift": true
        }
    }))
}

/// `GET {site|slot}/virtualNetworkConnections`: a bare JSON array.
pub(crate) fn list_connections(st: &State, target: &ResourceId) -> Reply {
    let Some(site) = st.store.get(target) else {
        return Reply::not_found(target.as_str());
    };
    let mut list = gateway_connections(st, target);
    list.extend(regional_entry(st, target, site));
    Reply::ok(Value::Array(list))
}

pub(crate) fn get_connection(st: &State, id: &ResourceId) -> Reply {
    if let Some(v) = st.store.get(id) {
        return Reply::ok(v.clone());
    }
    let target = id.parent().expect("connection has a parent");
    match st
        .store
        .get(&target)
        .and_then(|s| regional_entry(st, &target, s))
    {
        Some(e)
            if e["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(id.name())) =>
        {
            Reply::ok(e)
        }
        _ => Reply::not_found(id.as_str()),
    }
}

/// Gateway-based (re)connect: `PUT {target}/virtualNetworkConnections/{vnetName}`.
pub(crate) fn put_connection(st: &mut State, id: &ResourceId, body: &Value) -> Reply {
    let target = id.parent().expect("connection has a parent");
    let Some(mut site) = st.store.get(&target).cloned() else {
        return Reply::not_found(target.as_str());
    };
    let Some(vnet) = parse_id(&body["properties"]["vnetResourceId"]) else {
        return bad_request(
            "properties.vnetResourceId must be the resource id of a virtual network.".into(),
        );
    };
    if !matches!(
        vnet.kind(),
        ResourceKind::VirtualNetwork | ResourceKind::ClassicVirtualNetwork
    ) {
        return bad_request(format!("{} is not a virtual network id.", vnet.as_str()));
    }
    if !st.store.contains(&vnet) {
        return Reply::error(
            404,
            "NotFound",
            format!("The virtual network {} was not found.", vnet.as_str()),
        );
    }
    if current_subnet(&site).is_some() {
        return Reply::error(409, "Conflict", "The app already has regional virtual network integration. Remove it before adding a gateway-required integration.");
    }
    let digest = Sha256::digest(
        format!(
            "{}|{}",
            target.subscription().to_ascii_lowercase(),
            vnet.key()
        )
        .as_bytes(),
    );
    let thumb = hex::encode_upper(&digest[..20]);
    let ty = if target.kind() == ResourceKind::Slot {
        "Microsoft.Web/sites/slots/virtualNetworkConnections"
    } else {
        "Microsoft.Web/sites/virtualNetworkConnections"
    };
    let entry = json!({
        "id": format!("{}/virtualNetworkConnections/{}", target.as_str(), id.name()),
        "name": id.name(),
        "type": ty,
        "location": site["location"],
        "properties": {
            "vnetResourceId": vnet.as_str(),
            "certThumbprint": thumb,
            "certBlob": format!("MIIC{}", hex::encode(digest)),
            "routes": [],
            "resyncRequired": false,
            "dnsServers": body["properties"].get("dnsServers").cloned().unwrap_or(Value::Null),
            "isSwift": false
        }
    });
    st.store.put(id, entry.clone());
    set_vnet_name(&mut site, id.name());
    st.store.put(&target, site);
    Reply::ok(entry)
}

pub(crate) fn delete_connection(st: &mut State, id: &ResourceId) -> Reply {
    let target = id.parent().expect("connection has a parent");
    if st.store.remove_tree(id) {
        if let Some(mut site) = st.store.get(&target).cloned() {
            if current_subnet(&site).is_none() {
                let rest = gateway_connections(st, &target)
                    .first()
                    .and_then(|c| c["name"].as_str().map(String::from))
                    .unwrap_or_default();
                set_vnet_name(&mut site, &rest);
                st.store.put(&target, site);
            }
        }
        return Reply::empty(200);
    }
    // The derived regional entry can be deleted too: it removes regional integration.
    if let Some(mut site) = st.store.get(&target).cloned() {
        if regional_entry(st, &target, &site).is_some_and(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(id.name()))
        }) {
            let old = current_subnet(&site);
            apply_integration(st, &target, &mut site, old, None);
            st.store.put(&target, site);
            return Reply::empty(200);
        }
    }
    Reply::not_found(id.as_str())
}

/// `GET {plan}/virtualNetworkConnections`: the gateway VNets used by the plan's apps.
pub(crate) fn plan_connections(st: &State, plan: &ResourceId) -> Reply {
    if !st.store.contains(plan) {
        return Reply::not_found(plan.as_str());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (member, _) in plan_members(st, plan, plan) {
        for c in gateway_connections(st, &member) {
            let vnet = c["properties"]["vnetResourceId"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if seen.insert(vnet) {
                let mut e = c.clone();
                e["id"] = json!(format!(
                    "{}/virtualNetworkConnections/{}",
                    plan.as_str(),
                    c["name"].as_str().unwrap_or_default()
                ));
                e["type"] = json!("Microsoft.Web/serverfarms/virtualNetworkConnections");
                out.push(e);
            }
        }
    }
    Reply::ok(Value::Array(out))
}
