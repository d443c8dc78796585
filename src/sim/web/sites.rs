//! Sites and slots (GET/PUT/PATCH/DELETE with App Service's server-filled defaults and
//! ETags), `config/web`, and Key Vault reference status.

use std::borrow::Cow;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::regional::{apply_integration, check_connect};
use super::routing;
use super::{
    bad_request, current_subnet, has_knob, is_target, parse_id, plan_of, tags_have_knob, SiteFields,
};
use crate::azure::{ResourceId, ResourceKind};
use crate::sim::reply::{Ctx, Reply};
use crate::sim::state::State;
use crate::sim::store::merge;

/// A quoted strong ETag derived from the site's stored content (changes with every write),
/// the same at every api-version, as a site's version is. Hashed from the stored bytes: hashing
/// the rendered site meant serializing kilobytes of JSON once more for every answer.
fn site_etag(st: &State, id: &ResourceId) -> String {
    let h = st.store.content_digest(id).unwrap_or_default();
    format!("\"{}\"", &hex::encode_upper(&h[..8])[..15])
}

/// A stored site or slot as answered at `api_version`: routing in that version's shape, and
/// `siteConfig.vnetName` null (a site answer does not carry it, `config/web` does: recording
/// test_webapp_vnetE2E #24 and #25, arm-vnet reference §1.1).
pub(crate) fn render_site(v: Value, api_version: &str) -> Value {
    let mut v = routing::render(v, api_version);
    if let Some(sc) = v
        .pointer_mut("/properties/siteConfig")
        .and_then(Value::as_object_mut)
    {
        sc.insert("vnetName".into(), Value::Null);
    }
    v
}

/// A site answer in the shape of the request's api-version; `v` is the site as `st` holds it.
fn site_reply(st: &State, status: u16, ctx: &Ctx, id: &ResourceId, v: Value) -> Reply {
    let e = site_etag(st, id);
    Reply::new(status, render_site(v, &ctx.api_version)).header("ETag", e)
}

pub(crate) fn get_site(st: &State, ctx: &Ctx, id: &ResourceId) -> Reply {
    match st.store.get(id).map(Cow::into_owned) {
        Some(v) => site_reply(st, 200, ctx, id, v),
        None => Reply::not_found(id.as_str()),
    }
}

/// Server-filled site properties as App Service answers a site it created from a short body
/// (recording test_webapp_vnetE2E #22, api 2022-03-01; the per-site ones are set below).
static SERVER_FIELDS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("site_server_fields.json")).expect("valid JSON")
});

/// A new site's full SiteConfig as `config/web` answers it (recording test_webapp_vnetE2E #25);
/// what the site stores in `siteConfig` overrides it.
static CONFIG_DEFAULTS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("site_config_defaults.json")).expect("valid JSON")
});

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
    let kind = o.entry("kind").or_insert_with(|| json!("app")).clone();
    let p = o.entry("properties").or_insert_with(|| json!({}));
    if !p.is_object() {
        *p = json!({});
    }
    let p = p.as_object_mut().expect("object");
    default(p, "defaultHostName", || json!(host));
    default(p, "enabled", || json!(true));
    default(p, "state", || json!("Running"));
    default(p, "reserved", || json!(false));
    default(p, "virtualNetworkSubnetId", || Value::Null);
    let rg = id.resource_group().unwrap_or_default();
    let scm = || host.replace(".azurewebsites.net", ".scm.azurewebsites.net");
    let ssl = |h: &str, ty: &str| {
        json!({"name": h, "sslState": "Disabled", "ipBasedSslResult": null, "virtualIP": null,
        "thumbprint": null, "toUpdate": null, "toUpdateIpBasedSsl": null, "ipBasedSslState": "NotConfigured", "hostType": ty})
    };
    default(p, "name", || json!(site_name));
    default(p, "hostNames", || json!([host]));
    default(p, "enabledHostNames", || json!([host, scm()]));
    default(p, "hostNameSslStates", || {
        json!([ssl(&host, "Standard"), ssl(&scm(), "Repository")])
    });
    default(p, "repositorySiteName", || json!(site_name));
    default(p, "deploymentId", || json!(site_name));
    default(p, "resourceGroup", || json!(rg));
    default(p, "webSpace", || json!(format!("{rg}-webspace")));
    default(p, "selfLink", || {
        json!(format!("https://waws-prod-sim.api.azurewebsites.windows.net:454/subscriptions/{}/webspaces/{rg}-webspace/sites/{site_name}", id.subscription()))
    });
    default(p, "ftpUsername", || {
        json!(format!("{site_name}\\${site_name}"))
    });
    default(p, "slotName", || {
        if id.kind() == ResourceKind::Slot {
            json!(id.name())
        } else {
            Value::Null
        }
    });
    default(p, "kind", || kind);
    for (k, val) in SERVER_FIELDS.iter() {
        default(p, k, || val.clone());
    }
    default(
        p,
        "outboundVnetRouting",
        || json!({"allTraffic": false, "applicationTraffic": false, "contentShareTraffic": false, "imagePullTraffic": false, "backupRestoreTraffic": false}),
    );
    let sc = p.entry("siteConfig").or_insert_with(|| json!({}));
    if let Some(sc) = sc.as_object_mut() {
        default(sc, "vnetName", || json!(""));
        default(sc, "vnetRouteAllEnabled", || json!(false));
    }
}

/// Sets `key` to `value()` unless present. Every write of a site fills its defaults again,
/// and they are nearly all present by then: `Map::entry` would allocate the key (and the
/// caller build the value) for each of them.
fn default(map: &mut Map<String, Value>, key: &str, value: impl FnOnce() -> Value) {
    if !map.contains_key(key) {
        map.insert(key.to_string(), value());
    }
}

/// Writes `body` onto the site or slot (`merge_existing`: PATCH, and PUT on an existing
/// site, which App Service treats as an update of the fields sent).
pub(super) fn write_site(
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
    let old = st.store.get(id).map(Cow::into_owned);
    let created = old.is_none();
    let old_subnet = old.as_ref().and_then(current_subnet);
    if created && !create_ok {
        return Err(Reply::not_found(id.as_str()));
    }
    if created
        && id.kind() == ResourceKind::Slot
        && id.site().is_some_and(|s| !st.store.contains(&s))
    {
        return Err(Reply::not_found(id.site().expect("slot").as_str()));
    }
    let mut site = old.unwrap_or_else(|| json!({}));
    let mut patch = body.clone();
    // vnetName is read-only; integration fields are applied below after validation.
    if let Some(sc) = patch
        .pointer_mut("/properties/siteConfig")
        .and_then(Value::as_object_mut)
    {
        sc.remove("vnetName");
    }
    routing::absorb(&mut site, &mut patch);
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
    routing::mirror_site_config(&mut site);
    if let Some(plan) = plan_of(st, id, &site) {
        site["properties"]["serverFarmId"] = json!(plan.as_str());
        // The site's `sku` is its plan's tier (recording test_webapp_vnetE2E #22).
        if let Some(tier) = st
            .store
            .get(&plan)
            .and_then(|p| p["sku"]["tier"].as_str().map(String::from))
        {
            site["properties"]["sku"] = json!(tier);
        }
    }
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
    st.store.put_copy(id, &site);
    Ok((site, created, changed))
}

pub(crate) fn put_site(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    match write_site(st, id, body, true) {
        Ok((site, _, _)) => site_reply(st, 200, ctx, id, site),
        Err(r) => r,
    }
}

/// PATCH: 200 with the site, or 202 + `Azure-AsyncOperation` when an integration change
/// "takes a while" (half of them with the latency model on).
pub(crate) fn patch_site(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    let (site, _, changed) = match write_site(st, id, body, false) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if changed && st.options.latency && rand::Rng::random_bool(&mut st.rng, 0.5) {
        let d = st.work;
        let (op, _) = st.start_operation();
        let site_name = id.site().map(|s| s.name().to_string()).unwrap_or_default();
        let url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Web/sites/{site_name}/operationResults/{op}?api-version={}",
            ctx.base,
            id.subscription(),
            ctx.api_version
        );
        return site_reply(st, 202, ctx, id, site)
            .header("Azure-AsyncOperation", url)
            .header("Retry-After", State::retry_after(d));
    }
    site_reply(st, 200, ctx, id, site)
}

pub(crate) fn delete_site(st: &mut State, id: &ResourceId) -> Reply {
    let Some(site) = st.store.get(id).map(Cow::into_owned) else {
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

fn config_web_body(target: &ResourceId, site: &Value) -> Value {
    let name = site["name"].clone();
    let mut props = CONFIG_DEFAULTS.clone();
    let repo = site["properties"]["repositorySiteName"]
        .as_str()
        .unwrap_or_default();
    props.insert("publishingUsername".into(), json!(format!("${repo}")));
    if let Some(sc) = site["properties"]["siteConfig"].as_object() {
        props.extend(sc.clone());
    }
    json!({
        "id": format!("{}/config/web", target.as_str()),
        "name": name,
        "type": if target.kind() == ResourceKind::Slot { "Microsoft.Web/sites/slots/config" } else { "Microsoft.Web/sites/config" },
        "location": site["location"],
        "properties": props
    })
}

pub(crate) fn get_config_web(st: &State, target: &ResourceId) -> Reply {
    match st.store.get(target) {
        Some(site) => Reply::ok(config_web_body(target, &site)),
        None => Reply::not_found(target.as_str()),
    }
}

/// PUT/PATCH `config/web`: merges into the stored siteConfig (vnetName stays server-owned).
pub(crate) fn write_config_web(st: &mut State, target: &ResourceId, body: &Value) -> Reply {
    let Some(mut site) = st.store.get(target).map(Cow::into_owned) else {
        return Reply::not_found(target.as_str());
    };
    let mut props = body.get("properties").cloned().unwrap_or_else(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.remove("vnetName");
    }
    if let Some(route_all) = props.get("vnetRouteAllEnabled") {
        let mut patch = json!({"properties": {"siteConfig": {"vnetRouteAllEnabled": route_all}}});
        routing::absorb(&mut site, &mut patch);
    }
    if !site["properties"]["siteConfig"].is_object() {
        site["properties"]["siteConfig"] = json!({});
    }
    merge(&mut site["properties"]["siteConfig"], &props);
    routing::mirror_site_config(&mut site);
    st.store.put(target, site.clone());
    Reply::ok(config_web_body(target, &site))
}

/// Applies `kv-breaks-after-connect` to a Key Vault reference on the way out.
pub(crate) fn render_kv_reference(st: &State, mut v: Value) -> Value {
    // {target}/config/configreferences/appsettings/{name}: two levels up is the target.
    let target = parse_id(&v["id"])
        .and_then(|i| i.parent())
        .and_then(|p| p.parent());
    let broken = target
        .filter(is_target)
        .and_then(|t| st.store.get_as::<SiteFields>(&t))
        .is_some_and(|s| {
            tags_have_knob(&s.tags, "kv-breaks-after-connect") && s.subnet().is_some()
        });
    if broken {
        v["properties"]["status"] = json!("AccessToKeyVaultDenied");
    }
    v
}

/// A request to the app behind `host`, as App Service's front end passes it on (the
/// simulator stands in for it so the probe has an answer; this is not ARM): 200 from a
/// running site or slot; 503 from one with the `probe-fails-after-connect` knob once it is
/// on a subnet (an app that cannot serve on its new network, say a dependency its subnet does
/// not reach); 404 for a host name no site has.
pub(crate) fn front_end(st: &State, host: &str) -> Reply {
    let site = st.store.all().find(|v| {
        parse_id(&v["id"]).is_some_and(|id| is_target(&id))
            && v["properties"]["defaultHostName"]
                .as_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(host))
    });
    match site {
        None => Reply::error(404, "NotFound", format!("no app answers for {host}")),
        Some(s) if has_knob(&s, "probe-fails-after-connect") && current_subnet(&s).is_some() => {
            Reply::error(
                503,
                "ServiceUnavailable",
                "the app cannot serve (simulated)",
            )
        }
        Some(_) => Reply::ok(json!({"host": host})),
    }
}
