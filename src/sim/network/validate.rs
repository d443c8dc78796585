//! Network's validations of subnet writes (ranges against the address space and siblings,
//! delegation changes of in-use subnets) and the server-owned fields of written subnets.

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::subnet::{arr, delegation_names, ip_configurations, sal_links, web_delegated};
use crate::azure::ResourceId;
use crate::sim::reply::Reply;
use crate::sim::state::State;

pub(super) fn parse_net(p: &str) -> Option<Ipv4Net> {
    p.trim().parse::<Ipv4Net>().ok()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(super) fn bad(code: &str, msg: String) -> Reply {
    Reply::error(400, code, msg)
}

/// Range checks for one subnet against the VNet's address space and its sibling subnets.
pub(super) fn validate_ranges(
    vnet_id: &ResourceId,
    space: &[Ipv4Net],
    name: &str,
    prefixes: &[String],
    siblings: &[(String, Vec<String>)],
) -> Result<(), Reply> {
    if prefixes.is_empty() {
        return Err(bad(
            "NetcfgInvalidSubnet",
            format!(
                "Subnet '{name}' is not valid in virtual network '{}': it has no address prefix.",
                vnet_id.name()
            ),
        ));
    }
    for p in prefixes {
        let Some(net) = parse_net(p) else {
            return Err(bad(
                "InvalidAddressPrefixFormat",
                format!("Address prefix {p} of subnet '{name}' is not a valid IPv4 CIDR."),
            ));
        };
        if net.prefix_len() > 29 {
            return Err(bad(
                "NetcfgInvalidSubnet",
                format!("Subnet '{name}' is not valid in virtual network '{}': the prefix {p} is smaller than /29.", vnet_id.name()),
            ));
        }
        if !space.iter().any(|s| s.contains(&net)) {
            return Err(bad(
                "NetcfgSubnetRangeOutsideVnet",
                format!("Subnet '{name}' is not valid because its IP address range {p} is outside the IP address range of virtual network '{}'.", vnet_id.name()),
            ));
        }
        for (other, ops) in siblings {
            if other.eq_ignore_ascii_case(name) {
                continue;
            }
            if let Some(o) = ops
                .iter()
                .find(|o| parse_net(o).is_some_and(|on| overlaps(&net, &on)))
            {
                return Err(bad(
                    "NetcfgSubnetRangesOverlap",
                    format!("Subnet '{name}' is not valid because its IP address range {p} overlaps with that of an existing subnet '{other}' ({o}) in virtual network '{}'.", vnet_id.name()),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn address_space(vnet: &Value) -> Vec<Ipv4Net> {
    arr(vnet, &["properties", "addressSpace", "addressPrefixes"])
        .iter()
        .filter_map(|p| p.as_str().and_then(parse_net))
        .collect()
}

/// A subnet takes one delegation at most: "only one delegation will be applied to one subnet",
/// confirmed by Microsoft in MicrosoftDocs/azure-docs#28698 (also Azure/ALZ-Bicep#526;
/// arm-vnet reference §13). The error ARM answers is not shown in those threads: the code
/// below is our plausible Network-style name, and the status 400 like Network's other subnet
/// validations.
pub(super) fn validate_delegation_count(subnet_id: &str, subnet: &Value) -> Result<(), Reply> {
    let n = arr(subnet, &["properties", "delegations"]).len();
    if n > 1 {
        return Err(bad(
            "SubnetCannotHaveMultipleDelegations",
            format!("Subnet {subnet_id} has {n} delegations; a subnet can be delegated to one service only."),
        ));
    }
    Ok(())
}

/// Delegation and in-use rules for replacing `old` by `new`.
pub(super) fn validate_subnet_change(
    subnet_id: &str,
    old: &Value,
    new: &Value,
) -> Result<(), Reply> {
    let (before, after) = (delegation_names(old), delegation_names(new));
    if before == after {
        return Ok(());
    }
    if let Some(ipc) = ip_configurations(old).first() {
        return Err(bad(
            "SubnetDelegationsCannotChangeWhenSubnetUsedByResource",
            format!(
                "Delegations of subnet {subnet_id} cannot be changed from {before:?} to {after:?} because it is being used by the resource {}.",
                ipc["id"].as_str().unwrap_or("(unknown)")
            ),
        ));
    }
    if !sal_links(old).is_empty() && !web_delegated(new) {
        // Text as reported in MicrosoftDocs/azure-docs#48902 (arm-vnet reference §5, §13); the
        // error code is not shown there: `SubnetMissingRequiredDelegation` is Network's code for
        // this message as far as we know (unverified).
        return Err(bad(
            "SubnetMissingRequiredDelegation",
            format!("Subnet {subnet_id} requires any of the following delegation(s) [Microsoft.Web/serverFarms] to reference service association link {subnet_id}/serviceAssociationLinks/AppServiceLink."),
        ));
    }
    Ok(())
}

/// Fills server-owned fields of a subnet being written: ids, etags, delegation metadata,
/// and the SALs / ipConfigurations of the stored subnet (clients cannot drop them).
pub(super) fn normalize_subnet(
    st: &mut State,
    vnet_id: &ResourceId,
    mut body: Value,
    old: Option<&Value>,
) -> Value {
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let sid = format!("{}/subnets/{name}", vnet_id.as_str());
    let etag = st.etag();
    if !body.is_object() {
        body = json!({});
    }
    let obj = body.as_object_mut().expect("object");
    obj.insert("id".into(), json!(sid));
    obj.insert("etag".into(), json!(etag));
    obj.insert(
        "type".into(),
        json!("Microsoft.Network/virtualNetworks/subnets"),
    );
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if !props.is_object() {
        *props = json!({});
    }
    let p = props.as_object_mut().expect("object");
    p.insert("provisioningState".into(), json!("Succeeded"));
    let dels = p.entry("delegations").or_insert_with(|| json!([]));
    if let Some(ds) = dels.as_array_mut() {
        for d in ds.iter_mut().filter(|d| d.is_object()) {
            let dn = d["name"].as_str().unwrap_or("delegation").to_string();
            let o = d.as_object_mut().expect("object");
            o.insert("id".into(), json!(format!("{sid}/delegations/{dn}")));
            o.insert("etag".into(), json!(etag));
            o.insert(
                "type".into(),
                json!("Microsoft.Network/virtualNetworks/subnets/delegations"),
            );
            let dp = o.entry("properties").or_insert_with(|| json!({}));
            if let Some(dp) = dp.as_object_mut() {
                dp.insert("provisioningState".into(), json!("Succeeded"));
                dp.entry("actions")
                    .or_insert_with(|| json!(["Microsoft.Network/virtualNetworks/subnets/action"]));
            }
        }
    }
    p.entry("privateEndpointNetworkPolicies")
        .or_insert_with(|| json!("Disabled"));
    p.entry("privateLinkServiceNetworkPolicies")
        .or_insert_with(|| json!("Enabled"));
    for owned in ["serviceAssociationLinks", "ipConfigurations"] {
        match old.and_then(|o| o["properties"].get(owned)) {
            Some(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                p.insert(owned.into(), v.clone());
            }
            _ => {
                p.remove(owned);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_validation_codes() {
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        let space = vec!["10.0.0.0/16".parse().unwrap()];
        let sib = vec![("a".to_string(), vec!["10.0.1.0/24".to_string()])];
        let code = |p: &str| {
            validate_ranges(&vnet, &space, "b", &[p.to_string()], &sib)
                .err()
                .map(|r| {
                    r.body.unwrap()["error"]["code"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
        };
        assert_eq!(code("10.0.2.0/24"), None);
        assert_eq!(
            code("10.1.0.0/24").as_deref(),
            Some("NetcfgSubnetRangeOutsideVnet")
        );
        assert_eq!(
            code("10.0.1.128/25").as_deref(),
            Some("NetcfgSubnetRangesOverlap")
        );
        assert_eq!(
            code("10.0.0.0/15").as_deref(),
            Some("NetcfgSubnetRangeOutsideVnet")
        );
        assert_eq!(code("10.0.3.0/30").as_deref(), Some("NetcfgInvalidSubnet"));
        assert_eq!(
            code("banana").as_deref(),
            Some("InvalidAddressPrefixFormat")
        );
    }

    #[test]
    fn delegation_change_rules() {
        let used = json!({"properties": {"delegations": [], "ipConfigurations": [{"id": "/nic"}]}});
        let web = json!({"properties": {"delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverfarms"}}]}});
        let err = validate_subnet_change("/s", &used, &web).unwrap_err();
        assert_eq!(
            err.body.unwrap()["error"]["code"],
            "SubnetDelegationsCannotChangeWhenSubnetUsedByResource"
        );
        let linked = json!({"properties": {"delegations": [{"properties": {"serviceName": "Microsoft.Web/serverFarms"}}],
            "serviceAssociationLinks": [{"properties": {"link": "/p"}}]}});
        let none = json!({"properties": {"delegations": []}});
        let err = validate_subnet_change("/s", &linked, &none).unwrap_err();
        let body = err.body.unwrap();
        assert_eq!(body["error"]["code"], "SubnetMissingRequiredDelegation");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requires any of the following delegation(s) [Microsoft.Web/serverFarms]"));
        assert!(validate_subnet_change("/s", &linked, &web).is_ok());
        assert!(web_delegated(&web));
    }

    #[test]
    fn one_delegation_per_subnet() {
        let one = json!({"properties": {"delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}]}});
        assert!(validate_delegation_count("/s", &one).is_ok());
        assert!(validate_delegation_count("/s", &json!({"properties": {}})).is_ok());
        let two = json!({"properties": {"delegations": [
            {"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}},
            {"name": "e", "properties": {"serviceName": "Microsoft.ContainerInstance/containerGroups"}}]}});
        let err = validate_delegation_count("/s", &two).unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(
            err.body.unwrap()["error"]["code"],
            "SubnetCannotHaveMultipleDelegations"
        );
    }
}
