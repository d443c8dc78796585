//! Serde types for the ARM resources the migration reads and writes.
//!
//! Every type keeps the fields it does not model in `extra`, so a resource read and written
//! back loses nothing (a subnet PUT replaces the whole subnet). Optional fields default, so
//! partial bodies (spec examples, older api-versions) parse.

mod monitor;
mod network;
mod web;

pub use monitor::*;
pub use network::*;
pub use web::*;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::resource_id::ResourceId;

pub(crate) type Extra = Map<String, Value>;

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
pub(crate) fn num_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
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
pub(crate) fn normalize_location(loc: &str) -> String {
    loc.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubResource {
    pub id: ResourceId,
    #[serde(flatten)]
    pub(crate) extra: Extra,
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
    fn a_vnet_for_planning_keeps_what_planning_reads() {
        let sub = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v";
        let raw = json!({
            "id": sub, "name": "v", "location": "westeurope", "etag": "W/\"x\"",
            "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "provisioningState": "Succeeded",
                "subnets": [{"name": "a", "etag": "W/\"y\"", "properties": {
                    "addressPrefix": "10.0.0.0/26", "provisioningState": "Failed",
                    "privateEndpointNetworkPolicies": "Disabled",
                    "delegations": [{"name": "d", "etag": "e", "properties": {"serviceName": "Microsoft.Web/serverFarms", "actions": ["x"]}}],
                    "serviceAssociationLinks": [{"name": "l", "etag": "e", "properties": {
                        "linkedResourceType": "Microsoft.Web/serverfarms",
                        "link": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/serverfarms/p",
                        "allowDelete": false, "locations": ["westeurope"]}}]}}]}
        });
        let full: VirtualNetwork = serde_json::from_value(raw).unwrap();
        let lean = full.clone().for_planning();
        let s = &lean.properties.subnets[0];
        assert_eq!(s.prefixes(), ["10.0.0.0/26"]);
        assert!(s.provisioning_failed() && s.is_delegated_to_web());
        assert_eq!(s.linked_plans(), full.properties.subnets[0].linked_plans());
        assert_eq!(lean.properties.address_space, full.properties.address_space);
        let text = serde_json::to_string(&lean).unwrap();
        for dropped in [
            "etag",
            "actions",
            "allowDelete",
            "privateEndpointNetworkPolicies",
        ] {
            assert!(!text.contains(dropped), "{dropped} kept: {text}");
        }
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
