//! Plan-wide migration decisions (DESIGN §4). Pure: takes the observed ARM state of one App
//! Service plan and returns, for every target (site or slot) on it, what to do.
//!
//! The decision must be the same whichever target asks and however far the migration has
//! got, because every target's `plan` step runs it independently. Two things make that hold:
//! destination VNets are ranked first by whether the plan is already linked to them (which
//! only ever becomes true for the VNets picked), and a subnet we prepared is found again by
//! its policy name before any new allocation is considered.
//!
//! Concurrency between plans: two plans' new subnets in one VNet cannot see each other's
//! future choice. Names are per plan (the policy's pattern), and prefixes come from the VNet's
//! current subnets; the prepare-subnet step is serialised per VNet (its session id is the
//! VNet id) and re-plans when the chosen prefix has been taken meanwhile, which resolves the
//! race.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ipam;
use super::sharing;
pub use super::sharing::SharedSubnets;
use crate::azure::models::{
    normalize_location, AutoscaleSetting, Plan, Subnet, VirtualNetwork, VnetConnection, VnetRoute,
};
use crate::azure::resource_id::{ResourceId, ResourceKind};
pub(crate) use crate::pipeline::reason::BlockedReason;
use crate::policy::Policy;

/// A target's current VNet integration.
#[derive(Debug, Clone, PartialEq)]
pub enum Integration {
    None,
    Gateway {
        /// ARM or classic VNet id.
        vnet: ResourceId,
        /// Connection name (the VNet name), as used in `…/virtualNetworkConnections/{name}`.
        connection: String,
        /// Plan-level gateway routes shown on the connection.
        routes: Vec<VnetRoute>,
    },
    Regional {
        subnet: ResourceId,
    },
}

impl Integration {
    /// Classifies a site from its `virtualNetworkSubnetId` and its connection list (DESIGN §4):
    /// regional when the subnet id is set, else the first gateway-based connection, else none.
    pub fn from_site(
        virtual_network_subnet_id: Option<&ResourceId>,
        connections: &[VnetConnection],
    ) -> Integration {
        if let Some(subnet) = virtual_network_subnet_id {
            return Integration::Regional {
                subnet: subnet.clone(),
            };
        }
        connections
            .iter()
            .filter(|c| c.is_gateway())
            .find_map(|c| {
                Some(Integration::Gateway {
                    vnet: c.properties.vnet_resource_id.clone()?,
                    connection: c.name.clone(),
                    routes: c.properties.routes.clone().unwrap_or_default(),
                })
            })
            .unwrap_or(Integration::None)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetState {
    /// Site or slot.
    pub id: ResourceId,
    pub location: String,
    pub integration: Integration,
}

pub struct PlanContext<'a> {
    pub plan: &'a Plan,
    /// Any autoscale settings; those not targeting this plan are ignored.
    pub autoscale: &'a [AutoscaleSetting],
    /// Every site and slot on the plan, not only the one being planned.
    pub targets: &'a [TargetState],
    /// Gateway VNets, every VNet peered with them, and VNets holding subnets linked to the plan.
    pub vnets: &'a [VirtualNetwork],
    /// `swiftSupported` from `GET {site}/networkConfig/virtualNetwork`.
    pub swift_supported: bool,
    pub policy: &'a Policy,
    /// The subnets this plan shares with other plans of its subscription
    /// (`subnet.sharedAcrossPlans`); None = each plan its own subnet.
    pub shared: Option<&'a SharedSubnets>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetChoice {
    pub(crate) vnet: ResourceId,
    pub(crate) subnet: ResourceId,
    pub(crate) name: String,
    pub(crate) prefix: Ipv4Net,
    /// The subnet must be created.
    pub(crate) create: bool,
    /// It exists but lacks the delegation or the policy's NSG / route table / NAT gateway.
    pub(crate) needs_update: bool,
    /// Shared by several plans (the multi-plan subnet join): the addresses it must hold for
    /// all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shared_addresses: Option<u32>,
}

impl SubnetChoice {
    /// The longest prefix that holds what the subnet must: the plan's `plan_addresses`, or
    /// every sharing plan's, in a block of at least /26 (ARM's minimum for a subnet several
    /// plans join, arm-vnet reference §5).
    pub(crate) fn required_prefix_length(&self, plan_addresses: u32) -> u8 {
        match self.shared_addresses {
            Some(n) => ipam::prefix_len_for(n).min(sharing::MAX_SHARED_PREFIX_LEN),
            None => ipam::prefix_len_for(plan_addresses),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// A few hundred targets per plan at most: plain matching beats boxing the subnet choice.
#[allow(clippy::large_enum_variant)]
pub enum TargetDecision {
    Migrate(SubnetChoice),
    AlreadyRegional,
    NoIntegration,
    Blocked(BlockedReason),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDecision {
    pub(crate) plan: ResourceId,
    pub(crate) expected_max_instances: u32,
    pub(crate) required_addresses: u32,
    /// At most two (the plan limit), ordered by VNet id.
    pub(crate) subnets: Vec<SubnetChoice>,
    /// The VNets picked for the plan's gateway targets still to migrate (at most two, the
    /// plan limit), ordered by VNet id, whether or not a subnet could be chosen in them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) destinations: Vec<ResourceId>,
    pub targets: BTreeMap<ResourceId, TargetDecision>,
    pub(crate) warnings: Vec<String>,
}

/// Tiers without regional integration: free/shared, consumption, and ASE (already in a VNet).
const UNSUPPORTED_TIERS: [&str; 5] = ["Free", "Shared", "Dynamic", "Isolated", "IsolatedV2"];

/// ARM's limit of regional integrations (subnets) per plan.
const MAX_SUBNETS_PER_PLAN: usize = 2;

/// Subnet names Azure reserves for its own services; never reused for integration.
const RESERVED_SUBNET_NAMES: [&str; 5] = [
    "GatewaySubnet",
    "AzureFirewallSubnet",
    "AzureFirewallManagementSubnet",
    "AzureBastionSubnet",
    "RouteServerSubnet",
];

fn is_elastic(plan: &Plan) -> bool {
    plan.properties.elastic_scale_enabled == Some(true)
        || plan
            .sku
            .tier
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("ElasticPremium"))
}

/// Instances the plan may reach: sku capacity, enabled autoscale maxima targeting the plan,
/// the elastic maximum for elastic plans; capped at `maximumNumberOfWorkers`, at least 1.
pub(crate) fn expected_max_instances(plan: &Plan, autoscale: &[AutoscaleSetting]) -> u32 {
    let mut max = plan.sku.capacity.unwrap_or(1);
    let autoscale_max = autoscale
        .iter()
        .filter(|s| s.properties.enabled != Some(false))
        .filter(|s| s.targets(&plan.id))
        .flat_map(|s| &s.properties.profiles)
        .filter_map(|p| p.capacity.maximum)
        .max();
    max = max.max(autoscale_max.unwrap_or(0));
    if is_elastic(plan) {
        max = max.max(plan.properties.maximum_elastic_worker_count.unwrap_or(0));
    }
    if let Some(cap) = plan.properties.maximum_number_of_workers.filter(|c| *c > 0) {
        max = max.min(cap);
    }
    max.max(1)
}

fn same_region(a: &str, b: &str) -> bool {
    normalize_location(a) == normalize_location(b)
}

fn subnet_id(vnet: &VirtualNetwork, s: &Subnet) -> ResourceId {
    s.id.as_deref()
        .and_then(|i| ResourceId::parse(i).ok())
        .unwrap_or_else(|| {
            vnet.id
                .child("subnets", &s.name)
                .expect("a VNet id has child resources")
        })
}

fn links_plan(s: &Subnet, plan: &ResourceId) -> bool {
    s.linked_plans().iter().any(|p| p == plan)
}

fn links_other_plan(s: &Subnet, plan: &ResourceId) -> bool {
    s.linked_plans().iter().any(|p| p != plan)
}

/// The first IPv4 prefix of a subnet (the one integration uses).
pub(super) fn first_prefix(s: &Subnet) -> Option<Ipv4Net> {
    ipam::parse_prefixes(&s.prefixes())
        .ok()
        .and_then(|v| v.into_iter().next())
}

fn holds(s: &Subnet, addresses: u32) -> bool {
    first_prefix(s)
        .is_some_and(|p| (1u64 << (32 - u32::from(p.prefix_len()))) >= u64::from(addresses))
}

/// Whether a subnet is our prepared one for this plan: the policy's name, delegated to Web,
/// and used by nobody else.
fn prepared_by_us(s: &Subnet, name: &str, plan: &ResourceId) -> bool {
    s.name.eq_ignore_ascii_case(name)
        && s.is_delegated_to_web()
        && !s.has_other_users()
        && !links_other_plan(s, plan)
}

/// Whether the plan is linked to the VNet (through a SAL), or the VNet holds our prepared
/// subnet. Only VNets picked for this plan ever become linked, which keeps the ranking stable.
fn linked_to_plan(vnet: &VirtualNetwork, plan: &Plan, subnet_name: &str) -> bool {
    vnet.properties.subnets.iter().any(|s| {
        links_plan(s, &plan.id)
            || (same_region(&vnet.location, &plan.location)
                && prepared_by_us(s, subnet_name, &plan.id))
    })
}

fn needs_update(s: &Subnet, policy: &Policy) -> bool {
    let differs = |want: &Option<ResourceId>, have: Option<&ResourceId>| {
        want.as_ref().is_some_and(|w| Some(w) != have)
    };
    let p = &s.properties;
    !s.is_delegated_to_web()
        || differs(
            &policy.subnet.network_security_group_id,
            p.network_security_group.as_ref().map(|r| &r.id),
        )
        || differs(
            &policy.subnet.route_table_id,
            p.route_table.as_ref().map(|r| &r.id),
        )
        || differs(
            &policy.subnet.nat_gateway_id,
            p.nat_gateway.as_ref().map(|r| &r.id),
        )
}

pub(super) fn existing_choice(
    vnet: &VirtualNetwork,
    s: &Subnet,
    policy: &Policy,
) -> Option<SubnetChoice> {
    Some(SubnetChoice {
        vnet: vnet.id.clone(),
        subnet: subnet_id(vnet, s),
        name: s.name.clone(),
        prefix: first_prefix(s)?,
        create: false,
        needs_update: needs_update(s, policy),
        shared_addresses: None,
    })
}

/// The lowest free block of the VNet for a new subnet: `preferred_len` when larger than
/// `required_len` and space allows, else `required_len`.
pub(super) fn free_block(
    vnet: &VirtualNetwork,
    required_len: u8,
    preferred_len: u8,
) -> Result<Ipv4Net, BlockedReason> {
    let space = ipam::parse_prefixes(&vnet.properties.address_space.address_prefixes)
        .map_err(|_| BlockedReason::NoAddressSpace)?;
    let mut used = Vec::new();
    for s in &vnet.properties.subnets {
        used.extend(
            ipam::parse_prefixes(&s.prefixes()).map_err(|_| BlockedReason::NoAddressSpace)?,
        );
    }
    ipam::choose_prefix(&space, &used, required_len, preferred_len)
        .ok_or(BlockedReason::NoAddressSpace)
}

/// Picks the plan's subnet in one destination VNet (DESIGN §4 "Subnet choice").
fn choose_subnet(
    vnet: &VirtualNetwork,
    plan: &Plan,
    policy: &Policy,
    required: u32,
) -> Result<SubnetChoice, BlockedReason> {
    let subnets = &vnet.properties.subnets;
    let by_name = |a: &&Subnet, b: &&Subnet| {
        a.name
            .to_ascii_lowercase()
            .cmp(&b.name.to_ascii_lowercase())
    };
    let mut linked: Vec<&Subnet> = subnets.iter().filter(|s| links_plan(s, &plan.id)).collect();
    linked.sort_by(by_name);
    if let Some(s) = linked.first() {
        return existing_choice(vnet, s, policy).ok_or(BlockedReason::SubnetInUse);
    }

    let name = policy.subnet_name(&plan.name);
    if let Some(s) = subnets.iter().find(|s| s.name.eq_ignore_ascii_case(&name)) {
        let ours = !s.has_other_users() && !links_other_plan(s, &plan.id);
        if !ours || !holds(s, required) {
            return Err(BlockedReason::SubnetInUse);
        }
        return existing_choice(vnet, s, policy).ok_or(BlockedReason::SubnetInUse);
    }

    if policy.subnet.reuse_empty_subnets {
        let mut empty: Vec<&Subnet> = subnets
            .iter()
            .filter(|s| {
                !RESERVED_SUBNET_NAMES
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&s.name))
                    && !s.has_other_users()
                    && s.linked_plans().is_empty()
                    && holds(s, required)
            })
            .collect();
        empty.sort_by(by_name);
        if let Some(choice) = empty.first().and_then(|s| existing_choice(vnet, s, policy)) {
            return Ok(choice);
        }
    }

    let prefix = free_block(
        vnet,
        ipam::prefix_len_for(required),
        policy.subnet.preferred_prefix,
    )?;
    Ok(SubnetChoice {
        vnet: vnet.id.clone(),
        subnet: vnet
            .id
            .child("subnets", &name)
            .map_err(|_| BlockedReason::NoAddressSpace)?,
        name,
        prefix,
        create: true,
        needs_update: false,
        shared_addresses: None,
    })
}

fn describe_route(r: &VnetRoute) -> String {
    let field = |k: &str| r.properties.get(k).and_then(|v| v.as_str()).unwrap_or("?");
    format!("{}-{}", field("startAddress"), field("endAddress"))
}

/// Where a gateway target's regional subnet must live, or why there is none.
fn destination(
    gateway_vnet: &ResourceId,
    target: &TargetState,
    vnets: &[VirtualNetwork],
) -> Result<ResourceId, BlockedReason> {
    if gateway_vnet.kind() == ResourceKind::ClassicVirtualNetwork {
        return Err(BlockedReason::ClassicVnet);
    }
    if let Some(g) = vnets.iter().find(|v| &v.id == gateway_vnet) {
        if same_region(&g.location, &target.location) {
            return Ok(g.id.clone());
        }
    }
    vnets
        .iter()
        .filter(|v| same_region(&v.location, &target.location))
        .filter(|v| {
            v.properties
                .virtual_network_peerings
                .iter()
                .any(|p| p.is_connected_to(gateway_vnet))
        })
        .map(|v| v.id.clone())
        .min()
        .ok_or(BlockedReason::CrossRegionNoPeering)
}

/// Decides every target of the plan. See the module comment for why this is stable.
pub fn decide(ctx: &PlanContext) -> PlanDecision {
    let plan = ctx.plan;
    let policy = ctx.policy;
    let expected_max = expected_max_instances(plan, ctx.autoscale);
    let required = ipam::required_addresses(expected_max);
    let subnet_name = policy.subnet_name(&plan.name);
    let unsupported_sku = plan
        .sku
        .tier
        .as_deref()
        .is_some_and(|t| UNSUPPORTED_TIERS.iter().any(|u| u.eq_ignore_ascii_case(t)));
    let vnet_of = |id: &ResourceId| ctx.vnets.iter().find(|v| &v.id == id);

    let mut decisions: BTreeMap<ResourceId, TargetDecision> = BTreeMap::new();
    let mut warnings: BTreeSet<String> = BTreeSet::new();
    let mut routes: BTreeMap<ResourceId, BTreeSet<String>> = BTreeMap::new();
    // Targets per destination VNet: gateway targets still to migrate, and regional ones.
    let mut pending: BTreeMap<ResourceId, Vec<ResourceId>> = BTreeMap::new();
    let mut counts: BTreeMap<ResourceId, usize> = BTreeMap::new();
    // VNets holding a regional target of the plan: linked by definition.
    let mut regional: BTreeSet<ResourceId> = BTreeSet::new();

    for t in ctx.targets {
        let decision = match &t.integration {
            Integration::None => TargetDecision::NoIntegration,
            Integration::Regional { subnet } => {
                if let Some(v) = subnet.vnet() {
                    *counts.entry(v.clone()).or_default() += 1;
                    regional.insert(v);
                }
                TargetDecision::AlreadyRegional
            }
            Integration::Gateway {
                vnet, routes: r, ..
            } => {
                if !r.is_empty() {
                    routes
                        .entry(vnet.clone())
                        .or_default()
                        .extend(r.iter().map(describe_route));
                }
                if vnet.kind() == ResourceKind::VirtualNetwork && vnet_of(vnet).is_none() {
                    warnings.insert(format!(
                        "gateway VNet {vnet} was not found; only VNets peered with it can be used"
                    ));
                }
                let dest = if unsupported_sku {
                    Err(BlockedReason::UnsupportedSku)
                } else if !ctx.swift_supported {
                    Err(BlockedReason::ScaleUnitUnsupported)
                } else {
                    destination(vnet, t, ctx.vnets)
                };
                match dest {
                    Ok(d) => {
                        *counts.entry(d.clone()).or_default() += 1;
                        pending.entry(d).or_default().push(t.id.clone());
                        continue;
                    }
                    Err(reason) => TargetDecision::Blocked(reason),
                }
            }
        };
        decisions.insert(t.id.clone(), decision);
    }

    // A VNet the plan is linked to keeps its slot even while its targets are mid-flight
    // (disconnected, so counted nowhere).
    if !unsupported_sku && ctx.swift_supported {
        for v in ctx.vnets {
            if linked_to_plan(v, plan, &subnet_name) {
                counts.entry(v.id.clone()).or_default();
            }
        }
    }
    let mut ranked: Vec<(bool, usize, ResourceId)> = counts
        .into_iter()
        .map(|(id, n)| {
            let linked = regional.contains(&id)
                || vnet_of(&id).is_some_and(|v| linked_to_plan(v, plan, &subnet_name));
            (linked, n, id)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let chosen: Vec<ResourceId> = ranked
        .into_iter()
        .take(MAX_SUBNETS_PER_PLAN)
        .map(|(_, _, id)| id)
        .collect();

    let pending_vnets: BTreeSet<ResourceId> = pending.keys().cloned().collect();
    let mut subnets = Vec::new();
    for (dest, ids) in pending {
        let decision = if !chosen.contains(&dest) {
            TargetDecision::Blocked(BlockedReason::PlanSubnetLimit)
        } else {
            let shared = ctx.shared.and_then(|s| s.choice(&dest, &plan.id));
            let choice = match shared {
                Some(c) => Ok(c.clone()),
                None => vnet_of(&dest)
                    .ok_or(BlockedReason::CrossRegionNoPeering)
                    .and_then(|v| choose_subnet(v, plan, policy, required)),
            };
            match choice {
                Ok(c) => {
                    subnets.push(c.clone());
                    TargetDecision::Migrate(c)
                }
                Err(reason) => TargetDecision::Blocked(reason),
            }
        };
        for id in ids {
            decisions.insert(id, decision.clone());
        }
    }

    for (vnet, rs) in routes {
        warnings.insert(format!(
            "gateway VNet {}: plan-level gateway routes {} have no regional equivalent; \
             recreate them as a route table (UDR) on the integration subnet",
            vnet.name(),
            rs.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    let mut destinations: Vec<ResourceId> = chosen
        .into_iter()
        .filter(|v| pending_vnets.contains(v))
        .collect();
    destinations.sort();
    PlanDecision {
        plan: plan.id.clone(),
        expected_max_instances: expected_max,
        required_addresses: required,
        subnets,
        destinations,
        targets: decisions,
        warnings: warnings.into_iter().collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const PLAN: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/serverfarms/plan1";

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    pub(crate) fn vnet_id(name: &str) -> ResourceId {
        id(&format!(
            "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/{name}"
        ))
    }

    pub(crate) fn site_id(name: &str) -> ResourceId {
        id(&format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{name}"
        ))
    }

    fn plan(tier: &str, capacity: u32, max_workers: u32) -> Plan {
        serde_json::from_value(json!({
            "id": PLAN, "name": "plan1", "location": "West Europe", "kind": "app",
            "sku": {"name": "X", "tier": tier, "capacity": capacity},
            "properties": {"maximumNumberOfWorkers": max_workers, "reserved": false}
        }))
        .unwrap()
    }

    /// A subnet of `vnet`; `props` is merged into its properties.
    pub(crate) fn subnet(vnet: &str, name: &str, prefix: &str, props: Value) -> Value {
        let mut p = json!({"addressPrefix": prefix, "delegations": []});
        p.as_object_mut()
            .unwrap()
            .extend(props.as_object().unwrap().clone());
        json!({"id": format!("{}/subnets/{name}", vnet_id(vnet)), "name": name,
               "type": "Microsoft.Network/virtualNetworks/subnets", "properties": p})
    }

    pub(crate) fn vnet(
        name: &str,
        location: &str,
        space: &str,
        subnets: Vec<Value>,
        peerings: &[(&str, &str)],
    ) -> VirtualNetwork {
        let peerings: Vec<Value> = peerings
            .iter()
            .map(|(remote, state)| json!({"name": format!("to-{remote}"),
                "properties": {"remoteVirtualNetwork": {"id": vnet_id(remote).to_string()}, "peeringState": state}}))
            .collect();
        serde_json::from_value(json!({
            "id": vnet_id(name).to_string(), "name": name, "location": location,
            "properties": {"addressSpace": {"addressPrefixes": [space]}, "subnets": subnets,
                           "virtualNetworkPeerings": peerings}
        }))
        .unwrap()
    }

    /// A gateway VNet with its GatewaySubnet at the top of the space.
    pub(crate) fn gw_vnet(name: &str, location: &str, second_octet: u8) -> VirtualNetwork {
        vnet(
            name,
            location,
            &format!("10.{second_octet}.0.0/16"),
            vec![subnet(
                name,
                "GatewaySubnet",
                &format!("10.{second_octet}.255.0/27"),
                json!({"ipConfigurations": [{"id": "gw-ipconfig"}]}),
            )],
            &[],
        )
    }

    pub(crate) fn gateway(app: &str, vnet: &ResourceId) -> TargetState {
        TargetState {
            id: site_id(app),
            location: "westeurope".into(),
            integration: Integration::Gateway {
                vnet: vnet.clone(),
                connection: vnet.name().to_string(),
                routes: Vec::new(),
            },
        }
    }

    struct Scenario {
        plan: Plan,
        autoscale: Vec<AutoscaleSetting>,
        targets: Vec<TargetState>,
        vnets: Vec<VirtualNetwork>,
        swift: bool,
        policy: Policy,
    }

    impl Scenario {
        fn new(targets: Vec<TargetState>, vnets: Vec<VirtualNetwork>) -> Self {
            Scenario {
                plan: plan("PremiumV2", 2, 30),
                autoscale: Vec::new(),
                targets,
                vnets,
                swift: true,
                policy: Policy::default(),
            }
        }

        fn decide(&self) -> PlanDecision {
            decide(&PlanContext {
                plan: &self.plan,
                autoscale: &self.autoscale,
                targets: &self.targets,
                vnets: &self.vnets,
                swift_supported: self.swift,
                policy: &self.policy,
                shared: None,
            })
        }

        fn of(&self, app: &str) -> TargetDecision {
            self.decide().targets[&site_id(app)].clone()
        }
    }

    pub(crate) fn migrate(d: TargetDecision) -> SubnetChoice {
        match d {
            TargetDecision::Migrate(c) => c,
            other => panic!("expected Migrate, got {other:?}"),
        }
    }

    #[test]
    fn blocked_reason_strings_round_trip() {
        for r in BlockedReason::ALL {
            assert_eq!(r.to_string().parse::<BlockedReason>().unwrap(), *r);
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
        }
        assert_eq!(
            BlockedReason::CrossRegionNoPeering.to_string(),
            "cross-region-no-peering"
        );
        assert!("nope".parse::<BlockedReason>().is_err());
    }

    #[test]
    fn same_region_gets_a_new_preferred_subnet() {
        let a = vnet_id("vnet-a");
        let s = Scenario::new(
            vec![gateway("app1", &a)],
            vec![gw_vnet("vnet-a", "westeurope", 1)],
        );
        let d = s.decide();
        assert_eq!(d.expected_max_instances, 2);
        assert_eq!(d.required_addresses, 9);
        let c = migrate(d.targets[&site_id("app1")].clone());
        assert_eq!(c.vnet, a);
        assert_eq!(c.name, "snet-plan1-integration");
        assert_eq!(
            c.subnet,
            a.child("subnets", "snet-plan1-integration").unwrap()
        );
        assert_eq!(c.prefix.to_string(), "10.1.0.0/26");
        assert!(c.create && !c.needs_update);
        assert_eq!(d.subnets, vec![c]);
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn cross_region_uses_the_connected_peer_in_the_apps_region() {
        let g = vnet_id("vnet-g");
        let vnets = vec![
            gw_vnet("vnet-g", "northeurope", 9),
            vnet(
                "vnet-z",
                "westeurope",
                "10.30.0.0/16",
                vec![],
                &[("vnet-g", "Connected")],
            ),
            vnet(
                "vnet-l",
                "West Europe",
                "10.20.0.0/16",
                vec![],
                &[("vnet-g", "Connected")],
            ),
            vnet(
                "vnet-i",
                "westeurope",
                "10.10.0.0/16",
                vec![],
                &[("vnet-g", "Initiated")],
            ),
            vnet(
                "vnet-far",
                "eastus",
                "10.40.0.0/16",
                vec![],
                &[("vnet-g", "Connected")],
            ),
        ];
        let s = Scenario::new(vec![gateway("app1", &g)], vnets);
        let c = migrate(s.of("app1"));
        assert_eq!(
            c.vnet,
            vnet_id("vnet-l"),
            "lowest id among connected peers in the region"
        );
        assert_eq!(c.prefix.to_string(), "10.20.0.0/26");
    }

    #[test]
    fn cross_region_without_connected_peering_is_blocked() {
        let g = vnet_id("vnet-g");
        // The gateway side says Connected, but the local VNet's own entry is only Initiated.
        let mut gv = gw_vnet("vnet-g", "northeurope", 9);
        gv.properties.virtual_network_peerings = vnet(
            "x",
            "northeurope",
            "10.0.0.0/8",
            vec![],
            &[("vnet-i", "Connected")],
        )
        .properties
        .virtual_network_peerings;
        let vnets = vec![
            gv,
            vnet(
                "vnet-i",
                "westeurope",
                "10.10.0.0/16",
                vec![],
                &[("vnet-g", "Initiated")],
            ),
        ];
        let s = Scenario::new(vec![gateway("app1", &g)], vnets);
        assert_eq!(
            s.of("app1"),
            TargetDecision::Blocked(BlockedReason::CrossRegionNoPeering)
        );
    }

    #[test]
    fn more_than_two_gateway_vnets_hits_the_plan_limit() {
        let (a, b, c) = (vnet_id("vnet-a"), vnet_id("vnet-b"), vnet_id("vnet-c"));
        let vnets = vec![
            gw_vnet("vnet-c", "westeurope", 3),
            gw_vnet("vnet-b", "westeurope", 2),
            gw_vnet("vnet-a", "westeurope", 1),
        ];
        let targets = vec![
            gateway("c1", &c),
            gateway("b1", &b),
            gateway("a1", &a),
            gateway("b2", &b),
            gateway("c2", &c),
        ];
        // 2 (b) + 2 (c) + 1 (a): the two largest win.
        let s = Scenario::new(targets, vnets.clone());
        let d = s.decide();
        assert_eq!(migrate(d.targets[&site_id("b1")].clone()).vnet, b);
        assert_eq!(migrate(d.targets[&site_id("c2")].clone()).vnet, c);
        assert_eq!(
            d.targets[&site_id("a1")],
            TargetDecision::Blocked(BlockedReason::PlanSubnetLimit)
        );
        assert_eq!(d.subnets.len(), 2);
        // 2 (c) + 1 (a) + 1 (b): the tie between a and b goes to the lower id.
        let s = Scenario::new(
            vec![
                gateway("c1", &c),
                gateway("c2", &c),
                gateway("b1", &b),
                gateway("a1", &a),
            ],
            vnets,
        );
        let d = s.decide();
        assert_eq!(migrate(d.targets[&site_id("a1")].clone()).vnet, a);
        assert_eq!(migrate(d.targets[&site_id("c1")].clone()).vnet, c);
        assert_eq!(
            d.targets[&site_id("b1")],
            TargetDecision::Blocked(BlockedReason::PlanSubnetLimit)
        );
    }

    #[test]
    fn full_vnet_has_no_address_space() {
        let a = vnet_id("vnet-a");
        let full = vnet(
            "vnet-a",
            "westeurope",
            "10.1.0.0/24",
            vec![
                subnet("vnet-a", "everything", "10.1.0.0/25", json!({})),
                subnet(
                    "vnet-a",
                    "rest",
                    "x",
                    json!({"addressPrefix": null, "addressPrefixes": ["10.1.0.128/26", "10.1.0.192/27", "10.1.0.224/28", "10.1.0.240/28"]}),
                ),
            ],
            &[],
        );
        let s = Scenario::new(vec![gateway("app1", &a)], vec![full]);
        assert_eq!(
            s.of("app1"),
            TargetDecision::Blocked(BlockedReason::NoAddressSpace)
        );
    }

    #[test]
    fn small_space_falls_back_from_preferred_to_required() {
        let a = vnet_id("vnet-a");
        let v = vnet(
            "vnet-a",
            "westeurope",
            "10.1.0.0/26",
            vec![subnet("vnet-a", "apps", "10.1.0.0/27", json!({}))],
            &[],
        );
        let s = Scenario::new(vec![gateway("app1", &a)], vec![v]);
        assert_eq!(migrate(s.of("app1")).prefix.to_string(), "10.1.0.32/28");
    }

    #[test]
    fn subnet_linked_to_the_plan_is_reused() {
        let a = vnet_id("vnet-a");
        let linked = subnet(
            "vnet-a",
            "legacy-int",
            "10.1.7.0/27",
            json!({
                "delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverfarms"}}],
                "serviceAssociationLinks": [{"name": "AppServiceLink", "properties": {
                    "linkedResourceType": "Microsoft.Web/serverfarms", "link": PLAN.to_uppercase()}}]
            }),
        );
        let mut v = gw_vnet("vnet-a", "westeurope", 1);
        v.properties
            .subnets
            .push(serde_json::from_value(linked).unwrap());
        let mut s = Scenario::new(vec![gateway("app1", &a)], vec![v]);
        let c = migrate(s.of("app1"));
        assert_eq!(c.name, "legacy-int");
        assert_eq!(c.prefix.to_string(), "10.1.7.0/27");
        assert!(!c.create && !c.needs_update);
        s.policy.subnet.network_security_group_id = Some(id(
            "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/networkSecurityGroups/nsg",
        ));
        assert!(
            migrate(s.of("app1")).needs_update,
            "policy NSG missing on the subnet"
        );
    }

    #[test]
    fn classic_vnet_is_blocked() {
        let classic = id("/subscriptions/s/resourceGroups/r/providers/Microsoft.ClassicNetwork/virtualNetworks/old");
        let s = Scenario::new(vec![gateway("app1", &classic)], vec![]);
        assert_eq!(
            s.of("app1"),
            TargetDecision::Blocked(BlockedReason::ClassicVnet)
        );
    }

    #[test]
    fn unsupported_sku_and_old_scale_unit_block_gateway_targets_only() {
        let a = vnet_id("vnet-a");
        let regional = TargetState {
            id: site_id("done"),
            location: "westeurope".into(),
            integration: Integration::Regional {
                subnet: a.child("subnets", "x").unwrap(),
            },
        };
        let none = TargetState {
            id: site_id("plain"),
            location: "westeurope".into(),
            integration: Integration::None,
        };
        let mut s = Scenario::new(
            vec![gateway("app1", &a), regional, none],
            vec![gw_vnet("vnet-a", "westeurope", 1)],
        );
        for tier in ["Free", "shared", "Dynamic", "Isolated", "IsolatedV2"] {
            s.plan.sku.tier = Some(tier.into());
            let d = s.decide();
            assert_eq!(
                d.targets[&site_id("app1")],
                TargetDecision::Blocked(BlockedReason::UnsupportedSku)
            );
            assert_eq!(d.targets[&site_id("done")], TargetDecision::AlreadyRegional);
            assert_eq!(d.targets[&site_id("plain")], TargetDecision::NoIntegration);
            assert!(d.subnets.is_empty());
        }
        s.plan.sku.tier = Some("Standard".into());
        s.swift = false;
        assert_eq!(
            s.of("app1"),
            TargetDecision::Blocked(BlockedReason::ScaleUnitUnsupported)
        );
    }

    #[test]
    fn pattern_named_subnet_in_use_or_too_small_is_blocked_else_reused() {
        let a = vnet_id("vnet-a");
        let with = |props: Value, prefix: &str| {
            let mut v = gw_vnet("vnet-a", "westeurope", 1);
            v.properties.subnets.push(
                serde_json::from_value(subnet("vnet-a", "snet-plan1-integration", prefix, props))
                    .unwrap(),
            );
            Scenario::new(vec![gateway("app1", &a)], vec![v])
        };
        let nics = with(json!({"ipConfigurations": [{"id": "nic1"}]}), "10.1.3.0/26");
        assert_eq!(
            nics.of("app1"),
            TargetDecision::Blocked(BlockedReason::SubnetInUse)
        );
        let other_plan = with(
            json!({"serviceAssociationLinks": [{"properties": {"link":
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/serverfarms/other"}}]}),
            "10.1.3.0/26",
        );
        assert_eq!(
            other_plan.of("app1"),
            TargetDecision::Blocked(BlockedReason::SubnetInUse)
        );
        let small = with(json!({}), "10.1.3.0/29");
        assert_eq!(
            small.of("app1"),
            TargetDecision::Blocked(BlockedReason::SubnetInUse)
        );
        let empty = with(json!({}), "10.1.3.0/28");
        let c = migrate(empty.of("app1"));
        assert_eq!(
            (c.prefix.to_string().as_str(), c.create, c.needs_update),
            ("10.1.3.0/28", false, true)
        );
    }

    #[test]
    fn empty_subnets_are_reused_only_when_the_policy_says_so() {
        let a = vnet_id("vnet-a");
        let mut v = gw_vnet("vnet-a", "westeurope", 1);
        for s in [
            subnet("vnet-a", "b-empty", "10.1.2.0/27", json!({})),
            subnet(
                "vnet-a",
                "a-busy",
                "10.1.1.0/27",
                json!({"ipConfigurations": [{"id": "n"}]}),
            ),
            subnet("vnet-a", "a-tiny", "10.1.4.0/29", json!({})),
            subnet("vnet-a", "c-empty", "10.1.3.0/24", json!({})),
        ] {
            v.properties
                .subnets
                .push(serde_json::from_value(s).unwrap());
        }
        let mut s = Scenario::new(vec![gateway("app1", &a)], vec![v]);
        assert!(migrate(s.of("app1")).create);
        s.policy.subnet.reuse_empty_subnets = true;
        let c = migrate(s.of("app1"));
        assert_eq!(
            (c.name.as_str(), c.create, c.needs_update),
            ("b-empty", false, true)
        );
    }

    #[test]
    fn autoscale_maximum_from_strings() {
        let setting = |target: &str, enabled: bool, max: &str| -> AutoscaleSetting {
            serde_json::from_value(json!({
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Insights/autoscalesettings/a",
                "name": "a", "type": "Microsoft.Insights/autoscaleSettings",
                "properties": {"enabled": enabled, "targetResourceUri": target, "profiles": [
                    {"name": "p1", "capacity": {"minimum": "1", "maximum": "3", "default": "1"}, "rules": []},
                    {"name": "p2", "capacity": {"minimum": "1", "maximum": max, "default": "1"}, "rules": []}]}
            }))
            .unwrap()
        };
        let other = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/serverfarms/other";
        let p = plan("PremiumV2", 2, 30);
        let settings = vec![
            setting(
                &PLAN.replace("serverfarms", "serverFarms").to_uppercase(),
                true,
                "12",
            ),
            setting(PLAN, false, "25"),
            setting(other, true, "28"),
        ];
        assert_eq!(expected_max_instances(&p, &settings), 12);
        assert_eq!(
            expected_max_instances(&plan("PremiumV2", 2, 10), &settings),
            10
        );
        assert_eq!(expected_max_instances(&p, &[]), 2);
        let mut zero = plan("Basic", 0, 3);
        zero.sku.capacity = None;
        assert_eq!(expected_max_instances(&zero, &[]), 1);
    }

    #[test]
    fn elastic_plans_use_the_elastic_maximum() {
        let mut ep = plan("ElasticPremium", 1, 100);
        ep.properties.maximum_elastic_worker_count = Some(20);
        assert_eq!(expected_max_instances(&ep, &[]), 20);
        let mut flagged = plan("PremiumV3", 1, 30);
        flagged.properties.maximum_elastic_worker_count = Some(40);
        assert_eq!(expected_max_instances(&flagged, &[]), 1, "not elastic");
        flagged.properties.elastic_scale_enabled = Some(true);
        assert_eq!(
            expected_max_instances(&flagged, &[]),
            30,
            "capped at maximumNumberOfWorkers"
        );
    }

    #[test]
    fn gateway_routes_are_reported_per_vnet() {
        let a = vnet_id("vnet-a");
        let route: VnetRoute = serde_json::from_value(json!({"name": "r1",
            "properties": {"startAddress": "192.168.0.0", "endAddress": "192.168.0.255", "routeType": "STATIC"}})).unwrap();
        let mut t1 = gateway("app1", &a);
        let mut t2 = gateway("app2", &a);
        for t in [&mut t1, &mut t2] {
            if let Integration::Gateway { routes, .. } = &mut t.integration {
                routes.push(route.clone());
            }
        }
        let d = Scenario::new(vec![t1, t2], vec![gw_vnet("vnet-a", "westeurope", 1)]).decide();
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].contains("vnet-a") && d.warnings[0].contains("192.168.0.0-192.168.0.255")
        );
    }

    #[test]
    fn integration_from_site() {
        let a = vnet_id("vnet-a");
        let conns: Vec<VnetConnection> = serde_json::from_value(json!([
            {"name": "g_x", "properties": {"vnetResourceId": format!("{a}/subnets/x"), "isSwift": true}},
            {"name": "vnet-a", "properties": {"vnetResourceId": a.to_string(), "isSwift": false, "routes": []}}
        ]))
        .unwrap();
        assert_eq!(
            Integration::from_site(None, &conns),
            Integration::Gateway {
                vnet: a.clone(),
                connection: "vnet-a".into(),
                routes: vec![]
            }
        );
        let sub = a.child("subnets", "x").unwrap();
        assert_eq!(
            Integration::from_site(Some(&sub), &conns),
            Integration::Regional { subnet: sub }
        );
        assert_eq!(Integration::from_site(None, &conns[..1]), Integration::None);
    }

    // --- Stability: every target reaches the same decision in any order, at any progress. ---

    /// Plan with gateway VNets a (2 targets incl. a slot), b (2), c (1) in the app's region,
    /// and g in another region reached through peer l (1): a and b win, c and l are limited.
    fn stability_scenario() -> Scenario {
        let (a, b, c, g) = (
            vnet_id("vnet-a"),
            vnet_id("vnet-b"),
            vnet_id("vnet-c"),
            vnet_id("vnet-g"),
        );
        let mut slot = gateway("a1", &a);
        slot.id = site_id("a1").child("slots", "staging").unwrap();
        let targets = vec![
            gateway("a1", &a),
            slot,
            gateway("b1", &b),
            gateway("b2", &b),
            gateway("c1", &c),
            gateway("g1", &g),
            TargetState {
                id: site_id("plain"),
                location: "westeurope".into(),
                integration: Integration::None,
            },
        ];
        let vnets = vec![
            gw_vnet("vnet-a", "westeurope", 1),
            gw_vnet("vnet-b", "westeurope", 2),
            gw_vnet("vnet-c", "westeurope", 3),
            gw_vnet("vnet-g", "northeurope", 4),
            vnet(
                "vnet-l",
                "westeurope",
                "10.5.0.0/16",
                vec![],
                &[("vnet-g", "Connected")],
            ),
        ];
        let mut s = Scenario::new(targets, vnets);
        s.plan.sku.capacity = Some(3);
        s
    }

    /// Progress of one target: 0 untouched, 1 subnet prepared, 2 disconnected (mid-flight),
    /// 3 migrated (regional, SAL on the subnet).
    fn apply_progress(s: &mut Scenario, initial: &PlanDecision, progress: &[u8]) {
        for (i, step) in progress.iter().enumerate() {
            let tid = s.targets[i].id.clone();
            let TargetDecision::Migrate(c) = &initial.targets[&tid] else {
                continue;
            };
            if *step == 0 {
                continue;
            }
            let v = s.vnets.iter_mut().find(|v| v.id == c.vnet).unwrap();
            if !v.properties.subnets.iter().any(|x| x.name == c.name) {
                let sub = subnet(
                    c.vnet.name(),
                    &c.name,
                    &c.prefix.to_string(),
                    json!({
                    "delegations": [{"name": "delegation", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}]}),
                );
                v.properties
                    .subnets
                    .push(serde_json::from_value(sub).unwrap());
            }
            match step {
                2 => s.targets[i].integration = Integration::None,
                3 => {
                    let sub = v
                        .properties
                        .subnets
                        .iter_mut()
                        .find(|x| x.name == c.name)
                        .unwrap();
                    if sub.linked_plans().is_empty() {
                        sub.properties.service_association_links =
                            Some(vec![serde_json::from_value(
                                json!({"name": "AppServiceLink", "properties": {"link": PLAN}}),
                            )
                            .unwrap()]);
                    }
                    s.targets[i].integration = Integration::Regional {
                        subnet: c.subnet.clone(),
                    };
                }
                _ => {}
            }
        }
    }

    #[test]
    fn stability_scenario_initial_decision() {
        let d = stability_scenario().decide();
        let vnet_of = |app: &str| migrate(d.targets[&site_id(app)].clone()).vnet;
        assert_eq!(vnet_of("a1"), vnet_id("vnet-a"));
        assert_eq!(vnet_of("b2"), vnet_id("vnet-b"));
        for app in ["c1", "g1"] {
            assert_eq!(
                d.targets[&site_id(app)],
                TargetDecision::Blocked(BlockedReason::PlanSubnetLimit)
            );
        }
        assert_eq!(d.required_addresses, 11);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn decisions_are_stable_across_order_and_progress(
            progress in proptest::collection::vec(0u8..4, 7),
            order in Just((0..7).collect::<Vec<usize>>()).prop_shuffle(),
            vnet_order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let mut s = stability_scenario();
            let initial = s.decide();
            apply_progress(&mut s, &initial, &progress);
            let progressed = s.decide();

            // Same answer whatever order the targets and VNets are listed in.
            let targets = s.targets.clone();
            let vnets = s.vnets.clone();
            s.targets = order.iter().map(|&i| targets[i].clone()).collect();
            s.vnets = vnet_order.iter().map(|&i| vnets[i].clone()).collect();
            prop_assert_eq!(&s.decide(), &progressed);

            prop_assert!(progressed.subnets.len() <= MAX_SUBNETS_PER_PLAN);
            for (i, t) in targets.iter().enumerate() {
                let before = &initial.targets[&t.id];
                let now = &progressed.targets[&t.id];
                match (before, progress[i]) {
                    (TargetDecision::Migrate(c), 0 | 1) => {
                        let n = migrate(now.clone());
                        prop_assert_eq!((&n.subnet, n.prefix), (&c.subnet, c.prefix));
                    }
                    (TargetDecision::Migrate(_), 2) => prop_assert_eq!(now, &TargetDecision::NoIntegration),
                    (TargetDecision::Migrate(_), _) => prop_assert_eq!(now, &TargetDecision::AlreadyRegional),
                    _ => prop_assert_eq!(now, before),
                }
            }
            for c in &progressed.subnets {
                prop_assert!(initial.subnets.iter().any(|i| i.subnet == c.subnet && i.prefix == c.prefix));
            }
        }
    }
}
