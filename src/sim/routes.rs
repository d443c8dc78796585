//! Routing of ARM paths: subscriptions, resource groups, collections (with paging) and
//! single resources, dispatched to the store or the type-specific behaviour (`web`,
//! `network`).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{json, Value};

use super::network;
use super::reply::{Ctx, Reply};
use super::state::State;
use super::store::{merge, type_key};
use super::web;
use crate::azure::resource_id::NameRule;
use crate::azure::{ResourceId, ResourceKind};

const PAGE_SIZE: usize = 50;

pub(super) fn route(
    st: &mut State,
    ctx: &Ctx,
    method: &str,
    path: &str,
    segs: &[&str],
    query: &HashMap<String, String>,
    body: &Value,
) -> Reply {
    network::expire_lingering_links(st);
    let l: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    if l.first().map(String::as_str) != Some("subscriptions") || l.len() < 2 {
        return Reply::not_simulated(&format!("{method} {path}"));
    }
    let sub = segs[1];
    let sub_id = match subscription_scope(sub) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    match (method, l.len(), l.get(2).map(String::as_str)) {
        ("GET", 2, _) => {
            return Reply::ok(
                json!({"id": format!("/subscriptions/{sub}"), "subscriptionId": sub, "displayName": "Simulated subscription", "state": "Enabled"}),
            )
        }
        ("GET", 3, Some("locations")) => return Reply::ok(locations(sub)),
        ("GET", 3, Some("resourcegroups")) => {
            let groups: Vec<Value> = st
                .store
                .of_type_within("microsoft.resources/resourcegroups", &sub_id);
            return page(groups, ctx, path, query);
        }
        (_, _, Some("providers")) => {
            return subscription_provider(st, ctx, method, path, segs, &l, query)
        }
        (_, n, Some("resourcegroups")) if n >= 4 => {}
        _ => return Reply::not_simulated(&format!("{method} {path}")),
    }
    // ARM checks the group's name on every request, reads included: 400
    // `InvalidResourceGroup` (Azure/azure-cli#14481, for `az group show`).
    let rg = match NameRule::ResourceGroup
        .check(segs[3])
        .ok()
        .and_then(|()| ResourceId::resource_group_id(sub, segs[3]).ok())
    {
        Some(rg) => rg,
        None => {
            return Reply::error(
                400,
                "InvalidResourceGroup",
                format!(
                    "The provided resource group name '{}' is invalid. The name can only be a letter, digit, '-', '.', '(', ')' or '_'.",
                    segs[3]
                ),
            )
        }
    };
    if l.len() == 4 {
        return resource_group(st, method, &rg, body);
    }
    if !st.store.group_exists(&rg) {
        return Reply::error(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{}' could not be found.", segs[3]),
        );
    }
    if l[4] != "providers" || l.len() < 7 {
        return Reply::not_simulated(&format!("{method} {path}"));
    }
    let after = l.len() - 6;
    if after % 2 == 1 {
        // A collection (list) or an action (POST …/list, …/publishxml).
        let last = segs[segs.len() - 1];
        if l.len() == 7 {
            let ty = format!("{}/{}", l[5], l[6]);
            return match method {
                "GET" => listing(st, ctx, path, query, &ty, &rg),
                _ => Reply::not_simulated(&format!("{method} {path}")),
            };
        }
        let parent = match ResourceId::parse(&format!("/{}", segs[..segs.len() - 1].join("/"))) {
            Ok(p) => p,
            Err(_) => return Reply::not_simulated(&format!("{method} {path}")),
        };
        return collection(st, ctx, method, path, &parent, last, query, body);
    }
    let id = match ResourceId::parse(path) {
        Ok(id) => id,
        Err(e) => return Reply::error(400, "InvalidResourceId", e.to_string()),
    };
    resource(st, ctx, method, &id, body)
}

/// The subscription's id. ARM answers a malformed subscription id with 400
/// `InvalidSubscriptionId` (Azure/apiops#460). Kinder than ARM, which wants a GUID: only
/// segments no id may hold are refused, since the simulator's test fleets use short
/// subscription names.
fn subscription_scope(sub: &str) -> Result<ResourceId, Reply> {
    ResourceId::subscription_id(sub).map_err(|_| {
        Reply::error(
            400,
            "InvalidSubscriptionId",
            format!("The provided subscription identifier '{sub}' is malformed or invalid."),
        )
    })
}

fn subscription_provider(
    st: &mut State,
    ctx: &Ctx,
    method: &str,
    path: &str,
    segs: &[&str],
    l: &[String],
    query: &HashMap<String, String>,
) -> Reply {
    let sub_id = match subscription_scope(segs[1]) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    match (method, l.len()) {
        ("GET", 5) => {
            let ty = format!("{}/{}", l[3], l[4]);
            listing(st, ctx, path, query, &ty, &sub_id)
        }
        ("POST", 5) if l[4] == "checknameavailability" => {
            Reply::ok(json!({"nameAvailable": true, "reason": "", "message": ""}))
        }
        // Network actions end on their `Location` URL (arm-vnet reference §8).
        ("GET", 8)
            if l[3] == "microsoft.network" && l[4] == "locations" && l[6] == "operationresults" =>
        {
            st.operation_result(segs[7]).unwrap_or_else(|| {
                Reply::error(
                    404,
                    "OperationNotFound",
                    format!("Operation {} was not found.", segs[7]),
                )
            })
        }
        ("GET", 8)
            if (l[3] == "microsoft.network" && l[4] == "locations" && l[6] == "operations")
                || (l[3] == "microsoft.web" && l[4] == "sites" && l[6] == "operationresults") =>
        {
            match st.operation_status(segs[7]) {
                Some(s) => Reply::ok(s),
                None => Reply::error(
                    404,
                    "OperationNotFound",
                    format!("Operation {} was not found.", segs[7]),
                ),
            }
        }
        _ => Reply::not_simulated(&format!("{method} {path}")),
    }
}

fn resource_group(st: &mut State, method: &str, rg: &ResourceId, body: &Value) -> Reply {
    match method {
        "GET" => match st.store.get(rg).map(Cow::into_owned) {
            Some(v) => Reply::ok(v),
            None if st.store.any_within(rg) => {
                let loc = st
                    .store
                    .first_location_within(rg)
                    .unwrap_or_else(|| "westeurope".into());
                Reply::ok(
                    json!({"id": rg.as_str(), "name": rg.name(), "type": "Microsoft.Resources/resourceGroups", "location": loc, "properties": {"provisioningState": "Succeeded"}}),
                )
            }
            None => Reply::error(
                404,
                "ResourceGroupNotFound",
                format!("Resource group '{}' could not be found.", rg.name()),
            ),
        },
        "PUT" => {
            let Some(loc) = body["location"].as_str() else {
                return Reply::error(
                    400,
                    "LocationRequired",
                    "The location property is required for this definition.",
                );
            };
            let mut v = json!({"id": rg.as_str(), "name": rg.name(), "type": "Microsoft.Resources/resourceGroups", "location": loc, "properties": {"provisioningState": "Succeeded"}});
            if let Some(t) = body.get("tags") {
                v["tags"] = t.clone();
            }
            let created = st.store.put(rg, v.clone());
            Reply::new(if created { 201 } else { 200 }, v)
        }
        "DELETE" => {
            if !st.store.group_exists(rg) {
                return Reply::error(
                    404,
                    "ResourceGroupNotFound",
                    format!("Resource group '{}' could not be found.", rg.name()),
                );
            }
            st.store.remove_tree(rg);
            Reply::empty(200)
        }
        _ => Reply::not_simulated(&format!("{method} on a resource group")),
    }
}

#[allow(clippy::too_many_arguments)]
fn collection(
    st: &mut State,
    ctx: &Ctx,
    method: &str,
    path: &str,
    parent: &ResourceId,
    last: &str,
    query: &HashMap<String, String>,
    body: &Value,
) -> Reply {
    let last_l = last.to_ascii_lowercase();
    let pk = parent.kind();
    match (method, last_l.as_str(), pk) {
        ("GET", "virtualnetworkconnections", ResourceKind::Site | ResourceKind::Slot) => {
            web::list_connections(st, parent)
        }
        ("GET", "virtualnetworkconnections", ResourceKind::ServerFarm) => {
            web::plan_connections(st, parent)
        }
        ("GET", "sites", ResourceKind::ServerFarm) => {
            if !st.store.contains(parent) {
                return Reply::not_found(parent.as_str());
            }
            let items = web::plan_sites(st, parent)
                .into_iter()
                .map(|v| render(st, ctx, v))
                .collect();
            page(items, ctx, path, query)
        }
        ("GET", "subnets", ResourceKind::VirtualNetwork) => {
            network::list_inline(st, parent, "subnets")
        }
        ("GET", "virtualnetworkpeerings", ResourceKind::VirtualNetwork) => {
            network::list_inline(st, parent, "virtualNetworkPeerings")
        }
        ("GET", "usages", ResourceKind::VirtualNetwork) => network::usages(st, parent),
        ("POST", "generatevpnclientpackage", _)
            if type_key(parent) == "microsoft.network/virtualnetworkgateways" =>
        {
            network::generate_package(st, ctx, parent, body)
        }
        ("POST", "list", _) if type_key(parent).ends_with("/config") => {
            // POST {site}/config/appsettings/list: the stored settings resource, or an empty one.
            let site = parent.parent().expect("config below a site");
            if !st.store.contains(&site) {
                return Reply::not_found(site.as_str());
            }
            Reply::ok(st.store.get(parent).map(Cow::into_owned).unwrap_or_else(|| json!({"id": parent.as_str(), "name": parent.name(), "type": "Microsoft.Web/sites/config", "properties": {}})))
        }
        ("GET", _, _) => {
            let top = ResourceId::parse(&format!(
                "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
                parent.subscription(),
                parent.resource_group().unwrap_or_default(),
                parent.provider().unwrap_or_default(),
                path.split('/')
                    .skip(7)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            ));
            if top.as_ref().is_ok_and(|t| !st.store.contains(t)) {
                return Reply::not_found(top.expect("checked").as_str());
            }
            let ty = format!("{}/{last_l}", type_key(parent));
            listing(st, ctx, path, query, &ty, parent)
        }
        _ => Reply::not_simulated(&format!("{method} {path}")),
    }
}

fn generic(st: &mut State, ctx: &Ctx, method: &str, id: &ResourceId, body: &Value) -> Reply {
    match method {
        "GET" => match st.store.get(id).map(Cow::into_owned) {
            Some(v) => Reply::ok(render(st, ctx, v)),
            None => Reply::not_found(id.as_str()),
        },
        "PUT" => {
            if !body.is_object() {
                return Reply::error(
                    400,
                    "InvalidRequestContent",
                    "The request body must be a JSON object.",
                );
            }
            let mut v = body.clone();
            v["id"] = json!(id.as_str());
            v["name"] = json!(id.name());
            v["type"] = json!(id.resource_type().unwrap_or_default());
            if id.kind() == ResourceKind::ServerFarm {
                normalize_plan(&mut v);
            }
            let created = st.store.put(id, v.clone());
            // Microsoft.Web and Insights answer 200 even on create (as recorded).
            let web_like = matches!(
                id.provider().map(str::to_ascii_lowercase).as_deref(),
                Some("microsoft.web" | "microsoft.insights")
            );
            Reply::new(if created && !web_like { 201 } else { 200 }, v)
        }
        // Through `put`, which keeps the store's reference index in step (a gateway PATCH
        // may move its ip configurations).
        "PATCH" => match st.store.get(id).map(Cow::into_owned) {
            Some(mut v) => {
                merge(&mut v, body);
                st.store.put(id, v.clone());
                Reply::ok(v)
            }
            None => Reply::not_found(id.as_str()),
        },
        "DELETE" => Reply::empty(if st.store.remove_tree(id) { 200 } else { 204 }),
        _ => Reply::not_simulated(&format!("{method} {}", id.as_str())),
    }
}

/// Server-owned plan fields as App Service fills them on create.
fn normalize_plan(v: &mut Value) {
    v.as_object_mut()
        .expect("object")
        .entry("kind")
        .or_insert(json!("app"));
    if !v["properties"].is_object() {
        v["properties"] = json!({});
    }
    let cap = v["sku"]["capacity"].as_u64().unwrap_or(1);
    let p = v["properties"].as_object_mut().expect("object");
    p.entry("status").or_insert(json!("Ready"));
    p.entry("provisioningState").or_insert(json!("Succeeded"));
    p.entry("numberOfWorkers").or_insert(json!(cap));
    p.entry("maximumNumberOfWorkers").or_insert(json!(30));
    p.entry("reserved").or_insert(json!(false));
}

fn resource(st: &mut State, ctx: &Ctx, method: &str, id: &ResourceId, body: &Value) -> Reply {
    let ty = type_key(id);
    let name = id.name().to_ascii_lowercase();
    let parent = || id.parent().expect("nested resource has a parent");
    match (ty.as_str(), method) {
        ("microsoft.web/sites" | "microsoft.web/sites/slots", "GET") => web::get_site(st, ctx, id),
        ("microsoft.web/sites" | "microsoft.web/sites/slots", "PUT") => {
            web::put_site(st, ctx, id, body)
        }
        ("microsoft.web/sites" | "microsoft.web/sites/slots", "PATCH") => {
            web::patch_site(st, ctx, id, body)
        }
        ("microsoft.web/sites" | "microsoft.web/sites/slots", "DELETE") => web::delete_site(st, id),
        (
            "microsoft.web/sites/virtualnetworkconnections"
            | "microsoft.web/sites/slots/virtualnetworkconnections",
            m,
        ) => match m {
            "GET" => web::get_connection(st, id),
            "PUT" => web::put_connection(st, id, body),
            "DELETE" => web::delete_connection(st, id),
            _ => Reply::not_simulated(&format!("{m} on a virtual network connection")),
        },
        (
            "microsoft.web/sites/virtualnetworkconnections/gateways"
            | "microsoft.web/sites/slots/virtualnetworkconnections/gateways",
            "PUT",
        ) => web::put_connection_gateway(st, id, body),
        ("microsoft.web/sites/networkconfig" | "microsoft.web/sites/slots/networkconfig", m)
            if name == "virtualnetwork" =>
        {
            match m {
                "GET" => web::get_swift(st, &parent()),
                "PUT" | "PATCH" => web::put_swift(st, &parent(), body),
                "DELETE" => web::delete_swift(st, &parent()),
                _ => Reply::not_simulated(&format!("{m} on networkConfig")),
            }
        }
        ("microsoft.web/sites/config" | "microsoft.web/sites/slots/config", m) if name == "web" => {
            match m {
                "GET" => web::get_config_web(st, &parent()),
                "PUT" | "PATCH" => web::write_config_web(st, &parent(), body),
                _ => Reply::not_simulated(&format!("{m} on config/web")),
            }
        }
        (
            "microsoft.network/virtualnetworks" | "microsoft.network/virtualnetworkgateways",
            "GET",
        ) => network::get_network_resource(st, id),
        ("microsoft.network/virtualnetworks", "PUT") => network::put_vnet(st, ctx, id, body),
        ("microsoft.network/virtualnetworks", "DELETE") => network::delete_vnet(st, id),
        ("microsoft.network/virtualnetworkgateways", "PUT") => {
            network::put_gateway(st, ctx, id, body)
        }
        ("microsoft.network/virtualnetworks/subnets", "GET") => network::get_subnet(st, id),
        ("microsoft.network/virtualnetworks/subnets", "PUT") => {
            network::put_subnet(st, ctx, id, body)
        }
        ("microsoft.network/virtualnetworks/subnets", "DELETE") => network::delete_subnet(st, id),
        ("microsoft.network/virtualnetworks/subnets", m) => {
            Reply::not_simulated(&format!("{m} on a subnet"))
        }
        ("microsoft.network/virtualnetworks/virtualnetworkpeerings", "GET") => {
            network::get_peering(st, id)
        }
        ("microsoft.network/virtualnetworks/virtualnetworkpeerings", m) => {
            Reply::not_simulated(&format!("{m} on a peering"))
        }
        _ => generic(st, ctx, method, id, body),
    }
}

/// `{value, nextLink}` pages; `$skiptoken` is the offset, `$top` the page size.
/// `$skiptoken` and `$top` of a listing request: (skip, top).
fn window(query: &HashMap<String, String>) -> (usize, usize) {
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(PAGE_SIZE)
        .min(1000);
    let skip = query
        .get("$skiptoken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    (skip, top)
}

fn page(items: Vec<Value>, ctx: &Ctx, path: &str, query: &HashMap<String, String>) -> Reply {
    let (skip, top) = window(query);
    let total = items.len();
    let value = items.into_iter().skip(skip).take(top).collect();
    paged(value, total, (skip, top), ctx, path)
}

/// A page of the stored resources of type `ty` within `scope`, rendered at the request's
/// api-version; only the page's own resources are read.
fn listing(
    st: &State,
    ctx: &Ctx,
    path: &str,
    query: &HashMap<String, String>,
    ty: &str,
    scope: &ResourceId,
) -> Reply {
    let (skip, top) = window(query);
    let (total, items) = st.store.page_of_type_within(ty, scope, skip, top);
    let value = items.into_iter().map(|v| render(st, ctx, v)).collect();
    paged(value, total, (skip, top), ctx, path)
}

/// The page `value` (from `skip`, at most `top`) of a listing of `total` items, with the
/// `nextLink` to the next page unless it is the last.
fn paged(
    value: Vec<Value>,
    total: usize,
    (skip, top): (usize, usize),
    ctx: &Ctx,
    path: &str,
) -> Reply {
    let mut body = json!({"value": value});
    if skip + top < total {
        body["nextLink"] = json!(format!(
            "{}{path}?api-version={}&$skiptoken={}&$top={top}",
            ctx.base,
            ctx.api_version,
            skip + top
        ));
    }
    Reply::ok(body)
}

/// A stored resource as listed or read at the request's api-version.
fn render(st: &State, ctx: &Ctx, v: Value) -> Value {
    let ty = v["type"].as_str().unwrap_or_default().to_ascii_lowercase();
    if ty.ends_with("config/configreferences") {
        web::render_kv_reference(st, v)
    } else if ty == "microsoft.web/sites" || ty == "microsoft.web/sites/slots" {
        web::render_site(v, &ctx.api_version)
    } else {
        v
    }
}

fn locations(sub: &str) -> Value {
    let list: Vec<Value> = [
        ("westeurope", "West Europe"),
        ("northeurope", "North Europe"),
        ("francecentral", "France Central"),
        ("eastus", "East US"),
        ("westus", "West US"),
        ("westus2", "West US 2"),
    ]
    .iter()
    .map(|(n, d)| json!({"id": format!("/subscriptions/{sub}/locations/{n}"), "name": n, "displayName": d, "regionalDisplayName": format!("(Europe) {d}"), "metadata": {"regionType": "Physical"}}))
    .collect();
    json!({"value": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_links() {
        let ctx = Ctx {
            base: "http://h".into(),
            api_version: "v".into(),
        };
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let mut q = HashMap::new();
        q.insert("$top".to_string(), "2".to_string());
        let r = page(items.clone(), &ctx, "/p", &q).body.unwrap();
        assert_eq!(r["value"], json!([0, 1]));
        assert_eq!(
            r["nextLink"],
            "http://h/p?api-version=v&$skiptoken=2&$top=2"
        );
        q.insert("$skiptoken".to_string(), "4".to_string());
        let r = page(items, &ctx, "/p", &q).body.unwrap();
        assert_eq!(r["value"], json!([4]));
        assert!(r.get("nextLink").is_none());
    }
}
