//! The safety invariants of a migration, checked on the simulator's final state: used by
//! `rehearse` at the end of every rehearsal and by the tests.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use crate::azure::models::{normalize_location, AutoscaleSetting, Plan, Site, VirtualNetwork};
use crate::azure::{ResourceId, ResourceKind};
use crate::fleet::Fleet;
use crate::migration::{ipam, plan::expected_max_instances};
use crate::report::Report;

/// Subscriptions that own sites in the fleet.
pub fn subscriptions(fleet: &Fleet) -> Vec<String> {
    let subs: BTreeSet<String> = fleet
        .with_ids()
        .filter_map(|(id, _)| site_subscription(&id))
        .collect();
    subs.into_iter().collect()
}

/// The subscription of a site's id (lowercased), what `subscriptions` collects.
fn site_subscription(id: &ResourceId) -> Option<String> {
    (id.kind() == ResourceKind::Site).then(|| id.subscription().to_ascii_lowercase())
}

/// What the invariants read of one app: a handful of fields rather than the whole resource,
/// so a 10,000-target rehearsal does not keep a second copy of its fleet.
struct SiteFacts {
    location: String,
    plan: Option<ResourceId>,
    regional_subnet: Option<ResourceId>,
}

/// What the invariants read of one app's gateway-based connections.
#[derive(Default)]
struct GatewayFacts {
    count: usize,
    /// Some connection carries traffic (`resyncRequired: false`).
    connected: bool,
}

/// What the invariants read of a fleet's targets: all they read of the fleet before the run.
pub struct Targets {
    sites: BTreeMap<ResourceId, SiteFacts>,
    /// target → its gateway connections
    gateways: BTreeMap<ResourceId, GatewayFacts>,
    /// Subscriptions that own sites.
    subscriptions: BTreeSet<String>,
    /// Every id read, so equal ids share one allocation (a plan's, a site's and its
    /// connections' parent; 10,000 targets: ~8 MB otherwise).
    ids: HashSet<ResourceId>,
}

impl Targets {
    /// Reads `resources`; entries without a valid id are passed over (as `Fleet::with_ids`).
    pub fn of<V: Borrow<Value>>(resources: impl Iterator<Item = V>) -> Targets {
        let mut t = Targets::new();
        for r in resources {
            let r = r.borrow();
            if let Some(id) = id_of(r) {
                t.read(&id, r);
            }
        }
        t
    }

    fn new() -> Targets {
        Targets {
            sites: BTreeMap::new(),
            gateways: BTreeMap::new(),
            subscriptions: BTreeSet::new(),
            ids: HashSet::new(),
        }
    }

    /// `id`, or the equal id read before.
    fn shared(&mut self, id: ResourceId) -> ResourceId {
        match self.ids.get(&id) {
            Some(known) => known.clone(),
            None => {
                self.ids.insert(id.clone());
                id
            }
        }
    }

    /// Takes what it needs of resource `r` (at `id`).
    fn read(&mut self, id: &ResourceId, r: &Value) {
        self.subscriptions.extend(site_subscription(id));
        match id.kind() {
            ResourceKind::Site | ResourceKind::Slot => {
                if let Ok(s) = Site::deserialize(r) {
                    let facts = SiteFacts {
                        location: s.location,
                        plan: s.properties.server_farm_id.map(|p| self.shared(p)),
                        regional_subnet: s
                            .properties
                            .virtual_network_subnet_id
                            .map(|n| self.shared(n)),
                    };
                    let id = self.shared(id.clone());
                    self.sites.insert(id, facts);
                }
            }
            ResourceKind::SiteVnetConnection => {
                let flag = |name: &str| {
                    r.pointer(&format!("/properties/{name}"))
                        .and_then(Value::as_bool)
                };
                if let (false, Some(parent)) = (flag("isSwift") == Some(true), id.parent()) {
                    let parent = self.shared(parent);
                    let g = self.gateways.entry(parent).or_default();
                    g.count += 1;
                    g.connected |= flag("resyncRequired") == Some(false);
                }
            }
            _ => {}
        }
    }

    /// Subscriptions that own sites (as `subscriptions` of the fleet read).
    pub fn subscriptions(&self) -> Vec<String> {
        self.subscriptions.iter().cloned().collect()
    }
}

fn id_of(r: &Value) -> Option<ResourceId> {
    ResourceId::parse(r.get("id")?.as_str()?).ok()
}

/// The compact view of a fleet the invariants are checked on after the run; built while the
/// resources are at hand (from the simulator's store) so the fleet is not copied.
pub struct View {
    targets: Targets,
    vnets: BTreeMap<ResourceId, VirtualNetwork>,
    /// App Service plans and autoscale settings: what a shared subnet is sized by.
    plans: BTreeMap<ResourceId, Plan>,
    autoscale: Vec<AutoscaleSetting>,
}

impl View {
    /// Reads `resources`; entries without a valid id are passed over (as `Fleet::with_ids`).
    pub fn of<V: Borrow<Value>>(resources: impl Iterator<Item = V>) -> View {
        let mut v = View {
            targets: Targets::new(),
            vnets: BTreeMap::new(),
            plans: BTreeMap::new(),
            autoscale: Vec::new(),
        };
        for r in resources {
            let r = r.borrow();
            let Some(id) = id_of(r) else {
                continue;
            };
            match id.kind() {
                ResourceKind::VirtualNetwork => {
                    // Stripped as for planning: the checks read subnets' names, prefixes and
                    // delegations, while a hub's every subnet came with all its fields.
                    if let Ok(n) = VirtualNetwork::deserialize(r) {
                        v.vnets.insert(id, n.for_planning());
                    }
                }
                ResourceKind::ServerFarm => {
                    if let Ok(p) = Plan::deserialize(r) {
                        v.plans.insert(id, p);
                    }
                }
                ResourceKind::AutoscaleSetting => {
                    if let Ok(a) = AutoscaleSetting::deserialize(r) {
                        v.autoscale.push(a);
                    }
                }
                _ => v.targets.read(&id, r),
            }
        }
        v
    }
}

/// Every broken invariant between two fleets, as one line each (empty = all hold).
pub fn check(initial: &Fleet, final_state: &Fleet, report: &Report) -> Vec<String> {
    check_views(
        &Targets::of(initial.resources.iter()),
        &View::of(final_state.resources.iter()),
        report,
    )
}

/// Every broken invariant between the fleet's targets before and its view after, as one line
/// each (empty = all hold).
pub fn check_views(before: &Targets, after: &View, report: &Report) -> Vec<String> {
    let mut bad = Vec::new();
    let outcomes: BTreeMap<ResourceId, (&str, Option<&str>)> = report
        .targets
        .iter()
        .filter_map(|t| {
            Some((
                ResourceId::parse(&t.id).ok()?,
                (t.outcome.as_str(), t.reason.as_deref()),
            ))
        })
        .collect();

    for id in before.sites.keys() {
        if !outcomes.contains_key(id) {
            bad.push(format!("{id}: no outcome recorded"));
        }
    }
    for (id, (outcome, _)) in &outcomes {
        if *outcome == "unfinished" {
            bad.push(format!("{id}: no terminal outcome"));
        }
        let (Some(site_before), Some(site_after)) =
            (before.sites.get(id), after.targets.sites.get(id))
        else {
            continue;
        };
        let gw_before = before.gateways.get(id).map_or(0, |g| g.count);
        let gw_after = after.targets.gateways.get(id).map_or(0, |g| g.count);
        let regional_after = site_after.regional_subnet.clone();
        match *outcome {
            "migrated" => {
                if gw_after > 0 {
                    bad.push(format!("{id}: migrated but still has a gateway connection"));
                }
                match &regional_after {
                    None => bad.push(format!("{id}: migrated but has no regional integration")),
                    Some(subnet) => {
                        let vnet = subnet.vnet().and_then(|v| after.vnets.get(&v));
                        let sn = vnet.and_then(|v| {
                            v.properties
                                .subnets
                                .iter()
                                .find(|s| s.name.eq_ignore_ascii_case(subnet.name()))
                        });
                        match (vnet, sn) {
                            (Some(v), Some(s)) => {
                                if !s.is_delegated_to_web() {
                                    bad.push(format!("{id}: subnet {subnet} is not delegated to Microsoft.Web/serverFarms"));
                                }
                                if normalize_location(&v.location)
                                    != normalize_location(&site_after.location)
                                {
                                    bad.push(format!(
                                        "{id}: subnet {subnet} is in {} but the app is in {}",
                                        v.location, site_after.location
                                    ));
                                }
                            }
                            _ => bad.push(format!("{id}: subnet {subnet} does not exist")),
                        }
                    }
                }
            }
            "blocked" | "skipped" => {
                if site_before.regional_subnet != regional_after || gw_before != gw_after {
                    bad.push(format!("{id}: {outcome} but its integration was changed"));
                }
            }
            "parked" => {}
            // Re-adding a gateway-based connection is a handshake: declared alone it does not
            // carry traffic (`resyncRequired: true`, arm-vnet reference §2.2).
            "rolled-back" if gw_before > 0 => {
                if !after.targets.gateways.get(id).is_some_and(|g| g.connected) {
                    bad.push(format!(
                        "{id}: rolled back but its gateway connection is not connected (resyncRequired)"
                    ));
                }
                if regional_after.is_some() {
                    bad.push(format!(
                        "{id}: rolled back but still has regional integration"
                    ));
                }
            }
            _ => {
                if gw_before > 0 && gw_after == 0 && regional_after.is_none() {
                    bad.push(format!("{id}: {outcome} and left without any integration"));
                }
            }
        }
    }

    for (vid, v) in &after.vnets {
        let mut nets: Vec<(String, Ipv4Net)> = Vec::new();
        for s in &v.properties.subnets {
            for p in s.prefixes() {
                if let Ok(n) = p.parse::<Ipv4Net>() {
                    nets.push((s.name.clone(), n));
                }
            }
        }
        for i in 0..nets.len() {
            for j in i + 1..nets.len() {
                let (a, b) = (&nets[i], &nets[j]);
                if a.1.contains(&b.1.network()) || b.1.contains(&a.1.network()) {
                    bad.push(format!(
                        "{vid}: subnets {} ({}) and {} ({}) overlap",
                        a.0, a.1, b.0, b.1
                    ));
                }
            }
        }
    }

    let mut per_plan: BTreeMap<ResourceId, BTreeSet<ResourceId>> = BTreeMap::new();
    let mut per_subnet: BTreeMap<ResourceId, BTreeSet<ResourceId>> = BTreeMap::new();
    for s in after.targets.sites.values() {
        if let (Some(plan), Some(subnet)) = (&s.plan, &s.regional_subnet) {
            per_plan
                .entry(plan.clone())
                .or_default()
                .insert(subnet.clone());
            per_subnet
                .entry(subnet.clone())
                .or_default()
                .insert(plan.clone());
        }
    }
    for (subnet, plans) in per_subnet.iter().filter(|(_, p)| p.len() > 1) {
        bad.extend(shared_subnet_problem(after, subnet, plans));
    }
    for (plan, subnets) in per_plan {
        if subnets.len() > 2 {
            bad.push(format!(
                "{plan}: {} regional subnets (at most 2)",
                subnets.len()
            ));
        }
    }
    bad
}

/// What is wrong with a subnet several plans use (the multi-plan subnet join): ARM joins plans
/// of one subscription in a subnet of at least /26 (arm-vnet reference §6, §13) but does not
/// check its addresses, so it must hold twice the expected maximum instances of every plan,
/// plus the 5 Azure keeps (§5).
fn shared_subnet_problem(
    view: &View,
    subnet: &ResourceId,
    plans: &BTreeSet<ResourceId>,
) -> Option<String> {
    let names = || {
        plans
            .iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let subs: BTreeSet<String> = plans
        .iter()
        .map(|p| p.subscription().to_ascii_lowercase())
        .collect();
    if subs.len() > 1 {
        return Some(format!(
            "{subnet}: shared by plans of several subscriptions ({})",
            names()
        ));
    }
    let prefix = subnet
        .vnet()
        .and_then(|v| view.vnets.get(&v))
        .and_then(|v| {
            v.properties
                .subnets
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(subnet.name()))
        })
        .and_then(|s| s.prefixes().first()?.parse::<Ipv4Net>().ok())?;
    if prefix.prefix_len() > 26 {
        return Some(format!(
            "{subnet}: /{} shared by plans {} (at least /26)",
            prefix.prefix_len(),
            names()
        ));
    }
    let instances: u32 = plans
        .iter()
        .filter_map(|p| view.plans.get(p))
        .map(|p| expected_max_instances(p, &view.autoscale))
        .sum();
    let needed = ipam::required_addresses(instances);
    let holds = 1u64 << (32 - u32::from(prefix.prefix_len()));
    (holds < u64::from(needed)).then(|| {
        format!(
            "{subnet}: {prefix} holds {holds} addresses, plans {} need {needed}",
            names()
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RG: &str = "/subscriptions/s/resourceGroups/rg/providers";

    /// A VNet whose subnet `shared` has `prefix`, and plans of `instances` each.
    fn view(prefix: &str, plans: &[(&str, u32)]) -> View {
        let mut resources = vec![json!({
            "id": format!("{RG}/Microsoft.Network/virtualNetworks/v"), "name": "v",
            "type": "Microsoft.Network/virtualNetworks", "location": "westeurope",
            "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                "subnets": [{"name": "shared", "properties": {"addressPrefix": prefix}}]}
        })];
        for (p, n) in plans {
            resources.push(
                json!({"id": format!("{RG}/Microsoft.Web/serverfarms/{p}"), "name": p,
                "type": "Microsoft.Web/serverfarms", "location": "westeurope",
                "sku": {"name": "P1v3", "tier": "PremiumV3", "capacity": n},
                "properties": {"maximumNumberOfWorkers": 30}}),
            );
        }
        View::of(resources.into_iter())
    }

    fn problem(prefix: &str, plans: &[(&str, u32)]) -> Option<String> {
        let subnet = ResourceId::parse(&format!(
            "{RG}/Microsoft.Network/virtualNetworks/v/subnets/shared"
        ))
        .unwrap();
        let ids = plans
            .iter()
            .map(|(p, _)| {
                ResourceId::parse(&format!("{RG}/Microsoft.Web/serverfarms/{p}")).unwrap()
            })
            .collect();
        shared_subnet_problem(&view(prefix, plans), &subnet, &ids)
    }

    #[test]
    fn a_shared_subnet_must_hold_every_plan_in_a_slash_26_at_least() {
        // 2 × (20 + 5) + 5 = 55 addresses fit a /26; 2 × (20 + 10) + 5 = 65 do not.
        assert_eq!(problem("10.0.0.0/26", &[("p1", 20), ("p2", 5)]), None);
        let over = problem("10.0.0.0/26", &[("p1", 20), ("p2", 10)]).unwrap();
        assert!(
            over.ends_with("10.0.0.0/26 holds 64 addresses, plans p1, p2 need 65"),
            "{over}"
        );
        assert_eq!(problem("10.0.0.0/25", &[("p1", 20), ("p2", 10)]), None);
        let small = problem("10.0.0.0/27", &[("p1", 1), ("p2", 1)]).unwrap();
        assert!(
            small.ends_with("/27 shared by plans p1, p2 (at least /26)"),
            "{small}"
        );
    }
}
