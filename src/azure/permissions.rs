//! Least privilege: the one list of Azure RBAC actions this tool's ARM client can need, from
//! which the custom role in `infra/` is checked (a test holds the role's `actions` equal to
//! [`ARM_ACTIONS`], no more, no less).
//!
//! ARM authorises a request by an action named after the resource type of its path and its
//! verb: `GET` → `…/read`, `PUT`/`PATCH` → `…/write`, `DELETE` → `…/delete`, `POST` on
//! `…/{name}/{verb}` → `…/{verb}/action` (Azure resource provider operations;
//! MicrosoftDocs/azure-docs `role-based-access-control-resource-provider-operations.md`).
//! [`action_for`] names the action of a request that way, so tests can hold every request the
//! migration makes to this table. A few actions are not on any path the client calls: ARM
//! checks them on resources a request body *links* to (a subnet a site joins; an NSG or route
//! table a subnet is given), so they are listed here too.

/// The actions, grouped by what needs them. Lower-case as ARM's operation names compare
/// case-insensitively; the role definition lists them in this spelling.
pub const ARM_ACTIONS: &[&str] = &[
    // Discovery and planning: sites of a subscription or a plan, slots, the plan, its
    // autoscale settings, the scale unit's regional-integration support, Key Vault reference
    // statuses (`…/config/configreferences/appsettings`), the connections.
    "microsoft.web/sites/read",
    "microsoft.web/sites/slots/read",
    "microsoft.web/serverfarms/read",
    "microsoft.web/serverfarms/sites/read",
    "microsoft.insights/autoscalesettings/read",
    "microsoft.web/sites/networkconfig/read",
    "microsoft.web/sites/slots/networkconfig/read",
    "microsoft.web/sites/config/appsettings/read",
    "microsoft.web/sites/slots/config/appsettings/read",
    "microsoft.web/sites/virtualnetworkconnections/read",
    "microsoft.web/sites/slots/virtualnetworkconnections/read",
    // VNets, their peerings' remote VNets and classic VNets named by old connections
    // (`snapshot`), resource groups (`snapshot`).
    "microsoft.network/virtualnetworks/read",
    "microsoft.network/virtualnetworks/subnets/read",
    "microsoft.classicnetwork/virtualnetworks/read",
    "microsoft.resources/subscriptions/resourcegroups/read",
    // prepare-subnet: the delegated subnet, with the policy's NSG and route table linked
    // (arm-vnet reference §3.2: `subnets/write` to delegate; linking an NSG or a route table
    // to a subnet is checked as their `join/action`).
    "microsoft.network/virtualnetworks/subnets/write",
    "microsoft.network/networksecuritygroups/join/action",
    "microsoft.network/routetables/join/action",
    // Cut-over: the gateway-based connection deleted, the site (or slot) PATCHed with
    // `virtualNetworkSubnetId` and routing; joining a subnet is checked on the subnet
    // (arm-vnet reference §3.2: `subnets/join/action`).
    "microsoft.web/sites/write",
    "microsoft.web/sites/slots/write",
    "microsoft.web/sites/virtualnetworkconnections/delete",
    "microsoft.web/sites/slots/virtualnetworkconnections/delete",
    "microsoft.network/virtualnetworks/subnets/join/action",
    // Rollback: regional integration removed (`DELETE …/networkConfig/virtualNetwork`), the
    // 3-step handshake (arm-vnet reference §2.2): declare the connection, the gateway's root
    // certificate and VPN client package, the package handed to the app.
    "microsoft.web/sites/networkconfig/delete",
    "microsoft.web/sites/slots/networkconfig/delete",
    "microsoft.web/sites/virtualnetworkconnections/write",
    "microsoft.web/sites/slots/virtualnetworkconnections/write",
    "microsoft.web/sites/virtualnetworkconnections/gateways/write",
    "microsoft.web/sites/slots/virtualnetworkconnections/gateways/write",
    "microsoft.network/virtualnetworkgateways/read",
    "microsoft.network/virtualnetworkgateways/write",
    "microsoft.network/virtualnetworkgateways/generatevpnclientpackage/action",
    // Writing a gateway back whole re-sends its ip configurations, which link its public IP
    // and its `GatewaySubnet`: ARM checks joins on both (the subnet join is listed above).
    "microsoft.network/publicipaddresses/join/action",
    // Polling long-running operations: Microsoft.Web answers with
    // `…/sites/{name}/operationResults/{id}` (arm-vnet reference §3.1), Microsoft.Network
    // with `…/locations/{region}/operations|operationResults/{id}` (arm-vnet reference §8).
    "microsoft.web/sites/operationresults/read",
    "microsoft.web/sites/slots/operationresults/read",
    "microsoft.network/locations/operations/read",
    "microsoft.network/locations/operationresults/read",
];

/// The RBAC action ARM checks for `method` on `path` (an ARM path, no host or query), named
/// from the path's resource type as ARM names its operations; `None` for a path that names
/// no resource type (not an ARM resource path).
pub fn action_for(method: &str, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let verb = match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" => "read",
        "PUT" | "PATCH" => "write",
        "DELETE" => "delete",
        "POST" => "action",
        _ => return None,
    };
    // The type chain: after the last `providers/{namespace}`, types and names alternate; an
    // odd tail is a collection (a list) or, for POST, the action's name.
    let (namespace, rest): (String, &[&str]) = match segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("providers"))
    {
        Some(i) if i + 1 < segments.len() => (segments[i + 1].to_string(), &segments[i + 2..]),
        // `/subscriptions/{s}/resourcegroups[/{rg}]`: Microsoft.Resources' own types.
        _ => match segments.as_slice() {
            ["subscriptions", _, rest @ ..] if !rest.is_empty() => {
                ("microsoft.resources/subscriptions".to_string(), rest)
            }
            _ => return None,
        },
    };
    if rest.is_empty() {
        return None;
    }
    let mut types: Vec<&str> = rest.iter().step_by(2).copied().collect();
    let action_name = if verb == "action" {
        if rest.len() % 2 == 0 {
            return None;
        }
        types.pop()
    } else {
        None
    };
    let mut action = namespace;
    for t in types {
        action.push('/');
        action.push_str(t);
    }
    match action_name {
        Some(name) => action.push_str(&format!("/{name}/action")),
        None => action.push_str(&format!("/{verb}")),
    }
    Some(action.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// The custom role `infra/` deploys (Bicep loads this file with `loadJsonContent`).
    const ROLE: &str = include_str!("../../infra/roles/migrator-role.json");

    #[test]
    fn the_role_lists_exactly_the_table() {
        let role: Value = serde_json::from_str(ROLE).expect("role definition is JSON");
        let listed: Vec<&str> = role["actions"]
            .as_array()
            .expect("the role has an actions array")
            .iter()
            .map(|a| a.as_str().expect("each action is a string"))
            .collect();
        let role_set: BTreeSet<String> = listed.iter().map(|a| a.to_ascii_lowercase()).collect();
        assert_eq!(
            role_set.len(),
            listed.len(),
            "the role lists an action twice"
        );
        let table: BTreeSet<String> = ARM_ACTIONS.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            table.len(),
            ARM_ACTIONS.len(),
            "the table lists an action twice"
        );
        let extra: Vec<_> = role_set.difference(&table).collect();
        let missing: Vec<_> = table.difference(&role_set).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "role and table differ: in the role only {extra:?}, in the table only {missing:?}"
        );
        // Data-plane rights (Service Bus, Table) are granted by built-in roles on the project's
        // own resources, never through the role assigned at the target scopes.
        for key in ["dataActions", "notDataActions", "notActions"] {
            assert_eq!(
                role[key].as_array().map(Vec::len),
                Some(0),
                "{key} must be present and empty"
            );
        }
        assert!(
            !ARM_ACTIONS.iter().any(|a| a.contains('*')),
            "no wildcard in a least-privilege role"
        );
    }

    #[test]
    fn actions_are_named_from_the_path_as_arm_names_them() {
        let site = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a";
        let cases = [
            ("GET", site.to_string(), "microsoft.web/sites/read"),
            ("PATCH", site.to_string(), "microsoft.web/sites/write"),
            (
                "GET",
                format!("{site}/slots/b/config/configreferences/appsettings"),
                "microsoft.web/sites/slots/config/appsettings/read",
            ),
            (
                "PUT",
                format!("{site}/virtualNetworkConnections/v/gateways/primary"),
                "microsoft.web/sites/virtualnetworkconnections/gateways/write",
            ),
            (
                "DELETE",
                format!("{site}/networkConfig/virtualNetwork?api-version=2024-11-01"),
                "microsoft.web/sites/networkconfig/delete",
            ),
            (
                "POST",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworkGateways/g/generatevpnclientpackage".to_string(),
                "microsoft.network/virtualnetworkgateways/generatevpnclientpackage/action",
            ),
            (
                "GET",
                "/subscriptions/s/providers/Microsoft.Web/sites".to_string(),
                "microsoft.web/sites/read",
            ),
            (
                "GET",
                "/subscriptions/s/providers/Microsoft.Web/sites/a/operationResults/1".to_string(),
                "microsoft.web/sites/operationresults/read",
            ),
            (
                "GET",
                "/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/1"
                    .to_string(),
                "microsoft.network/locations/operations/read",
            ),
            (
                "GET",
                "/subscriptions/s/resourcegroups".to_string(),
                "microsoft.resources/subscriptions/resourcegroups/read",
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                action_for(method, &path).as_deref(),
                Some(want),
                "{method} {path}"
            );
            assert!(ARM_ACTIONS.contains(&want), "{want} is not in the table");
        }
        assert_eq!(action_for("GET", "/_sim/state"), None);
        assert_eq!(action_for("POST", site), None, "a POST names its action");
    }
}
