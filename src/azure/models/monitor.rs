//! Microsoft.Insights: autoscale settings (their capacities are strings on the wire).

use serde::{Deserialize, Serialize};

use super::{num_or_string, opt_id, Extra};
use crate::azure::resource_id::ResourceId;

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
