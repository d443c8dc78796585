//! The checks a wave's gate makes of its migrated targets after the bake (DESIGN §9 `gates`;
//! issue 12): their Key Vault references still resolved, and the optional HTTP probe. They
//! repeat `verify`'s checks once the wave has run a while, to catch what broke since (a vault
//! firewall, an app failing under load on its new network) before the next wave starts.

use std::sync::Arc;

use async_trait::async_trait;

use super::health::{self, FrontEnd};
use super::steps::key_vault_statuses;
use crate::azure::arm::ArmClient;
use crate::azure::models::{KeyVaultStatus, Site};
use crate::azure::ResourceId;
use crate::pipeline::rollout::{GateCheck, GateKind, WaveChecks};
use crate::policy::{Policy, Probe};

/// The migration's [`WaveChecks`], as the policy's `gates` ask.
pub(crate) struct MigratedChecks {
    pub(crate) arm: ArmClient,
    pub(crate) policy: Arc<Policy>,
    pub(crate) front_end: FrontEnd,
}

#[async_trait]
impl WaveChecks for MigratedChecks {
    async fn check(&self, migrated: &[ResourceId]) -> Vec<GateCheck> {
        let mut checks = Vec::new();
        if self.policy.gates.key_vault_references_must_resolve {
            checks.push(self.key_vault(migrated).await);
        }
        if let Some(probe) = &self.policy.gates.probe {
            checks.push(self.probe(migrated, probe).await);
        }
        checks
    }
}

/// Problems a check names; the rest are counted. A wave of thousands failing one probe stays
/// readable, and its record fits a Table Storage property (64 KiB).
const NAMED_PROBLEMS: usize = 10;

/// The check of `kind`: failed with the problems found (one per target), or passed.
fn verdict(kind: GateKind, migrated: usize, problems: Vec<String>, passed: &str) -> GateCheck {
    let mut detail = problems
        .iter()
        .take(NAMED_PROBLEMS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > NAMED_PROBLEMS {
        detail.push_str(&format!(
            "; and {} more target(s)",
            problems.len() - NAMED_PROBLEMS
        ));
    }
    GateCheck {
        kind,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{migrated} migrated target(s) {passed}")
        } else {
            detail
        },
    }
}

impl MigratedChecks {
    /// Every reference must be resolved, or not evaluated yet (`Initialized`, as after a
    /// restart). The gate has no baseline: a reference broken before the migration trips it
    /// too, and an operator resumes past it.
    async fn key_vault(&self, migrated: &[ResourceId]) -> GateCheck {
        let mut problems = Vec::new();
        for target in migrated {
            match key_vault_statuses(&self.arm, target).await {
                Ok(statuses) => {
                    let broken: Vec<String> = statuses
                        .iter()
                        .filter(|(_, s)| {
                            !matches!(s, KeyVaultStatus::Resolved | KeyVaultStatus::Initialized)
                        })
                        .map(|(name, s)| format!("{name} is {s}"))
                        .collect();
                    if !broken.is_empty() {
                        problems.push(format!(
                            "{target}: Key Vault references no longer resolve: {}",
                            broken.join(", ")
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "{target}: cannot read its Key Vault references: {e}"
                )),
            }
        }
        verdict(
            GateKind::KeyVaultReferences,
            migrated.len(),
            problems,
            "have their Key Vault references resolved",
        )
    }

    async fn probe(&self, migrated: &[ResourceId], probe: &Probe) -> GateCheck {
        let client = reqwest::Client::new();
        let mut problems = Vec::new();
        for target in migrated {
            let host = match self.arm.get::<Site>(target.as_str()).await {
                Ok(site) => site.properties.default_host_name.unwrap_or_default(),
                Err(e) => {
                    problems.push(format!("{target}: cannot read its host name: {e}"));
                    continue;
                }
            };
            if let Err(why) = health::probe(
                &client,
                &self.front_end,
                &host,
                &probe.path,
                probe.expected_status,
            )
            .await
            {
                problems.push(format!("{target}: {why}"));
            }
        }
        verdict(
            GateKind::Probe,
            migrated.len(),
            problems,
            &format!(
                "answered the probe of {} with {}",
                probe.path, probe.expected_status
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_names_ten_problems_and_counts_the_rest() {
        let problems = (0..25).map(|i| format!("a{i}: down")).collect();
        let c = verdict(GateKind::Probe, 25, problems, "answered");
        assert!(!c.passed);
        assert!(c.detail.starts_with("a0: down; a1: down;"), "{}", c.detail);
        assert!(
            c.detail.ends_with("a9: down; and 15 more target(s)"),
            "{}",
            c.detail
        );
        let ok = verdict(GateKind::Probe, 3, Vec::new(), "answered");
        assert_eq!(
            (ok.passed, ok.detail.as_str()),
            (true, "3 migrated target(s) answered")
        );
    }
}
