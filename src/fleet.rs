//! The fleet file: `{"resources": [ … ]}`, each entry an ARM resource exactly as ARM's GET
//! returns it. Written by `snapshot` and `GET /_sim/state`, read by `--fleet`.
//!
//! Loading is strict, as ARM is with what it stores: every id parses, a resource's `type` is
//! the type of its id, the ids it refers to are of the kind the field holds, and its address
//! prefixes are CIDR blocks. The first problem is reported on one line naming the resource.

use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::azure::resource_id::{ResourceId, ResourceIdError, ResourceKind};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Fleet {
    pub resources: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("cannot read fleet file {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("fleet file {path} is not valid")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("fleet file {path}: resource #{index}{}: {problem}", id.as_deref().map(|i| format!(" ({i})")).unwrap_or_default())]
    Resource {
        path: String,
        index: usize,
        id: Option<String>,
        #[source]
        problem: Box<ResourceProblem>,
    },
}

/// What is wrong with one resource of a fleet file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResourceProblem {
    #[error("has no string \"id\"")]
    NoId,
    #[error(transparent)]
    Id(#[from] ResourceIdError),
    #[error("has no string \"type\"")]
    NoType,
    /// The wrong provider (or resource type) for the type it declares, or the other way round.
    #[error("its type {declared:?} is not the type of its id ({of_id})")]
    WrongType { declared: String, of_id: String },
    #[error("{field}: {source}")]
    Reference {
        field: String,
        source: ResourceIdError,
    },
    /// ARM refuses such a prefix with 400 `InvalidAddressPrefixFormat` "… It should follow
    /// CIDR notation, for example 10.0.0.0/24." (Azure/azure-service-operator#997).
    #[error("{field}: {prefix} is not an address prefix in CIDR notation (like 10.0.0.0/24)")]
    Prefix { field: String, prefix: String },
    /// Stricter than ARM is known to be: a block whose address is not its network address
    /// names addresses outside the block the planner would reason about.
    #[error("{field}: {prefix} has host bits set (the block is {network})")]
    HostBits {
        field: String,
        prefix: String,
        network: String,
    },
}

impl Fleet {
    pub(crate) fn load(path: &Path) -> Result<Self, FleetError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Io {
            path: p.clone(),
            source,
        })?;
        Self::from_json(&text, &p)
    }

    /// Parses and checks a fleet file's text; `path` names it in errors.
    pub(crate) fn from_json(text: &str, path: &str) -> Result<Self, FleetError> {
        let fleet: Fleet = serde_json::from_str(text).map_err(|source| FleetError::Parse {
            path: path.to_string(),
            source,
        })?;
        for (index, r) in fleet.resources.iter().enumerate() {
            check_resource(r).map_err(|problem| FleetError::Resource {
                path: path.to_string(),
                index,
                id: r.get("id").and_then(Value::as_str).map(str::to_string),
                problem: Box::new(problem),
            })?;
        }
        Ok(fleet)
    }

    /// Each resource with its id; entries without a valid id are passed over (`load` refuses
    /// them, but a simulator's state or a test fleet may be built by hand).
    pub fn with_ids(&self) -> impl Iterator<Item = (ResourceId, &Value)> {
        self.resources.iter().filter_map(|r| {
            let id = ResourceId::parse(r.get("id")?.as_str()?).ok()?;
            Some((id, r))
        })
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("fleet serialises");
        std::fs::write(path, text)
    }
}

const SERVER_FARM: &[ResourceKind] = &[ResourceKind::ServerFarm];
const SUBNET: &[ResourceKind] = &[ResourceKind::Subnet];

fn check_resource(r: &Value) -> Result<(), ResourceProblem> {
    let id = ResourceId::parse(
        r.get("id")
            .and_then(Value::as_str)
            .ok_or(ResourceProblem::NoId)?,
    )?;
    let declared = r
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ResourceProblem::NoType)?;
    // Types this tool knows must agree with the id both ways; two unknown types may differ
    // (ARM's `Microsoft.Web/sites/config/configreferences` sits at `…/config/configreferences/
    // appsettings/{name}`).
    let (said, is) = (ResourceKind::of_type(declared), id.kind());
    if said != is {
        return Err(ResourceProblem::WrongType {
            declared: declared.to_string(),
            of_id: id.type_name(),
        });
    }
    let props = &r["properties"];
    match is {
        ResourceKind::Site | ResourceKind::Slot => {
            reference(props, "properties.serverFarmId", SERVER_FARM)?;
            reference(props, "properties.virtualNetworkSubnetId", SUBNET)?;
        }
        ResourceKind::SiteVnetConnection => {
            reference(props, "properties.vnetResourceId", ResourceKind::ANY_VNET)?;
        }
        ResourceKind::VirtualNetwork => {
            prefixes(
                &props["addressSpace"]["addressPrefixes"],
                "properties.addressSpace.addressPrefixes",
            )?;
            for (i, s) in array(&props["subnets"]).iter().enumerate() {
                reference(s, &format!("properties.subnets[{i}].id"), SUBNET)?;
                subnet_prefixes(
                    &s["properties"],
                    &format!("properties.subnets[{i}].properties"),
                )?;
            }
            for (i, p) in array(&props["virtualNetworkPeerings"]).iter().enumerate() {
                reference(
                    &p["properties"]["remoteVirtualNetwork"],
                    &format!(
                        "properties.virtualNetworkPeerings[{i}].properties.remoteVirtualNetwork.id"
                    ),
                    ResourceKind::ANY_VNET,
                )?;
            }
        }
        ResourceKind::Subnet => subnet_prefixes(props, "properties")?,
        _ => {}
    }
    Ok(())
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The id in `holder`'s last field (`…Id`, `id`), when set: of one of `kinds`.
fn reference(
    holder: &Value,
    field: &str,
    kinds: &'static [ResourceKind],
) -> Result<(), ResourceProblem> {
    let key = field.rsplit('.').next().unwrap_or(field);
    let Some(text) = holder.get(key).and_then(Value::as_str) else {
        return Ok(());
    };
    ResourceId::parse(text)
        .and_then(|id| id.check_kind(kinds))
        .map_err(|source| ResourceProblem::Reference {
            field: field.to_string(),
            source,
        })
}

/// A subnet's `addressPrefix` and `addressPrefixes` (ARM uses either, arm-vnet reference §5).
fn subnet_prefixes(props: &Value, at: &str) -> Result<(), ResourceProblem> {
    if let Some(p) = props.get("addressPrefix") {
        prefixes(
            &Value::Array(vec![p.clone()]),
            &format!("{at}.addressPrefix"),
        )?;
    }
    prefixes(&props["addressPrefixes"], &format!("{at}.addressPrefixes"))
}

/// Every entry a CIDR block (IPv4 or IPv6: a VNet may be dual-stack) at its network address.
fn prefixes(list: &Value, field: &str) -> Result<(), ResourceProblem> {
    for p in array(list) {
        let text = p.as_str().unwrap_or_default();
        let net: IpNet = text.parse().map_err(|_| ResourceProblem::Prefix {
            field: field.to_string(),
            // As JSON: a string quoted, anything else as it is.
            prefix: p.to_string(),
        })?;
        if net.trunc() != net {
            return Err(ResourceProblem::HostBits {
                field: field.to_string(),
                prefix: text.to_string(),
                network: net.trunc().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg";

    fn load(resources: Value) -> Result<Fleet, FleetError> {
        Fleet::from_json(&json!({ "resources": resources }).to_string(), "f.json")
    }

    fn site(name: &str, props: Value) -> Value {
        json!({"id": format!("{SUB}/providers/Microsoft.Web/sites/{name}"), "type": "Microsoft.Web/sites", "properties": props})
    }

    fn vnet(props: Value) -> Value {
        json!({"id": format!("{SUB}/providers/Microsoft.Network/virtualNetworks/v"), "type": "Microsoft.Network/virtualNetworks", "properties": props})
    }

    #[test]
    fn generated_fleets_load() {
        let fleet = crate::sim::generate::generate(300, 3);
        let text = serde_json::to_string(&fleet).unwrap();
        assert_eq!(Fleet::from_json(&text, "f.json").unwrap(), fleet);
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Fleet::load(Path::new("/nonexistent/fleet.json")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read fleet file /nonexistent/fleet.json"
        );
    }

    #[test]
    fn each_problem_is_one_line_naming_the_resource() {
        let plan = format!("{SUB}/providers/Microsoft.Web/serverfarms/p");
        let cases = [
            (json!([{"type": "Microsoft.Web/sites"}]), "resource #0: has no string \"id\""),
            (json!([{"id": format!("{SUB}/providers/Microsoft.Web/sites/..")}]), "relative segment \"..\""),
            (json!([{"id": format!("{SUB}/providers/Microsoft.Web/sites/a%2Fb")}]), "holds '%'"),
            (json!([{"id": format!("{SUB}/providers/Microsoft.Web/sites/a")}]), "has no string \"type\""),
            (
                json!([{"id": format!("{SUB}/providers/Microsoft.Network/sites/a"), "type": "Microsoft.Web/sites"}]),
                "its type \"Microsoft.Web/sites\" is not the type of its id (Microsoft.Network/sites)",
            ),
            (
                json!([{"id": format!("{SUB}/providers/Microsoft.Web/sites/a"), "type": "Microsoft.Network/virtualNetworks"}]),
                "is not the type of its id (Microsoft.Web/sites)",
            ),
            (
                json!([site("a", json!({"serverFarmId": format!("{SUB}/providers/Microsoft.Network/serverfarms/p")}))]),
                "properties.serverFarmId: invalid ARM resource id",
            ),
            (
                json!([site("a", json!({"serverFarmId": plan, "virtualNetworkSubnetId": format!("{SUB}/providers/Microsoft.Network/virtualNetworks/v")}))]),
                "expected a Microsoft.Network/virtualNetworks/subnets id",
            ),
            (
                json!([{"id": format!("{SUB}/providers/Microsoft.Web/sites/a/virtualNetworkConnections/v"), "type": "Microsoft.Web/sites/virtualNetworkConnections",
                        "properties": {"vnetResourceId": format!("{SUB}/providers/Microsoft.Web/sites/v")}}]),
                "properties.vnetResourceId:",
            ),
            (json!([vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/33"]}}))]), "\"10.0.0.0/33\" is not an address prefix"),
            (json!([vnet(json!({"addressSpace": {"addressPrefixes": ["banana"]}}))]), "\"banana\" is not an address prefix"),
            (json!([vnet(json!({"addressSpace": {"addressPrefixes": [16]}}))]), "16 is not an address prefix"),
            (json!([vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.1/16"]}}))]), "10.0.0.1/16 has host bits set (the block is 10.0.0.0/16)"),
            (
                json!([vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                                   "subnets": [{"id": format!("{SUB}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"), "properties": {"addressPrefix": "10.0.0.0/24x"}}]}))]),
                "properties.subnets[0].properties.addressPrefix: \"10.0.0.0/24x\"",
            ),
            (
                json!([{"id": format!("{SUB}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"), "type": "Microsoft.Network/virtualNetworks/subnets",
                        "properties": {"addressPrefixes": ["10.0.0.0/24", "::1/64"]}}]),
                "properties.addressPrefixes: ::1/64 has host bits set",
            ),
        ];
        for (resources, want) in cases {
            let e = load(resources.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{resources}: {e}");
            assert!(e.starts_with("fleet file "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // The resource is named by its id when it has one.
        let e = load(json!([
            site("ok", json!({})),
            vnet(json!({"addressSpace": {"addressPrefixes": ["x"]}}))
        ]))
        .unwrap_err();
        assert!(
            e.to_string().contains("resource #1 (/subscriptions/"),
            "{e}"
        );
    }

    #[test]
    fn unknown_types_pass_and_known_ones_agree() {
        let ok = json!([
            site("a", json!({"serverFarmId": format!("{SUB}/providers/Microsoft.Web/serverfarms/p"), "virtualNetworkSubnetId": null})),
            {"id": format!("{SUB}/providers/Microsoft.Web/sites/a/config/configreferences/appsettings/K"), "type": "Microsoft.Web/sites/config/configreferences"},
            {"id": format!("{SUB}/providers/microsoft.insights/autoscalesettings/x"), "type": "Microsoft.Insights/autoscaleSettings"},
            {"id": SUB, "type": "Microsoft.Resources/resourceGroups"},
            vnet(json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16", "fd00::/48"]}})),
        ]);
        assert_eq!(load(ok).unwrap().resources.len(), 5);
    }
}
