//! Microsoft.Web: sites and slots, their VNet connections, plans, Key Vault references.

use serde::{Deserialize, Serialize};

use serde_json::{Map, Value};

use super::{opt_id, Extra};
use crate::azure::resource_id::ResourceId;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Sku {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) capacity: Option<u32>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `outboundVnetRouting` (live at 2024-11-01 and in the spec from 2025-03-01).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutboundVnetRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) all_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) application_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_share_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) image_pull_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backup_restore_traffic: Option<bool>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
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
    pub(crate) default_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) outbound_vnet_routing: Option<OutboundVnetRouting>,
    // Legacy routing flags (api-version <= 2024-04-01 shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vnet_route_all_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vnet_image_pull_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vnet_content_share_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vnet_backup_restore_enabled: Option<bool>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// A site (`Microsoft.Web/sites`) or slot (`Microsoft.Web/sites/slots`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Site {
    pub id: ResourceId,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(rename = "type", default)]
    pub(crate) resource_type: String,
    #[serde(default)]
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tags: Option<Map<String, Value>>,
    #[serde(default)]
    pub properties: SiteProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VnetRoute {
    #[serde(default)]
    pub(crate) properties: Extra,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VnetInfo {
    /// Gateway-based: the VNet id; regional: the subnet id.
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) vnet_resource_id: Option<ResourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_blob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) routes: Option<Vec<VnetRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resync_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dns_servers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) is_swift: Option<bool>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// One entry of `…/virtualNetworkConnections` (the list is a bare JSON array).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VnetConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<String>,
    #[serde(default)]
    pub(crate) properties: VnetInfo,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl VnetConnection {
    /// Gateway-based iff `isSwift` is not true (false or absent).
    pub(crate) fn is_gateway(&self) -> bool {
        self.properties.is_swift != Some(true)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlanProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) maximum_number_of_workers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) maximum_elastic_worker_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) elastic_scale_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reserved: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hyper_v: Option<bool>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// An App Service plan (`Microsoft.Web/serverfarms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub(crate) id: ResourceId,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) sku: Sku,
    #[serde(default)]
    pub(crate) properties: PlanProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// One Key Vault reference status (`…/config/configreferences/appsettings`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyVaultReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) properties: KeyVaultReferenceProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyVaultReferenceProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<KeyVaultStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vault_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secret_name: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// A Key Vault reference's `status` (the `ResolveStatus` enum of the Microsoft.Web REST spec).
/// ARM enums grow, so a value this version does not know is kept as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum KeyVaultStatus {
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
        (
            KeyVaultStatus::SecretVersionNotFound,
            "SecretVersionNotFound",
        ),
        (
            KeyVaultStatus::AccessToKeyVaultDenied,
            "AccessToKeyVaultDenied",
        ),
        (KeyVaultStatus::OtherReasons, "OtherReasons"),
        (KeyVaultStatus::FetchTimedOut, "FetchTimedOut"),
        (KeyVaultStatus::UnauthorizedClient, "UnauthorizedClient"),
    ];

    pub(crate) fn as_str(&self) -> &str {
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
    pub(crate) fn setting_name(&self) -> Option<String> {
        self.name.clone().or_else(|| {
            self.id
                .as_deref()
                .and_then(|i| i.rsplit('/').next())
                .map(str::to_string)
        })
    }
}
