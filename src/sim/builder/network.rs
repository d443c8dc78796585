//! `FleetBuilder` methods for Microsoft.Network: VNets, subnets (with the Web delegation and
//! service association links), VPN gateways, peerings and classic VNets, plus the prefix
//! arithmetic that finds free subnet ranges.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::derived::{etag, uuid_from};
use super::{child, same_name, str_field, FleetBuilder};
use crate::azure::models::WEB_DELEGATION;
use crate::azure::ResourceId;

const SUBNET_TYPE: &str = "Microsoft.Network/virtualNetworks/subnets";

impl FleetBuilder {
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
    pub(crate) fn subnet_with(
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
    pub(crate) fn free_prefix(&self, vnet: &ResourceId, len: u8) -> Option<String> {
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
            (str_field(&v, "location"), str_field(&v, "name"))
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
}

/// Adds the `Microsoft.Web/serverFarms` delegation to a subnet object (idempotent); usable as
/// the closure of `subnet_with`.
pub(crate) fn delegate_to_web(subnet: &mut Value) {
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
pub(super) fn link_plan(subnet: &mut Value, plan: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::models::VirtualNetwork;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
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
        let vn: VirtualNetwork = serde_json::from_value(b.resource(&c).into_owned()).unwrap();
        let peer = &vn.properties.virtual_network_peerings[0];
        assert_eq!(peer.properties.peering_state.as_deref(), Some("Initiated"));
        assert!(!peer.is_connected_to(&a));
        assert!(a.as_str().contains("11111111-1111-1111-1111-111111111111"));
    }
}
