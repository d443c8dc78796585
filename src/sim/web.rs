//! Microsoft.Web behaviour: sites and slots, regional integration (with App Service's server
//! validations), gateway-based `virtualNetworkConnections`, the swift `networkConfig`
//! sub-resource, `config/web` and Key Vault reference status.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::network;
use super::reply::{Ctx, Reply};
use super::state::State;
use super::store::merge;
use crate::azure::models::normalize_location;
use crate::azure::{ResourceId, ResourceKind};

/// Tag carrying the simulator's behaviour knobs.
pub const KNOB_TAG: &str = "vnet-migrate-sim";

const SITE_CONNECTIONS: &str = "microsoft.web/sites/virtualnetworkconnections";
const SLOT_CONNECTIONS: &str = "microsoft.web/sites/slots/virtualnetworkconnections";

pub fn has_knob(resource: &Value, knob: &str) -> bool {
    resource["tags"][KNOB_TAG].as_str().is_some_and(|t| {
        t.split([',', ' ', ';'])
            .any(|k| k.trim().eq_ignore_ascii_case(knob))
    })
}

fn is_target(id: &ResourceId) -> bool {
    matches!(id.kind(), ResourceKind::Site | ResourceKind::Slot)
}

fn parse_id(v: &Value) -> Option<ResourceId> {
    v.as_str()
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| ResourceId::parse(s).ok())
}

/// The plan of a site or slot: its `serverFarmId` (a bare name resolves in the site's
/// resource group, as App Service accepts), for slots falling back to the site's plan.
pub fn plan_of(st: &State, target: &ResourceId, site: &Value) -> Option<ResourceId> {
    let raw = site["properties"]["serverFarmId"]
        .as_str()
        .unwrap_or_default();
    if raw.starts_with('/') {
        return ResourceId::parse(raw).ok();
    }
    if !raw.is_empty() {
        return ResourceId::parse(&format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/serverfarms/{raw}",
            target.subscription(),
            target.resource_group().unwrap_or_default()
        ))
        .ok();
    }
    if target.kind() == ResourceKind::Slot {
        let parent = target.site()?;
        let p = st.store.get(&parent)?;
        return plan_of(st, &parent, p);
    }
    None
}

fn current_subnet(site: &Value) -> Option<ResourceId> {
    parse_id(&site["properties"]["virtualNetworkSubnetId"])
}

fn gateway_connections(st: &State, target: &ResourceId) -> Vec<Value> {
    let ty = if target.kind() == ResourceKind::Slot {
        SLOT_CONNECTIONS
    } else {
        SITE_CONNECTIONS
    };
    st.store.of_type_within(ty, target)
}

/// Every site and slot on `plan` except `except`, with the subnet it uses.
fn plan_members(
    st: &State,
    plan: &ResourceId,
    except: &ResourceId,
) -> Vec<(ResourceId, Option<ResourceId>)> {
    let mut out = Vec::new();
    for ty in ["microsoft.web/sites", "microsoft.web/sites/slots"] {
        for (_, v) in st.store.of_type(ty) {
            let Some(id) = parse_id(&v["id"]) else {
                continue;
            };
            if &id == except {
                continue;
            }
            if plan_of(st, &id, v).as_ref() == Some(plan) {
                out.push((id, current_subnet(v)));
            }
        }
    }
    out
}

/// The sites (not slots) on `plan`, as `GET {plan}/sites` lists them.
pub fn plan_sites(st: &State, plan: &ResourceId) -> Vec<Value> {
    st.store
        .of_type("microsoft.web/sites")
        .filter(|(_, v)| {
            parse_id(&v["id"]).is_some_and(|id| plan_of(st, &id, v).as_ref() == Some(plan))
        })
        .map(|(_, v)| v.clone())
        .collect()
}

fn bad_request(msg: String) -> Reply {
    Reply::error(400, "BadRequest", msg)
}

/// App Service's checks before `target` may join `subnet`.
fn check_connect(
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
fn regional_name(st: &State, subnet: &ResourceId) -> String {
    let vnet = subnet.vnet();
    let guid = vnet
        .as_ref()
        .and_then(|v| network::vnet_guid(&st.store, v))
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    format!("{guid}_{}", subnet.name())
}

fn set_vnet_name(site: &mut Value, name: &str) {
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
fn apply_integration(
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

/// A quoted strong ETag derived from the site's content (changes with every write).
fn site_etag(v: &Value) -> String {
    let h = Sha256::digest(v.to_string().as_bytes());
    format!(
        "\"{}\"",
        hex::encode_upper(&h[..8])
            .chars()
            .take(15)
            .collect::<String>()
    )
}

fn site_reply(status: u16, v: Value) -> Reply {
    let e = site_etag(&v);
    Reply::new(status, v).header("ETag", e)
}

pub fn get_site(st: &State, id: &ResourceId) -> Reply {
    match st.store.get(id) {
        Some(v) => site_reply(200, v.clone()),
        None => Reply::not_found(id.as_str()),
    }
}

fn site_defaults(id: &ResourceId, v: &mut Value) {
    let site_name = id.site().map(|s| s.name().to_string()).unwrap_or_default();
    let (name, ty, host) = if id.kind() == ResourceKind::Slot {
        (
            format!("{site_name}/{}", id.name()),
            "Microsoft.Web/sites/slots",
            format!("{site_name}-{}.azurewebsites.net", id.name()),
        )
    } else {
        (
            site_name.clone(),
            "Microsoft.Web/sites",
            format!("{site_name}.azurewebsites.net"),
        )
    };
    let o = v.as_object_mut().expect("object");
    o.insert("id".into(), json!(id.as_str()));
    o.insert("name".into(), json!(name));
    o.insert("type".into(), json!(ty));
    o.entry("kind").or_insert_with(|| json!("app"));
    let p = o.entry("properties").or_insert_with(|| json!({}));
    if !p.is_object() {
        *p = json!({});
    }
    let p = p.as_object_mut().expect("object");
    p.entry("defaultHostName").or_insert_with(|| json!(host));
    p.entry("enabled").or_insert(json!(true));
    p.entry("state").or_insert(json!("Running"));
    p.entry("reserved").or_insert(json!(false));
    p.entry("virtualNetworkSubnetId").or_insert(Value::Null);
    p.entry("outboundVnetRouting").or_insert_with(|| {
        json!({"allTraffic": false, "applicationTraffic": false, "contentShareTraffic": false, "imagePullTraffic": false, "backupRestoreTraffic": false})
    });
    let sc = p.entry("siteConfig").or_insert_with(|| json!({}));
    if let Some(sc) = sc.as_object_mut() {
        sc.entry("vnetName").or_insert(json!(""));
        sc.entry("vnetRouteAllEnabled").or_insert(json!(false));
    }
}

/// Writes `body` onto the site or slot (`merge_existing`: PATCH, and PUT on an existing
/// site, which App Service treats as an update of the fields sent).
fn write_site(
    st: &mut State,
    id: &ResourceId,
    body: &Value,
    create_ok: bool,
) -> Result<(Value, bool, bool), Reply> {
    if !body.is_object() {
        return Err(bad_request(
            "The request body must be a JSON object.".into(),
        ));
    }
    let old = st.store.get(id).cloned();
    let created = old.is_none();
    if created && !create_ok {
        return Err(Reply::not_found(id.as_str()));
    }
    if created
        && id.kind() == ResourceKind::Slot
        && id.site().is_some_and(|s| !st.store.contains(&s))
    {
        return Err(Reply::not_found(id.site().expect("slot").as_str()));
    }
    let mut site = old.clone().unwrap_or_else(|| json!({}));
    let mut patch = body.clone();
    // vnetName is read-only; integration fields are applied below after validation.
    if let Some(sc) = patch
        .pointer_mut("/properties/siteConfig")
        .and_then(Value::as_object_mut)
    {
        sc.remove("vnetName");
    }
    let subnet_field = patch.pointer("/properties/virtualNetworkSubnetId").cloned();
    if let Some(p) = patch.get_mut("properties").and_then(Value::as_object_mut) {
        p.remove("virtualNetworkSubnetId");
        // Function apps' appSettings live in config/appsettings, not in the site.
        if let Some(sc) = p.get_mut("siteConfig").and_then(Value::as_object_mut) {
            sc.remove("appSettings");
        }
    }
    merge(&mut site, &patch);
    if site["location"].as_str().is_none() {
        match id
            .site()
            .filter(|_| id.kind() == ResourceKind::Slot)
            .and_then(|s| st.store.get(&s))
            .and_then(|s| s["location"].as_str().map(String::from))
        {
            Some(l) => site["location"] = json!(l),
            None => {
                return Err(Reply::error(
                    400,
                    "LocationRequired",
                    "The location property is required for this definition.",
                ))
            }
        }
    }
    site_defaults(id, &mut site);
    if let Some(plan) = plan_of(st, id, &site) {
        site["properties"]["serverFarmId"] = json!(plan.as_str());
    }
    let old_subnet = old.as_ref().and_then(current_subnet);
    let new_subnet = match &subnet_field {
        None => old_subnet.clone(),
        Some(v) if v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()) => None,
        Some(v) => match parse_id(v) {
            Some(s) => Some(s),
            None => {
                return Err(bad_request(format!(
                    "The value {v} of virtualNetworkSubnetId is not a valid resource id."
                )))
            }
        },
    };
    let changed = new_subnet != old_subnet;
    if changed {
        if let Some(s) = &new_subnet {
            check_connect(st, id, &site, s)?;
        }
        apply_integration(st, id, &mut site, old_subnet, new_subnet);
    }
    st.store.put(id, site.clone());
    Ok((site, created, changed))
}

pub fn put_site(st: &mut State, id: &ResourceId, body: &Value) -> Reply {
    match write_site(st, id, body, true) {
        Ok((site, _, _)) => site_reply(200, site),
        Err(r) => r,
    }
}

/// PATCH: 200 with the site, or 202 + `Azure-AsyncOperation` when an integration change
/// "takes a while" (half of them with the latency model on).
pub fn patch_site(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    let (site, _, changed) = match write_site(st, id, body, false) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if changed && st.options.latency && rand::Rng::random_bool(&mut st.rng, 0.5) {
        let d = st.latency(2.0, 8.0);
        let op = st.start_operation(d);
        let site_name = id.site().map(|s| s.name().to_string()).unwrap_or_default();
        let url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Web/sites/{site_name}/operationResults/{op}?api-version={}",
            ctx.base,
            id.subscription(),
            ctx.api_version
        );
        return site_reply(202, site)
            .header("Azure-AsyncOperation", url)
            .header("Retry-After", State::retry_after_secs(d).to_string());
    }
    site_reply(200, site)
}

pub fn delete_site(st: &mut State, id: &ResourceId) -> Reply {
    let Some(site) = st.store.get(id).cloned() else {
        return Reply::empty(204);
    };
    let targets: Vec<(ResourceId, Value)> = std::iter::once((id.clone(), site))
        .chain(
            st.store
                .of_type_within("microsoft.web/sites/slots", id)
                .into_iter()
                .filter_map(|v| parse_id(&v["id"]).map(|i| (i, v))),
        )
        .collect();
    for (t, mut v) in targets {
        if let Some(old) = current_subnet(&v) {
            apply_integration(st, &t, &mut v, Some(old), None);
        }
    }
    st.store.remove_tree(id);
    Reply::empty(200)
}

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
pub fn list_connections(st: &State, target: &ResourceId) -> Reply {
    let Some(site) = st.store.get(target) else {
        return Reply::not_found(target.as_str());
    };
    let mut list = gateway_connections(st, target);
    list.extend(regional_entry(st, target, site));
    Reply::ok(Value::Array(list))
}

pub fn get_connection(st: &State, id: &ResourceId) -> Reply {
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
pub fn put_connection(st: &mut State, id: &ResourceId, body: &Value) -> Reply {
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

pub fn delete_connection(st: &mut State, id: &ResourceId) -> Reply {
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
pub fn plan_connections(st: &State, plan: &ResourceId) -> Reply {
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

pub fn get_swift(st: &State, target: &ResourceId) -> Reply {
    match st.store.get(target) {
        Some(site) => Reply::ok(swift_body(st, target, site)),
        None => Reply::not_found(target.as_str()),
    }
}

pub fn put_swift(st: &mut State, target: &ResourceId, body: &Value) -> Reply {
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
pub fn delete_swift(st: &mut State, target: &ResourceId) -> Reply {
    let Some(mut site) = st.store.get(target).cloned() else {
        return Reply::not_found(target.as_str());
    };
    if let Some(old) = current_subnet(&site) {
        apply_integration(st, target, &mut site, Some(old), None);
        st.store.put(target, site);
    }
    Reply::empty(200)
}

fn config_web_body(target: &ResourceId, site: &Value) -> Value {
    let name = site["name"].clone();
    json!({
        "id": format!("{}/config/web", target.as_str()),
        "name": name,
        "type": if target.kind() == ResourceKind::Slot { "Microsoft.Web/sites/slots/config" } else { "Microsoft.Web/sites/config" },
        "location": site["location"],
        "properties": site["properties"]["siteConfig"]
    })
}

pub fn get_config_web(st: &State, target: &ResourceId) -> Reply {
    match st.store.get(target) {
        Some(site) => Reply::ok(config_web_body(target, site)),
        None => Reply::not_found(target.as_str()),
    }
}

/// PUT/PATCH `config/web`: merges into the stored siteConfig (vnetName stays server-owned).
pub fn write_config_web(st: &mut State, target: &ResourceId, body: &Value) -> Reply {
    let Some(mut site) = st.store.get(target).cloned() else {
        return Reply::not_found(target.as_str());
    };
    let mut props = body.get("properties").cloned().unwrap_or_else(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.remove("vnetName");
    }
    if !site["properties"]["siteConfig"].is_object() {
        site["properties"]["siteConfig"] = json!({});
    }
    merge(&mut site["properties"]["siteConfig"], &props);
    st.store.put(target, site.clone());
    Reply::ok(config_web_body(target, &site))
}

/// Applies `kv-breaks-after-connect` to a Key Vault reference on the way out.
pub fn render_kv_reference(st: &State, mut v: Value) -> Value {
    // {target}/config/configreferences/appsettings/{name}: two levels up is the target.
    let target = parse_id(&v["id"])
        .and_then(|i| i.parent())
        .and_then(|p| p.parent());
    let broken = target
        .filter(is_target)
        .and_then(|t| st.store.get(&t))
        .is_some_and(|s| has_knob(s, "kv-breaks-after-connect") && current_subnet(s).is_some());
    if broken {
        v["properties"]["status"] = json!("AccessToKeyVaultDenied");
    }
    v
}
