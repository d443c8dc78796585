//! Microsoft.Network: virtual networks, subnets, delegations, service association links,
//! peerings, VPN gateways.

use serde::{Deserialize, Serialize};

use serde_json::Value;

use super::{opt_id, Extra, SubResource};
use crate::azure::resource_id::ResourceId;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DelegationProperties {
    #[serde(default)]
    pub(crate) service_name: String,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Delegation {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) properties: DelegationProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceAssociationLinkProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) linked_resource_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) link: Option<ResourceId>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ServiceAssociationLink {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) properties: ServiceAssociationLinkProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

pub(crate) const WEB_DELEGATION: &str = "Microsoft.Web/serverFarms";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubnetProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) address_prefixes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delegations: Option<Vec<Delegation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) service_association_links: Option<Vec<ServiceAssociationLink>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ip_configurations: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) network_security_group: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) route_table: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) nat_gateway: Option<SubResource>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// A subnet, standalone or inline in its VNet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Subnet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) properties: SubnetProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl Subnet {
    /// All prefixes of the subnet, from `addressPrefix` and `addressPrefixes`.
    pub(crate) fn prefixes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.properties.address_prefix.iter().cloned().collect();
        if let Some(ps) = &self.properties.address_prefixes {
            for p in ps {
                if !v.contains(p) {
                    v.push(p.clone());
                }
            }
        }
        v
    }

    /// `provisioningState: Failed`: its last write failed (ARM leaves it so until rewritten).
    pub(crate) fn provisioning_failed(&self) -> bool {
        self.properties
            .extra
            .get("provisioningState")
            .and_then(|v| v.as_str())
            .is_some_and(|s| s.eq_ignore_ascii_case("failed"))
    }

    pub(crate) fn is_delegated_to_web(&self) -> bool {
        self.properties.delegations.iter().flatten().any(|d| {
            d.properties
                .service_name
                .eq_ignore_ascii_case(WEB_DELEGATION)
        })
    }

    /// Plans (serverfarms) linked to this subnet through service association links.
    pub(crate) fn linked_plans(&self) -> Vec<ResourceId> {
        self.properties
            .service_association_links
            .iter()
            .flatten()
            .filter_map(|l| l.properties.link.clone())
            .collect()
    }

    /// Whether anything other than App Service plans uses the subnet (NICs, other delegations).
    pub(crate) fn has_other_users(&self) -> bool {
        let nics = self
            .properties
            .ip_configurations
            .as_ref()
            .is_some_and(|v| !v.is_empty());
        let other_delegation = self.properties.delegations.iter().flatten().any(|d| {
            !d.properties
                .service_name
                .eq_ignore_ascii_case(WEB_DELEGATION)
        });
        nics || other_delegation
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AddressSpace {
    #[serde(default)]
    pub(crate) address_prefixes: Vec<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeeringProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_virtual_network: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) peering_state: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Peering {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub properties: PeeringProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl Peering {
    pub(crate) fn is_connected_to(&self, remote: &ResourceId) -> bool {
        self.properties
            .peering_state
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("Connected"))
            && self
                .properties
                .remote_virtual_network
                .as_ref()
                .is_some_and(|r| &r.id == remote)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VnetProperties {
    #[serde(default)]
    pub(crate) address_space: AddressSpace,
    #[serde(default)]
    pub(crate) subnets: Vec<Subnet>,
    #[serde(default)]
    pub virtual_network_peerings: Vec<Peering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource_guid: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `Microsoft.Network/virtualNetworks`, with subnets and peerings inline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VirtualNetwork {
    pub id: ResourceId,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) location: String,
    #[serde(default)]
    pub properties: VnetProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// A point-to-site root certificate of a VPN gateway (`publicCertData` = base64 `.cer`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VpnClientRootCertificateProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_cert_data: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct VpnClientRootCertificate {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) properties: VpnClientRootCertificateProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VpnClientConfiguration {
    #[serde(default)]
    pub(crate) vpn_client_root_certificates: Vec<VpnClientRootCertificate>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct GatewayIpConfigurationProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) subnet: Option<SubResource>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// Where the gateway sits: `properties.subnet.id` is its VNet's `GatewaySubnet`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct GatewayIpConfiguration {
    #[serde(default)]
    pub(crate) properties: GatewayIpConfigurationProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VirtualNetworkGatewayProperties {
    #[serde(default)]
    pub(crate) ip_configurations: Vec<GatewayIpConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vpn_client_configuration: Option<VpnClientConfiguration>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `Microsoft.Network/virtualNetworkGateways`: the VPN gateway gateway-based App Service
/// integration connects through (arm-vnet reference §2.2, step 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VirtualNetworkGateway {
    pub id: ResourceId,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) location: String,
    #[serde(default)]
    pub(crate) properties: VirtualNetworkGatewayProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl VirtualNetworkGateway {
    /// Whether one of its ip configurations sits in a subnet of `vnet`.
    pub(crate) fn is_attached_to(&self, vnet: &ResourceId) -> bool {
        self.properties
            .ip_configurations
            .iter()
            .filter_map(|c| c.properties.subnet.as_ref())
            .any(|s| s.id.vnet().as_ref() == Some(vnet))
    }

    /// Whether `cert_blob` (an app's `certBlob`) is one of its P2S root certificates.
    pub(crate) fn trusts(&self, cert_blob: &str) -> bool {
        self.root_certificates()
            .iter()
            .any(|c| c.properties.public_cert_data.as_deref() == Some(cert_blob))
    }

    fn root_certificates(&self) -> &[VpnClientRootCertificate] {
        self.properties
            .vpn_client_configuration
            .as_ref()
            .map(|c| c.vpn_client_root_certificates.as_slice())
            .unwrap_or_default()
    }

    /// Adds `cert_blob` as a root certificate named `name` (or `name-2`, `-3` … when taken).
    pub(crate) fn add_root_certificate(&mut self, name: &str, cert_blob: &str) {
        let taken = |n: &str| {
            self.root_certificates()
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(n))
        };
        let mut unique = name.to_string();
        let mut i = 2;
        while taken(&unique) {
            unique = format!("{name}-{i}");
            i += 1;
        }
        self.properties
            .vpn_client_configuration
            .get_or_insert_with(Default::default)
            .vpn_client_root_certificates
            .push(VpnClientRootCertificate {
                name: unique,
                properties: VpnClientRootCertificateProperties {
                    public_cert_data: Some(cert_blob.to_string()),
                    extra: Extra::new(),
                },
                extra: Extra::new(),
            });
    }
}

/// The subnet every VPN gateway must sit in (its name is fixed by Azure).
const GATEWAY_SUBNET: &str = "GatewaySubnet";

impl VirtualNetwork {
    /// The VNet with what planning reads and nothing else: the fields ARM returns that no
    /// model names (etags, types, provisioning states, network policies; a link's or a
    /// delegation's own) are dropped, except a subnet's `provisioningState`
    /// ([`Subnet::provisioning_failed`]). A cached plan decision keeps its VNets for its
    /// plan's targets, and a hub VNet's hundreds of integration subnets, each with its
    /// delegation and links, were mostly those fields (10,000 targets: ~500 MB of a
    /// rehearsal's memory).
    pub(crate) fn for_planning(mut self) -> Self {
        self.extra.clear();
        self.properties.extra.clear();
        self.properties.address_space.extra.clear();
        for p in &mut self.properties.virtual_network_peerings {
            p.extra.clear();
            p.properties.extra.clear();
        }
        for s in &mut self.properties.subnets {
            s.extra.clear();
            s.properties
                .extra
                .retain(|k, _| k.as_str() == "provisioningState");
            for d in s.properties.delegations.iter_mut().flatten() {
                d.extra.clear();
                d.properties.extra.clear();
            }
            for l in s.properties.service_association_links.iter_mut().flatten() {
                l.extra.clear();
                l.properties.extra.clear();
            }
        }
        self
    }

    /// The gateways whose ip configurations the VNet's `GatewaySubnet` lists (ARM shows them
    /// as `…/virtualNetworkGateways/{gw}/ipConfigurations/{name}` ids).
    pub(crate) fn gateway_ids(&self) -> Vec<ResourceId> {
        let mut out: Vec<ResourceId> = self
            .properties
            .subnets
            .iter()
            .filter(|s| s.name.eq_ignore_ascii_case(GATEWAY_SUBNET))
            .flat_map(|s| s.properties.ip_configurations.iter().flatten())
            .filter_map(|c| c["id"].as_str().and_then(|i| ResourceId::parse(i).ok()))
            .filter_map(|ipc| ipc.parent())
            .filter(|gw| {
                gw.resource_type().is_some_and(|t| {
                    t.eq_ignore_ascii_case("Microsoft.Network/virtualNetworkGateways")
                })
            })
            .collect();
        out.dedup();
        out
    }
}
