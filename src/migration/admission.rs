//! Whether a step message may run at all. A message is data from the queue, and anyone who can
//! send to the queue can forge one: its ids name what the step reads and, worse, what it
//! writes into request bodies (a rollback PUTs `gateway.vnetResourceId` into the app's
//! connection; a cut-over PATCHes `plan.subnet` into the site), where the ARM client's scope
//! guard, which judges request paths only, never looks. So every id is checked against the
//! configured scope before anything is read or written, and a refused message is never
//! executed: the Functions handler refuses it before the engine (Service Bus dead-letters it
//! at MaxDeliveryCount; the refusal is in every invocation's logs), and the reconciler checks
//! again on every path, ending the step as failed with cause `out-of-scope`.
//!
//! The rules, stricter than ARM where ARM is looser (project rule: never kinder than ARM):
//! - the target lies in the write scope and in the policy's scope (subscriptions, resource
//!   groups, exclusions; tags need ARM and are judged by `discover`);
//! - every VNet and subnet (the planned ones, the saved gateway VNet) lies in the write scope,
//!   is not excluded, and is in the **target's own subscription**;
//! - a dry-run message is held to all but the write scope: it writes nothing, and a dry run's
//!   client has no write scope at all. ARM itself accepts a
//!   regional integration subnet in another subscription when that subscription has
//!   Microsoft.Web registered (arm-vnet reference §3.2, [DOC-vnet-2023]), but a multi-plan
//!   subnet may only be shared by plans of the same subscription ([DOC-vnet-2025], §3.2) and
//!   nothing this tool plans leaves the target's subscription, so another subscription in a
//!   message can only be a forgery or a corruption.

use std::fmt;

use crate::azure::ResourceId;
use crate::pipeline::message::StepMessage;
use crate::policy;

/// The field of a step message an id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Target,
    PlanVnet,
    PlanSubnet,
    GatewayVnet,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message's own JSON names, so an operator finds the field in the body.
        f.write_str(match self {
            Field::Target => "target",
            Field::PlanVnet => "plan.vnet",
            Field::PlanSubnet => "plan.subnet",
            Field::GatewayVnet => "gateway.vnetResourceId",
        })
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfScope {
    #[error("out-of-scope: {field} {id} lies outside the write scope")]
    NotWritable { field: Field, id: String },
    #[error("out-of-scope: {field} {id} is excluded or outside the policy's scope")]
    NotInPolicy { field: Field, id: String },
    #[error(
        "out-of-scope: {field} {id} is in subscription {subscription}, not the target's ({target_subscription})"
    )]
    OtherSubscription {
        field: Field,
        id: String,
        subscription: String,
        target_subscription: String,
    },
}

/// What a message must lie in: the client's write scope and the policy's scope.
#[derive(Debug, Clone, Copy)]
pub struct MessageScope<'a> {
    pub writable: &'a [ResourceId],
    pub policy: &'a policy::Scope,
}

impl MessageScope<'_> {
    fn writable(&self, msg: &StepMessage, field: Field, id: &ResourceId) -> Result<(), OutOfScope> {
        if msg.dry_run || self.writable.iter().any(|scope| id.is_within(scope)) {
            Ok(())
        } else {
            Err(OutOfScope::NotWritable {
                field,
                id: id.to_string(),
            })
        }
    }
}

/// Checks every id of `msg` (see the module comment for the rules). Pure.
pub fn message_in_scope(msg: &StepMessage, scope: MessageScope<'_>) -> Result<(), OutOfScope> {
    let target = &msg.target;
    scope.writable(msg, Field::Target, target)?;
    if !scope.policy.places(target) {
        return Err(OutOfScope::NotInPolicy {
            field: Field::Target,
            id: target.to_string(),
        });
    }
    let plan = msg
        .plan
        .iter()
        .flat_map(|p| [(Field::PlanVnet, &p.vnet), (Field::PlanSubnet, &p.subnet)]);
    let gateway = msg
        .gateway
        .iter()
        .map(|g| (Field::GatewayVnet, &g.vnet_resource_id));
    for (field, id) in plan.chain(gateway) {
        if !id
            .subscription()
            .eq_ignore_ascii_case(target.subscription())
        {
            return Err(OutOfScope::OtherSubscription {
                field,
                id: id.to_string(),
                subscription: id.subscription().to_string(),
                target_subscription: target.subscription().to_string(),
            });
        }
        scope.writable(msg, field, id)?;
        if scope.policy.excludes(id) {
            return Err(OutOfScope::NotInPolicy {
                field,
                id: id.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::message::{GatewaySnapshot, Origin, PlannedSubnet, RunId, Step};

    const S: &str = "11111111-1111-1111-1111-111111111111";
    const OTHER: &str = "22222222-2222-2222-2222-222222222222";

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    fn site(sub: &str, rg: &str) -> ResourceId {
        id(&format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/app"
        ))
    }

    fn vnet(sub: &str) -> ResourceId {
        id(&format!(
            "/subscriptions/{sub}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub"
        ))
    }

    fn msg(target: ResourceId, plan: Option<&str>, gateway: Option<&str>) -> StepMessage {
        let mut m = StepMessage::new(RunId("r-1".into()), target, Step::Rollback, Origin::Cli);
        m.plan = plan.map(|sub| PlannedSubnet {
            vnet: vnet(sub),
            subnet: vnet(sub).child("subnets", "snet").unwrap(),
            prefix: "10.0.0.0/26".into(),
            create: false,
            required_prefix_length: None,
        });
        m.gateway = gateway.map(|sub| GatewaySnapshot {
            name: "hub".into(),
            vnet_resource_id: vnet(sub),
            dns_servers: None,
            cert_thumbprint: None,
            cert_blob: None,
            routes: None,
        });
        m
    }

    fn check(m: &StepMessage, writable: &[&str], policy: &policy::Scope) -> Result<(), OutOfScope> {
        let writable: Vec<ResourceId> = writable
            .iter()
            .map(|s| ResourceId::subscription_id(s).unwrap())
            .collect();
        message_in_scope(
            m,
            MessageScope {
                writable: &writable,
                policy,
            },
        )
    }

    /// On the embedded path the reconciler refuses the message itself: nothing is read or
    /// written and the step fails naming `out-of-scope`. ARM here is a closed port: a
    /// message that reached a step would fail there and be re-sent, never parked.
    #[tokio::test]
    async fn the_reconciler_refuses_an_out_of_scope_message_without_any_arm_call() {
        use std::sync::Arc;

        use crate::azure::arm::{ArmClient, ArmConfig};
        use crate::azure::credential::StaticToken;
        use crate::migration::{Migration, StepContext};
        use crate::pipeline::engine::Engine;
        use crate::pipeline::reason::{Cause, ParkReason};
        use crate::pipeline::sqlite::test_support::store;
        use crate::pipeline::Outcome;

        let (_dir, store) = store();
        let arm = ArmClient::new(
            ArmConfig::new(
                "http://127.0.0.1:9",
                vec![ResourceId::subscription_id(S).unwrap()],
            ),
            Arc::new(StaticToken::new("t")),
        )
        .unwrap();
        let migration = Migration::new(StepContext::new(
            arm.clone(),
            Arc::new(crate::policy::Policy::default()),
            Arc::new(store),
        ));
        let forged = msg(site(S, "apps"), None, Some(OTHER));
        assert!(matches!(
            migration.admit(&forged),
            Err(OutOfScope::OtherSubscription {
                field: Field::GatewayVnet,
                ..
            })
        ));
        let executed = Engine::new(migration).execute(&forged).await;
        assert_eq!(
            executed.outcome,
            Some(Outcome::Parked(ParkReason::StepFailed {
                step: Step::Rollback,
                cause: Cause::OutOfScope
            }))
        );
        assert!(executed.next.is_empty());
        assert_eq!(arm.metrics().requests, 0);
    }

    #[test]
    fn a_message_wholly_in_the_targets_subscription_is_admitted() {
        let p = policy::Scope::default();
        assert_eq!(
            check(&msg(site(S, "apps"), Some(S), Some(S)), &[S], &p),
            Ok(())
        );
        // Case does not make an id another one.
        let upper = msg(site(&S.to_uppercase(), "APPS"), Some(S), Some(S));
        assert_eq!(check(&upper, &[S], &p), Ok(()));
    }

    #[test]
    fn each_field_in_another_subscription_is_refused_and_named() {
        let p = policy::Scope::default();
        // Both subscriptions writable: the rule is the target's own subscription.
        let both = [S, OTHER];
        let e = check(&msg(site(S, "apps"), None, Some(OTHER)), &both, &p).unwrap_err();
        assert!(
            matches!(&e, OutOfScope::OtherSubscription { field: Field::GatewayVnet, subscription, .. } if subscription == OTHER),
            "{e}"
        );
        assert!(e.to_string().contains("gateway.vnetResourceId"), "{e}");
        let e = check(&msg(site(S, "apps"), Some(OTHER), None), &both, &p).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::OtherSubscription {
                    field: Field::PlanVnet,
                    ..
                }
            ),
            "{e}"
        );
        // A target outside the write scope, even with everything else beside it.
        let e = check(
            &msg(site(OTHER, "apps"), Some(OTHER), Some(OTHER)),
            &[S],
            &p,
        )
        .unwrap_err();
        assert_eq!(
            e,
            OutOfScope::NotWritable {
                field: Field::Target,
                id: site(OTHER, "apps").to_string()
            }
        );
        // The target's own subscription, but not writable: its VNet is refused too.
        let e = check(&msg(site(S, "apps"), Some(S), None), &[OTHER], &p).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotWritable {
                    field: Field::Target,
                    ..
                }
            ),
            "{e}"
        );
        // A dry run's client writes nowhere; its messages are held to the other rules.
        let dry = |m: StepMessage| m.with_dry_run(true);
        assert_eq!(
            check(&dry(msg(site(S, "apps"), Some(S), Some(S))), &[], &p),
            Ok(())
        );
        let e = check(&dry(msg(site(S, "apps"), None, Some(OTHER))), &[], &p).unwrap_err();
        assert!(matches!(e, OutOfScope::OtherSubscription { .. }), "{e}");
    }

    #[test]
    fn the_policys_subscriptions_groups_and_exclusions_apply() {
        let in_policy = policy::Scope {
            subscriptions: vec![S.into()],
            resource_groups: vec!["apps".into()],
            exclude: vec![id(&format!("/subscriptions/{S}/resourceGroups/apps/providers/Microsoft.Web/sites/app/slots/old"))],
            ..Default::default()
        };
        let both = [S, OTHER];
        assert_eq!(
            check(&msg(site(S, "apps"), Some(S), Some(S)), &both, &in_policy),
            Ok(())
        );
        let e = check(&msg(site(S, "other-rg"), None, None), &both, &in_policy).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotInPolicy {
                    field: Field::Target,
                    ..
                }
            ),
            "{e}"
        );
        let e = check(&msg(site(OTHER, "apps"), None, None), &both, &in_policy).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotInPolicy {
                    field: Field::Target,
                    ..
                }
            ),
            "{e}"
        );
        let slot = site(S, "apps").child("slots", "old").unwrap();
        let e = check(&msg(slot, None, None), &both, &in_policy).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotInPolicy {
                    field: Field::Target,
                    ..
                }
            ),
            "{e}"
        );
        // An excluded VNet is not written into, even from an admitted target.
        let no_hub = policy::Scope {
            exclude: vec![vnet(S)],
            ..Default::default()
        };
        let e = check(&msg(site(S, "apps"), Some(S), None), &[S], &no_hub).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotInPolicy {
                    field: Field::PlanVnet,
                    ..
                }
            ),
            "{e}"
        );
        let e = check(&msg(site(S, "apps"), None, Some(S)), &[S], &no_hub).unwrap_err();
        assert!(
            matches!(
                e,
                OutOfScope::NotInPolicy {
                    field: Field::GatewayVnet,
                    ..
                }
            ),
            "{e}"
        );
    }
}
