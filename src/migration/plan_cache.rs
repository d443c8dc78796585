//! The plan cache: reads what planning needs from ARM (the plan, every site and slot on it, their
//! connections, autoscale settings, the VNets involved) and caches the plan-wide decision.
//!
//! Decisions are stable whatever order targets run in (see `plan::decide`), so one decision
//! per plan can be shared by all its targets: that keeps planning to a handful of reads per
//! plan instead of per target. A cached decision expires, and is dropped when a write shows
//! the VNet changed under it.
//!
//! With `subnet.sharedAcrossPlans` a plan's decision also depends on the other plans of its
//! subscription and region (`sharing::share`): their decisions on their own are read (and
//! cached) the same way, the plans of the region listed once per TTL, and the shared subnets
//! worked out from them and this plan's fresh view of its VNets at each call: pure, so every
//! target of every plan gets the same answer from the same ARM state.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::context::StepError;
use super::fleet_plan::VnetDigest;
use super::plan::{
    self, Integration, PlanContext, PlanDecision, SharedSubnets, TargetDecision, TargetState,
};
use super::sharing;
use crate::azure::arm::ArmClient;
use crate::azure::models::{
    normalize_location, AutoscaleSetting, Plan, Site, VirtualNetwork, VnetConnection,
};
use crate::azure::{ResourceId, ResourceKind};
use crate::policy::Policy;

const TTL: Duration = Duration::from_secs(600);

/// Plans of a region decided at once when a shared subnet needs them all.
const MEMBER_READS: usize = 8;

/// A plan's decision with what it was decided from.
#[derive(Debug)]
pub(crate) struct Decided {
    pub(crate) decision: PlanDecision,
    /// Every site and slot of the plan, with its integration as read.
    pub(crate) targets: Arc<Vec<TargetState>>,
    /// The VNets the decision migrates targets into, as far as a forecast's fingerprint
    /// depends on them (it reads no other). A decision stays cached for its plan's targets:
    /// a hub VNet's hundreds of subnets, each with its delegation and links, took a megabyte
    /// or more per cached plan (10,000 targets: ~500 MB of a rehearsal), and their digests,
    /// for every VNet read, still ~18 MB. Equal digests are shared (`Digests`).
    pub(crate) vnets: Vec<Arc<VnetDigest>>,
    // The rest of what the decision was made from, so it can be made again with the subnets
    // the plan shares (shared, not copied, by that second decision). The VNets themselves
    // only when plans share subnets, with only what planning reads.
    shareable_vnets: Option<Arc<Vec<VirtualNetwork>>>,
    plan: Arc<Plan>,
    autoscale: Arc<Vec<AutoscaleSetting>>,
    swift_supported: bool,
}

impl Decided {
    fn decide(
        &self,
        policy: &Policy,
        vnets: &[VirtualNetwork],
        shared: &SharedSubnets,
    ) -> PlanDecision {
        plan::decide(&PlanContext {
            plan: &self.plan,
            autoscale: &self.autoscale,
            targets: &self.targets,
            vnets,
            swift_supported: self.swift_supported,
            policy,
            shared: Some(shared),
        })
    }
}

/// A decision and when it was made.
type Cached = (Instant, Arc<Decided>);

/// The lock under which one plan's decision is computed.
type Building = Arc<tokio::sync::Mutex<()>>;

/// A subscription and a region (normalised).
type Region = (String, String);

/// The plans of a region, and when they were listed.
type Listed = (Instant, Arc<Vec<ResourceId>>);

/// The last digest of each VNet, so that the decisions made while a VNet's subnets stay the
/// same share one (a hub's, with its hundreds of subnets, is the destination of hundreds of
/// plans: 10,000 targets, ~11 MB of copies).
type Digests = Mutex<HashMap<ResourceId, Arc<VnetDigest>>>;

#[derive(Clone, Default)]
pub(crate) struct PlanCache {
    inner: Arc<Mutex<HashMap<ResourceId, Cached>>>,
    /// `subnet.sharedAcrossPlans`: the plans of each subscription and region.
    regions: Arc<Mutex<HashMap<Region, Listed>>>,
    /// One computation per plan at a time (the plan's other targets wait for it and share
    /// it), while different plans are decided concurrently. An entry lives while its plan is
    /// being decided.
    building: Arc<Mutex<HashMap<ResourceId, Building>>>,
    digests: Arc<Digests>,
}

impl PlanCache {
    fn lookup(&self, plan: &ResourceId) -> Option<Arc<Decided>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(plan)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, d)| d.clone())
    }

    /// The decision for `plan`: on its own, or with the subnets it shares with the other
    /// plans of its subscription and region when the policy says so.
    pub(crate) async fn decision(
        &self,
        arm: &ArmClient,
        policy: &Policy,
        plan: &ResourceId,
    ) -> Result<Arc<Decided>, StepError> {
        let mut alone = self.alone(arm, policy, plan).await?;
        if !policy.subnet.shared_across_plans {
            return Ok(alone);
        }
        if alone.shareable_vnets.is_none() {
            // Decided under a policy that shared nothing: decide again, keeping the VNets.
            self.invalidate(plan);
            alone = self.alone(arm, policy, plan).await?;
        }
        let vnets = alone.shareable_vnets.clone().ok_or_else(|| {
            StepError::Unexpected(format!("plan {plan} was decided without its VNets"))
        })?;
        let region = self.region(arm, &alone.plan).await?;
        // The region's plans are read a few at a time: the first plan step of a region reads
        // them all, and each plan's own lock keeps them from being read twice.
        let ids: Vec<ResourceId> = region.iter().filter(|p| *p != plan).cloned().collect();
        let mut others: Vec<Arc<Decided>> = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MEMBER_READS) {
            let reads = batch.iter().map(|p| self.member(arm, policy, p));
            others.extend(
                futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten(),
            );
        }
        let decisions: Vec<&PlanDecision> = std::iter::once(&alone.decision)
            .chain(others.iter().map(|d| &d.decision))
            .collect();
        let shared = sharing::share(plan.subscription(), &decisions, &vnets, policy);
        let decision = alone.decide(policy, &vnets, &shared);
        Ok(Arc::new(Decided {
            vnets: destination_digests(&self.digests, &decision, &vnets),
            decision,
            targets: alone.targets.clone(),
            shareable_vnets: Some(vnets),
            plan: alone.plan.clone(),
            autoscale: alone.autoscale.clone(),
            swift_supported: alone.swift_supported,
        }))
    }

    /// Another plan of the region, on its own; None when it was deleted since the region was
    /// listed (it shares nothing).
    async fn member(
        &self,
        arm: &ArmClient,
        policy: &Policy,
        plan: &ResourceId,
    ) -> Result<Option<Arc<Decided>>, StepError> {
        match self.alone(arm, policy, plan).await {
            Err(StepError::Arm(e)) if e.status() == Some(404) => Ok(None),
            r => r.map(Some),
        }
    }

    /// The plans of `plan`'s subscription in its region (cached for the TTL).
    async fn region(
        &self,
        arm: &ArmClient,
        plan: &Plan,
    ) -> Result<Arc<Vec<ResourceId>>, StepError> {
        let key = (
            plan.id.subscription().to_ascii_lowercase(),
            normalize_location(&plan.location),
        );
        let cached = self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, plans)| plans.clone());
        if let Some(plans) = cached {
            return Ok(plans);
        }
        let all: Vec<Plan> = arm
            .list(&format!(
                "/subscriptions/{}/providers/Microsoft.Web/serverfarms",
                plan.id.subscription()
            ))
            .await?;
        let mut plans: Vec<ResourceId> = all
            .into_iter()
            .filter(|p| normalize_location(&p.location) == key.1)
            .map(|p| p.id)
            .collect();
        plans.sort();
        let plans = Arc::new(plans);
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), plans.clone()));
        Ok(plans)
    }

    /// The cached decision for `plan` on its own, or a fresh one read from ARM.
    async fn alone(
        &self,
        arm: &ArmClient,
        policy: &Policy,
        plan: &ResourceId,
    ) -> Result<Arc<Decided>, StepError> {
        if let Some(d) = self.lookup(plan) {
            return Ok(d);
        }
        let building = self
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plan.clone())
            .or_default()
            .clone();
        let _guard = building.lock().await;
        if let Some(d) = self.lookup(plan) {
            return Ok(d);
        }
        let decided = compute(arm, policy, plan, &self.digests)
            .await
            .map(Arc::new);
        if let Ok(d) = &decided {
            self.inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(plan.clone(), (Instant::now(), d.clone()));
        }
        // Waiters hold their own handle on the lock and then find the decision cached (after
        // a failure one of them computes again).
        self.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(plan);
        decided
    }

    /// Drops every decision that involves `target` (its VNet changed under the plan).
    pub(crate) fn invalidate_target(&self, target: &ResourceId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, d)| !d.decision.targets.contains_key(target));
    }

    pub(crate) fn invalidate(&self, plan: &ResourceId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(plan);
    }
}

/// The connections of a site or slot (a bare JSON array in ARM).
pub(crate) async fn connections(
    arm: &ArmClient,
    target: &ResourceId,
) -> Result<Vec<VnetConnection>, StepError> {
    Ok(arm
        .list(&format!("{target}/virtualNetworkConnections"))
        .await?)
}

pub(crate) fn integration_of(site: &Site, conns: &[VnetConnection]) -> Integration {
    Integration::from_site(site.properties.virtual_network_subnet_id.as_ref(), conns)
}

/// The integration of a site or slot just read, listing its connections only when they can
/// matter: an app with `virtualNetworkSubnetId` set is regional whatever the list holds
/// (`Integration::from_site`), so that read is skipped.
pub(crate) async fn integration(arm: &ArmClient, site: &Site) -> Result<Integration, StepError> {
    if site.properties.virtual_network_subnet_id.is_some() {
        return Ok(integration_of(site, &[]));
    }
    Ok(integration_of(site, &connections(arm, &site.id).await?))
}

async fn compute(
    arm: &ArmClient,
    policy: &Policy,
    plan_id: &ResourceId,
    digests: &Digests,
) -> Result<Decided, StepError> {
    let plan: Plan = arm.get(plan_id.as_str()).await?;
    let sites: Vec<Site> = arm.list(&format!("{plan_id}/sites")).await?;
    let mut members: Vec<Site> = Vec::new();
    for site in sites {
        let slots: Vec<Site> = arm.list(&format!("{}/slots", site.id)).await?;
        members.push(site);
        members.extend(slots);
    }
    let mut targets = Vec::with_capacity(members.len());
    for m in &members {
        targets.push(TargetState {
            id: m.id.clone(),
            location: m.location.clone(),
            integration: integration(arm, m).await?,
        });
    }

    // VNets: gateway VNets, the VNets peered with them, and VNets already holding our subnets.
    let mut wanted: BTreeSet<ResourceId> = BTreeSet::new();
    for t in &targets {
        match &t.integration {
            Integration::Gateway { vnet, .. } if vnet.kind() == ResourceKind::VirtualNetwork => {
                wanted.insert(vnet.clone());
            }
            Integration::Regional { subnet } => {
                if let Some(v) = subnet.vnet() {
                    wanted.insert(v);
                }
            }
            _ => {}
        }
    }
    let mut vnets: Vec<VirtualNetwork> = Vec::new();
    let mut seen: BTreeSet<ResourceId> = BTreeSet::new();
    let mut queue: Vec<(ResourceId, bool)> = wanted.into_iter().map(|v| (v, true)).collect();
    while let Some((id, follow_peerings)) = queue.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(v) = arm.get_opt::<VirtualNetwork>(id.as_str()).await? else {
            continue;
        };
        if follow_peerings {
            for p in &v.properties.virtual_network_peerings {
                if let Some(remote) = &p.properties.remote_virtual_network {
                    queue.push((remote.id.clone(), false));
                }
            }
        }
        vnets.push(v);
    }
    vnets.sort_by(|a, b| a.id.cmp(&b.id));

    let mut autoscale: Vec<AutoscaleSetting> = match plan_id.resource_group() {
        Some(rg) => arm.list(&format!("/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Insights/autoscalesettings", plan_id.subscription())).await?,
        None => Vec::new(),
    };
    // The decision is cached with what it was made from, and planning reads only the settings
    // that scale this plan: the group's others (every plan of the group kept them all: ~90 MB
    // of a 10,000-target rehearsal) are dropped here, with the room they took.
    autoscale.retain(|s| s.targets(&plan.id));
    autoscale.shrink_to_fit();

    // Regional integration support is per scale unit, so any app of the plan can tell.
    let swift_supported = match members.first() {
        Some(m) => arm
            .get_opt::<serde_json::Value>(&format!("{}/networkConfig/virtualNetwork", m.id))
            .await?
            .and_then(|v| {
                v.pointer("/properties/swiftSupported")
                    .and_then(serde_json::Value::as_bool)
            })
            .unwrap_or(true),
        None => true,
    };

    let decision = plan::decide(&PlanContext {
        plan: &plan,
        autoscale: &autoscale,
        targets: &targets,
        vnets: &vnets,
        swift_supported,
        policy,
        shared: None,
    });
    Ok(Decided {
        vnets: destination_digests(digests, &decision, &vnets),
        decision,
        targets: Arc::new(targets),
        shareable_vnets: policy.subnet.shared_across_plans.then(|| {
            Arc::new(
                vnets
                    .into_iter()
                    .map(VirtualNetwork::for_planning)
                    .collect(),
            )
        }),
        plan: Arc::new(plan),
        autoscale: Arc::new(autoscale),
        swift_supported,
    })
}

/// Digests of the VNets of `vnets` that `decision` migrates a target into, each the last one
/// of `digests` when equal.
fn destination_digests(
    digests: &Digests,
    decision: &PlanDecision,
    vnets: &[VirtualNetwork],
) -> Vec<Arc<VnetDigest>> {
    let mut last = digests.lock().unwrap_or_else(|p| p.into_inner());
    vnets
        .iter()
        .filter(|v| {
            decision
                .targets
                .values()
                .any(|t| matches!(t, TargetDecision::Migrate(c) if c.vnet == v.id))
        })
        .map(|v| {
            let digest = VnetDigest::of(v);
            match last.get(&v.id) {
                Some(known) if **known == digest => known.clone(),
                _ => {
                    let digest = Arc::new(digest);
                    last.insert(v.id.clone(), digest.clone());
                    digest
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::ArmConfig;
    use crate::azure::credential::StaticToken;
    use crate::sim::builder::FleetBuilder;
    use crate::sim::{SimOptions, Simulator};

    /// Two plans with a gateway-integrated app each, served by an instant simulator.
    async fn two_plans() -> (Simulator, crate::sim::SimServer, ArmClient, [ResourceId; 2]) {
        let mut b = FleetBuilder::new();
        let v = b.vnet("net", "hub", "westeurope", &["10.0.0.0/16"]);
        b.gateway(&v);
        let plans = ["p1", "p2"].map(|name| {
            let plan = b.plan("apps", name, "westeurope", "P1v3", 1);
            let site = b.site("apps", &format!("{name}-app"), &plan);
            b.gateway_connection(&site, &v);
            plan
        });
        let sim = Simulator::new(b.build(), SimOptions::instant());
        let server = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let scope = vec![ResourceId::subscription_id(plans[0].subscription()).unwrap()];
        let arm = ArmClient::new(
            ArmConfig::new(server.url(), scope),
            Arc::new(StaticToken::new("t")),
        )
        .unwrap();
        (sim, server, arm, plans)
    }

    #[tokio::test]
    async fn plans_of_a_region_are_decided_with_the_subnet_they_share() {
        let (_sim, server, arm, [p1, p2]) = two_plans().await;
        let mut policy = Policy::default();
        let cache = PlanCache::default();
        let choice = |d: &Decided| d.decision.subnets.clone();
        let alone = choice(&cache.decision(&arm, &policy, &p1).await.unwrap());
        assert_eq!(alone[0].name, "snet-p1-integration");
        policy.subnet.shared_across_plans = true;
        let one = choice(&cache.decision(&arm, &policy, &p1).await.unwrap());
        let two = choice(&cache.decision(&arm, &policy, &p2).await.unwrap());
        assert_eq!(one, two);
        assert_eq!(one[0].name, "snet-shared-00000000-integration");
        // Two one-instance plans: 2 × 2 + 5 addresses, in ARM's /26 for a shared subnet.
        assert_eq!(
            (one[0].shared_addresses, one[0].prefix.prefix_len()),
            (Some(9), 26)
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn one_plan_is_decided_once_while_other_plans_go_ahead() {
        let (sim, server, arm, [p1, p2]) = two_plans().await;
        let policy = Policy::default();
        let cache = PlanCache::default();
        // Plan 1 is being decided (its lock is held): plan 2 is decided meanwhile.
        let held = cache
            .building
            .lock()
            .unwrap()
            .entry(p1.clone())
            .or_default()
            .clone();
        let guard = held.lock().await;
        let d2 = tokio::time::timeout(Duration::from_secs(10), cache.decision(&arm, &policy, &p2))
            .await
            .expect("plan 2 waited for plan 1")
            .unwrap();
        assert_eq!(d2.decision.targets.len(), 1);
        let after_p2 = sim.stats().reads;
        // Plan 1's callers wait for the one computation and share it.
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (cache, arm, policy, p1) =
                    (cache.clone(), arm.clone(), policy.clone(), p1.clone());
                tokio::spawn(async move { cache.decision(&arm, &policy, &p1).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(guard);
        let mut decisions = Vec::new();
        for c in callers {
            decisions.push(c.await.unwrap().unwrap());
        }
        assert!(decisions.iter().all(|d| Arc::ptr_eq(d, &decisions[0])));
        // As many reads as plan 2's decision took: plan 1 was read once, not four times.
        assert_eq!(sim.stats().reads - after_p2, after_p2);
        assert!(cache.building.lock().unwrap().is_empty());
        server.shutdown().await;
    }
}
