//! Regional (swift) VNet integration: App Service's validations before an app joins a
//! subnet, moving an app between subnets (vnetName and service association links), and the
//! `networkConfig/virtualNetwork` sub-resource.

use serde_json::{json, Value};

use super::sites::write_site;
use super::{bad_request, current_subnet, gateway_connections, has_knob, plan_members, plan_of};
use crate::azure::models::normalize_location;
use crate::azure::{ResourceId, ResourceKind};
use crate::sim::network;
use crate::sim::reply::Reply;
use crate::sim::state::State;

/// App Service's checks before `target` may join `subnet`.
pub(super) fn check_connect(
    st: &State,
    target: &ResourceId,
    site: &Value,
    subnet: &ResourceId,
) -> Result<(), Reply> {
    if has_knob(site, "reject-connect") {
        return Err(bad_request("Failed to add the virtual network integration: the app's stamp rejected the subnet (simulated).".into()));
    }
    if subnet.kind() != ResourceKind::Subnet {
        return Err(bad_request(format!(
            "The value {} of virtualNetworkSubnetId is not a subnet resource id.",
            subnet.as_str()
        )));
    }
    let Some((vnet, sn)) = network::find_subnet(&st.store, subnet) else {
        return Err(Reply::error(
            404,
            "NotFound",
            format!("The subnet {} was not found.", subnet.as_str()),
        ));
    };
    let vnet_name = subnet
        .vnet()
        .map(|v| v.name().to_string())
        .unwrap_or_default();
    let plan_id = plan_of(st, target, site);
    let plan = plan_id.as_ref().and_then(|p| st.store.get(p));
    let Some((plan_id, plan)) = plan_id.clone().zip(plan) else {
        return Err(bad_request(format!(
            "The App Service plan of {} was not found.",
            target.as_str()
        )));
    };
    let tier = plan["sku"]["tier"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ["free", "shared", "dynamic", "isolated", "isolatedv2"].contains(&tier.as_str()) {
        return Err(bad_request(format!("Regional virtual network integration is not supported for App Service plans in the {} tier.", plan["sku"]["tier"].as_str().unwrap_or_default())));
    }
    if has_knob(plan, "old-scale-unit") {
        return Err(bad_request("Regional virtual network integration is not supported on the scale unit hosting this app (swiftSupported is false).".into()));
    }
    if !gateway_connections(st, target).is_empty() {
        return Err(Reply::error(409, "Conflict", "The app already has a gateway-required virtual network integration. Remove it before adding regional integration."));
    }
    if !network::web_delegated(&sn) {
        return Err(bad_request(format!("Subnet {} in VNET {vnet_name} is missing a delegation to Microsoft.Web/serverFarms. Please add the delegation and try again.", subnet.name())));
    }
    let site_loc = site["location"].as_str().unwrap_or_default();
    let vnet_loc = vnet["location"].as_str().unwrap_or_default();
    if normalize_location(site_loc) != normalize_location(vnet_loc) {
        return Err(bad_request(format!("The virtual network {vnet_name} is in region '{vnet_loc}' but the app is in region '{site_loc}'. Regional virtual network integration requires both in the same region.")));
    }
    let links = network::sal_links(&sn);
    let others: Vec<ResourceId> = links
        .iter()
        .filter_map(|l| ResourceId::parse(l).ok())
        .filter(|l| l != &plan_id)
        .collect();
    if let Some(foreign) = others.iter().find(|l| {
        !l.subscription()
            .eq_ignore_ascii_case(plan_id.subscription())
    }) {
        return Err(bad_request(format!(
            "Subnet {} in VNET {vnet_name} is already occupied by service {}.",
            subnet.name(),
            foreign.as_str()
        )));
    }
    let len = network::prefixes(&sn)
        .first()
        .and_then(|p| p.parse::<ipnet::Ipv4Net>().ok())
        .map(|n| n.prefix_len())
        .unwrap_or(32);
    let min = if others.is_empty() { 28 } else { 26 };
    if len > min {
        return Err(bad_request(format!("Subnet {} in VNET {vnet_name} is too small: regional virtual network integration needs at least a /{min} subnet (it is a /{len}).", subnet.name())));
    }
    let mut used: Vec<String> = plan_members(st, &plan_id, target)
        .into_iter()
        .filter_map(|(_, s)| s.map(|s| s.key().to_string()))
        .collect();
    used.push(subnet.key().to_string());
    used.sort();
    used.dedup();
    if used.len() > 2 {
        return Err(Reply::error(
            409,
            "Conflict",
            "Adding this VNET would exceed the App Service Plan VNET limit of 2.",
        ));
    }
    Ok(())
}

/// Name of the regional entry: `{vnet resourceGuid}_{subnet}`.
pub(super) fn regional_name(st: &State, subnet: &ResourceId) -> String {
    let vnet = subnet.vnet();
    let guid = vnet
        .as_ref()
        .and_then(|v| network::vnet_guid(&st.store, v))
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    format!("{guid}_{}", subnet.name())
}

pub(super) fn set_vnet_name(site: &mut Value, name: &str) {
    if !site["properties"].is_object() {
        site["properties"] = json!({});
    }
    if !site["properties"]["siteConfig"].is_object() {
        site["properties"]["siteConfig"] = json!({});
    }
    site["properties"]["siteConfig"]["vnetName"] = json!(name);
}

/// Moves `target` from subnet `old` to `new` (either may be none): updates the site value,
/// `siteConfig.vnetName` and the service association links.
pub(super) fn apply_integration(
    st: &mut State,
    target: &ResourceId,
    site: &mut Value,
    old: Option<ResourceId>,
    new: Option<ResourceId>,
) {
    let plan = plan_of(st, target, site);
    site["properties"]["virtualNetworkSubnetId"] = new
        .as_ref()
        .map(|s| json!(s.as_str()))
        .unwrap_or(Value::Null);
    let vnet_name = match &new {
        Some(s) => regional_name(st, s),
        None => gateway_connections(st, target)
            .first()
            .and_then(|c| c["name"].as_str().map(String::from))
            .unwrap_or_default(),
    };
    set_vnet_name(site, &vnet_name);
    let Some(plan) = plan else { return };
    if let Some(s) = &new {
        network::add_sal(&mut st.store, s, plan.as_str());
    }
    if let Some(o) = old.filter(|o| Some(o) != new.as_ref()) {
        let still_used = plan_members(st, &plan, target)
            .iter()
            .any(|(_, s)| s.as_ref() == Some(&o));
        if !still_used {
            network::remove_sal(&mut st.store, &o, plan.as_str());
        }
    }
}

fn swift_body(st: &State, target: &ResourceId, site: &Value) -> Value {
    let supported = plan_of(st, target, site)
        .and_then(|p| st.store.get(&p))
        .is_none_or(|p| !has_knob(p, "old-scale-unit"));
    json!({
        "id": format!("{}/networkConfig/virtualNetwork", target.as_str()),
        "name": "virtualNetwork",
        "type": "Microsoft.Web/sites/networkConfig",
        "location": site["location"],
        "properties": {
            "subnetResourceId": current_subnet(site).map(|s| json!(s.as_str())).unwrap_or(Value::Null),
            "swiftSupported": supported
        }
    })
}

pub(crate) fn get_swift(st: &State, target: &ResourceId) -> Reply {
    match st.store.get(target) {
        Some(site) => Reply::ok(swift_body(st, target, site)),
        None => Reply::not_found(target.as_str()),
    }
}

pub(crate) fn put_swift(st: &mut State, target: &ResourceId, body: &Value) -> Reply {
    if !st.store.contains(target) {
        return Reply::not_found(target.as_str());
    }
    let subnet = body["properties"]
        .get("subnetResourceId")
        .cloned()
        .unwrap_or(Value::Null);
    match write_site(
        st,
        target,
        &json!({"properties": {"virtualNetworkSubnetId": subnet}}),
        false,
    ) {
        Ok((site, _, _)) => Reply::ok(swift_body(st, target, &site)),
        Err(r) => r,
    }
}

/// Swift DELETE: 200 with an empty body, also when there is nothing to remove.
pub(crate) fn delete_swift(st: &mut State, target: &ResourceId) -> Reply {
    let Some(mut site) = st.store.get(target).cloned() else {
        return Reply::not_found(target.as_str());
    };
    if let Some(old) = current_subnet(&site) {
        apply_integration(st, target, &mut site, Some(old), None);
        st.store.put(target, site);
    }
    Reply::empty(200)
}
