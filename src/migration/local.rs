//! A whole migration on one machine: the sites in scope as the targets of a local run, and
//! the migration as its reconciler.

use std::sync::Arc;

use super::context::{Migration, StepContext};
use super::discover::sites_in_scope;
use crate::azure::arm::ArmClient;
use crate::azure::ResourceId;
use crate::pipeline::local::{Finished, LocalRun, LocalRunError};
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
}

/// Runs (or resumes) `local` with the migration's reconciler over `scope`.
pub async fn migrate_locally(local: LocalRun, scope: Scope) -> Result<Finished, LocalRunError> {
    let Scope {
        arm,
        policy,
        subscriptions,
        apps,
        time_scale,
    } = scope;
    local
        .execute(
            sites_in_scope(&arm, &subscriptions, &policy, &apps),
            |store| {
                Migration::new(
                    StepContext::new(arm.clone(), policy.clone(), store)
                        .time_compressed(time_scale),
                )
            },
        )
        .await
}
