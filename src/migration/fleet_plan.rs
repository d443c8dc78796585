//! The plan file (DESIGN §8, Terraform's plan → review → apply): for every target its
//! forecast outcome, the exact ARM writes it will get and a fingerprint of the ARM state the
//! forecast was computed from; new subnets' prefixes reserved across every plan of the fleet,
//! so no two overlap; totals per subscription and per kind of write.
//!
//! `run --plan FILE` applies exactly that: a target whose fingerprint no longer matches what
//! ARM shows is held back as `blocked:drifted` and gets no write, and a new subnet is
//! created with its reserved prefix or not at all. Pure: built from the forecasts a dry run
//! collected, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::ipam;
use super::plan::{Integration, TargetDecision, TargetState};
use crate::azure::models::VirtualNetwork;
use crate::azure::ResourceId;
use crate::pipeline::contract::hash;
use crate::pipeline::reason::BlockedReason;
use crate::policy::Policy;

/// `kind` of a plan file.
pub const PLAN_FILE_KIND: &str = "vnet-migrate-plan";
/// The plan file format this version writes and reads.
pub const PLAN_FILE_VERSION: u32 = 1;

/// What the `plan` step of a dry run saw and decided for one target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Forecast {
    pub(crate) target: ResourceId,
    pub(crate) app_service_plan: ResourceId,
    pub(crate) decision: TargetDecision,
    /// The smallest prefix length that fits the plan's expected instances.
    pub(crate) required_prefix_length: u8,
    /// The gateway connection the cut-over removes (name), when there is one.
    pub(crate) gateway_connection: Option<String>,
    /// The destination VNet as read: its address space and its subnets' prefixes.
    pub(crate) vnet: Option<VnetDigest>,
    /// The site's outbound routing is not yet what the policy wants (`configure` writes).
    pub(crate) routing_differs: bool,
    pub(crate) fingerprint: String,
}

/// Forecasts collected by a dry run's `plan` steps.
#[derive(Debug, Default)]
pub struct Forecasts(Mutex<Vec<Forecast>>);

impl Forecasts {
    pub(crate) fn push(&self, f: Forecast) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    fn take(&self) -> Vec<Forecast> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A VNet as far as planning depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VnetDigest {
    pub(crate) id: ResourceId,
    pub(crate) address_space: Vec<String>,
    /// Subnet name (lowercased) and prefixes, by name.
    pub(crate) subnets: BTreeMap<String, Vec<String>>,
}

impl VnetDigest {
    pub(crate) fn of(v: &VirtualNetwork) -> Self {
        VnetDigest {
            id: v.id.clone(),
            address_space: v.properties.address_space.address_prefixes.clone(),
            subnets: v
                .properties
                .subnets
                .iter()
                .map(|s| (s.name.to_ascii_lowercase(), s.prefixes()))
                .collect(),
        }
    }
}

/// The fingerprint of what a target's forecast depends on: its plan, its own integration,
/// the plan's sizing, the shape of the decision (which VNet and subnet, or which outcome) and
/// the destination VNet's address space and subnets. Subnets in `ours` (those the applied
/// plan creates) are left out: they appear in ARM as the run goes, which is no drift.
pub(crate) fn fingerprint(
    state: &TargetState,
    app_service_plan: &ResourceId,
    required_addresses: u32,
    decision: &TargetDecision,
    vnet: Option<&VnetDigest>,
    ours: &BTreeSet<ResourceId>,
) -> String {
    let integration = match &state.integration {
        Integration::None => json!("none"),
        Integration::Gateway {
            vnet, connection, ..
        } => json!({"gateway": vnet.key(), "connection": connection.to_ascii_lowercase()}),
        Integration::Regional { subnet } => json!({"regional": subnet.key()}),
    };
    let shape = match decision {
        TargetDecision::Migrate(c) => json!({"vnet": c.vnet.key(), "subnet": c.subnet.key()}),
        other => serde_json::to_value(other).expect("decision serialises"),
    };
    let vnet = vnet.map(|v| {
        let subnets: BTreeMap<&String, &Vec<String>> = v
            .subnets
            .iter()
            .filter(|(name, _)| {
                !ours.iter().any(|o| {
                    o.name().eq_ignore_ascii_case(name) && o.vnet().as_ref() == Some(&v.id)
                })
            })
            .collect();
        json!({"id": v.id.key(), "addressSpace": v.address_space, "subnets": subnets})
    });
    let canonical = json!({
        "target": state.id.key(),
        "appServicePlan": app_service_plan.key(),
        "integration": integration,
        "requiredAddresses": required_addresses,
        "decision": shape,
        "vnet": vnet,
    });
    hash(canonical.to_string().as_bytes())
}

/// One ARM write, as a reviewer needs to see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    pub method: String,
    pub resource: String,
    /// The fields of the body that matter (not the whole body).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub body: Value,
}

impl Write {
    /// `PUT subnets`, `DELETE virtualNetworkConnections`, `PATCH sites`: what totals count
    /// (the resource type is the segment before the resource's name).
    fn kind(&self) -> String {
        let ty = self.resource.rsplit('/').nth(1).unwrap_or("resource");
        format!("{} {ty}", self.method)
    }
}

/// A subnet the plan creates or brings to the policy (delegation, NSG, route table, NAT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetPlan {
    pub id: ResourceId,
    pub prefix: Ipv4Net,
    pub create: bool,
    /// The first App Service plan (by target id) that claims it.
    pub app_service_plan: ResourceId,
    /// The other plans that join it (`subnet.sharedAcrossPlans`), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<ResourceId>,
    pub write: Write,
}

/// One target of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPlan {
    pub id: ResourceId,
    /// `migrate`, or the outcome the dry run reached (`skipped:…`, `blocked:…`).
    pub forecast: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_service_plan: Option<ResourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ResourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Ipv4Net>,
    /// The writes this target gets, in order (its subnet's are in `subnets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Write>,
    /// What `run --plan` applies (None when the dry run ended before planning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<TargetDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_prefix_length: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Per subscription: targets per forecast.
    pub targets: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per subscription: writes per kind (`PUT subnets`, `DELETE virtualNetworkConnections`, …).
    pub writes: BTreeMap<String, BTreeMap<String, u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFile {
    pub kind: String,
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub arm_endpoint: String,
    /// The scope's canonical text (as a run's contract records it).
    pub scope: String,
    /// The policy the plan was made with; `run --plan` uses it.
    pub policy: Policy,
    pub policy_hash: String,
    /// Over every target's fingerprint: the ARM state the plan was computed from.
    pub fingerprint: String,
    pub totals: Totals,
    pub subnets: Vec<SubnetPlan>,
    pub targets: Vec<TargetPlan>,
}

/// Why a file is not a plan this version can apply.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("not a vnet-migrate plan file: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("not a vnet-migrate plan file (kind {0:?})")]
    Kind(String),
    #[error("plan file version {0} is not supported (this version reads {PLAN_FILE_VERSION}): plan again")]
    Version(u32),
}

impl PlanFile {
    pub fn parse(text: &str) -> Result<PlanFile, PlanFileError> {
        let p: PlanFile = serde_json::from_str(text).map_err(PlanFileError::Decode)?;
        if p.kind != PLAN_FILE_KIND {
            return Err(PlanFileError::Kind(p.kind));
        }
        if p.version != PLAN_FILE_VERSION {
            return Err(PlanFileError::Version(p.version));
        }
        Ok(p)
    }

    /// The sites of the plan (slots are found again by their site's `discover`).
    pub fn sites(&self) -> Vec<ResourceId> {
        self.targets
            .iter()
            .filter(|t| t.id.kind() == crate::azure::ResourceKind::Site)
            .map(|t| t.id.clone())
            .collect()
    }
}

/// A plan file as a run applies it.
#[derive(Debug)]
pub struct AppliedPlan {
    targets: HashMap<ResourceId, TargetPlan>,
    /// Subnets the plan creates: their appearance in ARM is the run's own doing.
    pub(crate) creates: BTreeSet<ResourceId>,
}

impl AppliedPlan {
    pub fn new(plan: &PlanFile) -> Self {
        AppliedPlan {
            targets: plan
                .targets
                .iter()
                .map(|t| (t.id.clone(), t.clone()))
                .collect(),
            creates: plan
                .subnets
                .iter()
                .filter(|s| s.create)
                .map(|s| s.id.clone())
                .collect(),
        }
    }

    pub(crate) fn target(&self, id: &ResourceId) -> Option<&TargetPlan> {
        self.targets.get(id)
    }
}

/// What the plan file is made of besides the forecasts.
pub struct PlanInputs<'a> {
    pub arm_endpoint: &'a str,
    pub scope: String,
    pub policy: &'a Policy,
    /// Every target of the dry run and the outcome it reached (`skipped:dry-run` when it
    /// would have been migrated).
    pub outcomes: Vec<(ResourceId, String)>,
    pub forecasts: &'a Forecasts,
}

/// Builds the plan file: prefixes of new subnets reserved VNet by VNet in a stable order
/// (subnet id), each the lowest free block of its size given the VNet's subnets and the
/// blocks reserved before it, as `prepare-subnet` would allocate them one after another.
pub fn build(inputs: PlanInputs<'_>) -> PlanFile {
    let forecasts: HashMap<ResourceId, Forecast> = inputs
        .forecasts
        .take()
        .into_iter()
        .map(|f| (f.target.clone(), f))
        .collect();
    let mut targets: Vec<TargetPlan> = inputs
        .outcomes
        .iter()
        .map(|(id, outcome)| {
            let f = forecasts.get(id);
            let migrate = matches!(f.map(|f| &f.decision), Some(TargetDecision::Migrate(_)));
            TargetPlan {
                id: id.clone(),
                forecast: if migrate {
                    "migrate".to_string()
                } else {
                    outcome.clone()
                },
                app_service_plan: f.map(|f| f.app_service_plan.clone()),
                subnet: None,
                prefix: None,
                writes: Vec::new(),
                decision: f.map(|f| f.decision.clone()),
                required_prefix_length: f.map(|f| f.required_prefix_length),
                fingerprint: f.map(|f| f.fingerprint.clone()),
            }
        })
        .collect();
    targets.sort_by(|a, b| a.id.cmp(&b.id));
    let subnets = reserve(&mut targets, &forecasts, inputs.policy);
    for t in &mut targets {
        let Some(TargetDecision::Migrate(choice)) = &t.decision else {
            continue;
        };
        t.subnet = Some(choice.subnet.clone());
        t.prefix = Some(choice.prefix);
        let Some(f) = forecasts.get(&t.id) else {
            continue;
        };
        if let Some(name) = &f.gateway_connection {
            t.writes.push(Write {
                method: "DELETE".into(),
                resource: format!("{}/virtualNetworkConnections/{name}", t.id),
                body: Value::Null,
            });
        }
        t.writes.push(Write {
            method: "PATCH".into(),
            resource: t.id.to_string(),
            body: json!({"properties": {"virtualNetworkSubnetId": choice.subnet.as_str()}}),
        });
        if f.routing_differs {
            t.writes.push(Write {
                method: "PATCH".into(),
                resource: t.id.to_string(),
                body: json!({"properties": {"outboundVnetRouting": super::steps::desired_routing(inputs.policy)}}),
            });
        }
    }
    let totals = totals(&targets, &subnets);
    let fingerprint = hash(
        targets
            .iter()
            .map(|t| {
                format!(
                    "{} {}\n",
                    t.id.key(),
                    t.fingerprint.as_deref().unwrap_or("-")
                )
            })
            .collect::<String>()
            .as_bytes(),
    );
    PlanFile {
        kind: PLAN_FILE_KIND.into(),
        version: PLAN_FILE_VERSION,
        created_at: OffsetDateTime::now_utc(),
        arm_endpoint: inputs.arm_endpoint.to_string(),
        scope: inputs.scope,
        policy: inputs.policy.clone(),
        policy_hash: super::local::policy_hash(inputs.policy),
        fingerprint,
        totals,
        subnets,
        targets,
    }
}

/// Reserves the prefixes of new subnets across the fleet and returns the subnet writes, each
/// subnet once. A subnet two App Service plans both chose (an empty one both would reuse) goes
/// to the first plan by id, and the other plan's targets are forecast `blocked:subnet-in-use`,
/// unless both chose it as the subnet they share (`subnet.sharedAcrossPlans`). Targets whose
/// new subnet finds no free block are forecast `blocked:no-address-space`.
fn reserve(
    targets: &mut [TargetPlan],
    forecasts: &HashMap<ResourceId, Forecast>,
    policy: &Policy,
) -> Vec<SubnetPlan> {
    // Subnet → (its plan, the choice, the required length), in subnet id order.
    let mut chosen: BTreeMap<ResourceId, (ResourceId, super::plan::SubnetChoice, u8)> =
        BTreeMap::new();
    // Shared subnet → the other plans that join it.
    let mut joined: BTreeMap<ResourceId, BTreeSet<ResourceId>> = BTreeMap::new();
    let mut refused: BTreeMap<ResourceId, BlockedReason> = BTreeMap::new();
    for t in targets.iter() {
        let (Some(TargetDecision::Migrate(c)), Some(plan), Some(len)) =
            (&t.decision, &t.app_service_plan, t.required_prefix_length)
        else {
            continue;
        };
        match chosen.get(&c.subnet) {
            Some((first, shared, _))
                if first != plan
                    && c.shared_addresses.is_some()
                    && shared.shared_addresses.is_some() =>
            {
                joined
                    .entry(c.subnet.clone())
                    .or_default()
                    .insert(plan.clone());
            }
            Some((first, _, _)) if first != plan => {
                refused.insert(t.id.clone(), BlockedReason::SubnetInUse);
            }
            Some(_) => {}
            None => {
                chosen.insert(c.subnet.clone(), (plan.clone(), c.clone(), len));
            }
        }
    }
    // Per VNet: the blocks in use, then each new subnet's block in turn.
    let mut used: HashMap<ResourceId, Vec<Ipv4Net>> = HashMap::new();
    let mut space: HashMap<ResourceId, Vec<Ipv4Net>> = HashMap::new();
    for f in forecasts.values() {
        let Some(v) = &f.vnet else { continue };
        used.entry(v.id.clone()).or_insert_with(|| {
            let all: Vec<String> = v.subnets.values().flatten().cloned().collect();
            ipam::parse_prefixes(&all).unwrap_or_default()
        });
        space
            .entry(v.id.clone())
            .or_insert_with(|| ipam::parse_prefixes(&v.address_space).unwrap_or_default());
    }
    let mut subnets = Vec::new();
    let mut reserved: HashMap<ResourceId, Ipv4Net> = HashMap::new();
    for (subnet, (plan, choice, len)) in &chosen {
        let prefix = if choice.create {
            let in_use = used.entry(choice.vnet.clone()).or_default();
            let vnet_space = space.get(&choice.vnet).cloned().unwrap_or_default();
            match ipam::choose_prefix(
                &vnet_space,
                in_use,
                (*len).max(choice.prefix.prefix_len()),
                choice.prefix.prefix_len(),
            ) {
                Some(p) => {
                    in_use.push(p);
                    p
                }
                None => {
                    for t in targets.iter() {
                        if t.subnet_choice() == Some(subnet) {
                            refused.insert(t.id.clone(), BlockedReason::NoAddressSpace);
                        }
                    }
                    continue;
                }
            }
        } else {
            choice.prefix
        };
        reserved.insert(subnet.clone(), prefix);
        if choice.create || choice.needs_update {
            let desired = super::subnet::desired_subnet(
                policy,
                crate::azure::models::Subnet {
                    name: subnet.name().to_string(),
                    ..Default::default()
                },
                &prefix.to_string(),
            );
            subnets.push(SubnetPlan {
                id: subnet.clone(),
                prefix,
                create: choice.create,
                app_service_plan: plan.clone(),
                shared_with: joined
                    .remove(subnet)
                    .map(|p| p.into_iter().collect())
                    .unwrap_or_default(),
                write: Write {
                    method: "PUT".into(),
                    resource: subnet.to_string(),
                    body: serde_json::to_value(&desired).expect("subnet serialises"),
                },
            });
        }
    }
    for t in targets.iter_mut() {
        if let Some(reason) = refused.get(&t.id) {
            t.decision = Some(TargetDecision::Blocked(*reason));
            t.forecast = format!("blocked:{reason}");
            continue;
        }
        if let Some(TargetDecision::Migrate(c)) = &mut t.decision {
            if let Some(p) = reserved.get(&c.subnet) {
                c.prefix = *p;
            }
        }
    }
    subnets
}

impl TargetPlan {
    fn subnet_choice(&self) -> Option<&ResourceId> {
        match &self.decision {
            Some(TargetDecision::Migrate(c)) => Some(&c.subnet),
            _ => None,
        }
    }
}

fn totals(targets: &[TargetPlan], subnets: &[SubnetPlan]) -> Totals {
    let mut t = Totals::default();
    for target in targets {
        let sub = target.id.subscription().to_ascii_lowercase();
        *t.targets
            .entry(sub.clone())
            .or_default()
            .entry(target.forecast.clone())
            .or_default() += 1;
        for w in &target.writes {
            *t.writes
                .entry(sub.clone())
                .or_default()
                .entry(w.kind())
                .or_default() += 1;
        }
    }
    for s in subnets {
        *t.writes
            .entry(s.id.subscription().to_ascii_lowercase())
            .or_default()
            .entry(s.write.kind())
            .or_default() += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::super::plan::SubnetChoice;
    use super::*;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    const VNET: &str =
        "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/hub";

    fn digest(space: &str, subnets: &[(&str, &str)]) -> VnetDigest {
        VnetDigest {
            id: id(VNET),
            address_space: vec![space.into()],
            subnets: subnets
                .iter()
                .map(|(n, p)| (n.to_string(), vec![p.to_string()]))
                .collect(),
        }
    }

    /// A forecast for site `app` on plan `plan`, into a new subnet named after the plan with
    /// the block the plan-wide decision picked on its own.
    fn forecast(app: &str, plan: &str, prefix: &str, vnet: &VnetDigest) -> Forecast {
        let target = id(&format!(
            "/subscriptions/s/resourceGroups/a/providers/Microsoft.Web/sites/{app}"
        ));
        let state = TargetState {
            id: target.clone(),
            location: "westeurope".into(),
            integration: Integration::Gateway {
                vnet: id(VNET),
                connection: "hub".into(),
                routes: Vec::new(),
            },
        };
        let app_service_plan = id(&format!(
            "/subscriptions/s/resourceGroups/a/providers/Microsoft.Web/serverfarms/{plan}"
        ));
        let decision = TargetDecision::Migrate(SubnetChoice {
            vnet: id(VNET),
            subnet: id(&format!("{VNET}/subnets/snet-{plan}")),
            name: format!("snet-{plan}"),
            prefix: prefix.parse().unwrap(),
            create: true,
            needs_update: false,
            shared_addresses: None,
        });
        let fingerprint = super::fingerprint(
            &state,
            &app_service_plan,
            10,
            &decision,
            Some(vnet),
            &BTreeSet::new(),
        );
        Forecast {
            target,
            app_service_plan,
            decision,
            required_prefix_length: 26,
            gateway_connection: Some("hub".into()),
            vnet: Some(vnet.clone()),
            routing_differs: true,
            fingerprint,
        }
    }

    fn build_from(forecasts: Vec<Forecast>) -> PlanFile {
        let f = Forecasts::default();
        let outcomes = forecasts
            .iter()
            .map(|x| (x.target.clone(), "skipped:dry-run".to_string()))
            .collect();
        for x in forecasts {
            f.push(x);
        }
        build(PlanInputs {
            arm_endpoint: "http://127.0.0.1:1",
            scope: "{}".into(),
            policy: &Policy::default(),
            outcomes,
            forecasts: &f,
        })
    }

    #[test]
    fn plans_that_forecast_the_same_block_get_distinct_blocks() {
        let v = digest("10.0.0.0/24", &[("default", "10.0.0.0/26")]);
        // Both plans, deciding alone, picked the first free /26.
        let plan = build_from(vec![
            forecast("a1", "p1", "10.0.0.64/26", &v),
            forecast("a2", "p1", "10.0.0.64/26", &v),
            forecast("b1", "p2", "10.0.0.64/26", &v),
        ]);
        let prefixes: Vec<String> = plan.subnets.iter().map(|s| s.prefix.to_string()).collect();
        assert_eq!(prefixes, ["10.0.0.64/26", "10.0.0.128/26"]);
        // Every target carries its subnet's reserved block; the writes are exact.
        let b1 = plan.targets.iter().find(|t| t.id.name() == "b1").unwrap();
        assert_eq!(b1.prefix.unwrap().to_string(), "10.0.0.128/26");
        assert_eq!(b1.forecast, "migrate");
        let methods: Vec<&str> = b1.writes.iter().map(|w| w.method.as_str()).collect();
        assert_eq!(methods, ["DELETE", "PATCH", "PATCH"]);
        assert_eq!(plan.totals.writes["s"]["PUT subnets"], 2);
        assert_eq!(plan.totals.targets["s"]["migrate"], 3);
        // The same forecasts give the same plan (but for its time).
        let again = build_from(vec![
            forecast("b1", "p2", "10.0.0.64/26", &v),
            forecast("a2", "p1", "10.0.0.64/26", &v),
            forecast("a1", "p1", "10.0.0.64/26", &v),
        ]);
        assert_eq!(again.targets, plan.targets);
        assert_eq!(again.fingerprint, plan.fingerprint);
    }

    #[test]
    fn a_subnet_without_a_free_block_blocks_its_targets() {
        let v = digest("10.0.0.0/25", &[("default", "10.0.0.0/26")]);
        let plan = build_from(vec![
            forecast("a1", "p1", "10.0.0.64/26", &v),
            forecast("b1", "p2", "10.0.0.64/26", &v),
        ]);
        let labels: Vec<&str> = plan.targets.iter().map(|t| t.forecast.as_str()).collect();
        assert_eq!(labels, ["migrate", "blocked:no-address-space"]);
        assert_eq!(plan.subnets.len(), 1);
        assert!(plan.targets[1].writes.is_empty());
    }

    #[test]
    fn the_fingerprint_ignores_our_own_subnets_but_not_anyone_elses() {
        let v = digest("10.0.0.0/24", &[("default", "10.0.0.0/26")]);
        let f = forecast("a1", "p1", "10.0.0.64/26", &v);
        let state = TargetState {
            id: f.target.clone(),
            location: "westeurope".into(),
            integration: Integration::Gateway {
                vnet: id(VNET),
                connection: "hub".into(),
                routes: Vec::new(),
            },
        };
        let ours: BTreeSet<ResourceId> = [id(&format!("{VNET}/subnets/snet-p1"))].into();
        let with = |subnets: &[(&str, &str)], ours: &BTreeSet<ResourceId>| {
            fingerprint(
                &state,
                &f.app_service_plan,
                10,
                &f.decision,
                Some(&digest("10.0.0.0/24", subnets)),
                ours,
            )
        };
        let mine = [("default", "10.0.0.0/26"), ("snet-p1", "10.0.0.64/26")];
        assert_eq!(with(&mine, &ours), f.fingerprint);
        let theirs = [("default", "10.0.0.0/26"), ("other", "10.0.0.64/26")];
        assert_ne!(with(&theirs, &ours), f.fingerprint);
        let grown = [("default", "10.0.0.0/25")];
        assert_ne!(with(&grown, &ours), f.fingerprint);
    }

    #[test]
    fn a_plan_file_of_another_kind_or_version_is_refused() {
        let plan = build_from(Vec::new());
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(PlanFile::parse(&text).unwrap(), plan);
        let other = text.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            PlanFile::parse(&other),
            Err(PlanFileError::Version(2))
        ));
        let kind = text.replace(PLAN_FILE_KIND, "terraform");
        assert!(matches!(
            PlanFile::parse(&kind),
            Err(PlanFileError::Kind(_))
        ));
        assert!(PlanFile::parse("[]").is_err());
    }
}
