//! The migration scenarios of issue 3, each with its expected outcome, run through the real
//! HTTP client against the simulator on loopback and the embedded SQLite pipeline.

use serde_json::{json, Value};
use vnet_migrate::azure::ResourceId;
use vnet_migrate::fleet::Fleet;
use vnet_migrate::policy::Policy;
use vnet_migrate::sim::builder::FleetBuilder;
use vnet_migrate::sim::{FaultMode, InjectedFault};

use crate::support::{base, hub, outcome, Rig};

const WE: &str = "westeurope";
const NE: &str = "northeurope";

/// A hub VNet with a gateway in `loc`.
fn app(b: &mut FleetBuilder, plan: &ResourceId, name: &str, vnet: &ResourceId) -> ResourceId {
    let s = b.site("apps", name, plan);
    b.gateway_connection(&s, vnet);
    s
}

/// One gateway-connected app on a one-instance P1v2 plan in a West Europe hub.
fn one_app() -> (FleetBuilder, ResourceId) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let a = app(&mut b, &plan, "app1", &v);
    (b, a)
}

#[tokio::test]
async fn same_region_migration() {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 2);
    let a = app(&mut b, &plan, "app1", &v);
    b.key_vault_reference(&a, "Secret1", "Resolved");
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "migrated");
    let subnet = rig.subnet_of(&a).expect("regional");
    assert_eq!(subnet.vnet().unwrap(), v);
    assert_eq!(subnet.name(), "snet-plan1-integration");
    assert_eq!(rig.gateway_connections(&a), 0);
    rig.assert_invariants(&report);
}

/// The app's gateway VNet sits in a subscription the run may not write to (its sites are all
/// in another): the subnet write is refused by the client's own scope guard, nothing is sent,
/// and the target is parked naming that cause, `out-of-scope` (it read `arm-unreachable`).
#[tokio::test]
async fn a_vnet_outside_the_write_scope_parks_the_target_as_out_of_scope() {
    let (b, a) = one_app();
    // Move the `net` group (hub VNet and gateway) to a second subscription.
    let text = serde_json::to_string(&b.build()).unwrap().replace(
        "00000000-0000-0000-0000-000000000001/resourceGroups/net",
        "00000000-0000-0000-0000-000000000002/resourceGroups/net",
    );
    let rig = Rig::start(serde_json::from_str::<Fleet>(&text).unwrap()).await;
    assert_eq!(
        rig.subscriptions(),
        ["00000000-0000-0000-0000-000000000001"]
    );
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(
        outcome(&report, &a),
        "parked:prepare-subnet-failed:out-of-scope"
    );
    assert_eq!(
        rig.sim.stats().writes,
        0,
        "the refused write never left the client"
    );
    assert_eq!(rig.gateway_connections(&a), 1);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn cross_region_with_connected_peering_uses_the_local_vnet() {
    let mut b = base();
    let gw = hub(&mut b, "hub-ne", NE, "10.2.0.0/16");
    let local = b.vnet("net", "spoke-we", WE, &["10.3.0.0/16"]);
    b.peering(&local, &gw, "Connected");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let a = app(&mut b, &plan, "app1", &gw);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "migrated");
    assert_eq!(rig.subnet_of(&a).unwrap().vnet().unwrap(), local);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn cross_region_without_peering_is_blocked_and_untouched() {
    let mut b = base();
    let gw = hub(&mut b, "hub-ne", NE, "10.2.0.0/16");
    let local = b.vnet("net", "spoke-we", WE, &["10.3.0.0/16"]);
    b.peering(&local, &gw, "Initiated");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let a = app(&mut b, &plan, "app1", &gw);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "blocked:cross-region-no-peering");
    assert_eq!(rig.gateway_connections(&a), 1);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn three_gateway_vnets_on_one_plan_two_migrate() {
    let mut b = base();
    let v1 = hub(&mut b, "hub-a", WE, "10.1.0.0/16");
    let v2 = hub(&mut b, "hub-b", WE, "10.2.0.0/16");
    let v3 = hub(&mut b, "hub-c", WE, "10.3.0.0/16");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 3);
    let a1 = app(&mut b, &plan, "a1", &v1);
    let a2 = app(&mut b, &plan, "a2", &v1);
    let b1 = app(&mut b, &plan, "b1", &v2);
    let b2 = app(&mut b, &plan, "b2", &v2);
    let c1 = app(&mut b, &plan, "c1", &v3);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    for t in [&a1, &a2, &b1, &b2] {
        assert_eq!(outcome(&report, t), "migrated", "{t}");
    }
    assert_eq!(outcome(&report, &c1), "blocked:plan-subnet-limit");
    assert_eq!(rig.gateway_connections(&c1), 1);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn full_vnet_is_blocked() {
    let mut b = base();
    let v = b.vnet("net", "full", WE, &["10.9.0.0/24"]);
    b.subnet(&v, "GatewaySubnet", "10.9.0.0/25");
    b.subnet(&v, "workloads", "10.9.0.128/25");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let a = app(&mut b, &plan, "app1", &v);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "blocked:no-address-space");
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn reuses_the_subnet_already_linked_to_the_plan() {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let existing = b.subnet(&v, "legacy-integration", "10.1.200.0/26");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 2);
    let done = b.site("apps", "already", &plan);
    b.regional(&done, &existing);
    let a = app(&mut b, &plan, "app1", &v);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &done), "skipped:already-regional");
    assert_eq!(outcome(&report, &a), "migrated");
    assert_eq!(rig.subnet_of(&a).unwrap(), existing);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn slot_migrates_while_production_has_no_integration() {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", WE, "S1", 1);
    let site = b.site("apps", "app1", &plan);
    let slot = b.slot(&site, "staging");
    b.gateway_connection(&slot, &v);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &site), "skipped:no-integration");
    assert_eq!(outcome(&report, &slot), "migrated");
    assert!(rig.subnet_of(&site).is_none());
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn mixed_case_resource_ids() {
    let mut b = base();
    let v = hub(&mut b, "Hub-WE", WE, "10.1.0.0/16");
    let plan = b.plan("apps", "Plan1", WE, "P1v2", 1);
    let a = b.site("apps", "App1", &plan);
    // The connection names the VNet in another casing, as ARM sometimes returns it.
    let shouty = ResourceId::parse(
        &v.as_str()
            .to_uppercase()
            .replace("/SUBSCRIPTIONS/", "/subscriptions/"),
    )
    .unwrap();
    b.gateway_connection(&a, &shouty);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "migrated");
    assert_eq!(rig.subnet_of(&a).unwrap().vnet().unwrap(), v);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn classic_vnet_is_blocked() {
    let mut b = base();
    let c = b.classic_vnet("net", "classic1", WE);
    let plan = b.plan("apps", "plan1", WE, "S1", 1);
    let a = app(&mut b, &plan, "app1", &c);
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "blocked:classic-vnet");
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn connect_rejected_by_arm_rolls_back_to_the_gateway() {
    let (mut b, a) = one_app();
    b.tag(&a, "vnet-migrate-sim", "reject-connect");
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    let o = outcome(&report, &a);
    assert!(o.starts_with("rolled-back:connect-rejected"), "{o}");
    assert_eq!(
        rig.gateway_connections(&a),
        1,
        "gateway connection restored"
    );
    assert!(rig.subnet_of(&a).is_none());
    // The gateway already trusted the app's certificate: it was not rewritten.
    let gw = rig
        .fleet
        .resources
        .iter()
        .find(|r| r["type"] == "Microsoft.Network/virtualNetworkGateways")
        .unwrap();
    let id = ResourceId::parse(gw["id"].as_str().unwrap()).unwrap();
    assert_eq!(rig.resource(&id).unwrap()["etag"], gw["etag"]);
    rig.assert_invariants(&report);
}

/// The gateway resource of the fleet (the only one in these scenarios).
fn gateway_of(fleet: &mut Fleet) -> &mut Value {
    fleet
        .resources
        .iter_mut()
        .find(|r| r["type"] == "Microsoft.Network/virtualNetworkGateways")
        .expect("a gateway")
}

#[tokio::test]
async fn rollback_re_adds_the_root_certificate_the_gateway_lost() {
    let (mut b, a) = one_app();
    b.tag(&a, "vnet-migrate-sim", "reject-connect");
    let conn_id = ResourceId::parse(&format!("{a}/virtualNetworkConnections/hub-we")).unwrap();
    let mut fleet = b.build();
    let cert = fleet
        .resources
        .iter()
        .find(|r| r["id"] == conn_id.as_str())
        .unwrap()["properties"]["certBlob"]
        .clone();
    let gw = gateway_of(&mut fleet);
    gw["properties"]["vpnClientConfiguration"]["vpnClientRootCertificates"] = json!([]);
    let gw_id = ResourceId::parse(gw["id"].as_str().unwrap()).unwrap();
    let rig = Rig::start(fleet).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    let o = outcome(&report, &a);
    assert!(o.starts_with("rolled-back:connect-rejected"), "{o}");
    let roots = rig.resource(&gw_id).unwrap()["properties"]["vpnClientConfiguration"]
        ["vpnClientRootCertificates"]
        .clone();
    assert!(
        roots
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["properties"]["publicCertData"] == cert),
        "certificate re-added: {roots}"
    );
    let conn = rig.resource(&conn_id).expect("connection re-declared");
    assert_eq!(conn["properties"]["resyncRequired"], false);
    let handed = rig
        .resource(&ResourceId::parse(&format!("{conn_id}/gateways/primary")).unwrap())
        .expect("a VPN package handed to the app");
    assert!(handed["properties"]["vpnPackageUri"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    assert!(rig.subnet_of(&a).is_none());
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn rollback_through_a_vnet_without_gateway_parks() {
    let mut b = base();
    let v = b.vnet("net", "no-gw", WE, &["10.1.0.0/16"]);
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let a = app(&mut b, &plan, "app1", &v);
    b.tag(&a, "vnet-migrate-sim", "reject-connect");
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "parked:gateway-missing");
    // Nothing was declared that could not be connected.
    assert_eq!(rig.gateway_connections(&a), 0);
    assert!(rig.subnet_of(&a).is_none());
    rig.assert_invariants(&report);
}

/// A rollback whose hand-over answers 503 more often than the ARM client retries: the step
/// fails transiently, the error policy runs it again, and the second run continues from the
/// declared connection to the end.
#[tokio::test]
async fn a_transient_failure_mid_handshake_is_retried_not_parked() {
    let (mut b, a) = one_app();
    b.tag(&a, "vnet-migrate-sim", "reject-connect");
    let rig = Rig::start(b.build()).await;
    rig.sim.inject(InjectedFault {
        method: Some("PUT".into()),
        path_contains: Some("/gateways/primary".into()),
        status: 503,
        body: None,
        // Retry at once: the point is the retries, not their pacing.
        headers: [("Retry-After".to_string(), "0".to_string())].into(),
        times: 8,
        after_apply: false,
        mode: FaultMode::Answer,
    });
    let report = rig.run(&Policy::default(), "s.db").await;
    let o = outcome(&report, &a);
    assert!(o.starts_with("rolled-back:connect-rejected"), "{o}");
    assert_eq!(rig.sim.stats().faults_injected, 8);
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn a_gateway_refusing_the_root_certificate_parks() {
    let (mut b, a) = one_app();
    b.tag(&a, "vnet-migrate-sim", "reject-connect");
    let mut fleet = b.build();
    gateway_of(&mut fleet)["properties"]["vpnClientConfiguration"]["vpnClientRootCertificates"] =
        json!([]);
    let rig = Rig::start(fleet).await;
    rig.sim.inject(InjectedFault {
        method: Some("PUT".into()),
        path_contains: Some("/virtualNetworkGateways/".into()),
        status: 400,
        body: Some(json!({"error": {"code": "InvalidRequestFormat", "message": "refused"}})),
        headers: Default::default(),
        times: 1,
        after_apply: false,
        mode: FaultMode::Answer,
    });
    let report = rig.run(&Policy::default(), "s.db").await;
    assert_eq!(outcome(&report, &a), "parked:root-certificate-refused");
    rig.assert_invariants(&report);
}

async fn kv_breaks(policy: Policy) -> (Rig, ResourceId, String) {
    let (mut b, a) = one_app();
    b.key_vault_reference(&a, "DbPassword", "Resolved");
    b.tag(&a, "vnet-migrate-sim", "kv-breaks-after-connect");
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&policy, "s.db").await;
    rig.assert_invariants(&report);
    let o = outcome(&report, &a);
    (rig, a, o)
}

#[tokio::test]
async fn key_vault_references_breaking_after_connect_roll_back() {
    let (rig, a, o) = kv_breaks(Policy::default()).await;
    assert_eq!(o, "rolled-back:kv-references-unresolved");
    assert_eq!(rig.gateway_connections(&a), 1);
    assert!(rig.subnet_of(&a).is_none());
}

#[tokio::test]
async fn key_vault_references_breaking_after_connect_park_when_policy_says_so() {
    let policy = Policy::from_json(r#"{"rollback": "park"}"#).unwrap();
    let (rig, a, o) = kv_breaks(policy).await;
    assert_eq!(o, "parked:verify-failed:kv-references-unresolved");
    assert!(
        rig.subnet_of(&a).is_some(),
        "parked as it stands, for an operator"
    );
}

#[tokio::test]
async fn two_plans_in_one_vnet_get_distinct_subnets() {
    // Both plans compute the same lowest free block; the second subnet write is refused as
    // overlapping and that plan is decided again.
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let p1 = b.plan("apps", "plan1", WE, "P1v2", 1);
    let p2 = b.plan("apps", "plan2", WE, "P1v2", 1);
    let apps: Vec<ResourceId> = (0..3)
        .flat_map(|i| {
            [
                app(&mut b, &p1, &format!("x{i}"), &v),
                app(&mut b, &p2, &format!("y{i}"), &v),
            ]
        })
        .collect();
    let rig = Rig::start(b.build()).await;
    let report = rig.run(&Policy::default(), "s.db").await;
    for a in &apps {
        assert_eq!(outcome(&report, a), "migrated", "{a}");
    }
    let s1 = rig.subnet_of(&apps[0]).unwrap();
    let s2 = rig.subnet_of(&apps[1]).unwrap();
    assert_ne!(s1, s2);
    rig.assert_invariants(&report);
}

// ---------------------------------------------------------------------------------------
// ARM changed during the run: reconcile from what ARM shows (issue 8, item 9)

mod changed_during_the_run {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use vnet_migrate::azure::ResourceId;
    use vnet_migrate::pipeline::message::{Origin, RunId, Step, StepMessage};
    use vnet_migrate::pipeline::sqlite::SqliteStore;
    use vnet_migrate::policy::Policy;
    use vnet_migrate::sim::SimOptions;

    use super::{app, base, hub, WE};
    use crate::support::Rig;

    /// Runs `first` and every step it leads to, one at a time; `before` may change ARM before
    /// a step runs. Returns each target's outcome.
    async fn drive<F, Fut>(
        rig: &Rig,
        first: Vec<ResourceId>,
        mut before: F,
    ) -> BTreeMap<ResourceId, String>
    where
        F: FnMut(StepMessage) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let store = Arc::new(SqliteStore::open(&rig.dir.file("drive.db")).unwrap());
        let engine = rig.engine(store, &Policy::default());
        let run = RunId("r-changed".into());
        let mut queue: VecDeque<StepMessage> = first
            .into_iter()
            .map(|t| StepMessage::new(run.clone(), t, Step::Discover, Origin::Cli))
            .collect();
        let mut outcomes = BTreeMap::new();
        while let Some(msg) = queue.pop_front() {
            before(msg.clone()).await;
            let done = engine.execute(&msg).await;
            if let Some(o) = &done.outcome {
                outcomes.insert(msg.target.clone(), o.to_string());
            }
            queue.extend(done.next.into_iter().map(|o| o.message));
        }
        outcomes
    }

    #[tokio::test]
    async fn a_slot_created_while_its_site_migrates_is_migrated_too() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let plan = b.plan("apps", "plan1", WE, "P1v2", 2);
        let a = app(&mut b, &plan, "app1", &v);
        let rig = Rig::start(b.build()).await;
        let slot = ResourceId::parse(&format!("{a}/slots/late")).unwrap();
        let created = Arc::new(AtomicBool::new(false));
        let outcomes = drive(&rig, vec![a.clone()], |msg| {
            let (arm, a, slot, v) = (rig.arm.clone(), a.clone(), slot.clone(), v.clone());
            let created = created.clone();
            async move {
                // The slot appears (with its own gateway connection) after the site's
                // `discover` listed the slots, just before the site is verified.
                if msg.step == Step::Verify && msg.target == a && !created.swap(true, SeqCst) {
                    let _: serde_json::Value = arm
                        .put(slot.as_str(), &json!({"location": WE, "properties": {}}))
                        .await
                        .unwrap();
                    let _: serde_json::Value = arm
                        .put(
                            &format!("{slot}/virtualNetworkConnections/hub-we"),
                            &json!({"location": WE, "properties": {"vnetResourceId": v.as_str()}}),
                        )
                        .await
                        .unwrap();
                }
            }
        })
        .await;
        assert_eq!(outcomes[&a], "migrated");
        assert_eq!(outcomes.get(&slot).map(String::as_str), Some("migrated"));
        assert_eq!(rig.gateway_connections(&slot), 0);
        assert_eq!(rig.subnet_of(&slot), rig.subnet_of(&a));
    }

    /// `plan` takes the plan id `discover` carried; an app moved to another plan or deleted
    /// in between is found out from the carried plan's member list, and the site is read.
    #[tokio::test]
    async fn an_app_moved_or_deleted_after_discover_is_planned_from_what_arm_shows() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let plan1 = b.plan("apps", "plan1", WE, "P1v2", 2);
        let plan2 = b.plan("apps", "plan2", WE, "P1v2", 2);
        let moved = app(&mut b, &plan1, "moved", &v);
        let gone = app(&mut b, &plan1, "gone", &v);
        let rig = Rig::start(b.build()).await;
        let outcomes = drive(&rig, vec![moved.clone(), gone.clone()], |msg| {
            let (arm, plan2) = (rig.arm.clone(), plan2.clone());
            async move {
                if msg.step != Step::Plan {
                    return;
                }
                if msg.target.name() == "moved" {
                    let _: serde_json::Value = arm
                        .patch(
                            msg.target.as_str(),
                            &json!({"properties": {"serverFarmId": plan2.as_str()}}),
                        )
                        .await
                        .unwrap();
                } else {
                    arm.delete(msg.target.as_str()).await.unwrap();
                }
            }
        })
        .await;
        assert_eq!(outcomes[&moved], "migrated");
        assert_eq!(
            rig.subnet_of(&moved).map(|s| s.name().to_string()),
            Some("snet-plan2-integration".to_string())
        );
        assert_eq!(outcomes[&gone], "skipped:not-found");
    }

    #[tokio::test]
    async fn integration_changed_outside_the_run_ends_without_writing() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let plan = b.plan("apps", "plan1", WE, "P1v2", 2);
        let gone = app(&mut b, &plan, "gone", &v);
        let moved = app(&mut b, &plan, "moved", &v);
        let rig = Rig::start(b.build()).await;
        let planned = format!("{v}/subnets/snet-plan1-integration");
        let writes_after_change = Arc::new(AtomicU64::new(0));
        let outcomes = drive(&rig, vec![gone.clone(), moved.clone()], |msg| {
            let (arm, sim, planned) = (rig.arm.clone(), rig.sim.clone(), planned.clone());
            let writes_after_change = writes_after_change.clone();
            async move {
                if msg.step != Step::Disconnect {
                    return;
                }
                // Between `plan` and `disconnect` someone removes the gateway connection of
                // both apps and makes `moved` regional in the planned subnet.
                arm.delete(&format!("{}/virtualNetworkConnections/hub-we", msg.target))
                    .await
                    .unwrap();
                if msg.target.name() == "moved" {
                    let _: serde_json::Value = arm
                        .patch(
                            msg.target.as_str(),
                            &json!({"properties": {"virtualNetworkSubnetId": planned}}),
                        )
                        .await
                        .unwrap();
                }
                let s = sim.stats();
                writes_after_change.store(s.writes + s.deletes, SeqCst);
            }
        })
        .await;
        assert_eq!(outcomes[&gone], "skipped:no-integration");
        assert_eq!(outcomes[&moved], "skipped:already-regional");
        assert_eq!(rig.subnet_of(&gone), None);
        assert_eq!(
            rig.subnet_of(&moved)
                .map(|s| s.to_string().to_ascii_lowercase()),
            Some(planned.to_ascii_lowercase())
        );
        // The disconnects observed the change and wrote nothing.
        let s = rig.sim.stats();
        assert_eq!(s.writes + s.deletes, writes_after_change.load(SeqCst));
    }

    #[tokio::test]
    async fn a_lingering_service_association_link_holds_the_subnet_then_goes() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let plan = b.plan("apps", "plan1", WE, "P1v2", 2);
        let a = app(&mut b, &plan, "app1", &v);
        b.key_vault_reference(&a, "Secret", "Resolved");
        b.tag(&a, "vnet-migrate-sim", "kv-breaks-after-connect");
        let options = SimOptions {
            sal_linger: Duration::from_millis(1500),
            ..SimOptions::instant()
        };
        let rig = Rig::start_with(b.build(), options).await;
        let report = rig.run(&Policy::default(), "s.db").await;
        // connected, Key Vault broke, rolled back: the app left the subnet
        assert_eq!(
            crate::support::outcome(&report, &a),
            "rolled-back:kv-references-unresolved"
        );
        assert_eq!(rig.subnet_of(&a), None);
        let subnet = format!("{v}/subnets/snet-plan1-integration");
        let err = rig.arm.delete(&subnet).await.unwrap_err();
        assert_eq!(err.code(), Some("InUseSubnetCannotBeDeleted"), "{err}");
        // a delegation change is refused too while the link lingers
        let mut s: serde_json::Value = rig.arm.get(&subnet).await.unwrap();
        s["properties"]["delegations"] = json!([]);
        let err = rig
            .arm
            .put::<serde_json::Value>(&subnet, &s)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("SubnetMissingRequiredDelegation"), "{err}");
        tokio::time::sleep(Duration::from_millis(1700)).await;
        rig.arm.delete(&subnet).await.unwrap();
        assert!(rig
            .arm
            .get_opt::<serde_json::Value>(&subnet)
            .await
            .unwrap()
            .is_none());
    }
}

/// Contention, timing and failed operations as ARM answers them (issue 8): the simulator's
/// site and VNet locks, its slow 504 and its failing LROs, against the whole pipeline.
mod contention {
    use std::collections::BTreeSet;

    use serde_json::json;
    use vnet_migrate::sim::{FaultMode, InjectedFault, SimOptions, SimStats};

    use super::*;

    fn one_app() -> (vnet_migrate::sim::Fleet, ResourceId) {
        let (b, a) = super::one_app();
        (b.build(), a)
    }

    fn fault(method: &str, path: &str, mode: FaultMode) -> InjectedFault {
        InjectedFault {
            method: Some(method.into()),
            path_contains: Some(path.into()),
            status: 500,
            body: None,
            headers: Default::default(),
            times: 1,
            after_apply: false,
            mode,
        }
    }

    fn answer(
        method: &str,
        path: &str,
        status: u16,
        body: serde_json::Value,
        times: u32,
    ) -> InjectedFault {
        InjectedFault {
            status,
            body: Some(body),
            times,
            ..fault(method, path, FaultMode::Answer)
        }
    }

    async fn run_one(
        fleet: vnet_migrate::sim::Fleet,
        faults: Vec<InjectedFault>,
    ) -> (String, SimStats, Rig) {
        let a = fleet_target(&fleet);
        let rig = Rig::start(fleet).await;
        for f in faults {
            rig.sim.inject(f);
        }
        let report = rig.run(&Policy::default(), "c.db").await;
        rig.assert_invariants(&report);
        (outcome(&report, &a), rig.sim.stats(), rig)
    }

    fn fleet_target(fleet: &vnet_migrate::sim::Fleet) -> ResourceId {
        fleet
            .resources
            .iter()
            .filter_map(|r| r["id"].as_str())
            .filter_map(|s| ResourceId::parse(s).ok())
            .find(|id| id.kind() == vnet_migrate::azure::ResourceKind::Site)
            .expect("a site")
    }

    #[tokio::test]
    async fn hub_vnet_with_thirty_plans_migrating_at_once() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let mut apps: Vec<(usize, ResourceId)> = Vec::new();
        for p in 0..30 {
            let plan = b.plan("apps", &format!("plan{p}"), WE, "P1v2", 1);
            for i in 0..(1 + p % 2) {
                apps.push((p, app(&mut b, &plan, &format!("app{p}-{i}"), &v)));
            }
        }
        // The latency model and its locks on (site writes with a subnet hold the VNet for
        // 7–10 simulated seconds), 500× faster than ARM; the runner keeps 8 steps in flight.
        let options = SimOptions {
            speed: 500.0,
            seed: 8,
            ..SimOptions::default()
        };
        let rig = Rig::start_with(b.build(), options).await;
        let report = rig.run(&Policy::default(), "hub.db").await;
        for (_, a) in &apps {
            assert_eq!(outcome(&report, a), "migrated", "{a}");
        }
        // One subnet per plan, distinct (the invariants check that none overlap).
        let mut by_plan: std::collections::BTreeMap<usize, BTreeSet<ResourceId>> =
            Default::default();
        for (p, a) in &apps {
            let s = rig.subnet_of(a).expect("regional");
            assert_eq!(s.vnet().unwrap(), v);
            by_plan.entry(*p).or_default().insert(s);
        }
        assert!(by_plan.values().all(|s| s.len() == 1));
        let distinct: BTreeSet<&ResourceId> = by_plan.values().flatten().collect();
        assert_eq!(distinct.len(), 30);
        // Subnet writes and cut-overs into the hub share its session, so the run's own writes
        // never meet each other's VNet lock (a cut-over waiting for one would keep its app
        // offline); contention from elsewhere is covered by `a_burst_of_throttling_…`.
        assert_eq!(
            rig.sim.stats().contended,
            0,
            "the run's writes met its own locks"
        );
        rig.assert_invariants(&report);
    }

    #[tokio::test]
    async fn a_gateway_timeout_that_was_applied_is_read_back_not_resent() {
        let (fleet, _) = one_app();
        let (clean, base_stats, _) = run_one(fleet.clone(), Vec::new()).await;
        assert_eq!(clean, "migrated");
        // ARM's 504 on the connect PATCH, the write applied behind it.
        let (o, stats, rig) = run_one(
            fleet,
            vec![fault("PATCH", "/sites/app1", FaultMode::GatewayTimeout)],
        )
        .await;
        assert_eq!(o, "migrated");
        assert_eq!(stats.faults_injected, 1);
        // Not one write more than without the 504: the client read the site back and found
        // the write applied instead of sending it again.
        assert_eq!(stats.writes, base_stats.writes);
        assert!(
            stats.requests - stats.writes - stats.deletes
                > base_stats.requests - base_stats.writes - base_stats.deletes
        );
        assert!(rig.arm.metrics().retries >= 1);
    }

    #[tokio::test]
    async fn a_gateway_timeout_with_the_write_applied_late_ends_migrated() {
        // With the latency model on, the write shows only after the 504 and holds the site's
        // lock until then: the client's re-send meets App Service's lock 429 and reads again.
        let (fleet, a) = one_app();
        let rig = Rig::start_with(
            fleet,
            SimOptions {
                speed: 1000.0,
                throttle: false,
                ..SimOptions::default()
            },
        )
        .await;
        rig.sim
            .inject(fault("PATCH", "/sites/app1", FaultMode::GatewayTimeout));
        let report = rig.run(&Policy::default(), "late.db").await;
        assert_eq!(outcome(&report, &a), "migrated");
        assert_eq!(rig.sim.stats().faults_injected, 1);
        rig.assert_invariants(&report);
    }

    #[tokio::test]
    async fn a_subnet_write_whose_operation_fails_is_written_again() {
        // The subnet PUT's LRO ends Failed and leaves the subnet `Failed`: ARM's PUT is
        // idempotent, so prepare-subnet retries (counted against maxAttempts) and rewrites it.
        let (fleet, a) = one_app();
        let (o, stats, rig) = run_one(
            fleet,
            vec![fault("PUT", "/subnets/", FaultMode::OperationFailed)],
        )
        .await;
        assert_eq!(o, "migrated");
        assert_eq!(stats.faults_injected, 1);
        let subnet = rig.subnet_of(&a).expect("regional");
        let vnet = rig.resource(&subnet.vnet().unwrap()).unwrap();
        let s = vnet["properties"]["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == subnet.name())
            .unwrap()
            .clone();
        assert_eq!(s["properties"]["provisioningState"], "Succeeded");
    }

    #[tokio::test]
    async fn a_burst_of_throttling_and_contention_never_parks_a_target() {
        // Far more refusals than the client's retries times maxAttempts (6 × 5): each step
        // re-sends until ARM lets it through.
        let (fleet, _) = one_app();
        let lock = json!({"Code": "429", "Message": "Cannot acquire exclusive lock to create, update or delete this site. Retry the request later.",
            "Details": [{"ErrorEntity": {"ExtendedCode": "59206"}}]});
        let (o, stats, _) = run_one(
            fleet,
            vec![
                answer("PUT", "/subnets/", 409, json!({"error": {"code": "AnotherOperationInProgress", "message": "Another operation on this or dependent resource is in progress."}}), 15),
                answer("PUT", "/subnets/", 400, json!({"error": {"code": "NetcfgInvalidSubnet", "message": "Subnet is not valid in virtual network."}}), 15),
                answer("PATCH", "/sites/app1", 429, json!({"error": {"code": "RetryableErrorDueToAnotherOperation", "message": "Retry later."}}), 20),
                answer("PATCH", "/sites/app1", 429, lock, 20),
                answer("GET", "/sites/app1", 429, json!({"error": {"code": "SubscriptionRequestsThrottled", "message": "Throttled."}}), 20),
            ],
        )
        .await;
        assert_eq!(o, "migrated");
        assert_eq!(stats.faults_injected, 90);
    }
}

/// The cut-over as one step (issue 9): the regional PATCH follows the gateway connection's
/// DELETE at once, in the same step, so a target's downtime is the latency of those two ARM
/// calls however long the queue is.
mod cutover {
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use vnet_migrate::pipeline::ledger::Ledger;
    use vnet_migrate::sim::SimOptions;

    use super::*;
    use crate::support::report_of;

    /// The simulator's latency model: the site PATCH that sets `virtualNetworkSubnetId`
    /// answers after 7–10 simulated seconds (arm-vnet reference §13: vnetE2E #22, #34).
    const SUBNET_JOIN_MIN_SECONDS: f64 = 7.0;
    const SPEED: f64 = 100.0;

    fn latency() -> SimOptions {
        SimOptions {
            speed: SPEED,
            seed: 9,
            throttle: false,
            ..SimOptions::default()
        }
    }

    /// `value[field]` as a time (the ledger's rows and step log serialise as RFC 3339).
    fn at(value: &Value, field: &str) -> time::OffsetDateTime {
        let text = value[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing in {value}"));
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[tokio::test]
    async fn every_migrated_app_is_cut_over_in_one_step_with_seconds_of_downtime() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let mut apps = Vec::new();
        for p in 0..10 {
            let plan = b.plan("apps", &format!("plan{p}"), WE, "P1v2", 1);
            for i in 0..3 {
                apps.push(app(&mut b, &plan, &format!("app{p}-{i}"), &v));
            }
        }
        let rig = Rig::start_with(b.build(), latency()).await;
        // Four steps in flight for thirty targets: a queue long enough that a `connect`
        // waiting behind it would show in the downtime.
        let started = Instant::now();
        let finished = rig
            .local_run(&Policy::default(), rig.dir.file("cut.db"), 4)
            .await
            .unwrap();
        let run_time = started.elapsed();
        let report = report_of(&*finished.store, &finished.run).await;
        rig.assert_invariants(&report);
        let join = Duration::from_secs_f64(SUBNET_JOIN_MIN_SECONDS / SPEED);
        for a in &apps {
            assert_eq!(outcome(&report, a), "migrated", "{a}");
            let t = report.targets.iter().find(|t| t.id == a.as_str()).unwrap();
            let downtime = Duration::from_secs_f64(t.downtime_seconds.expect("a downtime"));
            assert!(downtime >= join, "{a}: {downtime:?} < the PATCH's {join:?}");
            assert!(
                downtime * 10 < run_time,
                "{a}: {downtime:?} is not far below the run's {run_time:?}"
            );
            // One step removed the gateway connection and joined the subnet, with no queue
            // hop between the two: no `connect` step ran.
            let log = finished.store.step_log(&finished.run, a).await.unwrap();
            let log: Vec<Value> = log
                .iter()
                .map(|e| serde_json::to_value(e).unwrap())
                .collect();
            let steps: Vec<&str> = log.iter().map(|e| e["step"].as_str().unwrap()).collect();
            assert_eq!(
                steps,
                [
                    "discover",
                    "plan",
                    "prepare-subnet",
                    "disconnect",
                    "configure",
                    "verify"
                ],
                "{a}"
            );
            let cut = &log[3]["detail"];
            let detail = cut.as_str().unwrap();
            assert!(
                detail.starts_with("removed gateway-based connection hub-we; connected to "),
                "{detail}"
            );
            // The times are ARM's answers, inside the cut-over step, not the time it was
            // recorded.
            let row = serde_json::to_value(
                finished
                    .store
                    .target(&finished.run, a)
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            let step_end = at(&log[3], "at");
            let step_start =
                step_end - time::Duration::milliseconds(log[3]["durationMs"].as_i64().unwrap());
            let (gone, back) = (at(&row, "disconnectedAt"), at(&row, "connectedAt"));
            assert!(
                step_start <= gone && gone < back && back <= step_end,
                "{row}"
            );
        }
        let d = &serde_json::to_value(&report).unwrap()["performance"]["downtimeSeconds"];
        let q = |k: &str| d[k].as_f64().unwrap();
        assert!(q("p50") <= q("p95") && q("p95") <= q("p99") && q("p99") <= q("max"));
        assert!(q("p50") >= join.as_secs_f64());
    }

    #[tokio::test]
    async fn a_rolled_back_app_is_down_until_its_gateway_connection_is_back_in_sync() {
        let mut b = base();
        let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
        let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
        let a = app(&mut b, &plan, "app1", &v);
        b.tag(&a, "vnet-migrate-sim", "reject-connect");
        let rig = Rig::start_with(b.build(), latency()).await;
        let finished = rig
            .local_run(&Policy::default(), rig.dir.file("rb.db"), 4)
            .await
            .unwrap();
        let report = report_of(&*finished.store, &finished.run).await;
        assert!(outcome(&report, &a).starts_with("rolled-back:connect-rejected"));
        assert_eq!(rig.gateway_connections(&a), 1);
        let log = finished.store.step_log(&finished.run, &a).await.unwrap();
        let log: Vec<Value> = log
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        let step = |name: &str| log.iter().find(|e| e["step"] == name).unwrap().clone();
        let (cut, rollback) = (step("disconnect"), step("rollback"));
        let row = serde_json::to_value(
            finished
                .store
                .target(&finished.run, &a)
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let (gone, back) = (at(&row, "disconnectedAt"), at(&row, "connectedAt"));
        // Down from the DELETE inside the cut-over until the rollback saw the connection in
        // sync: after the rollback's handshake started, before it was recorded.
        assert!(gone <= at(&cut, "at"));
        let rollback_end = at(&rollback, "at");
        let rollback_start =
            rollback_end - time::Duration::milliseconds(rollback["durationMs"].as_i64().unwrap());
        assert!(rollback_start <= back && back <= rollback_end, "{row}");
        let downtime = report.targets[0].downtime_seconds.unwrap();
        assert!((downtime - (back - gone).as_seconds_f64()).abs() < 0.002);
        assert!(downtime > (rollback_start - gone).as_seconds_f64());
    }
}
