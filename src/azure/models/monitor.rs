//! Microsoft.Insights: autoscale settings (their capacities are strings on the wire).

use serde::{Deserialize, Serialize};

use super::{num_or_string, opt_id, Extra};
use crate::azure::resource_id::ResourceId;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ScaleCapacity {
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub(crate) minimum: Option<u32>,
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub(crate) maximum: Option<u32>,
    #[serde(
        default,
        deserialize_with = "num_or_string",
        serialize_with = "as_string"
    )]
    pub(crate) default: Option<u32>,
}

/// Autoscale writes capacities as strings; keep that on the wire.
fn as_string<S: serde::Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_str(&n.to_string()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct AutoscaleProfile {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) capacity: ScaleCapacity,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AutoscaleProperties {
    #[serde(default)]
    pub(crate) profiles: Vec<AutoscaleProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enabled: Option<bool>,
    #[serde(
        default,
        deserialize_with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) target_resource_uri: Option<ResourceId>,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

/// `Microsoft.Insights/autoscalesettings`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutoscaleSetting {
    pub(crate) id: ResourceId,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) properties: AutoscaleProperties,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

impl AutoscaleSetting {
    /// Whether the setting scales `plan` (its `targetResourceUri`; ids compare as ARM's do).
    pub(crate) fn targets(&self, plan: &ResourceId) -> bool {
        self.properties.target_resource_uri.as_ref() == Some(plan)
    }
}
