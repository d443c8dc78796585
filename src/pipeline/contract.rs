//! The contract of a local run (DESIGN §8): what a run was started with — its scope, the ARM
//! endpoint, the policy and the plan — recorded with the run, so that resuming it with
//! anything else is refused instead of carried out. A run resumed against another endpoint
//! or scope would have its writes (and its rollbacks) refused half-way and leave apps with no
//! integration at all.
//!
//! The runtime knows nothing of the domain: the scope, policy and plan are texts the caller
//! chose (canonical JSON), compared as they are.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a run was started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunContract {
    /// The scope in scope's own canonical text (the caller's choice, compared as is).
    pub scope: String,
    pub arm_endpoint: String,
    /// Whether the run is a dry run: a dry run keeps its own state and never writes to ARM.
    pub dry_run: bool,
    /// The policy as the run uses it (canonical JSON), so a resume needs no `--policy`.
    pub policy: String,
    /// `sha256:…` of the policy, without its scope (the scope is compared on its own).
    pub policy_hash: String,
    /// The plan file applied, if any: its hash and its text (a resume needs no `--plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<AppliedPlanFile>,
    /// Against a simulator running this many times faster than ARM: the times recorded are
    /// wall times of a compressed run, shown multiplied back as simulated seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_speed: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPlanFile {
    pub hash: String,
    pub text: String,
}

/// `sha256:` and the hex digest of `bytes`.
pub fn hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Why a run cannot go on with what it was given. Each names both values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{state} holds a real run ({run}); a dry run keeps its own state: pass another --state (or leave --state out)")]
    DryRunOnRealState { state: String, run: String },
    #[error("{state} holds a dry run ({run}); a real run needs a state file of its own: pass another --state")]
    RealRunOnDryState { state: String, run: String },
    #[error("run {run} in {state} was started for scope {recorded}, not {given}; resume it without scope flags, or use another --state")]
    Scope {
        state: String,
        run: String,
        recorded: String,
        given: String,
    },
    #[error("run {run} in {state} was started against {recorded}, not {given}; resume it with --arm-endpoint {recorded}")]
    Endpoint {
        state: String,
        run: String,
        recorded: String,
        given: String,
    },
    #[error("run {run} in {state} was started with policy {recorded}, this policy is {given}; resume it without --policy (it keeps its own), or use another --state")]
    Policy {
        state: String,
        run: String,
        recorded: String,
        given: String,
    },
    #[error("run {run} in {state} was started with plan {recorded}, not {given}; resume it without --plan, or use another --state")]
    Plan {
        state: String,
        run: String,
        recorded: String,
        given: String,
    },
}

/// What the command line asks of a run about to resume `recorded`: `None` where it gave
/// nothing (the recorded value is resumed).
#[derive(Debug, Clone, Default)]
pub struct Requested {
    pub scope: Option<String>,
    pub arm_endpoint: String,
    pub dry_run: bool,
    pub policy_hash: Option<String>,
    pub plan_hash: Option<String>,
}

impl RunContract {
    /// Dry runs and real runs never share a state file, resumed or new.
    pub fn same_kind(&self, dry_run: bool, state: &str, run: &str) -> Result<(), ContractError> {
        let (state, run) = (state.to_string(), run.to_string());
        match (self.dry_run, dry_run) {
            (false, true) => Err(ContractError::DryRunOnRealState { state, run }),
            (true, false) => Err(ContractError::RealRunOnDryState { state, run }),
            _ => Ok(()),
        }
    }

    /// Whether `requested` may resume this run; `state` and `run` name them in the refusal.
    pub fn admits(
        &self,
        requested: &Requested,
        state: &str,
        run: &str,
    ) -> Result<(), ContractError> {
        self.same_kind(requested.dry_run, state, run)?;
        let (state, run) = (state.to_string(), run.to_string());
        if let Some(given) = requested.scope.as_ref().filter(|g| **g != self.scope) {
            return Err(ContractError::Scope {
                state,
                run,
                recorded: self.scope.clone(),
                given: given.clone(),
            });
        }
        if !same_endpoint(&requested.arm_endpoint, &self.arm_endpoint) {
            return Err(ContractError::Endpoint {
                state,
                run,
                recorded: self.arm_endpoint.clone(),
                given: requested.arm_endpoint.clone(),
            });
        }
        if let Some(given) = requested
            .policy_hash
            .as_ref()
            .filter(|g| **g != self.policy_hash)
        {
            return Err(ContractError::Policy {
                state,
                run,
                recorded: self.policy_hash.clone(),
                given: given.clone(),
            });
        }
        if let Some(given) = &requested.plan_hash {
            let recorded = self.plan.as_ref().map(|p| p.hash.as_str());
            if recorded != Some(given.as_str()) {
                return Err(ContractError::Plan {
                    state,
                    run,
                    recorded: recorded.unwrap_or("none").to_string(),
                    given: given.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Endpoints compare without a trailing slash and without case (hosts are case-insensitive).
pub fn same_endpoint(a: &str, b: &str) -> bool {
    let n = |e: &str| e.trim().trim_end_matches('/').to_ascii_lowercase();
    n(a) == n(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> RunContract {
        RunContract {
            scope: r#"{"subscriptions":["a"]}"#.into(),
            arm_endpoint: "http://127.0.0.1:8700".into(),
            dry_run: false,
            policy: "{}".into(),
            policy_hash: hash(b"{}"),
            plan: Some(AppliedPlanFile {
                hash: hash(b"plan"),
                text: "plan".into(),
            }),
            simulated_speed: None,
        }
    }

    fn same() -> Requested {
        Requested {
            scope: None,
            arm_endpoint: "http://127.0.0.1:8700/".into(),
            dry_run: false,
            policy_hash: None,
            plan_hash: None,
        }
    }

    #[test]
    fn resuming_with_nothing_or_the_same_is_admitted() {
        let c = recorded();
        c.admits(&same(), "s.db", "r").unwrap();
        let given = Requested {
            scope: Some(c.scope.clone()),
            policy_hash: Some(c.policy_hash.clone()),
            plan_hash: Some(hash(b"plan")),
            ..same()
        };
        c.admits(&given, "s.db", "r").unwrap();
    }

    #[test]
    fn every_difference_is_refused_naming_both_values() {
        let c = recorded();
        let cases = [
            (
                Requested {
                    scope: Some(r#"{"subscriptions":["b"]}"#.into()),
                    ..same()
                },
                [r#"{"subscriptions":["a"]}"#, r#"{"subscriptions":["b"]}"#],
            ),
            (
                Requested {
                    arm_endpoint: "https://management.azure.com".into(),
                    ..same()
                },
                ["http://127.0.0.1:8700", "https://management.azure.com"],
            ),
            (
                Requested {
                    policy_hash: Some(hash(b"other")),
                    ..same()
                },
                [&hash(b"{}"), &hash(b"other")],
            ),
            (
                Requested {
                    plan_hash: Some(hash(b"other plan")),
                    ..same()
                },
                [&hash(b"plan"), &hash(b"other plan")],
            ),
        ];
        for (given, [a, b]) in cases {
            let e = c.admits(&given, "s.db", "r").unwrap_err().to_string();
            assert!(e.contains(a) && e.contains(b), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn dry_and_real_runs_never_share_a_state() {
        let real = recorded();
        let e = real
            .admits(
                &Requested {
                    dry_run: true,
                    ..same()
                },
                "s.db",
                "r",
            )
            .unwrap_err();
        assert!(matches!(e, ContractError::DryRunOnRealState { .. }));
        let dry = RunContract {
            dry_run: true,
            ..recorded()
        };
        let e = dry.admits(&same(), "s.db", "r").unwrap_err();
        assert!(matches!(e, ContractError::RealRunOnDryState { .. }));
    }

    #[test]
    fn a_plan_given_to_a_run_started_without_one_is_refused() {
        let c = RunContract {
            plan: None,
            ..recorded()
        };
        let e = c
            .admits(
                &Requested {
                    plan_hash: Some(hash(b"plan")),
                    ..same()
                },
                "s.db",
                "r",
            )
            .unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }
}
