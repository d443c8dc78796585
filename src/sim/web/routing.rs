//! A site's outbound routing in the two shapes of Microsoft.Web's api-versions.
//!
//! Before 2024-11-01 sites answer with the flags `vnetRouteAllEnabled`, `vnetImagePullEnabled`,
//! `vnetContentShareEnabled` and `vnetBackupRestoreEnabled` (2022-03-01 onwards); from
//! 2024-11-01 the live service answers with `outboundVnetRouting{allTraffic,
//! applicationTraffic, contentShareTraffic, imagePullTraffic, backupRestoreTraffic}` instead
//! (arm-vnet reference §0, §4; recordings at 2022-03-01 in test_webapp_vnetE2E #12, #22; spec
//! example GetWebApp.2025-05-01). The store keeps `outboundVnetRouting`; a write in either
//! shape maps onto it and every answer is rendered in the shape of its api-version.

use serde_json::{json, Map, Value};

/// First api-version whose site answers carry `outboundVnetRouting` (arm-vnet reference §0).
const OUTBOUND_ROUTING_FROM: &str = "2024-11-01";

/// (legacy site flag, `outboundVnetRouting` field): `applicationTraffic` is the old
/// `vnetRouteAllEnabled`, and so on (arm-vnet reference §4).
const PAIRS: [(&str, &str); 4] = [
    ("vnetRouteAllEnabled", "applicationTraffic"),
    ("vnetImagePullEnabled", "imagePullTraffic"),
    ("vnetContentShareEnabled", "contentShareTraffic"),
    ("vnetBackupRestoreEnabled", "backupRestoreTraffic"),
];

fn uses_outbound_routing(api_version: &str) -> bool {
    // ISO dates compare as strings; a `-preview` suffix does not change the date order.
    api_version.get(..10).unwrap_or(api_version) >= OUTBOUND_ROUTING_FROM
}

/// The stored routing as `outboundVnetRouting`, also for sites stored in the legacy shape
/// (fleet files written from an older api-version).
fn routing_of(props: &Map<String, Value>) -> Map<String, Value> {
    let mut r = match props.get("outboundVnetRouting") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    r.entry("allTraffic").or_insert(json!(false));
    for (legacy, field) in PAIRS {
        let v = props.get(legacy).and_then(Value::as_bool).unwrap_or(false);
        r.entry(field).or_insert(json!(v));
    }
    r
}

fn on(r: &Map<String, Value>, field: &str) -> bool {
    // `allTraffic` switches every kind of traffic on (arm-vnet reference §4).
    r.get(field).and_then(Value::as_bool).unwrap_or(false)
        || r.get("allTraffic")
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

/// Takes the routing out of a write's `properties` (either shape) and applies it to the
/// stored `properties`, which keep `outboundVnetRouting` only. `outboundVnetRouting` fields
/// win over legacy flags sent alongside, and both over `siteConfig.vnetRouteAllEnabled`: the
/// az CLI 2.79 PUT an all-false `outboundVnetRouting` with `siteConfig.vnetRouteAllEnabled:
/// true` and the answer kept `applicationTraffic: false` (arm-vnet reference §4, REC-2025).
pub(super) fn absorb(stored: &mut Value, patch: &mut Value) {
    let Some(p) = patch.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    let mut given = Map::new();
    if let Some(sc) = p
        .get("siteConfig")
        .and_then(|s| s.get("vnetRouteAllEnabled"))
    {
        given.insert("applicationTraffic".into(), sc.clone());
    }
    for (legacy, field) in PAIRS {
        if let Some(v) = p.remove(legacy) {
            given.insert(field.into(), v);
        }
    }
    if let Some(Value::Object(o)) = p.remove("outboundVnetRouting") {
        given.extend(o);
    }
    if !stored["properties"].is_object() {
        stored["properties"] = json!({});
    }
    let sp = stored["properties"].as_object_mut().expect("object");
    let mut routing = routing_of(sp);
    routing.extend(given);
    for (legacy, _) in PAIRS {
        sp.remove(legacy);
    }
    sp.insert("outboundVnetRouting".into(), Value::Object(routing));
}

/// `siteConfig.vnetRouteAllEnabled` follows application routing in every api-version
/// (`config/web` showed `true` after the CLI set the site flag: recording
/// test_webapp_vnetE2E #25; it is still in the 2025-05-01 example's siteConfig).
pub(super) fn mirror_site_config(site: &mut Value) {
    let Some(p) = site.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    let route_all = on(&routing_of(p), "applicationTraffic");
    if let Some(sc) = p.get_mut("siteConfig").and_then(Value::as_object_mut) {
        sc.insert("vnetRouteAllEnabled".into(), json!(route_all));
    }
}

/// A stored site as an answer at `api_version`.
pub(super) fn render(mut site: Value, api_version: &str) -> Value {
    let Some(p) = site.get_mut("properties").and_then(Value::as_object_mut) else {
        return site;
    };
    let routing = routing_of(p);
    for (legacy, _) in PAIRS {
        p.remove(legacy);
    }
    p.remove("outboundVnetRouting");
    if uses_outbound_routing(api_version) {
        p.insert("outboundVnetRouting".into(), Value::Object(routing));
    } else {
        for (legacy, field) in PAIRS {
            p.insert(legacy.into(), json!(on(&routing, field)));
        }
    }
    site
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Value {
        json!({"properties": {"outboundVnetRouting": {"allTraffic": false, "applicationTraffic": false,
            "contentShareTraffic": false, "imagePullTraffic": false, "backupRestoreTraffic": false},
            "siteConfig": {"vnetRouteAllEnabled": false}}})
    }

    #[test]
    fn shape_follows_the_api_version() {
        let old = render(stored(), "2022-03-01");
        assert!(old["properties"].get("outboundVnetRouting").is_none());
        for (legacy, _) in PAIRS {
            assert_eq!(old["properties"][legacy], false, "{legacy}");
        }
        for v in ["2024-11-01", "2025-05-01", "2026-03-01-preview"] {
            let new = render(stored(), v);
            assert!(new["properties"]["outboundVnetRouting"].is_object(), "{v}");
            for (legacy, _) in PAIRS {
                assert!(new["properties"].get(legacy).is_none(), "{v} {legacy}");
            }
        }
    }

    #[test]
    fn legacy_writes_map_onto_outbound_routing_and_back() {
        let mut site = stored();
        let mut patch =
            json!({"properties": {"vnetRouteAllEnabled": true, "vnetImagePullEnabled": true}});
        absorb(&mut site, &mut patch);
        assert_eq!(patch, json!({"properties": {}}));
        let r = &site["properties"]["outboundVnetRouting"];
        assert_eq!(r["applicationTraffic"], true);
        assert_eq!(r["imagePullTraffic"], true);
        assert_eq!(r["contentShareTraffic"], false);
        mirror_site_config(&mut site);
        assert_eq!(
            site["properties"]["siteConfig"]["vnetRouteAllEnabled"],
            true
        );
        let old = render(site.clone(), "2023-01-01");
        assert_eq!(old["properties"]["vnetRouteAllEnabled"], true);
        assert_eq!(old["properties"]["vnetContentShareEnabled"], false);
        // allTraffic switches every legacy flag on
        let mut patch = json!({"properties": {"outboundVnetRouting": {"allTraffic": true}}});
        absorb(&mut site, &mut patch);
        let old = render(site, "2022-03-01");
        for (legacy, _) in PAIRS {
            assert_eq!(old["properties"][legacy], true, "{legacy}");
        }
    }

    #[test]
    fn outbound_routing_wins_over_site_config_flag() {
        let mut site = stored();
        let mut patch = json!({"properties": {"outboundVnetRouting": {"applicationTraffic": false},
            "siteConfig": {"vnetRouteAllEnabled": true}}});
        absorb(&mut site, &mut patch);
        assert_eq!(
            site["properties"]["outboundVnetRouting"]["applicationTraffic"],
            false
        );
        // alone, the siteConfig flag turns application routing on
        let mut patch = json!({"properties": {"siteConfig": {"vnetRouteAllEnabled": true}}});
        absorb(&mut site, &mut patch);
        assert_eq!(
            site["properties"]["outboundVnetRouting"]["applicationTraffic"],
            true
        );
    }

    #[test]
    fn legacy_stored_sites_render_in_both_shapes() {
        let site = json!({"properties": {"vnetRouteAllEnabled": true}});
        let new = render(site.clone(), "2024-11-01");
        assert_eq!(
            new["properties"]["outboundVnetRouting"]["applicationTraffic"],
            true
        );
        assert!(new["properties"].get("vnetRouteAllEnabled").is_none());
        assert_eq!(
            render(site, "2022-03-01")["properties"]["vnetRouteAllEnabled"],
            true
        );
    }
}
