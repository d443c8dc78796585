//! The multi-plan subnet join (policy `subnet.sharedAcrossPlans`): the App Service plans of
//! one subscription whose apps move into one VNet share one subnet there. ARM allows it for
//! plans of the same subscription in a subnet of at least /26, and checks no IP availability
//! when a plan joins (arm-vnet reference §5, §6, §13): the subnet is sized here for the sum of
//! the plans, each needing twice its expected maximum instances, plus Azure's 5 addresses.
//!
//! Pure, like `plan::decide`, and stable for the same reasons: it is computed from each
//! plan's decision on its own (`decide` without sharing: the VNets picked for it) and from the
//! VNets as ARM shows them. Who shares a VNet's subnet:
//! - a plan linked to it (a service association link) always;
//! - a plan with apps still to move into that VNet and no subnet of its own there (a plan
//!   that has one keeps it);
//! - not a plan whose apps span more than two VNets: its ranking of VNets relies on its own
//!   prepared subnets to stay the same while its apps are mid-cut-over, so it keeps them.
//!
//! A shared subnet that does not exist yet is sized for every member. One that exists takes
//! its linked plans, then the others by plan id while it has room; a plan it has no room for
//! gets its own subnet. A shared subnet that cannot be shared (smaller than /26, used by
//! something else, linked to another subscription's plan) is left alone: every plan gets its
//! own.
//!
//! One gap remains: while a plan's last app bound for a VNet is mid-cut-over (its gateway
//! connection removed, the subnet not joined yet) and the plan is not linked there yet, ARM
//! shows nothing tying the plan to the VNet. Its decision cached by `plan_cache` (minutes)
//! still names the VNet, so only a decision made again in those seconds could give its room
//! to another plan.

use std::collections::{BTreeMap, BTreeSet};

use super::ipam;
use super::plan::{existing_choice, first_prefix, free_block, PlanDecision, SubnetChoice};
use super::plan::{BlockedReason, TargetDecision};
use crate::azure::models::VirtualNetwork;
use crate::azure::ResourceId;
use crate::policy::Policy;

/// The longest prefix a subnet several plans join may have (arm-vnet reference §5: "MPSJ
/// requires ≥ /26"; App Service's refusal is quoted in §13).
pub(crate) const MAX_SHARED_PREFIX_LEN: u8 = 26;

/// The shared subnets of one subscription's plans, per destination VNet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedSubnets {
    by_vnet: BTreeMap<ResourceId, Shared>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Shared {
    /// The subnet, with the addresses it must hold for its plans.
    choice: SubnetChoice,
    /// The plans it takes.
    plans: BTreeSet<ResourceId>,
}

impl SharedSubnets {
    /// The subnet `plan` shares in `vnet`, if it takes the plan.
    pub(crate) fn choice(&self, vnet: &ResourceId, plan: &ResourceId) -> Option<&SubnetChoice> {
        self.by_vnet
            .get(vnet)
            .filter(|s| s.plans.contains(plan))
            .map(|s| &s.choice)
    }
}

/// A plan that may share a VNet's subnet.
struct Member<'a> {
    plan: &'a ResourceId,
    expected_max: u32,
    linked: bool,
}

/// The shared subnets of the plans of `subscription`, from each plan's decision on its own
/// (`alone`, the plans of one region) and the destination VNets as read (`vnets`).
pub(crate) fn share(
    subscription: &str,
    alone: &[&PlanDecision],
    vnets: &[VirtualNetwork],
    policy: &Policy,
) -> SharedSubnets {
    let name = policy.shared_subnet_name(subscription);
    let mut out = SharedSubnets::default();
    for vnet in vnets {
        let existing = vnet
            .properties
            .subnets
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&name));
        let links = existing.map(|s| s.linked_plans()).unwrap_or_default();
        let mut plans: Vec<Member> = alone
            .iter()
            .filter_map(|d| {
                let linked = links.contains(&d.plan);
                let spans_more = d
                    .targets
                    .values()
                    .any(|t| *t == TargetDecision::Blocked(BlockedReason::PlanSubnetLimit));
                // A plan keeps a subnet of its own it already has in the VNet.
                let keeps_own = d
                    .subnets
                    .iter()
                    .any(|c| c.vnet == vnet.id && !c.create && !c.name.eq_ignore_ascii_case(&name));
                let joins = d.destinations.contains(&vnet.id) && !spans_more && !keeps_own;
                (linked || joins).then_some(Member {
                    plan: &d.plan,
                    expected_max: d.expected_max_instances,
                    linked,
                })
            })
            .collect();
        if plans.is_empty() {
            continue;
        }
        plans.sort_by(|a, b| b.linked.cmp(&a.linked).then(a.plan.cmp(b.plan)));
        let shared = match existing {
            Some(s) => {
                let usable = !s.has_other_users()
                    && links
                        .iter()
                        .all(|p| p.subscription().eq_ignore_ascii_case(subscription))
                    && first_prefix(s).is_some_and(|p| p.prefix_len() <= MAX_SHARED_PREFIX_LEN);
                let Some(choice) = existing_choice(vnet, s, policy).filter(|_| usable) else {
                    continue;
                };
                let room = 1u64 << (32 - u32::from(choice.prefix.prefix_len()));
                let mut taken = BTreeSet::new();
                let mut instances = 0u32;
                for m in &plans {
                    let with = instances.saturating_add(m.expected_max);
                    if m.linked || u64::from(ipam::required_addresses(with)) <= room {
                        instances = with;
                        taken.insert(m.plan.clone());
                    }
                }
                Shared {
                    choice: SubnetChoice {
                        shared_addresses: Some(ipam::required_addresses(instances)),
                        ..choice
                    },
                    plans: taken,
                }
            }
            None => {
                let instances = plans
                    .iter()
                    .fold(0u32, |n, m| n.saturating_add(m.expected_max));
                let addresses = ipam::required_addresses(instances);
                let required = ipam::prefix_len_for(addresses).min(MAX_SHARED_PREFIX_LEN);
                let Ok(prefix) = free_block(vnet, required, policy.subnet.preferred_prefix) else {
                    continue;
                };
                let Ok(subnet) = vnet.id.child("subnets", &name) else {
                    continue;
                };
                Shared {
                    choice: SubnetChoice {
                        vnet: vnet.id.clone(),
                        subnet,
                        name: name.clone(),
                        prefix,
                        create: true,
                        needs_update: false,
                        shared_addresses: Some(addresses),
                    },
                    plans: plans.iter().map(|m| m.plan.clone()).collect(),
                }
            }
        };
        out.by_vnet.insert(vnet.id.clone(), shared);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::azure::models::Plan;
    use crate::migration::plan::tests::{
        gateway, gw_vnet, migrate, site_id, subnet, vnet, vnet_id,
    };
    use crate::migration::plan::{decide, Integration, PlanContext, TargetState};

    fn plan_id(name: &str) -> ResourceId {
        ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/serverfarms/{name}"
        ))
        .unwrap()
    }

    /// The shared subnet of the hub at `prefix`, delegated and linked to plan p1 already.
    fn shared_linked_to_p1(prefix: &str) -> serde_json::Value {
        subnet(
            "hub",
            SHARED,
            prefix,
            json!({"delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}],
                   "serviceAssociationLinks": [{"name": "AppServiceLink", "properties": {"link": plan_id("p1").to_string()}}]}),
        )
    }

    /// A PremiumV3 plan of `instances` that may grow to 30.
    fn plan(name: &str, instances: u32) -> Plan {
        serde_json::from_value(json!({
            "id": plan_id(name).to_string(), "name": name, "location": "westeurope",
            "sku": {"name": "P1v3", "tier": "PremiumV3", "capacity": instances},
            "properties": {"maximumNumberOfWorkers": 30}
        }))
        .unwrap()
    }

    struct Fleet {
        plans: Vec<(Plan, Vec<TargetState>)>,
        vnets: Vec<VirtualNetwork>,
        policy: Policy,
    }

    impl Fleet {
        /// Plans `(name, instances, destination VNets of one app each)`.
        fn new(plans: &[(&str, u32, &[&str])], vnets: Vec<VirtualNetwork>) -> Self {
            let mut policy = Policy::default();
            policy.subnet.shared_across_plans = true;
            Fleet {
                plans: plans
                    .iter()
                    .map(|(name, n, to)| {
                        let apps = to
                            .iter()
                            .enumerate()
                            .map(|(i, v)| gateway(&format!("{name}-app{i}"), &vnet_id(v)))
                            .collect();
                        (plan(name, *n), apps)
                    })
                    .collect(),
                vnets,
                policy,
            }
        }

        fn decide(&self, shared: Option<&SharedSubnets>) -> Vec<PlanDecision> {
            self.plans
                .iter()
                .map(|(plan, targets)| {
                    decide(&PlanContext {
                        plan,
                        autoscale: &[],
                        targets,
                        vnets: &self.vnets,
                        swift_supported: true,
                        policy: &self.policy,
                        shared,
                    })
                })
                .collect()
        }

        fn shared(&self) -> SharedSubnets {
            let alone = self.decide(None);
            let alone: Vec<&PlanDecision> = alone.iter().collect();
            share("s", &alone, &self.vnets, &self.policy)
        }

        /// Each plan's subnet for its first app.
        fn choices(&self) -> Vec<SubnetChoice> {
            let shared = self.shared();
            self.decide(Some(&shared))
                .into_iter()
                .zip(&self.plans)
                .map(|(d, (p, _))| {
                    migrate(d.targets[&site_id(&format!("{}-app0", p.name))].clone())
                })
                .collect()
        }
    }

    const SHARED: &str = "snet-shared-s-integration";

    #[test]
    fn plans_of_a_subscription_share_one_subnet_sized_for_all() {
        let mut fleet = Fleet::new(
            &[
                ("p1", 10, &["hub"]),
                ("p2", 20, &["hub"]),
                ("p3", 5, &["hub"]),
            ],
            vec![gw_vnet("hub", "westeurope", 1)],
        );
        let choices = fleet.choices();
        // 2 × (10 + 20 + 5) + 5 = 75 addresses: a /25.
        let c = &choices[0];
        assert_eq!((c.name.as_str(), c.create), (SHARED, true));
        assert_eq!(c.prefix.to_string(), "10.1.0.0/25");
        assert_eq!(c.shared_addresses, Some(75));
        assert_eq!(c.required_prefix_length(45), 25);
        assert!(choices.iter().all(|o| o == c), "{choices:?}");

        // Stable as the migration goes on: p1's app is in the subnet (linked), p2's and p3's
        // are still to move.
        fleet.vnets = vec![vnet(
            "hub",
            "westeurope",
            "10.1.0.0/16",
            vec![
                subnet("hub", "GatewaySubnet", "10.1.255.0/27", json!({})),
                shared_linked_to_p1("10.1.0.0/25"),
            ],
            &[],
        )];
        fleet.plans[0].1[0].integration = Integration::Regional {
            subnet: c.subnet.clone(),
        };
        let shared = fleet.shared();
        for later in ["p2", "p3"] {
            let got = shared.choice(&vnet_id("hub"), &plan_id(later)).unwrap();
            assert_eq!(
                (&got.subnet, got.prefix, got.create),
                (&c.subnet, c.prefix, false)
            );
            assert_eq!(got.shared_addresses, Some(75));
        }
    }

    #[test]
    fn small_plans_still_share_a_slash_26() {
        let mut fleet = Fleet::new(
            &[("p1", 1, &["hub"]), ("p2", 2, &["hub"])],
            vec![gw_vnet("hub", "westeurope", 1)],
        );
        // Even when the policy prefers small subnets: ARM joins plans in a /26 at least.
        fleet.policy.subnet.preferred_prefix = 28;
        let choices = fleet.choices();
        assert_eq!(choices[0].prefix.to_string(), "10.1.0.0/26");
        assert_eq!(choices[0].shared_addresses, Some(11));
        assert_eq!(choices[0].required_prefix_length(7), 26);
        assert_eq!(choices[0], choices[1]);
        // Without sharing each plan has its own /28.
        fleet.policy.subnet.shared_across_plans = false;
        let own = fleet.decide(None);
        assert_eq!(own[0].subnets[0].prefix.to_string(), "10.1.0.0/28");
        assert_eq!(own[0].subnets[0].name, "snet-p1-integration");
    }

    #[test]
    fn an_existing_shared_subnet_takes_later_plans_while_it_has_room() {
        let hub = vnet(
            "hub",
            "westeurope",
            "10.1.0.0/16",
            vec![shared_linked_to_p1("10.1.0.0/26")],
            &[],
        );
        // p1 (linked, 20 instances) uses 45 of 64 addresses; p2 (5) brings it to 55; p3 (10)
        // would need 75.
        let fleet = Fleet::new(
            &[
                ("p1", 20, &["hub"]),
                ("p2", 5, &["hub"]),
                ("p3", 10, &["hub"]),
            ],
            vec![hub],
        );
        let choices = fleet.choices();
        assert_eq!(choices[0].name, SHARED);
        assert_eq!(choices[1].name, SHARED);
        assert_eq!(choices[1].shared_addresses, Some(55));
        assert_eq!(choices[2].name, "snet-p3-integration");
        assert_eq!(choices[2].shared_addresses, None);
        assert_eq!(choices[2].prefix.to_string(), "10.1.0.64/26");
    }

    #[test]
    fn what_cannot_be_shared_is_not() {
        // A plan whose apps span three VNets keeps its own subnets (and its ranking).
        let fleet = Fleet::new(
            &[("p1", 2, &["a", "a", "b", "b", "c"]), ("p2", 2, &["a"])],
            vec![
                gw_vnet("a", "westeurope", 1),
                gw_vnet("b", "westeurope", 2),
                gw_vnet("c", "westeurope", 3),
            ],
        );
        let choices = fleet.choices();
        assert_eq!(choices[0].name, "snet-p1-integration");
        assert_eq!(choices[1].name, SHARED);
        // A shared-named subnet another subscription's plan is linked to, or smaller than
        // /26, is not joined: each plan gets its own subnet.
        let linked = |link: &str, prefix: &str| {
            vnet(
                "hub",
                "westeurope",
                "10.1.0.0/16",
                vec![subnet(
                    "hub",
                    SHARED,
                    prefix,
                    json!({"delegations": [{"name": "d", "properties": {"serviceName": "Microsoft.Web/serverFarms"}}],
                           "serviceAssociationLinks": [{"name": "AppServiceLink", "properties": {"link": link}}]}),
                )],
                &[],
            )
        };
        let foreign =
            "/subscriptions/other/resourceGroups/rg/providers/Microsoft.Web/serverfarms/x";
        let ours = plan_id("p9").to_string();
        for hub in [linked(foreign, "10.1.0.0/24"), linked(&ours, "10.1.0.0/27")] {
            let fleet = Fleet::new(&[("p1", 2, &["hub"]), ("p2", 2, &["hub"])], vec![hub]);
            let names: Vec<String> = fleet.choices().into_iter().map(|c| c.name).collect();
            assert_eq!(names, ["snet-p1-integration", "snet-p2-integration"]);
        }
    }
}
