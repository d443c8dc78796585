//! `virtualNetworkConnections` of sites, slots and plans: the stored gateway-based entries
//! (declared, then connected by handing over a VPN package) plus the entry App Service
//! derives from regional integration.

use serde_json::{json, Value};

use super::regional::{apply_integration, regional_name, set_vnet_name};
use super::{bad_request, current_subnet, gateway_connections, parse_id, plan_members};
use crate::azure::{ResourceId, ResourceKind};
use crate::sim::builder::app_certificate;
use crate::sim::network;
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

/// Gateway-based integration, step 1 of the handshake (arm-vnet reference §2.2):
/// `PUT {target}/virtualNetworkConnections/{vnetName}` only *declares* the VNet. The answer
/// carries the app-side certificate (one per subscription × VNet), and the connection stays
/// `resyncRequired: true` until a VPN package is handed over (`put_connection_gateway`).
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
    let (thumb, blob) = app_certificate(target.subscription(), &vnet);
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
            "certBlob": blob,
            "routes": [],
            "resyncRequired": true,
            "dnsServers": body["properties"].get("dnsServers").cloned().unwrap_or(Value::Null),
            "isSwift": false
        }
    });
    // A re-declaration replaces the connection, package hand-over included (unverified in
    // Azure; the stricter reading: the app must be handed a package again).
    st.store.remove_tree(id);
    st.store.put(id, entry.clone());
    set_vnet_name(&mut site, id.name());
    st.store.put(&target, site);
    Reply::ok(entry)
}

/// Step 3 of the handshake (arm-vnet reference §2.2; [TSP-VnetGateway]):
/// `PUT {target}/virtualNetworkConnections/{vnetName}/gateways/primary` with
/// `{"properties": {"vnetName", "vpnPackageUri"}}` → 200 `VnetGateway`; the connection is then
/// in sync (`resyncRequired: false`). Refused (400 `BadRequest`; the codes are not documented,
/// refusing is the stricter choice) unless the package was issued by the simulator for the
/// gateway of the connection's VNet and that package, and the gateway now, trust the app's
/// certificate: a package generated before the app's root certificate was added cannot
/// authenticate the app.
pub(crate) fn put_connection_gateway(st: &mut State, id: &ResourceId, body: &Value) -> Reply {
    let conn_id = id.parent().expect("gateway below a connection");
    let Some(mut conn) = st.store.get(&conn_id).cloned() else {
        return Reply::not_found(conn_id.as_str());
    };
    // [TSP-VnetGateway]: the only gateway name is `primary`.
    if !id.name().eq_ignore_ascii_case("primary") {
        return bad_request(format!(
            "Gateway name {} is not supported; use 'primary'.",
            id.name()
        ));
    }
    let Some(uri) = body["properties"]["vpnPackageUri"]
        .as_str()
        .filter(|u| !u.trim().is_empty())
    else {
        return bad_request("properties.vpnPackageUri is required.".into());
    };
    let Some(vnet) = parse_id(&conn["properties"]["vnetResourceId"]) else {
        return bad_request(format!("{} has no virtual network.", conn_id.as_str()));
    };
    let gateway = network::gateway_of_vnet(st, &vnet);
    let Some(package) = st.vpn_packages.get(uri).filter(|p| {
        gateway
            .as_ref()
            .is_some_and(|g| g.key() == p.gateway.as_str())
    }) else {
        return bad_request(format!(
            "The VPN package {uri} was not generated by the gateway of {}.",
            vnet.as_str()
        ));
    };
    let cert = conn["properties"]["certBlob"].as_str().unwrap_or_default();
    let gateway_trusts = gateway
        .as_ref()
        .and_then(|g| st.store.get(g))
        .is_some_and(|g| network::trusts(g, cert));
    if !gateway_trusts || !package.root_certificates.iter().any(|c| c == cert) {
        return bad_request(format!(
            "The gateway of {} does not trust the app's certificate {}: add it as a point-to-site root certificate and generate a new VPN package.",
            vnet.as_str(),
            conn["properties"]["certThumbprint"].as_str().unwrap_or_default()
        ));
    }
    let ty = format!(
        "{}/gateways",
        conn["type"]
            .as_str()
            .unwrap_or("Microsoft.Web/sites/virtualNetworkConnections")
    );
    let vnet_name = body["properties"]["vnetName"]
        .as_str()
        .unwrap_or(conn_id.name())
        .to_string();
    let entry = json!({
        "id": id.as_str(),
        "name": "primary",
        "type": ty,
        "location": conn["location"],
        "properties": {"vnetName": vnet_name, "vpnPackageUri": uri}
    });
    conn["properties"]["resyncRequired"] = json!(false);
    st.store.put(&conn_id, conn);
    st.store.put(id, entry.clone());
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
