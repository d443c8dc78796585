//! `FleetBuilder`: writes ARM resources in the fleet-file shape, one call per resource, so
//! hand-written test scenarios and the generated estates (`generate`) look exactly alike.
//!
//! Everything derived (etags, resource GUIDs, certificates) is a hash of the resource id, so a
//! builder fed the same calls always produces byte-identical JSON. Methods panic when handed an
//! id this builder did not create: the builder is a scenario-writing tool, and a wrong id is a
//! bug in the scenario.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fleet::Fleet;
use crate::azure::models::WEB_DELEGATION;
use crate::azure::ResourceId;

pub const DEFAULT_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
/// Tag key carrying simulator behaviour knobs (`reject-connect`, `kv-breaks-after-connect`,
/// `old-scale-unit`).
pub const SIM_TAG: &str = "vnet-migrate-sim";

const SUBNET_TYPE: &str = "Microsoft.Network/virtualNetworks/subnets";

#[derive(Debug, Clone)]
pub struct FleetBuilder {
    subscription: String,
    resources: Vec<Value>,
    /// Lowercased id → position in `resources` (lookup only; output order is insertion order).
    index: HashMap<String, usize>,
    /// Lowercased VNet id → its gateway id, to register app certificates on the gateway.
    gateways: HashMap<String, ResourceId>,
    classic_count: u32,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetBuilder {
    pub fn new() -> Self {
        Self {
            subscription: DEFAULT_SUBSCRIPTION.to_string(),
            resources: Vec::new(),
            index: HashMap::new(),
            gateways: HashMap::new(),
            classic_count: 0,
        }
    }

    /// Current subscription for the calls that follow.
    pub fn subscription(&mut self, sub: &str) -> &mut Self {
        self.subscription = sub.to_string();
        self
    }

    /// A `Microsoft.Resources/resourceGroups` entry; idempotent. Resource groups are created
    /// implicitly by the other methods too (ARM refuses writes into a missing group).
    pub fn resource_group(&mut self, rg: &str, location: &str) -> ResourceId {
        let id = ResourceId::resource_group_id(&self.subscription, rg);
        if !self.index.contains_key(id.key()) {
            self.put(json!({
                "id": id.as_str(),
                "name": rg,
                "type": "Microsoft.Resources/resourceGroups",
                "location": location,
                "tags": {},
                "properties": {"provisioningState": "Succeeded"}
            }));
        }
        id
    }

    pub fn vnet(
        &mut self,
        rg: &str,
        name: &str,
        location: &str,
        address_space: &[&str],
    ) -> ResourceId {
        self.resource_group(rg, location);
        let id = self.provider_id(rg, "Microsoft.Network/virtualNetworks", name);
        self.put(json!({
            "id": id.as_str(),
            "name": name,
            "type": "Microsoft.Network/virtualNetworks",
            "location": location,
            "etag": etag(&[id.key()]),
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "resourceGuid": uuid_from(&[id.key(), "resourceGuid"]),
                "addressSpace": {"addressPrefixes": address_space},
                "subnets": [],
                "virtualNetworkPeerings": [],
                "enableDdosProtection": false
            }
        }));
        id
    }

    /// A plain subnet (no delegation, nothing attached).
    pub fn subnet(&mut self, vnet: &ResourceId, name: &str, prefix: &str) -> ResourceId {
        self.subnet_with(vnet, name, prefix, |_| {})
    }

    /// A subnet that `f` may modify before it is stored (delegation, ipConfigurations, SALs…).
    pub fn subnet_with(
        &mut self,
        vnet: &ResourceId,
        name: &str,
        prefix: &str,
        f: impl FnOnce(&mut Value),
    ) -> ResourceId {
        let id = child(vnet, "subnets", name);
        let mut subnet = json!({
            "id": id.as_str(),
            "name": name,
            "etag": etag(&[id.key()]),
            "type": SUBNET_TYPE,
            "properties": {
                "provisioningState": "Succeeded",
                "addressPrefix": prefix,
                "delegations": [],
                "privateEndpointNetworkPolicies": "Disabled",
                "privateLinkServiceNetworkPolicies": "Enabled"
            }
        });
        f(&mut subnet);
        let subnets = self.resource_mut(vnet)["properties"]["subnets"]
            .as_array_mut()
            .expect("VNet has a subnets array");
        match subnets.iter_mut().find(|s| same_name(s, name)) {
            Some(existing) => *existing = subnet,
            None => subnets.push(subnet),
        }
        id
    }

    /// Lowest free aligned block of `/len` inside the VNet's address space, as a prefix string.
    pub fn free_prefix(&self, vnet: &ResourceId, len: u8) -> Option<String> {
        let v = self.resource(vnet);
        let space = prefixes(&v["properties"]["addressSpace"]["addressPrefixes"]);
        let used: Vec<Ipv4Net> = v["properties"]["subnets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(subnet_prefixes)
            .collect();
        free_block(&space, &used, len).map(|n| n.to_string())
    }

    /// A `GatewaySubnet` (lowest free /27) and a route-based P2S VPN gateway on it.
    pub fn gateway(&mut self, vnet: &ResourceId) -> ResourceId {
        let (location, vnet_name) = {
            let v = self.resource(vnet);
            (str_field(v, "location"), str_field(v, "name"))
        };
        let rg = vnet
            .resource_group()
            .expect("VNet ids have a resource group");
        let gw_name = format!("vgw-{vnet_name}");
        let gw = ResourceId::parse(&format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworkGateways/{gw_name}",
            vnet.subscription()
        ))
        .expect("valid gateway id");
        let ipconf = child(&gw, "ipConfigurations", "default");
        let prefix = self
            .free_prefix(vnet, 27)
            .unwrap_or_else(|| panic!("FleetBuilder: no free /27 for GatewaySubnet in {vnet}"));
        let subnet = self.subnet_with(vnet, "GatewaySubnet", &prefix, |s| {
            s["properties"]["ipConfigurations"] = json!([{"id": ipconf.as_str()}]);
        });
        let n = self.gateways.len();
        let pool = format!("172.{}.{}.0/24", 16 + (n / 256) % 16, n % 256);
        let pip = format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Network/publicIPAddresses/pip-{gw_name}",
            vnet.subscription()
        );
        self.put(json!({
            "id": gw.as_str(),
            "name": gw_name,
            "type": "Microsoft.Network/virtualNetworkGateways",
            "location": location,
            "etag": etag(&[gw.key()]),
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "resourceGuid": uuid_from(&[gw.key(), "resourceGuid"]),
                "gatewayType": "Vpn",
                "vpnType": "RouteBased",
                "enableBgp": false,
                "activeActive": false,
                "sku": {"name": "VpnGw1", "tier": "VpnGw1", "capacity": 2},
                "ipConfigurations": [{
                    "name": "default",
                    "id": ipconf.as_str(),
                    "properties": {
                        "privateIPAllocationMethod": "Dynamic",
                        "subnet": {"id": subnet.as_str()},
                        "publicIPAddress": {"id": pip},
                        "provisioningState": "Succeeded"
                    }
                }],
                "vpnClientConfiguration": {
                    "vpnClientAddressPool": {"addressPrefixes": [pool]},
                    "vpnClientProtocols": ["SSTP"],
                    "vpnClientRootCertificates": []
                }
            }
        }));
        self.gateways.insert(vnet.key().to_string(), gw.clone());
        gw
    }

    /// Peers `a` and `b` in both directions with the same `peeringState`; returns the two
    /// peering ids (`a`'s, then `b`'s).
    pub fn peering(
        &mut self,
        a: &ResourceId,
        b: &ResourceId,
        state: &str,
    ) -> (ResourceId, ResourceId) {
        (self.peer_one(a, b, state), self.peer_one(b, a, state))
    }

    fn peer_one(&mut self, from: &ResourceId, to: &ResourceId, state: &str) -> ResourceId {
        let remote_space = self.resource(to)["properties"]["addressSpace"].clone();
        let remote_has_gateway = self.gateways.contains_key(to.key());
        let id = child(
            from,
            "virtualNetworkPeerings",
            &format!("peer-{}", to.name()),
        );
        let sync = if state.eq_ignore_ascii_case("Connected") {
            "FullyInSync"
        } else {
            "RemoteNotInSync"
        };
        let peering = json!({
            "id": id.as_str(),
            "name": id.name(),
            "etag": etag(&[id.key()]),
            "type": "Microsoft.Network/virtualNetworks/virtualNetworkPeerings",
            "properties": {
                "provisioningState": "Succeeded",
                "peeringState": state,
                "peeringSyncLevel": sync,
                "remoteVirtualNetwork": {"id": to.as_str()},
                "allowVirtualNetworkAccess": true,
                "allowForwardedTraffic": false,
                "allowGatewayTransit": self.gateways.contains_key(from.key()),
                "useRemoteGateways": false,
                "remoteAddressSpace": remote_space,
                "remoteGatewaysAvailable": remote_has_gateway
            }
        });
        let list = self.resource_mut(from)["properties"]["virtualNetworkPeerings"]
            .as_array_mut()
            .expect("VNet has a peerings array");
        match list.iter_mut().find(|p| same_name(p, id.name())) {
            Some(existing) => *existing = peering,
            None => list.push(peering),
        }
        id
    }

    /// A classic (ASM) VNet, addressed `192.168.{n}.0/24` in creation order.
    pub fn classic_vnet(&mut self, rg: &str, name: &str, location: &str) -> ResourceId {
        self.resource_group(rg, location);
        let id = self.provider_id(rg, "Microsoft.ClassicNetwork/virtualNetworks", name);
        let prefix = format!("192.168.{}.0/24", self.classic_count % 256);
        self.classic_count += 1;
        self.put(json!({
            "id": id.as_str(),
            "name": name,
            "type": "Microsoft.ClassicNetwork/virtualNetworks",
            "location": location,
            "properties": {"addressSpace": {"addressPrefixes": [prefix]}}
        }));
        id
    }

    /// An App Service plan. `maximumNumberOfWorkers` follows the SKU; Elastic Premium plans get
    /// `elasticScaleEnabled` and `maximumElasticWorkerCount: 20` (change with `resource_mut`).
    pub fn plan(
        &mut self,
        rg: &str,
        name: &str,
        location: &str,
        sku: &str,
        capacity: u32,
    ) -> ResourceId {
        self.resource_group(rg, location);
        let id = self.provider_id(rg, "Microsoft.Web/serverfarms", name);
        let facts = sku_facts(sku);
        let elastic = facts.tier == "ElasticPremium";
        self.put(json!({
            "id": id.as_str(),
            "name": name,
            "type": "Microsoft.Web/serverfarms",
            "kind": "app",
            "location": location,
            "tags": {},
            "sku": {
                "name": sku,
                "tier": facts.tier,
                "size": sku,
                "family": facts.family,
                "capacity": capacity
            },
            "properties": {
                "status": "Ready",
                "maximumNumberOfWorkers": facts.max_workers,
                "numberOfWorkers": capacity,
                "maximumElasticWorkerCount": if elastic { 20 } else { 1 },
                "elasticScaleEnabled": elastic,
                "reserved": false,
                "hyperV": false,
                "provisioningState": "Succeeded"
            }
        }));
        id
    }

    /// An enabled autoscale setting on `plan` with one profile (capacities as strings, as
    /// Microsoft.Insights writes them).
    pub fn autoscale(&mut self, plan: &ResourceId, max: u32) -> ResourceId {
        let (location, capacity) = {
            let p = self.resource(plan);
            (
                str_field(p, "location"),
                p["sku"]["capacity"].as_u64().unwrap_or(1) as u32,
            )
        };
        let name = format!("{}-autoscale", plan.name());
        let id = ResourceId::parse(&format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Insights/autoscalesettings/{name}",
            plan.subscription(),
            plan.resource_group().expect("plan ids have a resource group"),
        ))
        .expect("valid autoscale id");
        self.put(json!({
            "id": id.as_str(),
            "name": name,
            "type": "Microsoft.Insights/autoscaleSettings",
            "location": location,
            "tags": {},
            "properties": {
                "name": name,
                "enabled": true,
                "targetResourceUri": plan.as_str(),
                "targetResourceLocation": location,
                "profiles": [{
                    "name": "Default",
                    "capacity": {
                        "minimum": "1",
                        "maximum": max.to_string(),
                        "default": capacity.min(max).max(1).to_string()
                    },
                    "rules": []
                }],
                "notifications": []
            }
        }));
        id
    }

    /// A Windows web app on `plan`, in the plan's location, with no VNet integration.
    pub fn site(&mut self, rg: &str, name: &str, plan: &ResourceId) -> ResourceId {
        let location = str_field(self.resource(plan), "location");
        self.resource_group(rg, &location);
        let id = self.provider_id(rg, "Microsoft.Web/sites", name);
        let body = site_body(&id, name, "Microsoft.Web/sites", &location, plan, name);
        self.put(body);
        id
    }

    /// A deployment slot of `site` (same plan and location; integration is per slot).
    pub fn slot(&mut self, site: &ResourceId, name: &str) -> ResourceId {
        let (location, plan) = {
            let s = self.resource(site);
            (
                str_field(s, "location"),
                ResourceId::parse(&str_field(&s["properties"], "serverFarmId"))
                    .expect("site has a serverFarmId"),
            )
        };
        let id = child(site, "slots", name);
        let full_name = format!("{}/{name}", site.name());
        let host = format!("{}-{name}", site.name());
        let body = site_body(
            &id,
            &full_name,
            "Microsoft.Web/sites/slots",
            &location,
            &plan,
            &host,
        );
        self.put(body);
        id
    }

    /// A gateway-based connection of `target` (site or slot) to `vnet` (a VNet or a classic
    /// VNet). The app certificate is one per subscription × VNet, as App Service issues it, and
    /// is registered as a root certificate on the VNet's gateway when this builder made one.
    pub fn gateway_connection(&mut self, target: &ResourceId, vnet: &ResourceId) -> ResourceId {
        let location = str_field(self.resource(target), "location");
        let ty = connection_type(target);
        let id = child(target, "virtualNetworkConnections", vnet.name());
        let cert_seed = [
            target.subscription().to_ascii_lowercase(),
            vnet.key().into(),
        ];
        let cert_seed: Vec<&str> = cert_seed.iter().map(String::as_str).collect();
        let thumbprint = hex::encode_upper(&digest(&cert_seed)[..20]);
        let blob = cert_blob(&cert_seed);
        self.put(json!({
            "id": id.as_str(),
            "name": vnet.name(),
            "type": ty,
            "location": location,
            "properties": {
                "vnetResourceId": vnet.as_str(),
                "certThumbprint": thumbprint,
                "certBlob": blob,
                "routes": [],
                "resyncRequired": false,
                "dnsServers": null,
                "isSwift": false
            }
        }));
        if let Some(gw) = self.gateways.get(vnet.key()).cloned() {
            let certs = self.resource_mut(&gw)["properties"]["vpnClientConfiguration"]
                ["vpnClientRootCertificates"]
                .as_array_mut()
                .expect("gateway has a root certificate list");
            let cert_name = format!("AppServiceCertificate-{}", &thumbprint[..8]);
            if !certs.iter().any(|c| same_name(c, &cert_name)) {
                let cert_id = child(&gw, "vpnClientRootCertificates", &cert_name);
                certs.push(json!({
                    "name": cert_name,
                    "id": cert_id.as_str(),
                    "properties": {"publicCertData": blob, "provisioningState": "Succeeded"}
                }));
            }
        }
        id
    }

    /// Regional integration as ARM leaves it: the target's `virtualNetworkSubnetId`, the subnet
    /// delegated to `Microsoft.Web/serverFarms` and a service association link to the plan.
    pub fn regional(&mut self, target: &ResourceId, subnet: &ResourceId) {
        let plan = {
            let t = self.resource_mut(target);
            t["properties"]["virtualNetworkSubnetId"] = json!(subnet.as_str());
            str_field(&t["properties"], "serverFarmId")
        };
        let vnet = subnet.vnet().expect("a subnet id");
        let s = self.resource_mut(&vnet)["properties"]["subnets"]
            .as_array_mut()
            .expect("VNet has a subnets array")
            .iter_mut()
            .find(|s| same_name(s, subnet.name()))
            .unwrap_or_else(|| panic!("FleetBuilder: subnet {subnet} was not added"));
        delegate_to_web(s);
        link_plan(s, &plan);
    }

    /// A Key Vault reference for app setting `setting` of `target` with the given status.
    pub fn key_vault_reference(
        &mut self,
        target: &ResourceId,
        setting: &str,
        status: &str,
    ) -> ResourceId {
        // Fail fast on a target this builder does not know.
        self.resource(target);
        let id = ResourceId::parse(&format!(
            "{}/config/configreferences/appsettings/{setting}",
            target.as_str()
        ))
        .expect("valid config reference id");
        let ty = if target.site().as_ref() == Some(target) {
            "Microsoft.Web/sites/config/configreferences"
        } else {
            "Microsoft.Web/sites/slots/config/configreferences"
        };
        let site_name = target
            .site()
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let mut vault: String = format!("kv-{site_name}").chars().take(24).collect();
        vault = vault.trim_end_matches('-').to_string();
        let secret: String = setting
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.put(json!({
            "id": id.as_str(),
            "name": setting,
            "type": ty,
            "properties": {
                "reference": format!("@Microsoft.KeyVault(SecretUri=https://{vault}.vault.azure.net/secrets/{secret}/)"),
                "status": status,
                "vaultName": vault,
                "secretName": secret,
                "secretVersion": "",
                "identityType": "SystemAssigned",
                "source": "KeyVault",
                "activeVersion": ""
            }
        }));
        id
    }

    /// Sets tag `key` on a stored resource (site, slot, plan, VNet, …).
    pub fn tag(&mut self, resource: &ResourceId, key: &str, value: &str) {
        let r = self.resource_mut(resource);
        if !r["tags"].is_object() {
            r["tags"] = json!({});
        }
        r["tags"][key] = json!(value);
    }

    /// A stored resource, for reading what the builder derived.
    pub fn resource(&self, id: &ResourceId) -> &Value {
        match self.index.get(id.key()) {
            Some(&i) => &self.resources[i],
            None => panic!("FleetBuilder: {id} was not added to this builder"),
        }
    }

    /// A stored resource, for scenario tweaks the typed methods do not cover.
    pub fn resource_mut(&mut self, id: &ResourceId) -> &mut Value {
        match self.index.get(id.key()) {
            Some(&i) => &mut self.resources[i],
            None => panic!("FleetBuilder: {id} was not added to this builder"),
        }
    }

    pub fn build(&self) -> Fleet {
        Fleet {
            resources: self.resources.clone(),
        }
    }

    /// Consumes the builder without copying the resources.
    pub fn into_fleet(self) -> Fleet {
        Fleet {
            resources: self.resources,
        }
    }

    /// Inserts or replaces (ARM PUT semantics) a resource keyed by its `id`.
    fn put(&mut self, v: Value) {
        let key = v["id"]
            .as_str()
            .expect("resource has an id")
            .to_ascii_lowercase();
        match self.index.get(&key) {
            Some(&i) => self.resources[i] = v,
            None => {
                self.index.insert(key, self.resources.len());
                self.resources.push(v);
            }
        }
    }

    fn provider_id(&self, rg: &str, ty: &str, name: &str) -> ResourceId {
        ResourceId::parse(&format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/{ty}/{name}",
            self.subscription
        ))
        .unwrap_or_else(|e| panic!("FleetBuilder: {e}"))
    }
}

/// Adds the `Microsoft.Web/serverFarms` delegation to a subnet object (idempotent); usable as
/// the closure of `subnet_with`.
pub fn delegate_to_web(subnet: &mut Value) {
    let id = str_field(subnet, "id");
    let props = &mut subnet["properties"];
    if !props["delegations"].is_array() {
        props["delegations"] = json!([]);
    }
    let list = props["delegations"].as_array_mut().expect("array");
    let present = list.iter().any(|d| {
        d["properties"]["serviceName"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(WEB_DELEGATION))
    });
    if !present {
        let did = format!("{id}/delegations/delegation");
        list.push(json!({
            "name": "delegation",
            "id": did,
            "etag": etag(&[&did.to_ascii_lowercase()]),
            "type": "Microsoft.Network/virtualNetworks/subnets/delegations",
            "properties": {
                "provisioningState": "Succeeded",
                "serviceName": WEB_DELEGATION,
                "actions": ["Microsoft.Network/virtualNetworks/subnets/action"]
            }
        }));
    }
}

/// Adds the `AppServiceLink` service association link for `plan` (idempotent).
fn link_plan(subnet: &mut Value, plan: &str) {
    let id = format!(
        "{}/serviceAssociationLinks/AppServiceLink",
        str_field(subnet, "id")
    );
    let props = &mut subnet["properties"];
    if !props["serviceAssociationLinks"].is_array() {
        props["serviceAssociationLinks"] = json!([]);
    }
    let list = props["serviceAssociationLinks"]
        .as_array_mut()
        .expect("array");
    let linked = list.iter().any(|l| {
        l["properties"]["link"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case(plan))
    });
    if !linked {
        list.push(json!({
            "name": "AppServiceLink",
            "id": id,
            "etag": etag(&[&id.to_ascii_lowercase(), &plan.to_ascii_lowercase()]),
            "type": "Microsoft.Network/virtualNetworks/subnets/serviceAssociationLinks",
            "properties": {
                "provisioningState": "Succeeded",
                "linkedResourceType": "Microsoft.Web/serverfarms",
                "link": plan,
                "allowDelete": false
            }
        }));
    }
}

fn site_body(
    id: &ResourceId,
    name: &str,
    ty: &str,
    location: &str,
    plan: &ResourceId,
    host: &str,
) -> Value {
    json!({
        "id": id.as_str(),
        "name": name,
        "type": ty,
        "kind": "app",
        "location": location,
        "tags": {},
        "properties": {
            "state": "Running",
            "enabled": true,
            "defaultHostName": format!("{host}.azurewebsites.net"),
            "serverFarmId": plan.as_str(),
            "virtualNetworkSubnetId": null,
            "outboundVnetRouting": {
                "allTraffic": false,
                "applicationTraffic": false,
                "contentShareTraffic": false,
                "imagePullTraffic": false,
                "backupRestoreTraffic": false
            },
            "siteConfig": {"vnetName": "", "vnetRouteAllEnabled": false},
            "reserved": false,
            "httpsOnly": true
        }
    })
}

fn connection_type(target: &ResourceId) -> &'static str {
    if target.site().as_ref() == Some(target) {
        "Microsoft.Web/sites/virtualNetworkConnections"
    } else {
        "Microsoft.Web/sites/slots/virtualNetworkConnections"
    }
}

struct SkuFacts {
    tier: &'static str,
    family: String,
    max_workers: u32,
}

/// Tier, family and per-plan worker ceiling of an App Service SKU name.
fn sku_facts(sku: &str) -> SkuFacts {
    let up = sku.to_ascii_uppercase();
    let (tier, family, max_workers) = if up.starts_with("EP") {
        ("ElasticPremium", "EP", 100)
    } else if up.starts_with('F') {
        ("Free", "F", 1)
    } else if up.starts_with('D') {
        ("Shared", "D", 1)
    } else if up.starts_with('Y') {
        ("Dynamic", "Y", 200)
    } else if up.starts_with('B') {
        ("Basic", "B", 3)
    } else if up.starts_with('S') {
        ("Standard", "S", 10)
    } else if up.starts_with('I') && up.ends_with("V2") {
        ("IsolatedV2", "Iv2", 100)
    } else if up.starts_with('I') {
        ("Isolated", "I", 100)
    } else if up.starts_with('P') && up.ends_with("V3") {
        ("PremiumV3", "Pv3", 30)
    } else if up.starts_with('P') && up.ends_with("V2") {
        ("PremiumV2", "Pv2", 30)
    } else {
        ("Premium", "P", 20)
    };
    SkuFacts {
        tier,
        family: family.to_string(),
        max_workers,
    }
}

fn child(parent: &ResourceId, ty: &str, name: &str) -> ResourceId {
    parent
        .child(ty, name)
        .unwrap_or_else(|e| panic!("FleetBuilder: {e}"))
}

fn same_name(v: &Value, name: &str) -> bool {
    v["name"]
        .as_str()
        .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn prefixes(v: &Value) -> Vec<Ipv4Net> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.parse().ok())
        .collect()
}

/// Every IPv4 prefix of a subnet object (`addressPrefix` and `addressPrefixes`).
pub(crate) fn subnet_prefixes(subnet: &Value) -> Vec<Ipv4Net> {
    let p = &subnet["properties"];
    let mut v: Vec<Ipv4Net> = p["addressPrefix"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect();
    v.extend(prefixes(&p["addressPrefixes"]));
    v
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Lowest aligned `/len` block inside `space` that overlaps nothing in `used`.
pub(crate) fn free_block(space: &[Ipv4Net], used: &[Ipv4Net], len: u8) -> Option<Ipv4Net> {
    if len > 32 {
        return None;
    }
    let size = 1u64 << (32 - len);
    for s in space.iter().filter(|s| s.prefix_len() <= len) {
        let mut addr = u64::from(u32::from(s.network()));
        let end = u64::from(u32::from(s.broadcast())) + 1;
        while addr + size <= end {
            let cand = Ipv4Net::new(Ipv4Addr::from(addr as u32), len).expect("len <= 32");
            let blocker = used
                .iter()
                .filter(|u| overlaps(u, &cand))
                .map(|u| u64::from(u32::from(u.broadcast())) + 1)
                .max();
            match blocker {
                None => return Some(cand),
                // Jump past the blocking subnet, keeping the candidate aligned.
                Some(next) => addr = next.max(addr + size).div_ceil(size) * size,
            }
        }
    }
    None
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize().into()
}

fn uuid_from(parts: &[&str]) -> String {
    let d = digest(parts);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn etag(parts: &[&str]) -> String {
    format!("W/\"{}\"", uuid_from(&[&parts.join("|"), "etag"]))
}

/// A deterministic stand-in for the app's public certificate (DER-looking bytes, base64).
fn cert_blob(parts: &[&str]) -> String {
    let mut bytes = vec![0x30, 0x82, 0x01, 0x0a];
    for i in 0..8u8 {
        let salt = i.to_string();
        let mut p: Vec<&str> = parts.to_vec();
        p.push(&salt);
        bytes.extend_from_slice(&digest(&p));
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::models::{Plan, Site, VirtualNetwork, VnetConnection};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn free_block_skips_used_and_aligns() {
        let space = [net("10.0.0.0/24")];
        let used = [net("10.0.0.0/27"), net("10.0.0.64/28")];
        assert_eq!(free_block(&space, &used, 27), Some(net("10.0.0.32/27")));
        assert_eq!(free_block(&space, &used, 26), Some(net("10.0.0.128/26")));
        assert_eq!(free_block(&space, &used, 25), Some(net("10.0.0.128/25")));
        assert_eq!(free_block(&space, &used, 24), None);
        assert_eq!(free_block(&space, &[net("10.0.0.0/24")], 28), None);
        // Second address-space prefix is used when the first is full.
        let two = [net("10.0.0.0/28"), net("10.1.0.0/24")];
        assert_eq!(
            free_block(&two, &[net("10.0.0.0/28")], 28),
            Some(net("10.1.0.0/28"))
        );
    }

    #[test]
    fn regional_delegates_and_links_subnet_once_per_plan() {
        let mut b = FleetBuilder::new();
        let v = b.vnet("rg", "v1", "westeurope", &["10.0.0.0/16"]);
        let s = b.subnet(&v, "snet-a", "10.0.1.0/26");
        let p = b.plan("rg", "p1", "westeurope", "P1v2", 2);
        let a1 = b.site("rg", "a1", &p);
        let a2 = b.site("rg", "a2", &p);
        b.regional(&a1, &s);
        b.regional(&a2, &s);
        let fleet = b.build();
        let vnet: VirtualNetwork = serde_json::from_value(
            fleet
                .resources
                .iter()
                .find(|r| r["id"] == v.as_str())
                .unwrap()
                .clone(),
        )
        .unwrap();
        let subnet = &vnet.properties.subnets[0];
        assert!(subnet.is_delegated_to_web());
        assert_eq!(subnet.linked_plans(), vec![p.clone()]);
        let site: Site = serde_json::from_value(b.resource(&a2).clone()).unwrap();
        assert_eq!(site.properties.virtual_network_subnet_id, Some(s));
        let plan: Plan = serde_json::from_value(b.resource(&p).clone()).unwrap();
        assert_eq!(plan.properties.maximum_number_of_workers, Some(30));
        assert_eq!(plan.sku.tier.as_deref(), Some("PremiumV2"));
    }

    #[test]
    fn gateway_adds_gateway_subnet_and_registers_app_certificates() {
        let mut b = FleetBuilder::new();
        let v = b.vnet("net", "hub", "westeurope", &["10.9.0.0/16"]);
        b.subnet(&v, "first", "10.9.0.0/27");
        let gw = b.gateway(&v);
        let gw_subnet = b.resource(&v)["properties"]["subnets"][1].clone();
        assert_eq!(gw_subnet["name"], "GatewaySubnet");
        assert_eq!(gw_subnet["properties"]["addressPrefix"], "10.9.0.32/27");
        assert_eq!(
            b.resource(&gw)["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"],
            gw_subnet["id"]
        );
        let p = b.plan("apps", "p", "westeurope", "S1", 1);
        let a = b.site("apps", "a", &p);
        let sl = b.slot(&a, "staging");
        let c1 = b.gateway_connection(&a, &v);
        let c2 = b.gateway_connection(&sl, &v);
        let conn: VnetConnection = serde_json::from_value(b.resource(&c2).clone()).unwrap();
        assert!(conn.is_gateway());
        assert_eq!(conn.properties.vnet_resource_id, Some(v.clone()));
        assert_eq!(
            b.resource(&c2)["type"],
            "Microsoft.Web/sites/slots/virtualNetworkConnections"
        );
        // Same subscription × VNet → same certificate, registered once on the gateway.
        assert_eq!(
            b.resource(&c1)["properties"]["certThumbprint"],
            b.resource(&c2)["properties"]["certThumbprint"]
        );
        let roots =
            &b.resource(&gw)["properties"]["vpnClientConfiguration"]["vpnClientRootCertificates"];
        assert_eq!(roots.as_array().unwrap().len(), 1);
        assert_eq!(b.resource(&sl)["name"], "a/staging");
    }

    #[test]
    fn peering_is_symmetric_and_resource_groups_are_implicit() {
        let mut b = FleetBuilder::new();
        b.subscription("11111111-1111-1111-1111-111111111111");
        let a = b.vnet("net", "a", "westeurope", &["10.0.0.0/16"]);
        let c = b.vnet("net", "c", "northeurope", &["10.1.0.0/16"]);
        let (ac, ca) = b.peering(&a, &c, "Initiated");
        assert_eq!(ac.vnet(), Some(a.clone()));
        assert_eq!(ca.vnet(), Some(c.clone()));
        let fleet = b.build();
        let rgs: Vec<_> = fleet
            .resources
            .iter()
            .filter(|r| r["type"] == "Microsoft.Resources/resourceGroups")
            .collect();
        assert_eq!(rgs.len(), 1);
        assert_eq!(rgs[0]["location"], "westeurope");
        let vn: VirtualNetwork = serde_json::from_value(b.resource(&c).clone()).unwrap();
        let peer = &vn.properties.virtual_network_peerings[0];
        assert_eq!(peer.properties.peering_state.as_deref(), Some("Initiated"));
        assert!(!peer.is_connected_to(&a));
        assert!(a.as_str().contains("11111111-1111-1111-1111-111111111111"));
    }
}
