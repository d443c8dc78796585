//! Fleet rollouts on the embedded runner (issue 12): waves released in order, each after its
//! bake; a failure-rate gate that trips stops the rollout with later waves untouched until it
//! is resumed; an abort cancels every untouched target.

use time::OffsetDateTime;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::local::{Finished, Held};
use vnet_migrate::pipeline::rollout::Control;
use vnet_migrate::policy::Policy;
use vnet_migrate::report::Report;

use crate::support::{base, hub, Rig};

/// Twenty gateway-connected apps `a00`…`a19` on four plans in one hub, so the waves (one
/// subscription, no rings: by id) are a00–a04, a05–a06, a07–a14 and a15–a19. `failing` apps
/// have Key Vault references that break after connect (they roll back).
async fn fleet(failing: &[&str]) -> (Rig, Vec<ResourceId>) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", "westeurope", "10.1.0.0/16");
    let plans: Vec<ResourceId> = (0..4)
        .map(|p| b.plan("apps", &format!("plan{p}"), "westeurope", "P1v2", 1))
        .collect();
    let apps: Vec<ResourceId> = (0..20)
        .map(|i| {
            let name = format!("a{i:02}");
            let s = b.site("apps", &name, &plans[i % 4]);
            b.gateway_connection(&s, &v);
            if failing.contains(&name.as_str()) {
                b.key_vault_reference(&s, "DbPassword", "Resolved");
                b.tag(&s, "vnet-migrate-sim", "kv-breaks-after-connect");
            }
            s
        })
        .collect();
    (Rig::start(b.build()).await, apps)
}

/// Four waves (a canary of 5, then 10 %, 40 % and the rest); 3000 bake minutes are 0.18 s at
/// the rig's speed.
fn policy() -> Policy {
    Policy::from_json(
        r#"{"waves": [5, "10%", "40%"], "bakeMinutes": 3000, "gates": {"maxFailureRate": 0.1}}"#,
    )
    .unwrap()
}

const BAKE_SECONDS: f64 = 0.18;

async fn run(rig: &Rig, state: &str) -> (Finished, Report) {
    let finished = rig
        .local_run(&policy(), rig.dir.file(state), 8)
        .await
        .unwrap();
    let records = finished.store.targets(&finished.run).await.unwrap();
    let waves = finished.store.waves(&finished.run).unwrap();
    let report = Report::new(finished.run.as_str(), false, &records, Default::default())
        .with_waves(&records, &waves);
    (finished, report)
}

fn outcome_of(report: &Report, app: &ResourceId) -> String {
    let t = report
        .targets
        .iter()
        .find(|t| t.id.eq_ignore_ascii_case(app.as_str()))
        .unwrap_or_else(|| panic!("{app} not in the report"));
    t.outcome.clone()
}

#[tokio::test]
async fn four_waves_release_in_order_each_after_its_bake() {
    let (rig, apps) = fleet(&[]).await;
    let (finished, report) = run(&rig, "s.db").await;
    assert_eq!(finished.held, None);
    let sizes: Vec<u32> = report.waves.iter().map(|w| w.size).collect();
    assert_eq!(sizes, vec![5, 2, 8, 5]);
    for pair in report.waves.windows(2) {
        let ended = pair[0].ended_seconds.expect("every wave ended");
        let started = pair[1].started_seconds.expect("every wave released");
        assert!(
            started >= ended + BAKE_SECONDS,
            "wave {} released at {started}s, its predecessor ended at {ended}s",
            pair[1].index
        );
        assert!(pair[0].gate.as_ref().is_some_and(|g| g.passed));
    }
    for (i, app) in apps.iter().enumerate() {
        let want = match i {
            0..5 => 0,
            5..7 => 1,
            7..15 => 2,
            _ => 3,
        };
        let t = report
            .targets
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(app.as_str()))
            .unwrap();
        assert_eq!(t.wave, Some(want), "{app}");
        assert_eq!(t.outcome, "migrated", "{app}");
        // No target of a later wave finished before its wave was released.
        let started = report.waves[want as usize].started_seconds.unwrap();
        assert!(t.finished_seconds.unwrap() >= started, "{app}");
    }
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn a_gate_tripped_in_wave_two_stops_until_resume_and_abort_cancels() {
    for then_abort in [false, true] {
        // a05 is in wave 2 (index 1): one failure of two is 50 %, above the gate's 10 %.
        let (rig, apps) = fleet(&["a05"]).await;
        let (finished, report) = run(&rig, "s.db").await;
        let Some(Held::Gate { wave: 1, reason }) = &finished.held else {
            panic!("the rollout stops at wave 1's gate: {:?}", finished.held);
        };
        assert_eq!(
            reason,
            "1 of 2 target(s) rolled back or parked (50%), above the gate's 10%"
        );
        assert_eq!(outcome_of(&report, &apps[5]), "rolled-back");
        assert!(!report.waves[1].gate.as_ref().unwrap().passed);
        for app in &apps[7..] {
            // Untouched: no step ran, ARM still shows the gateway connection only.
            assert_eq!(outcome_of(&report, app), "unfinished", "{app}");
            assert_eq!(rig.gateway_connections(app), 1, "{app}");
            assert!(rig.subnet_of(app).is_none(), "{app}");
        }
        assert!(report.waves[2..]
            .iter()
            .all(|w| w.started_seconds.is_none()));
        // Running it again does not pass the gate: only `resume` does.
        let (again, _) = run(&rig, "s.db").await;
        assert!(matches!(again.held, Some(Held::Gate { wave: 1, .. })));
        let store = again.store.clone();
        drop(again);
        drop(finished);
        if then_abort {
            let cancelled = store
                .abort(&report_run(&report), OffsetDateTime::now_utc())
                .unwrap();
            assert_eq!(cancelled, 13, "waves 3 and 4");
            // Nothing was in flight: the run is finished, every target has its outcome.
            assert!(store.newest_run().unwrap().unwrap().finished);
            let records = store.targets(&report_run(&report)).await.unwrap();
            let report = Report::new(&report.run, false, &records, Default::default());
            for app in &apps[7..] {
                assert_eq!(outcome_of(&report, app), "cancelled", "{app}");
                assert_eq!(rig.gateway_connections(app), 1, "{app}");
            }
            rig.assert_invariants(&report);
        } else {
            assert_eq!(
                store
                    .set_control(&report_run(&report), Control::Running)
                    .unwrap(),
                Control::Running
            );
            drop(store);
            let (done, report) = run(&rig, "s.db").await;
            assert_eq!(done.held, None);
            for app in &apps[7..] {
                assert_eq!(outcome_of(&report, app), "migrated", "{app}");
            }
            assert!(
                report.waves[1].gate.as_ref().is_some_and(|g| !g.passed),
                "the gate's verdict stays on record"
            );
            rig.assert_invariants(&report);
        }
    }
}

fn report_run(report: &Report) -> vnet_migrate::pipeline::RunId {
    vnet_migrate::pipeline::RunId(report.run.clone())
}
