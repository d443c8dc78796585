//! What an operator does about each way a target can end: one line per outcome reason, shown
//! next to blocked, parked and rolled-back targets in the HTML report and by `status`.

use crate::pipeline::message::Step;
use crate::pipeline::reason::{
    BlockedReason, Cause, HandshakeFailure, HealthFailure, ParkReason, RollbackReason, SkipReason,
};
use crate::pipeline::Outcome;

/// What to do about a target that ended with `outcome`. Once the cause is removed, `retry`
/// starts blocked, parked and rolled-back targets again in their run.
pub(crate) fn remedy(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Migrated => "Nothing: the app is on its regional subnet.",
        Outcome::Cancelled => {
            "The run was cancelled before this target finished: start a new run (`run --new-run`) to migrate it."
        }
        Outcome::Skipped(r) => skipped(*r),
        Outcome::Blocked(r) => blocked(*r),
        Outcome::RolledBack(r) => rolled_back(r),
        Outcome::Parked(r) => parked(r),
    }
}

/// The same for an outcome as the report and the ledger write it (`blocked:classic-vnet`);
/// `unfinished` is a target the run has not brought to an outcome yet.
pub(crate) fn remedy_for(label: &str) -> &'static str {
    if label == UNFINISHED {
        return "The run has not finished: run again with the same --state to resume it.";
    }
    match label.parse::<Outcome>() {
        Ok(o) => remedy(&o),
        Err(_) => "This version does not know this outcome: read the state file with the version that wrote it.",
    }
}

/// The report's outcome kind of a target with no outcome yet.
pub(crate) const UNFINISHED: &str = "unfinished";

fn skipped(r: SkipReason) -> &'static str {
    match r {
        SkipReason::NoIntegration | SkipReason::AlreadyRegional => {
            "Nothing: there is no gateway-based connection to migrate."
        }
        SkipReason::NotFound => {
            "Nothing: the app no longer exists (ARM answered 404); take it out of the scope."
        }
        SkipReason::DryRun => "A dry run only planned it: run without --dry-run to migrate it.",
    }
}

fn blocked(r: BlockedReason) -> &'static str {
    match r {
        // Regional integration joins a VNet of the app's own region (arm-vnet reference §3.2).
        BlockedReason::CrossRegionNoPeering => {
            "The gateway VNet is in another region and no VNet of the app's region is peered with it: create or peer one there, then `retry --app ID` starts it again."
        }
        // Two regional-integration subnets per plan (arm-vnet reference §6).
        BlockedReason::PlanSubnetLimit => {
            "The plan already uses its two regional-integration VNets: move the app to another plan, or its gateway connection to a VNet the plan uses, then `retry --app ID` starts it again."
        }
        BlockedReason::NoAddressSpace => {
            "The destination VNet has no free block for the plan's subnet (sized for twice the plan's maximum instances, arm-vnet reference §5): add an address prefix to the VNet, then `retry --app ID` starts it again."
        }
        BlockedReason::ClassicVnet => {
            "The app is connected to a classic VNet, which regional integration cannot join: migrate that VNet to Resource Manager, then `retry --app ID` starts it again."
        }
        // Free, Shared, Consumption and Isolated have no regional integration (arm-vnet
        // reference §6).
        BlockedReason::UnsupportedSku => {
            "The plan's tier has no regional integration: scale the plan to Basic or above, then `retry --app ID` starts it again."
        }
        // `swiftSupported: false` on the app's scale unit (arm-vnet reference §3.1).
        BlockedReason::ScaleUnitUnsupported => {
            "The plan's scale unit does not support regional integration: move the app to a new plan (on a current scale unit), then `retry --app ID` starts it again."
        }
        BlockedReason::SubnetInUse => {
            "The subnet the plan would use holds other resources, belongs to another plan or is too small: free or enlarge it, or name another in the policy (subnet.name), then `retry --app ID` starts it again."
        }
        BlockedReason::Drifted => {
            "ARM changed since the plan file was made: make a new plan (`plan --out-file`), review it and apply it (`run --plan`)."
        }
    }
}

fn rolled_back(r: &RollbackReason) -> &'static str {
    match r {
        RollbackReason::Requested => {
            "Rolled back on request: the app is on its gateway connection again; nothing to do unless it should be migrated after all."
        }
        // The refusals ARM is known to send for the join (arm-vnet reference §3.2).
        RollbackReason::ConnectRejected(_) => {
            "ARM refused to join the subnet (its error code is in the reason: missing delegation, plan VNet limit, subnet of another plan, size or tier); the app is back on its gateway connection. Fix what the code names, then `retry --app ID` migrates it again."
        }
        RollbackReason::Unhealthy(h) => health(*h),
        RollbackReason::StepFailed { cause, .. } => match cause {
            Cause::ArmUnreachable | Cause::LedgerUnavailable => {
                "ARM or the state file stayed unreachable mid cut-over; the app is back on its gateway connection. Check the network and the credential, then `retry --app ID` migrates it again."
            }
            _ => {
                "A cut-over step kept failing (ARM's error code or status is in the reason); the app is back on its gateway connection. Fix the cause, then `retry --app ID` migrates it again."
            }
        },
    }
}

/// What `verify` found, the app then put back on its gateway connection.
fn health(h: HealthFailure) -> &'static str {
    match h {
        HealthFailure::NotConnected => {
            "ARM did not show the app on its new subnet after the join; it is back on its gateway connection. Check the subnet's delegation and the plan's VNet connections, then `retry --app ID` migrates it again."
        }
        HealthFailure::GatewayStillPresent => {
            "A gateway-based connection reappeared after the cut-over (another tool or person re-added it?); the app is back on its gateway connection. Find who did it, then `retry --app ID` migrates it again."
        }
        // Network-protected vaults are reachable over regional integration only if the subnet
        // is let in (arm-vnet reference §7).
        HealthFailure::KvReferencesUnresolved => {
            "Key Vault references that resolved before stopped resolving on the new subnet; the app is back on its gateway connection. Let the subnet reach the vault (firewall, private endpoint DNS), then `retry --app ID` migrates it again."
        }
        HealthFailure::ProbeFailed => {
            "The app's health probe failed on the new subnet; the app is back on its gateway connection. Check what it reaches through the subnet (NSG, route table, DNS), then `retry --app ID` migrates it again."
        }
    }
}

fn parked(r: &ParkReason) -> &'static str {
    match r {
        ParkReason::SubnetConflict => {
            "Writes of the plan's subnet kept colliding with other writers of the VNet: wait until they are done (or pause them), then `retry --app ID` starts it again."
        }
        ParkReason::Handshake(h) => handshake(*h),
        ParkReason::StepFailed { step, cause } => match (step, cause) {
            (Step::Rollback, _) => {
                "URGENT: rollback failed, the app may be on no VNet at all. Re-add its gateway connection by hand (the state file keeps the saved connection; arm-vnet reference §2.2) or join it to its planned subnet."
            }
            // `rollback: manual` in the policy: verify parks instead of rolling back.
            (Step::Verify, _) => {
                "The app is on its new subnet but failed its health check, and the policy leaves rollback to you: fix the app's access through the subnet, or put it back on its gateway connection by hand."
            }
            (_, Cause::ArmUnreachable | Cause::LedgerUnavailable) => {
                "ARM or the state file stayed unreachable before any change to the app: check the network and the credential, then run again with the same --state."
            }
            _ => {
                "A step before the cut-over kept failing (ARM's error code or status is in the reason); nothing was changed on the app. Fix the cause (permissions, locks, quotas), then `retry --app ID` starts it again."
            }
        },
    }
}

/// Which part of re-adding the gateway connection was refused (arm-vnet reference §2.2).
fn handshake(h: HandshakeFailure) -> &'static str {
    match h {
        HandshakeFailure::GatewayMissing => {
            "URGENT: the app is on no VNet and its VNet has no VPN gateway any more: create a route-based point-to-site gateway (or join the app to a regional subnet by hand)."
        }
        HandshakeFailure::RootCertificateRefused => {
            "URGENT: the app is on no VNet: the gateway refused the app's certificate; add it as a point-to-site root certificate by hand (the state file keeps its certBlob), then sync the network."
        }
        HandshakeFailure::PackageRefused => {
            "URGENT: the app is on no VNet: the gateway would not produce a VPN client package, or the app refused it; check the gateway's point-to-site configuration (SSTP, address pool), then sync the network."
        }
        HandshakeFailure::NotConnected => {
            "URGENT: the gateway connection is back but not in sync: use \"Sync network\" on the app's plan."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reason::HealthFailure;

    /// Every outcome the pipeline can write, reason by reason (steps and causes by kind).
    fn every_outcome() -> Vec<Outcome> {
        let causes = [
            Cause::Arm("AuthorizationFailed".into()),
            Cause::Http(500),
            Cause::ArmUnreachable,
            Cause::LedgerUnavailable,
            Cause::UnexpectedState,
            Cause::Health(HealthFailure::ProbeFailed),
        ];
        let mut all = vec![Outcome::Migrated, Outcome::Cancelled];
        all.extend(SkipReason::ALL.iter().map(|r| Outcome::Skipped(*r)));
        all.extend(BlockedReason::ALL.iter().map(|r| Outcome::Blocked(*r)));
        all.push(Outcome::RolledBack(RollbackReason::Requested));
        all.push(Outcome::RolledBack(RollbackReason::ConnectRejected(
            "BadRequest".into(),
        )));
        all.extend(
            HealthFailure::ALL
                .iter()
                .map(|h| Outcome::RolledBack(RollbackReason::Unhealthy(*h))),
        );
        all.push(Outcome::Parked(ParkReason::SubnetConflict));
        all.extend(
            HandshakeFailure::ALL
                .iter()
                .map(|h| Outcome::Parked(ParkReason::Handshake(*h))),
        );
        for step in Step::ALL {
            for cause in &causes {
                all.push(Outcome::RolledBack(RollbackReason::StepFailed {
                    step,
                    cause: cause.clone(),
                }));
                all.push(Outcome::Parked(ParkReason::StepFailed {
                    step,
                    cause: cause.clone(),
                }));
            }
        }
        all
    }

    #[test]
    fn every_reason_has_a_remedy_and_its_wire_text_finds_it() {
        for o in every_outcome() {
            let r = remedy(&o);
            assert!(r.len() > 20 && r.ends_with('.'), "{o}: {r:?}");
            assert_eq!(remedy_for(&o.to_string()), r, "{o}");
        }
        // Each blocked reason, handshake part and health failure says something of its own.
        let distinct = |v: Vec<&str>| {
            let n = v.len();
            let mut d = v;
            d.sort();
            d.dedup();
            assert_eq!(d.len(), n, "{d:?}");
        };
        distinct(
            BlockedReason::ALL
                .iter()
                .map(|r| remedy(&Outcome::Blocked(*r)))
                .collect(),
        );
        distinct(
            HandshakeFailure::ALL
                .iter()
                .map(|h| remedy(&Outcome::Parked(ParkReason::Handshake(*h))))
                .collect(),
        );
        distinct(
            HealthFailure::ALL
                .iter()
                .map(|h| remedy(&Outcome::RolledBack(RollbackReason::Unhealthy(*h))))
                .collect(),
        );
    }

    #[test]
    fn a_failed_rollback_is_urgent_and_failed_targets_are_retried() {
        let parked = |step, cause| remedy(&Outcome::Parked(ParkReason::StepFailed { step, cause }));
        assert!(parked(Step::Rollback, Cause::Http(500)).starts_with("URGENT"));
        assert!(parked(Step::Plan, Cause::Http(500)).contains("nothing was changed"));
        assert!(remedy_for("parked:gateway-missing").starts_with("URGENT"));
        assert!(remedy_for("rolled-back:connect-rejected:BadRequest").contains("retry --app"));
        assert!(remedy_for("blocked:no-address-space").contains("retry --app"));
        assert!(remedy_for("blocked:drifted").contains("plan --out-file"));
        assert!(remedy_for(UNFINISHED).contains("resume"));
        assert!(remedy_for("blocked:teleported").contains("does not know"));
    }

    /// The runbook's outcome table says what `status` says: every remedy word for word, and
    /// every blocked reason by its label.
    #[test]
    fn the_runbook_quotes_every_remedy() {
        let runbook = include_str!("../../docs/runbooks.md");
        for o in every_outcome() {
            let r = remedy(&o);
            assert!(
                runbook.contains(r),
                "docs/runbooks.md lacks the remedy of {o}: {r}"
            );
        }
        for r in BlockedReason::ALL {
            let label = format!("`{}`", Outcome::Blocked(*r));
            assert!(runbook.contains(&label), "docs/runbooks.md lacks {label}");
        }
    }
}
