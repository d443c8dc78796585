//! A whole migration on one machine: the sites in scope as the targets of a local run, and
//! the migration as its reconciler; and the contract such a run records.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::context::{Migration, StepContext};
use super::discover::candidates_in_scope;
use super::fleet_plan::{AppliedPlan, Forecasts};
use super::gates::MigratedChecks;
use super::health::FrontEnd;
use crate::azure::arm::ArmClient;
use crate::azure::ResourceId;
use crate::pipeline::contract::{self, AppliedPlanFile, RunContract};
use crate::pipeline::local::{Finished, LocalRun, LocalRunError, Start, StateFile};
use crate::pipeline::rollout::RolloutConfig;
use crate::policy::Policy;

/// Where a local migration works: the ARM client, the policy and the scope.
pub struct Scope {
    pub arm: ArmClient,
    pub policy: Arc<Policy>,
    pub subscriptions: Vec<String>,
    /// Explicit targets (`--app`); empty means every site in the subscriptions.
    pub apps: Vec<ResourceId>,
    /// Divides every delay: 1.0 against Azure, the simulator's speed in rehearsals.
    pub time_scale: f64,
    /// `run --plan`: the plan file applied.
    pub applied: Option<Arc<AppliedPlan>>,
    /// `plan`: where the dry run's forecasts go.
    pub forecasts: Option<Arc<Forecasts>>,
    /// Where the probes of `verify` and of the waves' gates reach the apps.
    pub front_end: FrontEnd,
}

/// The scope as a run's contract records it: the policy's scope (flags merged in) and the
/// `--app` ids, in a canonical order, so the same scope always gives the same text.
#[derive(Serialize)]
struct CanonicalScope {
    subscriptions: Vec<String>,
    resource_groups: Vec<String>,
    tags: Vec<(String, String)>,
    exclude: Vec<String>,
    apps: Vec<String>,
}

/// The canonical text of a scope (compared when a run is resumed).
pub fn scope_text(policy: &Policy, apps: &[ResourceId]) -> String {
    fn sorted<'a>(v: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut v: Vec<String> = v.map(str::to_ascii_lowercase).collect();
        v.sort();
        v.dedup();
        v
    }
    let s = &policy.scope;
    serde_json::to_string(&CanonicalScope {
        subscriptions: sorted(s.subscriptions.iter().map(String::as_str)),
        resource_groups: sorted(s.resource_groups.iter().map(String::as_str)),
        tags: s
            .tags
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        exclude: sorted(s.exclude.iter().map(ResourceId::as_str)),
        apps: sorted(apps.iter().map(ResourceId::as_str)),
    })
    .expect("scope serialises")
}

/// The `--app` ids of a scope text (`scope_text`).
pub fn scope_apps(text: &str) -> Result<Vec<ResourceId>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Recorded {
        apps: Vec<ResourceId>,
    }
    Ok(serde_json::from_str::<Recorded>(text)?.apps)
}

/// The policy's hash, leaving its scope out (the scope is compared on its own).
pub fn policy_hash(policy: &Policy) -> String {
    let mut unscoped = policy.clone();
    unscoped.scope = Default::default();
    contract::hash(
        serde_json::to_string(&unscoped)
            .expect("policy serialises")
            .as_bytes(),
    )
}

/// The contract of a run started with this scope, against `arm_endpoint`.
pub fn contract(
    policy: &Policy,
    apps: &[ResourceId],
    arm_endpoint: &str,
    dry_run: bool,
    plan: Option<AppliedPlanFile>,
) -> RunContract {
    RunContract {
        scope: scope_text(policy, apps),
        arm_endpoint: arm_endpoint.to_string(),
        dry_run,
        policy: serde_json::to_string(policy).expect("policy serialises"),
        policy_hash: policy_hash(policy),
        plan,
        simulated_speed: None,
    }
}

/// Runs `start` on `state` with the migration's reconciler over `scope`.
pub async fn migrate_locally(
    local: LocalRun,
    state: StateFile,
    start: Start,
    scope: Scope,
) -> Result<Finished, LocalRunError> {
    let Scope {
        arm,
        policy,
        subscriptions,
        apps,
        time_scale,
        applied,
        forecasts,
        front_end,
    } = scope;
    // The policy decides the waves, the bake (a rehearsal's runs `time_scale` times faster),
    // the gate and approval; the caller only how often a running rollout looks for pause and
    // abort.
    let mut local = local;
    local.rollout = RolloutConfig::of(&policy, time_scale, local.rollout.tick);
    local.checks = Some(Arc::new(MigratedChecks {
        arm: arm.clone(),
        policy: policy.clone(),
        front_end: front_end.clone(),
    }));
    local
        .execute(
            state,
            start,
            candidates_in_scope(&arm, &subscriptions, &policy, &apps),
            |store| {
                Migration::new(
                    StepContext::new(arm.clone(), policy.clone(), store)
                        .time_compressed(time_scale)
                        .applying(applied)
                        .forecasting(forecasts)
                        .probing_through(front_end),
                )
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_scope_gives_the_same_text_and_the_policy_hash_ignores_it() {
        let mut a = Policy::default();
        a.scope.subscriptions = vec!["B".into(), "a".into()];
        let mut b = Policy::default();
        b.scope.subscriptions = vec!["a".into(), "b".into(), "A".into()];
        assert_eq!(scope_text(&a, &[]), scope_text(&b, &[]));
        assert_eq!(policy_hash(&a), policy_hash(&b));
        b.settle_seconds += 1;
        assert_ne!(policy_hash(&a), policy_hash(&b));
        b.scope.resource_groups.push("rg".into());
        assert_ne!(scope_text(&a, &[]), scope_text(&b, &[]));
        let app =
            ResourceId::parse("/subscriptions/a/resourceGroups/r/providers/Microsoft.Web/sites/x")
                .unwrap();
        assert_eq!(
            scope_apps(&scope_text(&a, std::slice::from_ref(&app))).unwrap(),
            vec![app]
        );
    }
}
