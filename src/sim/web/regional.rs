//! Regional (swift) VNet integration: App Service's validations before an app joins a
//! subnet, moving an app between subnets (vnetName and service association links), and the
//! `networkConfig/virtualNetwork` sub-resource.

use serde_json::{json, Value};
use std::borrow::Cow;

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
    if has_knob(&plan, "old-scale-unit") {
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
    // The multi-plan subnet join takes plans of the subscription of the plans already there
    // (the VNet may be another's), in a /26 at least, and checks no addresses (arm-vnet
    // reference §3.2, §6, §13); a plan of another subscription meets the pre-MPSJ refusal.
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
    // "The VNet must have no IPv6 address space; the subnet must be IPv4" (arm-vnet reference
    // §5, from the 2021/2023 regional integration docs). App Service's text is not known.
    let vnet_prefixes = vnet["properties"]["addressSpace"]["addressPrefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_else(Vec::new);
    if let Some(v6) = network::prefixes(&sn)
        .iter()
        .chain(&vnet_prefixes)
        .find(|p| p.parse::<ipnet::Ipv6Net>().is_ok())
    {
        return Err(bad_request(format!("Subnet {} in VNET {vnet_name} uses the IPv6 address range {v6}: regional virtual network integration supports IPv4 virtual networks and subnets only.", subnet.name())));
    }
    let len = network::prefixes(&sn)
        .first()
        .and_then(|p| p.parse::<ipnet::Ipv4Net>().ok())
        .map(|n| n.prefix_len())
        .unwrap_or(32);
    if others.is_empty() {
        // A single plan needs a /28 at least (arm-vnet reference §5 sizing); the server's
        // text is not captured (§3.2), this one is ours.
        if len > 28 {
            return Err(bad_request(format!("Subnet {} in VNET {vnet_name} is too small: regional virtual network integration needs at least a /28 subnet (it is a /{len}).", subnet.name())));
        }
    } else if len > 26 {
        // Joining a subnet another plan links (multi-plan subnet join, also while that plan's
        // link lingers): the text is App Service's as quoted in Azure/GPT-RAG#226 (arm-vnet
        // reference §13); its status code is not visible there, 400 is our choice.
        return Err(bad_request(format!("Minimum subnet size allowed for joining multiple App Service Plans to same subnet is /26, the subnet attempting to be joined is /{len}")));
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
        network::claim_sal(st, s, &plan);
    }
    if let Some(o) = old.filter(|o| Some(o) != new.as_ref()) {
        let still_used = plan_members(st, &plan, target)
            .iter()
            .any(|(_, s)| s.as_ref() == Some(&o));
        if !still_used {
            network::release_sal(st, &o, &plan);
        }
    }
}

fn swift_body(st: &State, target: &ResourceId, site: &Value) -> Value {
    let supported = plan_of(st, target, site)
        .and_then(|p| st.store.get(&p))
        .is_none_or(|p| !has_knob(&p, "old-scale-unit"));
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
        Some(site) => Reply::ok(swift_body(st, target, &site)),
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
    let Some(mut site) = st.store.get(target).map(Cow::into_owned) else {
        return Reply::not_found(target.as_str());
    };
    if let Some(old) = current_subnet(&site) {
        apply_integration(st, target, &mut site, Some(old), None);
        st.store.put(target, site);
    }
    Reply::empty(200)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::options::SimOptions;
    use crate::sim::store::Store;

    const RG: &str = "/subscriptions/s/resourceGroups/rg/providers";

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(&format!("{RG}/{s}")).unwrap()
    }

    fn subnet(name: &str, prefix: &str, linked_plan: Option<&str>) -> Value {
        let links = match linked_plan {
            Some(p) => {
                json!([{"name": "AppServiceLink", "properties": {"link": format!("{RG}/Microsoft.Web/serverfarms/{p}")}}])
            }
            None => json!([]),
        };
        json!({"name": name, "properties": {"addressPrefixes": [prefix],
            "delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}],
            "serviceAssociationLinks": links}})
    }

    fn state(space: &[&str], subnets: Vec<Value>, options: SimOptions) -> State {
        let mut resources = vec![
            json!({"id": format!("{RG}/Microsoft.Network/virtualNetworks/v"), "name": "v",
            "type": "Microsoft.Network/virtualNetworks", "location": "westeurope",
            "properties": {"addressSpace": {"addressPrefixes": space}, "subnets": subnets}}),
        ];
        for p in ["p1", "p2"] {
            resources.push(json!({"id": format!("{RG}/Microsoft.Web/serverfarms/{p}"), "name": p, "type": "Microsoft.Web/serverfarms",
                "location": "westeurope", "sku": {"tier": "PremiumV2"}, "properties": {}}));
            resources.push(json!({"id": format!("{RG}/Microsoft.Web/sites/app-{p}"), "name": format!("app-{p}"), "type": "Microsoft.Web/sites",
                "location": "West Europe", "properties": {"serverFarmId": format!("{RG}/Microsoft.Web/serverfarms/{p}")}}));
        }
        State::new(Store::from_resources(resources), options)
    }

    fn connect(st: &State, app: &str, subnet: &str) -> Result<(), Reply> {
        let target = id(&format!("Microsoft.Web/sites/{app}"));
        let site = st.store.get(&target).unwrap();
        check_connect(
            st,
            &target,
            &site,
            &id(&format!(
                "Microsoft.Network/virtualNetworks/v/subnets/{subnet}"
            )),
        )
    }

    fn message(r: Reply) -> String {
        r.body.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn ipv6_subnets_and_vnets_cannot_be_joined() {
        let st = state(
            &["10.0.0.0/16", "fd00:db8::/48"],
            vec![
                subnet("dual", "10.0.1.0/26", None),
                json!({"name": "v6", "properties": {"addressPrefixes": ["fd00:db8:0:1::/64"],
                    "delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}]}}),
            ],
            SimOptions::instant(),
        );
        for s in ["dual", "v6"] {
            let r = connect(&st, "app-p1", s).unwrap_err();
            assert_eq!(r.status, 400);
            assert!(message(r).contains("IPv6"));
        }
        let v4 = state(
            &["10.0.0.0/16"],
            vec![subnet("a", "10.0.1.0/26", None)],
            SimOptions::instant(),
        );
        assert!(connect(&v4, "app-p1", "a").is_ok());
    }

    #[test]
    fn a_second_plan_needs_a_slash_26() {
        let st = state(
            &["10.0.0.0/16"],
            vec![
                subnet("small", "10.0.1.0/28", Some("p1")),
                subnet("big", "10.0.2.0/26", Some("p1")),
            ],
            SimOptions::instant(),
        );
        let r = connect(&st, "app-p2", "small").unwrap_err();
        assert_eq!(r.status, 400);
        assert_eq!(message(r), "Minimum subnet size allowed for joining multiple App Service Plans to same subnet is /26, the subnet attempting to be joined is /28");
        // the plan that owns the link may use its /28; a /26 takes a second plan
        assert!(connect(&st, "app-p1", "small").is_ok());
        assert!(connect(&st, "app-p2", "big").is_ok());
    }

    #[test]
    fn only_plans_of_one_subscription_share_a_subnet() {
        let foreign =
            "/subscriptions/other/resourceGroups/rg/providers/Microsoft.Web/serverfarms/x";
        let mut linked = subnet("big", "10.0.2.0/24", Some("p1"));
        linked["properties"]["serviceAssociationLinks"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "AppServiceLink", "properties": {"link": foreign}}));
        let st = state(&["10.0.0.0/16"], vec![linked], SimOptions::instant());
        let r = connect(&st, "app-p2", "big").unwrap_err();
        assert_eq!(r.status, 400);
        assert_eq!(
            message(r),
            format!("Subnet big in VNET v is already occupied by service {foreign}.")
        );
        // Without the other subscription's plan, p2 joins p1 (no address check, as ARM).
        let st = state(
            &["10.0.0.0/16"],
            vec![subnet("big", "10.0.2.0/26", Some("p1"))],
            SimOptions::instant(),
        );
        assert!(connect(&st, "app-p2", "big").is_ok());
    }

    #[test]
    fn the_last_app_leaving_leaves_a_lingering_link() {
        let options = SimOptions {
            speed: 1.0,
            sal_linger: Duration::from_millis(40),
            ..SimOptions::instant()
        };
        let mut st = state(
            &["10.0.0.0/16"],
            vec![subnet("small", "10.0.1.0/28", None)],
            options,
        );
        let target = id("Microsoft.Web/sites/app-p1");
        let sn = id("Microsoft.Network/virtualNetworks/v/subnets/small");
        let links =
            |st: &State| network::sal_links(&network::find_subnet(&st.store, &sn).unwrap().1);
        let mut site = st.store.get(&target).map(Cow::into_owned).unwrap();
        apply_integration(&mut st, &target, &mut site, None, Some(sn.clone()));
        assert_eq!(links(&st).len(), 1);
        apply_integration(&mut st, &target, &mut site, Some(sn.clone()), None);
        network::expire_lingering_links(&mut st);
        assert_eq!(links(&st).len(), 1, "the link lingers");
        // while it lingers, another plan joining counts as a multi-plan join
        assert!(connect(&st, "app-p2", "small").is_err());
        // the same plan coming back keeps its link for good
        apply_integration(&mut st, &target, &mut site, None, Some(sn.clone()));
        std::thread::sleep(Duration::from_millis(60));
        network::expire_lingering_links(&mut st);
        assert_eq!(links(&st).len(), 1);
        // leaving again: gone once the linger is over
        apply_integration(&mut st, &target, &mut site, Some(sn.clone()), None);
        std::thread::sleep(Duration::from_millis(60));
        network::expire_lingering_links(&mut st);
        assert!(links(&st).is_empty());
        assert!(connect(&st, "app-p2", "small").is_ok());
    }
}
