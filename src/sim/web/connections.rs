//! `virtualNetworkConnections` of sites, slots and plans: the stored gateway-based entries
//! (declared, then connected by handing over a VPN package) plus the entry App Service
//! derives from regional integration.

use serde_json::{json, Value};
use std::borrow::Cow;

use super::regional::{apply_integration, regional_name, set_vnet_name};
use super::{bad_request, current_subnet, gateway_connections, parse_id, plan_members, SiteFields};
use crate::azure::{ResourceId, ResourceKind};
use crate::sim::builder::app_certificate;
use crate::sim::network;
use crate::sim::reply::Reply;
use crate::sim::state::State;

/// The derived regional entry of `target`'s connection list, from the site's subnet and
/// location.
fn regional_entry(
    st: &State,
    target: &ResourceId,
    subnet: Option<ResourceId>,
    location: &Value,
) -> Option<Value> {
    let subnet = subnet?;
    let name = regional_name(st, &subnet);
    Some(json!({
        "id": format!("{}/virtualNetworkConnections/{name}", target.as_str()),
        "name": name,
        "type": "Microsoft.Web/sites/virtualNetworkConnections",
        "location": location,
        "properties": {
            "vnetResourceId": subnet.as_str(),
            "certThumbprint": null, "certBlob": null, "routes": null,
            "resyncRequired": false, "dnsServers": null, "isSwift": true
        }
    }))
}

/// `GET {site|slot}/virtualNetworkConnections`: a bare JSON array.
pub(crate) fn list_connections(st: &State, target: &ResourceId) -> Reply {
    let Some(site) = st.store.get_as::<SiteFields>(target) else {
        return Reply::not_found(target.as_str());
    };
    let mut list = gateway_connections(st, target);
    list.extend(regional_entry(st, target, site.subnet(), &site.location));
    Reply::ok(Value::Array(list))
}

pub(crate) fn get_connection(st: &State, id: &ResourceId) -> Reply {
    if let Some(v) = st.store.get(id) {
        return Reply::ok(v.into_owned());
    }
    let target = id.parent().expect("connection has a parent");
    match st
        .store
        .get_as::<SiteFields>(&target)
        .and_then(|s| regional_entry(st, &target, s.subnet(), &s.location))
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
    let Some(mut site) = st.store.get(&target).map(Cow::into_owned) else {
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
    let Some(mut conn) = st.store.get(&conn_id).map(Cow::into_owned) else {
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
        .is_some_and(|g| network::trusts(&g, cert));
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
        if let Some(mut site) = st.store.get(&target).map(Cow::into_owned) {
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
    if let Some(mut site) = st.store.get(&target).map(Cow::into_owned) {
        if regional_entry(st, &target, current_subnet(&site), &site["location"]).is_some_and(|e| {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{json, Value};

    use crate::azure::ResourceId;
    use crate::sim::builder::FleetBuilder;
    use crate::sim::reply::{Ctx, Reply};
    use crate::sim::routes::route;
    use crate::sim::state::State;
    use crate::sim::store::Store;
    use crate::sim::SimOptions;

    struct Fixture {
        st: State,
        /// Connected through the gateway (its certificate is the gateway's root certificate).
        connected: ResourceId,
        /// Same subscription and VNet, no connection yet.
        app: ResourceId,
        vnet: ResourceId,
        gateway: ResourceId,
        /// Another VNet's gateway.
        other_gateway: ResourceId,
    }

    /// `strip_roots`: the gateway trusts no root certificate at all.
    fn fixture(strip_roots: bool) -> Fixture {
        let mut b = FleetBuilder::new();
        let vnet = b.vnet("net", "hub", "westeurope", &["10.1.0.0/16"]);
        let gateway = b.gateway(&vnet);
        let other = b.vnet("net", "other", "westeurope", &["10.2.0.0/16"]);
        let other_gateway = b.gateway(&other);
        let plan = b.plan("apps", "p", "westeurope", "S1", 1);
        let connected = b.site("apps", "connected", &plan);
        b.gateway_connection(&connected, &vnet);
        let app = b.site("apps", "app", &plan);
        let elsewhere = b.site("apps", "elsewhere", &plan);
        b.gateway_connection(&elsewhere, &other);
        if strip_roots {
            b.resource_mut(&gateway)["properties"]["vpnClientConfiguration"]
                ["vpnClientRootCertificates"] = json!([]);
        }
        let st = State::new(
            Store::from_resources(b.into_fleet().resources),
            SimOptions::instant(),
        );
        Fixture {
            st,
            connected,
            app,
            vnet,
            gateway,
            other_gateway,
        }
    }

    fn call(st: &mut State, method: &str, path: &str, body: Value) -> Reply {
        let ctx = Ctx {
            base: "http://127.0.0.1:1".into(),
            api_version: "2024-11-01".into(),
        };
        let path = path.split('?').next().unwrap_or_default().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        route(st, &ctx, method, &path, &segs, &HashMap::new(), &body)
    }

    fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {r:?}"))
    }

    impl Fixture {
        fn declare(&mut self) -> Reply {
            let path = format!("{}/virtualNetworkConnections/hub", self.app);
            let body = json!({"location": "westeurope", "properties": {"vnetResourceId": self.vnet.as_str()}});
            call(&mut self.st, "PUT", &path, body)
        }

        fn listed(&mut self) -> Value {
            let path = format!("{}/virtualNetworkConnections", self.app);
            let list = call(&mut self.st, "GET", &path, Value::Null).body.unwrap();
            list.as_array().unwrap()[0].clone()
        }

        /// POST generatevpnclientpackage, then its `Location` URL: the package URL.
        fn package(&mut self, gateway: &ResourceId) -> Result<String, Reply> {
            let path = format!("{gateway}/generatevpnclientpackage");
            let r = call(
                &mut self.st,
                "POST",
                &path,
                json!({"processorArchitecture": "Amd64"}),
            );
            if r.status != 202 {
                return Err(r);
            }
            header(&r, "Azure-AsyncOperation");
            let loc = header(&r, "Location").trim_start_matches("http://127.0.0.1:1");
            let done = call(&mut self.st, "GET", loc, Value::Null);
            assert_eq!(done.status, 200, "{done:?}");
            Ok(done.body.unwrap().as_str().unwrap().to_string())
        }

        fn hand_over(&mut self, uri: &str) -> Reply {
            let path = format!(
                "{}/virtualNetworkConnections/hub/gateways/primary",
                self.app
            );
            let body = json!({"location": "westeurope", "properties": {"vnetName": "hub", "vpnPackageUri": uri}});
            call(&mut self.st, "PUT", &path, body)
        }

        fn put_gateway_roots(&mut self, roots: Value) -> Reply {
            let mut gw = self
                .st
                .store
                .get(&self.gateway)
                .map(std::borrow::Cow::into_owned)
                .unwrap();
            gw["properties"]["vpnClientConfiguration"]["vpnClientRootCertificates"] = roots;
            call(&mut self.st, "PUT", self.gateway.as_str(), gw)
        }
    }

    #[test]
    fn declare_alone_leaves_the_connection_out_of_sync() {
        let mut f = fixture(false);
        let r = f.declare();
        assert_eq!(r.status, 200, "{r:?}");
        let declared = r.body.unwrap();
        // One certificate per subscription × VNet: the one the gateway already trusts.
        let existing =
            f.st.store
                .get(
                    &f.connected
                        .child("virtualNetworkConnections", "hub")
                        .unwrap(),
                )
                .unwrap()
                .clone();
        assert_eq!(
            declared["properties"]["certBlob"],
            existing["properties"]["certBlob"]
        );
        let listed = f.listed();
        assert_eq!(listed["properties"]["resyncRequired"], true);
        assert!(listed["properties"].get("vpnPackageUri").is_none());
        let gw = format!("{}/virtualNetworkConnections/hub/gateways/primary", f.app);
        assert_eq!(call(&mut f.st, "GET", &gw, Value::Null).status, 404);
    }

    #[test]
    fn handing_over_an_issued_package_connects() {
        let mut f = fixture(false);
        f.declare();
        let uri = f.package(&f.gateway.clone()).unwrap();
        let r = f.hand_over(&uri);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body.unwrap()["properties"]["vpnPackageUri"], uri.as_str());
        assert_eq!(f.listed()["properties"]["resyncRequired"], false);
        // Declaring again starts over: the hand-over is gone.
        f.declare();
        assert_eq!(f.listed()["properties"]["resyncRequired"], true);
    }

    #[test]
    fn a_package_not_issued_for_the_vnets_gateway_is_refused() {
        let mut f = fixture(false);
        f.declare();
        let r = f.hand_over("https://vpnclientpackages.blob.core.windows.net/p2s/forged.zip");
        assert_eq!(r.status, 400, "{r:?}");
        let other = f.package(&f.other_gateway.clone()).unwrap();
        assert_eq!(f.hand_over(&other).status, 400);
        assert_eq!(f.listed()["properties"]["resyncRequired"], true);
    }

    #[test]
    fn a_gateway_without_the_app_certificate_refuses() {
        let mut f = fixture(true);
        let cert = f.declare().body.unwrap()["properties"]["certBlob"]
            .as_str()
            .unwrap()
            .to_string();
        // No root certificate at all: no package.
        assert_eq!(f.package(&f.gateway.clone()).unwrap_err().status, 400);
        // Some other root certificate: a package, but the app's certificate is not in it.
        let r = f.put_gateway_roots(
            json!([{"name": "Other", "properties": {"publicCertData": "MIIBother"}}]),
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body.unwrap()["properties"]["provisioningState"],
            "Updating"
        );
        let stale = f.package(&f.gateway.clone()).unwrap();
        assert_eq!(f.hand_over(&stale).status, 400);
        // With the app's certificate added, only a package generated afterwards is accepted.
        let r = f.put_gateway_roots(json!([
            {"name": "Other", "properties": {"publicCertData": "MIIBother"}},
            {"name": "App", "properties": {"publicCertData": cert}}
        ]));
        assert_eq!(r.status, 200, "{r:?}");
        let gw = call(&mut f.st, "GET", f.gateway.as_str(), Value::Null);
        assert_eq!(
            gw.body.unwrap()["properties"]["provisioningState"],
            "Succeeded"
        );
        assert_eq!(f.hand_over(&stale).status, 400);
        let fresh = f.package(&f.gateway.clone()).unwrap();
        assert_eq!(f.hand_over(&fresh).status, 200);
        assert_eq!(f.listed()["properties"]["resyncRequired"], false);
    }

    #[test]
    fn gateway_writes_are_validated() {
        let mut f = fixture(false);
        let dup = json!([
            {"name": "A", "properties": {"publicCertData": "x"}},
            {"name": "a", "properties": {"publicCertData": "y"}}
        ]);
        assert_eq!(f.put_gateway_roots(dup).status, 400);
        assert_eq!(
            f.put_gateway_roots(json!([{"name": "A", "properties": {}}]))
                .status,
            400
        );
        let path = format!("{}/generatevpnclientpackage", f.gateway);
        let r = call(
            &mut f.st,
            "POST",
            &path,
            json!({"processorArchitecture": "Arm"}),
        );
        assert_eq!(r.status, 400);
    }
}
