//! Network preparation ahead of the cut-over (issue 12 item 5), on the embedded runner (and
//! through the Functions host in `functions_host.rs`): the subnets the next wave needs exist
//! before that wave is released, and its targets' own `prepare-subnet` finds them ready and
//! writes nothing.

use std::time::Duration;

use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::policy::Policy;
use vnet_migrate::sim::Simulator;

use crate::support::{outcome, report_of, step_details, two_plans_of_two, Rig};

/// The names of the VNet's subnets delegated to App Service, as the simulator has them.
pub(crate) fn web_subnets(sim: &Simulator, vnet: &ResourceId) -> Vec<String> {
    let state = sim.state();
    let (_, v) = state.with_ids().find(|(id, _)| id == vnet).unwrap();
    let mut names: Vec<String> = v["properties"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["properties"]["delegations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["properties"]["serviceName"] == "Microsoft.Web/serverFarms")
        })
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_next_waves_subnets_exist_before_it_is_released() {
    // Wave 0 is a0, a1 on plan0; wave 1 is a2, a3 on plan1: its subnet is one of its own.
    let (fleet, v, apps) = two_plans_of_two();
    let rig = Rig::start(fleet).await;
    assert!(web_subnets(&rig.sim, &v).is_empty());
    let policy = Policy::from_json(
        r#"{"waves": [2], "settleSeconds": 0, "gates": {"manualApproval": true}}"#,
    )
    .unwrap();
    let state = rig.dir.file("ahead.db");
    let running = tokio::spawn(rig.local_run(&policy, state.clone(), 4));
    // The rollout waits for `rollout promote` after wave 0: wave 1 is not released.
    let (store, run) = loop {
        if state.exists() {
            let store = SqliteStore::open(&state).unwrap();
            if let Some(r) = store.newest_run().unwrap() {
                let run = r.record.run;
                let waves = store.waves(&run).unwrap();
                if waves[0].gate.as_ref().is_some_and(|g| g.passed) {
                    assert!(waves[1].released_at.is_none());
                    break (store, run);
                }
            }
        }
        assert!(!running.is_finished(), "the rollout waits for approval");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Both plans' subnets exist: wave 1's was created ahead of it, and nothing else of
    // wave 1 was touched (no step recorded, the gateway connection still in place).
    let ahead = web_subnets(&rig.sim, &v);
    assert_eq!(ahead.len(), 2, "{ahead:?}");
    for app in &apps[2..] {
        assert!(store.step_log(&run, app).await.unwrap().is_empty(), "{app}");
        assert_eq!(rig.gateway_connections(app), 1, "{app}");
        assert!(rig.subnet_of(app).is_none(), "{app}");
    }
    store.approve(&run, 1).unwrap();
    drop(store);
    let finished = running.await.unwrap().unwrap();
    assert_eq!(finished.held, None);
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    for app in &apps {
        assert_eq!(outcome(&report, app), "migrated", "{app}");
    }
    assert_eq!(
        web_subnets(&rig.sim, &v),
        ahead,
        "no subnet was added after"
    );
    for app in &apps[2..] {
        let subnet = rig.subnet_of(app).unwrap();
        assert!(
            ahead.contains(&subnet.name().to_string()),
            "{app}: {subnet}"
        );
        // Its own prepare-subnet found the subnet ready: no subnet write of its own.
        let log = step_details(finished.store.as_ref(), &finished.run, app).await;
        assert!(
            log.iter().any(|d| d.contains("already prepared")),
            "{app}: {log:?}"
        );
        assert!(
            !log.iter().any(|d| d.contains("created subnet")),
            "{app}: {log:?}"
        );
    }
    // Wave 0's subnet was created by its own steps: nothing runs ahead of the first wave.
    let mut created = 0;
    for app in &apps[..2] {
        let log = finished.store.step_log(&finished.run, app).await.unwrap();
        created += log
            .iter()
            .filter(|e| e.detail().contains("created subnet"))
            .count();
    }
    assert_eq!(created, 1);
    rig.assert_invariants(&report);
}
