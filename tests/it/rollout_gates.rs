//! A wave's gate beyond its failure rate, and approval between waves (issue 12), on the
//! embedded runner: a Key Vault reference or the app's probe that breaks while the wave bakes
//! (after every target of it verified) trips the gate, later waves untouched; with
//! `gates.manualApproval` the next wave waits for `rollout promote`.

use std::time::Duration;

use serde_json::json;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::local::Held;
use vnet_migrate::pipeline::rollout::{Control, GateKind};
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::policy::Policy;

use crate::support::{base, bin, hub, outcome, report_of, Rig};

/// Four gateway-connected apps `a0`…`a3`, each with a resolved Key Vault reference: waves of
/// two (`a0`, `a1`) and the rest.
async fn fleet() -> (Rig, Vec<ResourceId>) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", "westeurope", "10.1.0.0/16");
    let plan = b.plan("apps", "plan0", "westeurope", "P1v2", 1);
    let apps = (0..4)
        .map(|i| {
            let s = b.site("apps", &format!("a{i}"), &plan);
            b.gateway_connection(&s, &v);
            b.key_vault_reference(&s, "DbPassword", "Resolved");
            s
        })
        .collect();
    (Rig::start(b.build()).await, apps)
}

/// Waits until wave `index` of the only run in `state` satisfies `ready`.
async fn wait_for_wave(
    state: &std::path::Path,
    index: usize,
    ready: impl Fn(&vnet_migrate::pipeline::rollout::WaveView) -> bool,
) -> (SqliteStore, vnet_migrate::pipeline::RunId) {
    for _ in 0..1000 {
        if state.exists() {
            let store = SqliteStore::open(state).unwrap();
            if let Some(run) = store.newest_run().unwrap() {
                let id = run.record.run;
                if store.waves(&id).unwrap().get(index).is_some_and(&ready) {
                    return (store, id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("wave {index} never got there");
}

/// Runs `policy` (waves of 2, a week's bake, 0.6 s at the rig's speed) and, once the first wave
/// has ended (every target verified and migrated), sets the simulator's `knob` on `a1`: what
/// breaks now is for the gate to see.
async fn break_during_the_bake(policy: serde_json::Value, knob: &str) -> (Rig, Vec<ResourceId>) {
    let (rig, apps) = fleet().await;
    let policy = Policy::from_json(&policy.to_string()).unwrap();
    let state = rig.dir.file("g.db");
    let running = tokio::spawn(rig.local_run(&policy, state.clone(), 4));
    let (store, run) = wait_for_wave(&state, 0, |w| w.ended_at.is_some()).await;
    let _: serde_json::Value = rig
        .arm
        .patch(
            &format!("{}?api-version=2024-11-01", apps[1]),
            &json!({"tags": {"vnet-migrate-sim": knob}}),
        )
        .await
        .unwrap();
    let finished = running.await.unwrap().unwrap();
    let Some(Held::Gate { wave: 0, reason }) = &finished.held else {
        panic!("the rollout stops at wave 0's gate: {:?}", finished.held);
    };
    assert!(reason.contains(apps[1].as_str()), "{reason}");
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    for app in &apps[..2] {
        assert_eq!(outcome(&report, app), "migrated", "{app}");
    }
    for app in &apps[2..] {
        // Untouched: no step ran.
        assert_eq!(outcome(&report, app), "unfinished:at discover", "{app}");
        assert_eq!(rig.gateway_connections(app), 1, "{app}");
    }
    let waves = store.waves(&run).unwrap();
    assert!(waves[1].released_at.is_none());
    drop(store);
    (rig, apps)
}

fn failed_check(rig: &Rig, kind: GateKind) -> String {
    let store = SqliteStore::open(&rig.dir.file("g.db")).unwrap();
    let run = store.newest_run().unwrap().unwrap().record.run;
    let gate = store.waves(&run).unwrap()[0].gate.clone().unwrap();
    assert!(!gate.passed);
    let failure_rate = &gate.checks[0];
    assert!(
        failure_rate.kind == GateKind::FailureRate && failure_rate.passed,
        "{gate:?}"
    );
    let c = gate.checks.iter().find(|c| c.kind == kind).unwrap();
    assert!(!c.passed, "{c:?}");
    c.detail.clone()
}

#[tokio::test]
async fn a_key_vault_reference_broken_during_the_bake_trips_the_gate() {
    let (rig, apps) = break_during_the_bake(
        json!({"waves": [2], "bakeMinutes": 10080, "settleSeconds": 0}),
        "kv-breaks-after-connect",
    )
    .await;
    assert_eq!(
        failed_check(&rig, GateKind::KeyVaultReferences),
        format!(
            "{}: Key Vault references no longer resolve: DbPassword is AccessToKeyVaultDenied",
            apps[1]
        )
    );
}

#[tokio::test]
async fn a_probe_failing_during_the_bake_trips_the_gate() {
    let (rig, apps) = break_during_the_bake(
        json!({"waves": [2], "bakeMinutes": 10080, "settleSeconds": 0,
               "gates": {"probe": {"path": "/health", "expectedStatus": 200}}}),
        "probe-fails-after-connect",
    )
    .await;
    let detail = failed_check(&rig, GateKind::Probe);
    assert!(
        detail.starts_with(&format!("{}: probe ", apps[1]))
            && detail.ends_with("answered 503, expected 200"),
        "{detail}"
    );
    // A fix, then `rollout resume`: the later waves go on.
    let _: serde_json::Value = rig
        .arm
        .patch(
            &format!("{}?api-version=2024-11-01", apps[1]),
            &json!({"tags": {}}),
        )
        .await
        .unwrap();
    let store = SqliteStore::open(&rig.dir.file("g.db")).unwrap();
    let run = store.newest_run().unwrap().unwrap().record.run;
    store.set_control(&run, Control::Running).unwrap();
    drop(store);
    let policy = Policy::from_json(
        &json!({"waves": [2], "bakeMinutes": 10080, "settleSeconds": 0,
               "gates": {"probe": {"path": "/health", "expectedStatus": 200}}})
        .to_string(),
    )
    .unwrap();
    let finished = rig
        .local_run(&policy, rig.dir.file("g.db"), 4)
        .await
        .unwrap();
    assert_eq!(finished.held, None);
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    for app in &apps {
        assert_eq!(outcome(&report, app), "migrated", "{app}");
    }
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn manual_approval_waits_for_promote_between_waves() {
    let (rig, apps) = fleet().await;
    let policy = Policy::from_json(
        r#"{"waves": [2], "settleSeconds": 0, "gates": {"manualApproval": true}}"#,
    )
    .unwrap();
    let state = rig.dir.file("p.db");
    let running = tokio::spawn(rig.local_run(&policy, state.clone(), 4));
    // The first wave's gate passes, and the rollout waits: nothing of wave 1 starts.
    let (store, run) =
        wait_for_wave(&state, 0, |w| w.gate.as_ref().is_some_and(|g| g.passed)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished(), "the rollout waits for approval");
    assert!(store.waves(&run).unwrap()[1].released_at.is_none());
    let out = bin(&["rollout", "status", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout: waiting for approval: `rollout promote` releases wave 1"),
        "{text}"
    );
    for app in &apps[2..] {
        assert_eq!(rig.gateway_connections(app), 1, "{app}");
        assert!(rig.subnet_of(app).is_none(), "{app}");
    }
    store.approve(&run, 1).unwrap();
    let finished = running.await.unwrap().unwrap();
    assert_eq!(finished.held, None);
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    for app in &apps {
        assert_eq!(outcome(&report, app), "migrated", "{app}");
    }
    drop(finished);
    // Promote on a rollout that waits for nothing is refused with one line.
    let out = bin(&["rollout", "promote", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the rollout of run {run} is not waiting for approval: nothing left to release"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
