//! `FleetBuilder` methods for Microsoft.Web (and its Insights autoscale): plans, autoscale
//! settings, sites and slots, gateway-based and regional VNet integration, Key Vault
//! references.

use serde_json::{json, Value};

use super::derived::app_certificate;
use super::network::{delegate_to_web, link_plan};
use super::{child, same_name, str_field, FleetBuilder};
use crate::azure::ResourceId;

impl FleetBuilder {
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
    pub(crate) fn autoscale(&mut self, plan: &ResourceId, max: u32) -> ResourceId {
        let (location, capacity) = {
            let p = self.resource(plan);
            (
                str_field(&p, "location"),
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
        let location = str_field(&self.resource(plan), "location");
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
                str_field(&s, "location"),
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
        let location = str_field(&self.resource(target), "location");
        let ty = connection_type(target);
        let id = child(target, "virtualNetworkConnections", vnet.name());
        let (thumbprint, blob) = app_certificate(target.subscription(), vnet);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::models::{Plan, Site, VirtualNetwork, VnetConnection};

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
        let site: Site = serde_json::from_value(b.resource(&a2).into_owned()).unwrap();
        assert_eq!(site.properties.virtual_network_subnet_id, Some(s));
        let plan: Plan = serde_json::from_value(b.resource(&p).into_owned()).unwrap();
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
        let conn: VnetConnection = serde_json::from_value(b.resource(&c2).into_owned()).unwrap();
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
}
