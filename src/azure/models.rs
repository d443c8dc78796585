//! Serde types for the ARM resources the migration reads and writes.
//!
//! Every type keeps the fields it does not model in `extra`, so a resource read and written
//! back loses nothing (a subnet PUT replaces the whole subnet). Optional fields default, so
//! partial bodies (spec examples, older api-versions) parse.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::resource_id::ResourceId;

pub type Extra = Map<String, Value>;

/// An id field that ARM may send as `null`, `""` or an id.
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResourceId>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => ResourceId::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A number ARM may send as a JSON number or a string (autoscale capacities are strings).
fn num_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|v| Some(v as u32))
            .ok_or_else(|| serde::de::Error::custom("expected a non-negative integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, got {other}"
        ))),
    }
}

/// Normalises an ARM location for comparison: `"West Europe"` == `"westeurope"`.
pub fn normalize_location(loc: &str) -> String {
    loc.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sku {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `outboundVnetRouting` (live at 2024-11-01 and in the spec from 2025-03-01).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutboundVnetRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_share_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_restore_traffic: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SiteProperties {
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_farm_id: Option<ResourceId>,
    #[serde(default, deserialize_with = "opt_id")]
    pub virtual_network_subnet_id: Option<ResourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_vnet_routing: Option<OutboundVnetRouting>,
    // Legacy routing flags (api-version <= 2024-04-01 shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet_route_all_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet_image_pull_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet_content_share_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet_backup_restore_enabled: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl SiteProperties {
    /// Whether application traffic is routed into the VNet, from either shape.
    pub fn routes_all_traffic(&self) -> bool {
        self.outbound_vnet_routing
            .as_ref()
            .and_then(|r| r.application_traffic.or(r.all_traffic))
            .or(self.vnet_route_all_enabled)
            .unwrap_or(false)
    }
}

/// A site (`Microsoft.Web/sites`) or slot (`Microsoft.Web/sites/slots`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Site {
    pub id: ResourceId,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub resource_type: String,
    #[serde(default)]
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    #[serde(default)]
    pub properties: SiteProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VnetRoute {
    #[serde(default)]
    pub properties: Extra,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VnetInfo {
    /// Gateway-based: the VNet id; regional: the subnet id.
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub vnet_resource_id: Option<ResourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_blob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<VnetRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_swift: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One entry of `…/virtualNetworkConnections` (the list is a bare JSON array).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VnetConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default)]
    pub properties: VnetInfo,
    #[serde(flatten)]
    pub extra: Extra,
}

impl VnetConnection {
    /// Gateway-based iff `isSwift` is not true (false or absent).
    pub fn is_gateway(&self) -> bool {
        self.properties.is_swift != Some(true)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_number_of_workers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_elastic_worker_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_scale_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyper_v: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An App Service plan (`Microsoft.Web/serverfarms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub id: ResourceId,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub sku: Sku,
    #[serde(default)]
    pub properties: PlanProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScaleCapacity {
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub minimum: Option<u32>,
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub maximum: Option<u32>,
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub default: Option<u32>,
}

/// Autoscale writes capacities as strings; keep that on the wire.
fn as_string<S: serde::Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_str(&n.to_string()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AutoscaleProfile {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub capacity: ScaleCapacity,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleProperties {
    #[serde(default)]
    pub profiles: Vec<AutoscaleProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_resource_uri: Option<ResourceId>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Microsoft.Insights/autoscalesettings`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutoscaleSetting {
    pub id: ResourceId,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub properties: AutoscaleProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubResource {
    pub id: ResourceId,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelegationProperties {
    #[serde(default)]
    pub service_name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delegation {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub properties: DelegationProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAssociationLinkProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_resource_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub link: Option<ResourceId>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceAssociationLink {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub properties: ServiceAssociationLinkProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

pub const WEB_DELEGATION: &str = "Microsoft.Web/serverFarms";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubnetProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_prefixes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Vec<Delegation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_association_links: Option<Vec<ServiceAssociationLink>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_configurations: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_security_group: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_gateway: Option<SubResource>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A subnet, standalone or inline in its VNet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Subnet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub properties: SubnetProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Subnet {
    /// All prefixes of the subnet, from `addressPrefix` and `addressPrefixes`.
    pub fn prefixes(&self) -> Vec<String> {
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

    pub fn is_delegated_to_web(&self) -> bool {
        self.properties.delegations.iter().flatten().any(|d| {
            d.properties
                .service_name
                .eq_ignore_ascii_case(WEB_DELEGATION)
        })
    }

    /// Plans (serverfarms) linked to this subnet through service association links.
    pub fn linked_plans(&self) -> Vec<ResourceId> {
        self.properties
            .service_association_links
            .iter()
            .flatten()
            .filter_map(|l| l.properties.link.clone())
            .collect()
    }

    /// Whether anything other than App Service plans uses the subnet (NICs, other delegations).
    pub fn has_other_users(&self) -> bool {
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
pub struct AddressSpace {
    #[serde(default)]
    pub address_prefixes: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeeringProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_virtual_network: Option<SubResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering_state: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Peering {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub properties: PeeringProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Peering {
    pub fn is_connected_to(&self, remote: &ResourceId) -> bool {
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
    pub address_space: AddressSpace,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub virtual_network_peerings: Vec<Peering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_guid: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Microsoft.Network/virtualNetworks`, with subnets and peerings inline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VirtualNetwork {
    pub id: ResourceId,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub properties: VnetProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One Key Vault reference status (`…/config/configreferences/appsettings`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyVaultReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub properties: KeyVaultReferenceProperties,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultReferenceProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KeyVaultStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A Key Vault reference's `status` (the `ResolveStatus` enum of the Microsoft.Web REST spec).
/// ARM enums grow, so a value this version does not know is kept as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyVaultStatus {
    /// Not evaluated yet: look again later rather than judge.
    Initialized,
    Resolved,
    InvalidSyntax,
    MsiNotEnabled,
    VaultNotFound,
    SecretNotFound,
    SecretVersionNotFound,
    AccessToKeyVaultDenied,
    OtherReasons,
    FetchTimedOut,
    UnauthorizedClient,
    Other(String),
}

impl KeyVaultStatus {
    const KNOWN: [(KeyVaultStatus, &'static str); 11] = [
        (KeyVaultStatus::Initialized, "Initialized"),
        (KeyVaultStatus::Resolved, "Resolved"),
        (KeyVaultStatus::InvalidSyntax, "InvalidSyntax"),
        (KeyVaultStatus::MsiNotEnabled, "MSINotEnabled"),
        (KeyVaultStatus::VaultNotFound, "VaultNotFound"),
        (KeyVaultStatus::SecretNotFound, "SecretNotFound"),
        (KeyVaultStatus::SecretVersionNotFound, "SecretVersionNotFound"),
        (KeyVaultStatus::AccessToKeyVaultDenied, "AccessToKeyVaultDenied"),
        (KeyVaultStatus::OtherReasons, "OtherReasons"),
        (KeyVaultStatus::FetchTimedOut, "FetchTimedOut"),
        (KeyVaultStatus::UnauthorizedClient, "UnauthorizedClient"),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            KeyVaultStatus::Other(s) => s,
            known => Self::KNOWN
                .iter()
                .find(|(k, _)| k == known)
                .map(|(_, s)| *s)
                .expect("every known status has a text"),
        }
    }
}

impl From<&str> for KeyVaultStatus {
    fn from(s: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(_, text)| text.eq_ignore_ascii_case(s))
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| KeyVaultStatus::Other(s.to_string()))
    }
}

impl std::fmt::Display for KeyVaultStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for KeyVaultStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyVaultStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(KeyVaultStatus::from(String::deserialize(d)?.as_str()))
    }
}

impl KeyVaultReference {
    /// The app setting name: `name`, else the last segment of `id`.
    pub fn setting_name(&self) -> Option<String> {
        self.name.clone().or_else(|| {
            self.id
                .as_deref()
                .and_then(|i| i.rsplit('/').next())
                .map(str::to_string)
        })
    }
}

/// An ARM list page: `{value, nextLink}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(default)]
    pub next_link: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subnet_round_trip_keeps_unknown_fields() {
        let raw = json!({
            "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/a",
            "name": "a", "etag": "W/\"x\"",
            "properties": {"addressPrefix": "10.0.0.0/24", "serviceEndpoints": [{"service": "Microsoft.Storage"}],
                "privateEndpointNetworkPolicies": "Disabled", "delegations": []}
        });
        let s: Subnet = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), raw);
    }

    #[test]
    fn autoscale_capacity_strings() {
        let c: ScaleCapacity =
            serde_json::from_value(json!({"minimum": "1", "maximum": "10", "default": 2})).unwrap();
        assert_eq!(c.maximum, Some(10));
        assert_eq!(c.default, Some(2));
        assert_eq!(serde_json::to_value(&c).unwrap()["maximum"], json!("10"));
    }

    #[test]
    fn gateway_classification() {
        let gw: VnetConnection = serde_json::from_value(json!({"name": "v", "properties": {"vnetResourceId": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v", "isSwift": null}})).unwrap();
        assert!(gw.is_gateway());
        let sw: VnetConnection =
            serde_json::from_value(json!({"name": "g_a", "properties": {"isSwift": true}}))
                .unwrap();
        assert!(!sw.is_gateway());
    }

    #[test]
    fn locations_compare_normalised() {
        assert_eq!(
            normalize_location("West Europe"),
            normalize_location("westeurope")
        );
    }
}
