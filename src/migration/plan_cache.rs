//! The plan cache: reads what planning needs from ARM (the plan, every site and slot on it, their
//! connections, autoscale settings, the VNets involved) and caches the plan-wide decision.
//!
//! Decisions are stable whatever order targets run in (see `plan::decide`), so one decision
//! per plan can be shared by all its targets: that keeps planning to a handful of reads per
//! plan instead of per target. A cached decision expires, and is dropped when a write shows
//! the VNet changed under it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::context::StepError;
use super::plan::{self, Integration, PlanContext, PlanDecision, TargetState};
use crate::azure::arm::ArmClient;
use crate::azure::models::{AutoscaleSetting, Plan, Site, VirtualNetwork, VnetConnection};
use crate::azure::{ResourceId, ResourceKind};
use crate::policy::Policy;

const TTL: Duration = Duration::from_secs(600);

/// A decision and when it was made.
type Cached = (Instant, Arc<PlanDecision>);

#[derive(Clone, Default)]
pub(crate) struct PlanCache {
    inner: Arc<Mutex<HashMap<ResourceId, Cached>>>,
    /// One computation per plan at a time; others wait for it.
    building: Arc<tokio::sync::Mutex<()>>,
}

impl PlanCache {
    fn lookup(&self, plan: &ResourceId) -> Option<Arc<PlanDecision>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(plan)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, d)| d.clone())
    }

    /// The cached decision for `plan`, or a fresh one read from ARM.
    pub(crate) async fn decision(
        &self,
        arm: &ArmClient,
        policy: &Policy,
        plan: &ResourceId,
    ) -> Result<Arc<PlanDecision>, StepError> {
        if let Some(d) = self.lookup(plan) {
            return Ok(d);
        }
        let _guard = self.building.lock().await;
        if let Some(d) = self.lookup(plan) {
            return Ok(d);
        }
        let d = Arc::new(compute(arm, policy, plan).await?);
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plan.clone(), (Instant::now(), d.clone()));
        Ok(d)
    }

    /// Drops every decision that involves `target` (its VNet changed under the plan).
    pub(crate) fn invalidate_target(&self, target: &ResourceId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, d)| !d.targets.contains_key(target));
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

async fn compute(
    arm: &ArmClient,
    policy: &Policy,
    plan_id: &ResourceId,
) -> Result<PlanDecision, StepError> {
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
        let conns = connections(arm, &m.id).await?;
        targets.push(TargetState {
            id: m.id.clone(),
            location: m.location.clone(),
            integration: integration_of(m, &conns),
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

    let autoscale: Vec<AutoscaleSetting> = match plan_id.resource_group() {
        Some(rg) => arm.list(&format!("/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Insights/autoscalesettings", plan_id.subscription())).await?,
        None => Vec::new(),
    };

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

    Ok(plan::decide(&PlanContext {
        plan: &plan,
        autoscale: &autoscale,
        targets: &targets,
        vnets: &vnets,
        swift_supported,
        policy,
    }))
}
