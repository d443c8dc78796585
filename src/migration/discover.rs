//! `discover`: what integration does a target have now? Sites also fan out to their slots
//! (integration is per slot and does not swap).

use super::context::{StepContext, StepError};
use super::plan_cache::integration;
use crate::azure::models::Site;
use crate::azure::{ResourceId, ResourceKind};
use crate::migration::plan::Integration;
use crate::pipeline::message::{Step, StepMessage};
use crate::pipeline::reason::SkipReason;
use crate::pipeline::reconciler::{StepResult, Transition};
use crate::pipeline::rollout::{Candidate, RING_TAG};
use crate::pipeline::Outcome;

pub(crate) async fn discover(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<StepResult, StepError> {
    let Some(site) = ctx.arm.get_opt::<Site>(msg.target.as_str()).await? else {
        return Ok(StepResult::done(
            Outcome::Skipped(SkipReason::NotFound),
            "target no longer exists",
        ));
    };
    let mut result = match integration(&ctx.arm, &site).await? {
        Integration::Gateway { vnet, .. } => StepResult::next(
            msg.next(Step::Plan),
            format!("gateway-based integration with {vnet}"),
        ),
        Integration::Regional { subnet } => StepResult::done(
            Outcome::Skipped(SkipReason::AlreadyRegional),
            format!("regional integration in {subnet}"),
        ),
        Integration::None => StepResult::done(
            Outcome::Skipped(SkipReason::NoIntegration),
            "no VNet integration",
        ),
    };
    if msg.target.kind() == ResourceKind::Site {
        result.spawn = slot_discoveries(ctx, msg, SlotFilter::All).await?;
        if !result.spawn.is_empty() {
            result
                .detail
                .push_str(&format!("; {} slot(s) discovered", result.spawn.len()));
        }
    }
    debug_assert!(!matches!(result.transition, Transition::Continue(ref v) if v.is_empty()));
    Ok(result)
}

/// Which of a site's slots `slot_discoveries` starts `discover` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotFilter {
    /// Every slot in scope (a site's own `discover`: the same answer on every delivery).
    All,
    /// Only slots this run does not know yet: created after the site's `discover` ran.
    Unknown,
}

/// `discover` messages for the slots of the site `msg` targets that are in scope, each
/// recorded as a target of the run.
pub(crate) async fn slot_discoveries(
    ctx: &StepContext,
    msg: &StepMessage,
    filter: SlotFilter,
) -> Result<Vec<StepMessage>, StepError> {
    let slots: Vec<Site> = ctx.arm.list(&format!("{}/slots", msg.target)).await?;
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for slot in slots {
        if !ctx.policy.scope.includes(&slot.id, slot.tags.as_ref()) {
            continue;
        }
        if filter == SlotFilter::Unknown && ctx.ledger.target(&msg.run, &slot.id).await?.is_some() {
            continue;
        }
        ctx.ledger.add_target(&msg.run, &slot.id, now).await?;
        out.push(
            StepMessage::new(msg.run.clone(), slot.id, Step::Discover, msg.origin)
                .with_dry_run(msg.dry_run),
        );
    }
    Ok(out)
}

/// Targets (sites) in scope, for a run to start from. Slots are found by `discover`.
pub async fn sites_in_scope(
    arm: &crate::azure::arm::ArmClient,
    subscriptions: &[String],
    policy: &crate::policy::Policy,
    apps: &[ResourceId],
) -> Result<Vec<ResourceId>, StepError> {
    let sites = candidates_in_scope(arm, subscriptions, policy, apps).await?;
    Ok(sites.into_iter().map(|c| c.id).collect())
}

/// The sites in scope with the ring tag that orders them into waves (sites given by id with
/// `--app` are not read, so they have none).
pub(crate) async fn candidates_in_scope(
    arm: &crate::azure::arm::ArmClient,
    subscriptions: &[String],
    policy: &crate::policy::Policy,
    apps: &[ResourceId],
) -> Result<Vec<Candidate>, StepError> {
    if !apps.is_empty() {
        return Ok(apps
            .iter()
            .filter(|a| !policy.scope.exclude.iter().any(|ex| a.is_within(ex)))
            .cloned()
            .map(Candidate::bare)
            .collect());
    }
    let mut out = Vec::new();
    for sub in subscriptions {
        let sites: Vec<Site> = arm
            .list(&format!(
                "/subscriptions/{sub}/providers/Microsoft.Web/sites"
            ))
            .await?;
        out.extend(
            sites
                .into_iter()
                .filter(|s| policy.scope.includes(&s.id, s.tags.as_ref()))
                .map(|s| {
                    // Tag names are case-insensitive in ARM.
                    let ring = s.tags.as_ref().and_then(|tags| {
                        tags.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(RING_TAG))
                            .and_then(|(_, v)| v.as_str().map(str::to_string))
                    });
                    Candidate { id: s.id, ring }
                }),
        );
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}
