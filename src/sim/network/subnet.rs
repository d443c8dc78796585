//! Stored subnet objects (inline in their VNet): prefixes, delegations, ipConfigurations and
//! the service association links App Service adds and removes.

use std::borrow::Cow;
use std::time::Instant;

use serde_json::{json, Value};

use crate::azure::ResourceId;
use crate::sim::state::State;
use crate::sim::store::Store;

const WEB_DELEGATION: &str = "microsoft.web/serverfarms";

pub(super) fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
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
pub(crate) fn prefixes(subnet: &Value) -> Vec<String> {
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

pub(super) fn delegation_names(subnet: &Value) -> Vec<String> {
    let mut v: Vec<String> = arr(subnet, &["properties", "delegations"])
        .iter()
        .filter_map(|d| d["properties"]["serviceName"].as_str())
        .map(str::to_ascii_lowercase)
        .collect();
    v.sort();
    v.dedup();
    v
}

pub(crate) fn web_delegated(subnet: &Value) -> bool {
    delegation_names(subnet).iter().any(|n| n == WEB_DELEGATION)
}

/// Plan ids linked to the subnet by service association links.
pub(crate) fn sal_links(subnet: &Value) -> Vec<String> {
    arr(subnet, &["properties", "serviceAssociationLinks"])
        .iter()
        .filter_map(|l| l["properties"]["link"].as_str().map(String::from))
        .collect()
}

pub(super) fn ip_configurations(subnet: &Value) -> &[Value] {
    arr(subnet, &["properties", "ipConfigurations"])
}

/// (VNet, subnet) for a subnet id.
pub(crate) fn find_subnet<'a>(
    store: &'a Store,
    subnet: &ResourceId,
) -> Option<(Cow<'a, Value>, Value)> {
    let vnet = store.get(&subnet.vnet()?)?;
    let name = subnet.name();
    // A hub VNet holds hundreds of subnets: a subnet's `name` is found among its few fields
    // by comparing them in order, not by hashing "name" once per subnet (the object's map).
    let named = |s: &&Value| {
        s.as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.as_str() == "name"))
            .and_then(|(_, n)| n.as_str())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    };
    let s = arr(&vnet, &["properties", "subnets"])
        .iter()
        .find(named)?
        .clone();
    Some((vnet, s))
}

/// The subnet list of a VNet value, created empty when missing.
pub(super) fn subnets_of(v: &mut Value) -> Option<&mut Vec<Value>> {
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

/// Changes the stored VNet's subnet list with `f`; `None` when there is no such VNet.
fn with_subnets<R>(
    store: &mut Store,
    vnet: &ResourceId,
    f: impl FnOnce(&mut Vec<Value>) -> R,
) -> Option<R> {
    store.update(vnet, |v| subnets_of(v).map(f)).flatten()
}

/// Changes the stored subnet with `f`; `None` when there is no such subnet.
pub(super) fn with_subnet<R>(
    store: &mut Store,
    subnet: &ResourceId,
    f: impl FnOnce(&mut Value) -> R,
) -> Option<R> {
    with_subnets(store, &subnet.vnet()?, |subnets| {
        subnets
            .iter_mut()
            .find(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(subnet.name()))
            })
            .map(f)
    })
    .flatten()
}

/// An app of `plan` joined `subnet`: the plan's SAL is added, or, when it was lingering
/// after the plan's last app left, kept for good (the same plan reuses its own link).
pub(crate) fn claim_sal(st: &mut State, subnet: &ResourceId, plan: &ResourceId) {
    st.lingering_links.remove(&(subnet.clone(), plan.clone()));
    add_sal(&mut st.store, subnet, plan.as_str());
}

/// The last app of `plan` left `subnet`. App Service removes the plan's `AppServiceLink` only
/// later: such links "often linger for minutes to days" (arm-vnet reference §13;
/// MicrosoftDocs/azure-docs#116634, #48902; hashicorp/terraform-provider-azurerm#30011), and
/// while one does, the subnet cannot be deleted or lose its delegation (§5). It lingers for
/// `SimOptions::sal_linger` (scaled by speed) and goes in `expire_lingering_links`.
pub(crate) fn release_sal(st: &mut State, subnet: &ResourceId, plan: &ResourceId) {
    let linger = st.options.sal_linger_real();
    if linger.is_zero() {
        remove_sal(&mut st.store, subnet, plan.as_str());
    } else {
        st.lingering_links
            .insert((subnet.clone(), plan.clone()), Instant::now() + linger);
    }
}

/// Removes the lingering links whose time is up (run before every request is routed).
pub(crate) fn expire_lingering_links(st: &mut State) {
    let now = Instant::now();
    let due: Vec<(ResourceId, ResourceId)> = st
        .lingering_links
        .iter()
        .filter(|(_, until)| **until <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for (subnet, plan) in due {
        st.lingering_links.remove(&(subnet.clone(), plan.clone()));
        remove_sal(&mut st.store, &subnet, plan.as_str());
    }
}

/// Adds the `AppServiceLink` SAL for `plan` unless the subnet already links it.
fn add_sal(store: &mut Store, subnet: &ResourceId, plan: &str) {
    with_subnet(store, subnet, |s| add_sal_to(s, subnet, plan));
}

fn add_sal_to(s: &mut Value, subnet: &ResourceId, plan: &str) {
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

fn remove_sal(store: &mut Store, subnet: &ResourceId, plan: &str) {
    with_subnet(store, subnet, |s| {
        if let Some(links) = s
            .get_mut("properties")
            .and_then(|p| p.get_mut("serviceAssociationLinks"))
            .and_then(Value::as_array_mut)
        {
            links.retain(|l| {
                !l["properties"]["link"]
                    .as_str()
                    .is_some_and(|x| id_eq(x, plan))
            });
        }
    });
}

/// The VNet's `resourceGuid` (names regional connection entries).
pub(crate) fn vnet_guid(store: &Store, vnet: &ResourceId) -> Option<String> {
    store.get(vnet)?["properties"]["resourceGuid"]
        .as_str()
        .map(String::from)
}
