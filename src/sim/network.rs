//! Microsoft.Network behaviour: VNets with inline subnets and peerings, subnet LROs, the
//! Network validations (ranges, delegation changes, in-use subnets) and service association
//! links.

use std::time::Instant;

use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};

use super::reply::{Ctx, Reply};
use super::state::State;
use super::store::Store;
use crate::azure::ResourceId;

const WEB_DELEGATION: &str = "microsoft.web/serverfarms";

fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return &[],
        }
    }
    cur.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn id_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The subnet's address prefixes (`addressPrefix` or `addressPrefixes`).
pub fn prefixes(subnet: &Value) -> Vec<String> {
    let p = &subnet["properties"];
    let mut out: Vec<String> = arr(p, &["addressPrefixes"])
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    if let Some(one) = p.get("addressPrefix").and_then(Value::as_str) {
        if !out.iter().any(|x| x == one) {
            out.push(one.to_string());
        }
    }
    out
}

fn delegation_names(subnet: &Value) -> Vec<String> {
    let mut v: Vec<String> = arr(subnet, &["properties", "delegations"])
        .iter()
        .filter_map(|d| d["properties"]["serviceName"].as_str())
        .map(str::to_ascii_lowercase)
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn web_delegated(subnet: &Value) -> bool {
    delegation_names(subnet).iter().any(|n| n == WEB_DELEGATION)
}

/// Plan ids linked to the subnet by service association links.
pub fn sal_links(subnet: &Value) -> Vec<String> {
    arr(subnet, &["properties", "serviceAssociationLinks"])
        .iter()
        .filter_map(|l| l["properties"]["link"].as_str().map(String::from))
        .collect()
}

fn ip_configurations(subnet: &Value) -> &[Value] {
    arr(subnet, &["properties", "ipConfigurations"])
}

/// (VNet, subnet) for a subnet id.
pub fn find_subnet(store: &Store, subnet: &ResourceId) -> Option<(Value, Value)> {
    let vnet = store.get(&subnet.vnet()?)?;
    let s = arr(vnet, &["properties", "subnets"])
        .iter()
        .find(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(subnet.name()))
        })?
        .clone();
    Some((vnet.clone(), s))
}

fn subnets_mut<'a>(store: &'a mut Store, vnet: &ResourceId) -> Option<&'a mut Vec<Value>> {
    let v = store.get_mut(vnet)?;
    let props = v
        .as_object_mut()?
        .entry("properties")
        .or_insert_with(|| json!({}));
    let subnets = props
        .as_object_mut()?
        .entry("subnets")
        .or_insert_with(|| json!([]));
    subnets.as_array_mut()
}

fn subnet_mut<'a>(store: &'a mut Store, subnet: &ResourceId) -> Option<&'a mut Value> {
    subnets_mut(store, &subnet.vnet()?)?.iter_mut().find(|s| {
        s["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(subnet.name()))
    })
}

/// Adds the `AppServiceLink` SAL for `plan` unless the subnet already links it.
pub fn add_sal(store: &mut Store, subnet: &ResourceId, plan: &str) {
    let Some(s) = subnet_mut(store, subnet) else {
        return;
    };
    if sal_links(s).iter().any(|l| id_eq(l, plan)) {
        return;
    }
    let sid = s["id"].as_str().unwrap_or(subnet.as_str()).to_string();
    // The first link keeps ARM's fixed name; further plans (MPSJ) need distinct names.
    let n = sal_links(s).len();
    let name = if n == 0 {
        "AppServiceLink".to_string()
    } else {
        format!("AppServiceLink{n}")
    };
    let link = json!({
        "name": name,
        "id": format!("{sid}/serviceAssociationLinks/{name}"),
        "type": "Microsoft.Network/virtualNetworks/subnets/serviceAssociationLinks",
        "properties": {
            "linkedResourceType": "Microsoft.Web/serverfarms",
            "link": plan,
            "allowDelete": false,
            "provisioningState": "Succeeded"
        }
    });
    let props = s
        .as_object_mut()
        .expect("subnet is an object")
        .entry("properties")
        .or_insert_with(|| json!({}));
    let links = props
        .as_object_mut()
        .expect("properties is an object")
        .entry("serviceAssociationLinks")
        .or_insert_with(|| json!([]));
    if let Some(a) = links.as_array_mut() {
        a.push(link);
    }
}

pub fn remove_sal(store: &mut Store, subnet: &ResourceId, plan: &str) {
    if let Some(links) = subnet_mut(store, subnet)
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut("serviceAssociationLinks"))
        .and_then(Value::as_array_mut)
    {
        links.retain(|l| {
            !l["properties"]["link"]
                .as_str()
                .is_some_and(|x| id_eq(x, plan))
        });
    }
}

/// The VNet's `resourceGuid` (names regional connection entries).
pub fn vnet_guid(store: &Store, vnet: &ResourceId) -> Option<String> {
    store.get(vnet)?["properties"]["resourceGuid"]
        .as_str()
        .map(String::from)
}

fn parse_net(p: &str) -> Option<Ipv4Net> {
    p.trim().parse::<Ipv4Net>().ok()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn bad(code: &str, msg: String) -> Reply {
    Reply::error(400, code, msg)
}

/// Range checks for one subnet against the VNet's address space and its sibling subnets.
fn validate_ranges(
    vnet_id: &ResourceId,
    space: &[Ipv4Net],
    name: &str,
    prefixes: &[String],
    siblings: &[(String, Vec<String>)],
) -> Result<(), Reply> {
    if prefixes.is_empty() {
        return Err(bad(
            "NetcfgInvalidSubnet",
            format!(
                "Subnet '{name}' is not valid in virtual network '{}': it has no address prefix.",
                vnet_id.name()
            ),
        ));
    }
    for p in prefixes {
        let Some(net) = parse_net(p) else {
            return Err(bad(
                "InvalidAddressPrefixFormat",
                format!("Address prefix {p} of subnet '{name}' is not a valid IPv4 CIDR."),
            ));
        };
        if net.prefix_len() > 29 {
            return Err(bad(
                "NetcfgInvalidSubnet",
                format!("Subnet '{name}' is not valid in virtual network '{}': the prefix {p} is smaller than /29.", vnet_id.name()),
            ));
        }
        if !space.iter().any(|s| s.contains(&net)) {
            return Err(bad(
                "NetcfgSubnetRangeOutsideVnet",
                format!("Subnet '{name}' is not valid because its IP address range {p} is outside the IP address range of virtual network '{}'.", vnet_id.name()),
            ));
        }
        for (other, ops) in siblings {
            if other.eq_ignore_ascii_case(name) {
                continue;
            }
            if let Some(o) = ops
                .iter()
                .find(|o| parse_net(o).is_some_and(|on| overlaps(&net, &on)))
            {
                return Err(bad(
                    "NetcfgSubnetRangesOverlap",
                    format!("Subnet '{name}' is not valid because its IP address range {p} overlaps with that of an existing subnet '{other}' ({o}) in virtual network '{}'.", vnet_id.name()),
                ));
            }
        }
    }
    Ok(())
}

fn address_space(vnet: &Value) -> Vec<Ipv4Net> {
    arr(vnet, &["properties", "addressSpace", "addressPrefixes"])
        .iter()
        .filter_map(|p| p.as_str().and_then(parse_net))
        .collect()
}

/// Delegation and in-use rules for replacing `old` by `new`.
fn validate_subnet_change(subnet_id: &str, old: &Value, new: &Value) -> Result<(), Reply> {
    let (before, after) = (delegation_names(old), delegation_names(new));
    if before == after {
        return Ok(());
    }
    if let Some(ipc) = ip_configurations(old).first() {
        return Err(bad(
            "SubnetDelegationsCannotChangeWhenSubnetUsedByResource",
            format!(
                "Delegations of subnet {subnet_id} cannot be changed from {before:?} to {after:?} because it is being used by the resource {}.",
                ipc["id"].as_str().unwrap_or("(unknown)")
            ),
        ));
    }
    if !sal_links(old).is_empty() && !web_delegated(new) {
        return Err(bad(
            "InUseSubnetCannotBeUpdated",
            format!("Subnet {subnet_id} is in use by {subnet_id}/serviceAssociationLinks/AppServiceLink and its delegation to Microsoft.Web/serverFarms cannot be removed."),
        ));
    }
    Ok(())
}

/// Fills server-owned fields of a subnet being written: ids, etags, delegation metadata,
/// and the SALs / ipConfigurations of the stored subnet (clients cannot drop them).
fn normalize_subnet(
    st: &mut State,
    vnet_id: &ResourceId,
    mut body: Value,
    old: Option<&Value>,
) -> Value {
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let sid = format!("{}/subnets/{name}", vnet_id.as_str());
    let etag = st.etag();
    if !body.is_object() {
        body = json!({});
    }
    let obj = body.as_object_mut().expect("object");
    obj.insert("id".into(), json!(sid));
    obj.insert("etag".into(), json!(etag));
    obj.insert(
        "type".into(),
        json!("Microsoft.Network/virtualNetworks/subnets"),
    );
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if !props.is_object() {
        *props = json!({});
    }
    let p = props.as_object_mut().expect("object");
    p.insert("provisioningState".into(), json!("Succeeded"));
    let dels = p.entry("delegations").or_insert_with(|| json!([]));
    if let Some(ds) = dels.as_array_mut() {
        for d in ds.iter_mut().filter(|d| d.is_object()) {
            let dn = d["name"].as_str().unwrap_or("delegation").to_string();
            let o = d.as_object_mut().expect("object");
            o.insert("id".into(), json!(format!("{sid}/delegations/{dn}")));
            o.insert("etag".into(), json!(etag));
            o.insert(
                "type".into(),
                json!("Microsoft.Network/virtualNetworks/subnets/delegations"),
            );
            let dp = o.entry("properties").or_insert_with(|| json!({}));
            if let Some(dp) = dp.as_object_mut() {
                dp.insert("provisioningState".into(), json!("Succeeded"));
                dp.entry("actions")
                    .or_insert_with(|| json!(["Microsoft.Network/virtualNetworks/subnets/action"]));
            }
        }
    }
    p.entry("privateEndpointNetworkPolicies")
        .or_insert_with(|| json!("Disabled"));
    p.entry("privateLinkServiceNetworkPolicies")
        .or_insert_with(|| json!("Enabled"));
    for owned in ["serviceAssociationLinks", "ipConfigurations"] {
        match old.and_then(|o| o["properties"].get(owned)) {
            Some(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                p.insert(owned.into(), v.clone());
            }
            _ => {
                p.remove(owned);
            }
        }
    }
    body
}

fn set_provisioning(v: &Value, state: &str) -> Value {
    let mut v = v.clone();
    if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
        p.insert("provisioningState".into(), json!(state));
    }
    v
}

fn vnet_locked(st: &State, vnet: &ResourceId) -> Option<u64> {
    let until = st.vnet_busy.get(vnet.key())?;
    let now = Instant::now();
    (now < *until).then(|| {
        until
            .saturating_duration_since(now)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    })
}

fn locked_reply(vnet: &ResourceId, secs: u64) -> Reply {
    Reply::error(
        429,
        "RetryableErrorDueToAnotherOperation",
        format!("Operation could not be completed because another operation on virtual network {} is in progress. Retry the request later.", vnet.as_str()),
    )
    .header("Retry-After", secs.to_string())
}

/// Starts the Network LRO of a VNet or subnet write and locks the VNet until it finishes.
fn network_lro(
    st: &mut State,
    ctx: &Ctx,
    vnet: &ResourceId,
    location: &str,
    reply: Reply,
) -> Reply {
    let d = st.latency(1.0, 4.0);
    if !d.is_zero() {
        st.vnet_busy
            .insert(vnet.key().to_string(), Instant::now() + d);
    }
    let op = st.start_operation(d);
    let loc = crate::azure::models::normalize_location(location);
    let url = format!(
        "{}/subscriptions/{}/providers/Microsoft.Network/locations/{loc}/operations/{op}?api-version={}",
        ctx.base,
        vnet.subscription(),
        ctx.api_version
    );
    let reply = reply.header("Azure-AsyncOperation", url);
    if d.is_zero() {
        reply
    } else {
        reply.header("Retry-After", State::retry_after_secs(d).to_string())
    }
}

pub fn get_subnet(st: &State, id: &ResourceId) -> Reply {
    match find_subnet(&st.store, id) {
        Some((_, s)) => etagged(s),
        None => Reply::not_found(id.as_str()),
    }
}

/// Network GETs carry the body's etag as the `ETag` header too.
pub fn etagged(v: Value) -> Reply {
    let etag = v["etag"].as_str().map(String::from);
    let r = Reply::ok(v);
    match etag {
        Some(e) => r.header("ETag", e),
        None => r,
    }
}

pub fn put_subnet(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    let Some(vnet_id) = id.vnet() else {
        return Reply::not_found(id.as_str());
    };
    let Some(vnet) = st.store.get(&vnet_id).cloned() else {
        return Reply::not_found(vnet_id.as_str());
    };
    if let Some(secs) = vnet_locked(st, &vnet_id) {
        return locked_reply(&vnet_id, secs);
    }
    let mut body = if body.is_object() {
        body.clone()
    } else {
        json!({})
    };
    body["name"] = json!(id.name());
    let old = find_subnet(&st.store, id).map(|(_, s)| s);
    let siblings: Vec<(String, Vec<String>)> = arr(&vnet, &["properties", "subnets"])
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                prefixes(s),
            )
        })
        .collect();
    if let Err(r) = validate_ranges(
        &vnet_id,
        &address_space(&vnet),
        id.name(),
        &prefixes(&body),
        &siblings,
    ) {
        return r;
    }
    if let Some(o) = &old {
        if let Err(r) = validate_subnet_change(id.as_str(), o, &body) {
            return r;
        }
    }
    let subnet = normalize_subnet(st, &vnet_id, body, old.as_ref());
    let vetag = st.etag();
    let subnets = subnets_mut(&mut st.store, &vnet_id).expect("vnet exists");
    match subnets.iter_mut().find(|s| {
        s["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(id.name()))
    }) {
        Some(slot) => *slot = subnet.clone(),
        None => subnets.push(subnet.clone()),
    }
    if let Some(v) = st.store.get_mut(&vnet_id) {
        v["etag"] = json!(vetag);
    }
    let status = if old.is_some() { 200 } else { 201 };
    let location = vnet["location"]
        .as_str()
        .unwrap_or("westeurope")
        .to_string();
    let reply = Reply::new(status, set_provisioning(&subnet, "Updating"));
    network_lro(st, ctx, &vnet_id, &location, reply)
}

pub fn delete_subnet(st: &mut State, id: &ResourceId) -> Reply {
    let Some((_, s)) = find_subnet(&st.store, id) else {
        return Reply::empty(204);
    };
    let vnet_id = id.vnet().expect("subnet id");
    if let Some(secs) = vnet_locked(st, &vnet_id) {
        return locked_reply(&vnet_id, secs);
    }
    if let Some(user) = arr(&s, &["properties", "serviceAssociationLinks"])
        .first()
        .or_else(|| ip_configurations(&s).first())
    {
        return bad(
            "InUseSubnetCannotBeDeleted",
            format!(
                "Subnet {} is in use by {} and cannot be deleted. In order to delete the subnet, delete all the resources within the subnet.",
                id.name(),
                user["id"].as_str().unwrap_or("(unknown)")
            ),
        );
    }
    let etag = st.etag();
    if let Some(subnets) = subnets_mut(&mut st.store, &vnet_id) {
        subnets.retain(|x| {
            !x["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(id.name()))
        });
    }
    if let Some(v) = st.store.get_mut(&vnet_id) {
        v["etag"] = json!(etag);
    }
    Reply::empty(200)
}

pub fn put_vnet(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    if let Some(secs) = vnet_locked(st, id) {
        return locked_reply(id, secs);
    }
    let old = st.store.get(id).cloned();
    let mut vnet = if body.is_object() {
        body.clone()
    } else {
        json!({})
    };
    let Some(location) = vnet["location"].as_str().map(String::from) else {
        return bad(
            "LocationRequired",
            "The location property is required for this definition.".into(),
        );
    };
    let space = address_space(&vnet);
    if space.is_empty() {
        return bad(
            "InvalidAddressPrefixFormat",
            "The virtual network needs at least one valid IPv4 address prefix in addressSpace."
                .into(),
        );
    }
    let new_subnets: Vec<Value> = arr(&vnet, &["properties", "subnets"]).to_vec();
    let siblings: Vec<(String, Vec<String>)> = new_subnets
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                prefixes(s),
            )
        })
        .collect();
    let old_subnets: Vec<Value> = old
        .as_ref()
        .map(|o| arr(o, &["properties", "subnets"]).to_vec())
        .unwrap_or_default();
    for s in &new_subnets {
        let name = s["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return bad("InvalidRequestFormat", "Every subnet needs a name.".into());
        }
        if let Err(r) = validate_ranges(id, &space, name, &prefixes(s), &siblings) {
            return r;
        }
        let previous = old_subnets.iter().find(|o| {
            o["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if let Some(p) = previous {
            if let Err(r) = validate_subnet_change(&format!("{}/subnets/{name}", id.as_str()), p, s)
            {
                return r;
            }
        }
    }
    for o in &old_subnets {
        let name = o["name"].as_str().unwrap_or_default();
        let kept = new_subnets.iter().any(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if !kept && (!sal_links(o).is_empty() || !ip_configurations(o).is_empty()) {
            return bad(
                "InUseSubnetCannotBeDeleted",
                format!("Subnet {name} is in use and cannot be deleted."),
            );
        }
    }
    let subnets: Vec<Value> = new_subnets
        .into_iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let prev = old_subnets
                .iter()
                .find(|o| {
                    o["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(&name))
                })
                .cloned();
            normalize_subnet(st, id, s, prev.as_ref())
        })
        .collect();
    let guid = old
        .as_ref()
        .and_then(|o| o["properties"]["resourceGuid"].as_str().map(String::from))
        .unwrap_or_else(|| st.uuid());
    let etag = st.etag();
    let obj = vnet.as_object_mut().expect("object");
    obj.insert("id".into(), json!(id.as_str()));
    obj.insert("name".into(), json!(id.name()));
    obj.insert("type".into(), json!("Microsoft.Network/virtualNetworks"));
    obj.insert("etag".into(), json!(etag));
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    let p: &mut Map<String, Value> = props.as_object_mut().expect("object");
    p.insert("provisioningState".into(), json!("Succeeded"));
    p.insert("resourceGuid".into(), json!(guid));
    p.insert("subnets".into(), Value::Array(subnets));
    if !p.contains_key("virtualNetworkPeerings") {
        let peerings = old
            .as_ref()
            .map(|o| o["properties"]["virtualNetworkPeerings"].clone())
            .filter(|v| v.is_array())
            .unwrap_or_else(|| json!([]));
        p.insert("virtualNetworkPeerings".into(), peerings);
    }
    st.store.put(id, vnet.clone());
    let status = if old.is_some() { 200 } else { 201 };
    let reply = Reply::new(status, set_provisioning(&vnet, "Updating"));
    network_lro(st, ctx, id, &location, reply)
}

pub fn delete_vnet(st: &mut State, id: &ResourceId) -> Reply {
    let Some(v) = st.store.get(id) else {
        return Reply::empty(204);
    };
    if let Some(s) = arr(v, &["properties", "subnets"])
        .iter()
        .find(|s| !sal_links(s).is_empty())
    {
        return bad(
            "InUseSubnetCannotBeDeleted",
            format!(
                "Subnet {} is in use by its service association link and cannot be deleted.",
                s["name"].as_str().unwrap_or_default()
            ),
        );
    }
    st.store.remove_tree(id);
    Reply::empty(200)
}

/// `GET {vnet}/{subnets|virtualNetworkPeerings}` → `{value}` of the inline children.
pub fn list_inline(st: &State, vnet: &ResourceId, field: &str) -> Reply {
    match st.store.get(vnet) {
        Some(v) => Reply::ok(json!({"value": arr(v, &["properties", field])})),
        None => Reply::not_found(vnet.as_str()),
    }
}

pub fn get_peering(st: &State, id: &ResourceId) -> Reply {
    let found = id.vnet().and_then(|v| st.store.get(&v)).and_then(|v| {
        arr(v, &["properties", "virtualNetworkPeerings"])
            .iter()
            .find(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(id.name()))
            })
            .cloned()
    });
    match found {
        Some(p) => etagged(p),
        None => Reply::not_found(id.as_str()),
    }
}

/// `GET {vnet}/usages`: per-subnet address usage like VirtualNetworkListUsage.
pub fn usages(st: &State, vnet: &ResourceId) -> Reply {
    let Some(v) = st.store.get(vnet) else {
        return Reply::not_found(vnet.as_str());
    };
    let value: Vec<Value> = arr(v, &["properties", "subnets"])
        .iter()
        .map(|s| {
            let limit: f64 = prefixes(s)
                .iter()
                .filter_map(|p| parse_net(p))
                .map(|n| (1u64 << (32 - n.prefix_len())) as f64 - 5.0)
                .sum();
            json!({
                "currentValue": ip_configurations(s).len() as f64,
                "id": s["id"],
                "limit": limit,
                "name": {"localizedValue": "Subnet size and usage", "value": "SubnetSpace"},
                "unit": "Count"
            })
        })
        .collect();
    Reply::ok(json!({"value": value}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_validation_codes() {
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        let space = vec!["10.0.0.0/16".parse().unwrap()];
        let sib = vec![("a".to_string(), vec!["10.0.1.0/24".to_string()])];
        let code = |p: &str| {
            validate_ranges(&vnet, &space, "b", &[p.to_string()], &sib)
                .err()
                .map(|r| {
                    r.body.unwrap()["error"]["code"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
        };
        assert_eq!(code("10.0.2.0/24"), None);
        assert_eq!(
            code("10.1.0.0/24").as_deref(),
            Some("NetcfgSubnetRangeOutsideVnet")
        );
        assert_eq!(
            code("10.0.1.128/25").as_deref(),
            Some("NetcfgSubnetRangesOverlap")
        );
        assert_eq!(
            code("10.0.0.0/15").as_deref(),
            Some("NetcfgSubnetRangeOutsideVnet")
        );
        assert_eq!(code("10.0.3.0/30").as_deref(), Some("NetcfgInvalidSubnet"));
        assert_eq!(
            code("banana").as_deref(),
            Some("InvalidAddressPrefixFormat")
        );
    }

    #[test]
    fn delegation_change_rules() {
        let used = json!({"properties": {"delegations": [], "ipConfigurations": [{"id": "/nic"}]}});
        let web = json!({"properties": {"delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverfarms"}}]}});
        let err = validate_subnet_change("/s", &used, &web).unwrap_err();
        assert_eq!(
            err.body.unwrap()["error"]["code"],
            "SubnetDelegationsCannotChangeWhenSubnetUsedByResource"
        );
        let linked = json!({"properties": {"delegations": [{"properties": {"serviceName": "Microsoft.Web/serverFarms"}}],
            "serviceAssociationLinks": [{"properties": {"link": "/p"}}]}});
        let none = json!({"properties": {"delegations": []}});
        let err = validate_subnet_change("/s", &linked, &none).unwrap_err();
        assert_eq!(
            err.body.unwrap()["error"]["code"],
            "InUseSubnetCannotBeUpdated"
        );
        assert!(validate_subnet_change("/s", &linked, &web).is_ok());
        assert!(web_delegated(&web));
    }
}
