//! `prepare-subnet`: the plan's integration subnet as the policy wants it (prefix allocated
//! from the VNet as it is now, Web delegation, NSG / route table / NAT gateway), written once.

use serde_json::json;

use super::context::{StepContext, StepError};
use super::steps::planned;
use crate::azure::arm::ArmError;
use crate::azure::models::{SubResource, Subnet, VirtualNetwork, WEB_DELEGATION};
use crate::azure::ResourceId;
use crate::migration::ipam;
use crate::pipeline::message::{PlannedSubnet, Step, StepMessage};
use crate::pipeline::reason::{BlockedReason, ParkReason};
use crate::pipeline::reconciler::StepResult;
use crate::pipeline::Outcome;
use crate::policy::Policy;

/// The subnet as the policy wants it: Web delegation plus NSG / route table / NAT gateway.
pub(super) fn desired_subnet(policy: &Policy, mut subnet: Subnet, prefix: &str) -> Subnet {
    if subnet.properties.address_prefix.is_none() && subnet.properties.address_prefixes.is_none() {
        subnet.properties.address_prefix = Some(prefix.to_string());
    }
    if !subnet.is_delegated_to_web() {
        let mut d: crate::azure::models::Delegation = serde_json::from_value(
            json!({"name": "delegation", "properties": {"serviceName": WEB_DELEGATION}}),
        )
        .expect("static delegation");
        if subnet
            .properties
            .delegations
            .iter()
            .flatten()
            .any(|x| x.name == d.name)
        {
            d.name = "webapp-delegation".into();
        }
        subnet
            .properties
            .delegations
            .get_or_insert_with(Vec::new)
            .push(d);
    }
    let attach = |id: &Option<ResourceId>| {
        id.as_ref().map(|id| SubResource {
            id: id.clone(),
            extra: Default::default(),
        })
    };
    if let Some(nsg) = attach(&policy.subnet.network_security_group_id) {
        subnet.properties.network_security_group = Some(nsg);
    }
    if let Some(rt) = attach(&policy.subnet.route_table_id) {
        subnet.properties.route_table = Some(rt);
    }
    if let Some(nat) = attach(&policy.subnet.nat_gateway_id) {
        subnet.properties.nat_gateway = Some(nat);
    }
    subnet
}

/// The lowest free block for a new subnet, from the VNet as it is now. Subnet writes in one
/// VNet run one at a time (the step's session is the VNet), so plans that forecast the same
/// block do not collide: the second one to get here takes the next free block.
fn allocate(vnet: &VirtualNetwork, p: &PlannedSubnet) -> Result<Option<String>, StepError> {
    let bad = |e: ipam::IpamError| StepError::Unexpected(format!("{}: {e}", p.vnet));
    let space =
        ipam::parse_prefixes(&vnet.properties.address_space.address_prefixes).map_err(bad)?;
    let existing: Vec<String> = vnet
        .properties
        .subnets
        .iter()
        .flat_map(|s| s.prefixes())
        .collect();
    let used = ipam::parse_prefixes(&existing).map_err(bad)?;
    let preferred: ipnet::Ipv4Net = p
        .prefix
        .parse()
        .map_err(|e| StepError::Unexpected(format!("planned prefix {}: {e}", p.prefix)))?;
    let required = p
        .required_prefix_length
        .unwrap_or(preferred.prefix_len())
        .max(preferred.prefix_len());
    Ok(ipam::choose_prefix(&space, &used, required, preferred.prefix_len()).map(|n| n.to_string()))
}

fn is_conflict(e: &ArmError) -> bool {
    matches!(
        e.code(),
        Some(
            "NetcfgSubnetRangesOverlap"
                | "NetcfgSubnetRangeOutsideVnet"
                | "InUseSubnetCannotBeUpdated"
        )
    )
}

/// What follows a prepared subnet: the cut-over, or the end of a preparation ahead of the
/// wave (`ahead.rs`).
fn prepared(msg: &StepMessage, plan: PlannedSubnet, detail: String) -> StepResult {
    if msg.ahead {
        return StepResult::end(format!("{detail} ahead of the wave"));
    }
    let mut next = msg.next(Step::Disconnect);
    next.plan = Some(plan);
    StepResult::next(next, detail)
}

pub(super) async fn prepare_subnet(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<StepResult, StepError> {
    let p = planned(msg)?;
    // The subnet alone first (GET subnet, arm-vnet reference §5): most targets of a plan find
    // it prepared by the first one, while the VNet's GET holds every subnet of it as a full
    // object, hundreds of kilobytes for a hub VNet of a large fleet, read in the VNet's
    // serialised chain. The VNet is read only to allocate a new subnet's block.
    let current: Option<Subnet> = ctx.arm.get_opt(p.subnet.as_str()).await?;
    let prefix = match &current {
        // `run --plan`: the subnet the plan reserved, with its prefix, or nothing.
        Some(s) if ctx.applied.is_some() && !s.prefixes().contains(&p.prefix) => {
            return Ok(StepResult::done(
                Outcome::Blocked(BlockedReason::Drifted),
                format!(
                    "subnet {} has {} now, not the planned {}; nothing was written: run `plan` again",
                    p.subnet,
                    s.prefixes().join(","),
                    p.prefix
                ),
            ))
        }
        Some(_) => p.prefix.clone(),
        None if ctx.applied.is_some() => p.prefix.clone(),
        None => {
            let vnet: VirtualNetwork = ctx.arm.get(p.vnet.as_str()).await?;
            match allocate(&vnet, p)? {
                Some(prefix) => prefix,
                None => {
                    return Ok(StepResult::done(
                        Outcome::Blocked(BlockedReason::NoAddressSpace),
                        format!("no free block for {} left in {}", p.prefix, p.vnet),
                    ))
                }
            }
        }
    };
    let base = current.clone().unwrap_or_else(|| Subnet {
        name: p.subnet.name().to_string(),
        ..Default::default()
    });
    let desired = desired_subnet(&ctx.policy, base, &prefix);
    let mut next_plan = p.clone();
    // A subnet whose last write failed is written again, even if it shows what we want.
    if current.as_ref() == Some(&desired) && !desired.provisioning_failed() {
        next_plan.prefix = desired
            .prefixes()
            .first()
            .cloned()
            .unwrap_or(next_plan.prefix);
        return Ok(prepared(
            msg,
            next_plan,
            format!("subnet {} already prepared", p.subnet),
        ));
    }
    let body = serde_json::to_value(&desired).expect("subnet serialises");
    match ctx.arm.put::<Subnet>(p.subnet.as_str(), &body).await {
        Ok(s) => {
            next_plan.prefix = s.prefixes().first().cloned().unwrap_or(next_plan.prefix);
            let verb = if current.is_some() {
                "updated"
            } else {
                "created"
            };
            Ok(prepared(
                msg,
                next_plan,
                format!("{verb} subnet {} ({})", p.subnet, prefix),
            ))
        }
        // Contention (another write running in the VNet) is not about our subnet: retry.
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) if is_conflict(&e) && ctx.applied.is_some() => Ok(StepResult::done(
            Outcome::Blocked(BlockedReason::Drifted),
            format!("the planned prefix {prefix} is no longer free ({e}); run `plan` again"),
        )),
        Err(e) if is_conflict(&e) => {
            // The VNet changed since planning (another plan took the range): plan again.
            ctx.plans.invalidate_target(&msg.target);
            let mut again = msg.next(Step::Plan);
            again.attempt = msg.attempt + 1;
            again.plan = None;
            if again.attempt >= ctx.policy.max_attempts {
                return Ok(StepResult::done(
                    Outcome::Parked(ParkReason::SubnetConflict),
                    e.to_string(),
                ));
            }
            Ok(StepResult::next(
                again,
                format!("subnet write refused, re-planning: {e}"),
            ))
        }
        Err(e) if matches!(e.status(), Some(400 | 409)) => Ok(StepResult::done(
            Outcome::Blocked(BlockedReason::SubnetInUse),
            e.to_string(),
        )),
        Err(e) => Err(e.into()),
    }
}
