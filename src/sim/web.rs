//! Microsoft.Web behaviour: sites and slots, regional integration (with App Service's server
//! validations), gateway-based `virtualNetworkConnections` (with the gateway handshake), the swift `networkConfig`
//! sub-resource, `config/web` and Key Vault reference status.
//!
//! This file holds the knobs and the site/plan lookups the others share; `sites` the site
//! and slot resources with `config/web` and Key Vault references, `regional` regional
//! integration and `networkConfig/virtualNetwork`, `connections` `virtualNetworkConnections`,
//! `routing` the two api-version shapes of a site's outbound routing.

mod connections;
mod regional;
mod routing;
mod sites;

pub(crate) use connections::{
    delete_connection, get_connection, list_connections, plan_connections, put_connection,
    put_connection_gateway,
};
pub(crate) use regional::{delete_swift, get_swift, put_swift};
pub(crate) use sites::{
    delete_site, front_end, get_config_web, get_site, patch_site, put_site, render_kv_reference,
    render_site, write_config_web,
};

use serde::Deserialize;
use serde_json::Value;

use super::reply::Reply;
use super::state::State;
use super::store::{Lenient, Ref};
use crate::azure::{ResourceId, ResourceKind};

/// Tag carrying the simulator's behaviour knobs.
pub(crate) const KNOB_TAG: &str = "vnet-migrate-sim";

const SLOTS: &str = "microsoft.web/sites/slots";
const SITE_CONNECTIONS: &str = "microsoft.web/sites/virtualnetworkconnections";
const SLOT_CONNECTIONS: &str = "microsoft.web/sites/slots/virtualnetworkconnections";

pub(crate) fn has_knob(resource: &Value, knob: &str) -> bool {
    tags_have_knob(&resource["tags"], knob)
}

fn tags_have_knob(tags: &Value, knob: &str) -> bool {
    tags[KNOB_TAG].as_str().is_some_and(|t| {
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

/// The fields of a site or slot that most requests about it read (its id, location, knobs,
/// plan and subnet), read from the store without parsing the rest of it (`Stored::read_as`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct SiteFields {
    id: Value,
    location: Value,
    tags: Value,
    properties: Lenient<SiteProperties>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SiteProperties {
    server_farm_id: Value,
    virtual_network_subnet_id: Value,
}

impl SiteFields {
    fn subnet(&self) -> Option<ResourceId> {
        parse_id(&self.properties.0.virtual_network_subnet_id)
    }
}

/// The subnet a stored site or slot is integrated with (`current_subnet`), read partially.
pub(crate) fn stored_subnet(st: &State, target: &ResourceId) -> Option<ResourceId> {
    st.store.get_as::<SiteFields>(target)?.subnet()
}

/// The plan a site or slot names itself in `serverFarmId` (a bare name resolves in the
/// site's resource group, as App Service accepts); none when the field is empty.
pub(crate) fn declared_plan(target: &ResourceId, site: &Value) -> Option<ResourceId> {
    named_plan(target, &site["properties"]["serverFarmId"])
}

/// `declared_plan` from the `serverFarmId` field.
fn named_plan(target: &ResourceId, server_farm_id: &Value) -> Option<ResourceId> {
    let raw = server_farm_id.as_str().unwrap_or_default();
    if raw.starts_with('/') {
        return ResourceId::parse(raw).ok();
    }
    if raw.is_empty() {
        return None;
    }
    ResourceId::parse(&format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/serverfarms/{raw}",
        target.subscription(),
        target.resource_group().unwrap_or_default()
    ))
    .ok()
}

/// The plan of a site or slot: the one it declares, for slots falling back to the site's plan.
pub(crate) fn plan_of(st: &State, target: &ResourceId, site: &Value) -> Option<ResourceId> {
    if let Some(p) = declared_plan(target, site) {
        return Some(p);
    }
    if target.kind() == ResourceKind::Slot {
        let parent = target.site()?;
        let p = st.store.get(&parent)?;
        return plan_of(st, &parent, &p);
    }
    None
}

pub(crate) fn current_subnet(site: &Value) -> Option<ResourceId> {
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

/// Every site and slot on `plan` except `except`, with the subnet it uses: sites first, then
/// slots, each in id order. Found through the store's plan index (the plan's sites and slots
/// that declare it, plus the slots of those sites that declare no plan of their own), never
/// by scanning the fleet.
fn plan_members(
    st: &State,
    plan: &ResourceId,
    except: &ResourceId,
) -> Vec<(ResourceId, Option<ResourceId>)> {
    let mut sites = Vec::new();
    let mut slots = Vec::new();
    for (_, v) in st.store.referrers(Ref::Plan, plan) {
        let v = v.read_as::<SiteFields>();
        let Some(id) = parse_id(&v.id) else {
            continue;
        };
        if id.kind() == ResourceKind::Slot {
            slots.push((id, v.subnet()));
            continue;
        }
        for slot in st.store.stored_within(SLOTS, &id) {
            let slot = slot.read_as::<SiteFields>();
            if let Some(slot_id) = parse_id(&slot.id) {
                if named_plan(&slot_id, &slot.properties.0.server_farm_id).is_none() {
                    slots.push((slot_id, slot.subnet()));
                }
            }
        }
        sites.push((id, v.subnet()));
    }
    slots.sort_by(|a, b| a.0.cmp(&b.0));
    sites
        .into_iter()
        .chain(slots)
        .filter(|(id, _)| id != except)
        .collect()
}

/// The sites (not slots) on `plan`, as `GET {plan}/sites` lists them.
pub(crate) fn plan_sites(st: &State, plan: &ResourceId) -> Vec<Value> {
    st.store
        .referrers(Ref::Plan, plan)
        .filter(|(_, v)| {
            parse_id(&v.read_as::<SiteFields>().id)
                .is_some_and(|id| id.kind() == ResourceKind::Site)
        })
        .map(|(_, v)| v.value().into_owned())
        .collect()
}

fn bad_request(msg: String) -> Reply {
    Reply::error(400, "BadRequest", msg)
}
