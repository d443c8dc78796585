//! An operator's hand on a running rollout (issue 12), on the embedded runner: `pause` holds
//! new steps within one tick (no target starts after it; `resume` goes on) and `abort`
//! cancels every untouched target while the ones in flight reach their outcome.

use std::time::Duration;

use time::OffsetDateTime;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::local::Held;
use vnet_migrate::pipeline::rollout::Control;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::pipeline::RunId;
use vnet_migrate::policy::Policy;

use crate::support::{base, hub, report_of, Rig};

const TICK: Duration = Duration::from_millis(20);

/// Thirty gateway-connected apps on three plans, run two steps at a time in one wave.
async fn fleet() -> (Rig, Vec<ResourceId>) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", "westeurope", "10.1.0.0/16");
    let plans: Vec<ResourceId> = (0..3)
        .map(|p| b.plan("apps", &format!("plan{p}"), "westeurope", "P1v2", 1))
        .collect();
    let apps = (0..30)
        .map(|i| {
            let s = b.site("apps", &format!("a{i:02}"), &plans[i % 3]);
            b.gateway_connection(&s, &v);
            s
        })
        .collect();
    (Rig::start(b.build()).await, apps)
}

/// Starts the run in the background and returns once its first target has an outcome, with a
/// second handle on its state file (as `rollout pause|abort` opens it).
async fn started(
    rig: &Rig,
    policy: &Policy,
) -> (
    tokio::task::JoinHandle<
        Result<
            vnet_migrate::pipeline::local::Finished,
            vnet_migrate::pipeline::local::LocalRunError,
        >,
    >,
    SqliteStore,
    RunId,
) {
    let state = rig.dir.file("c.db");
    let running = tokio::spawn(rig.local_run_ticking(policy, state.clone(), 2, TICK));
    for _ in 0..2000 {
        if state.exists() {
            let store = SqliteStore::open(&state).unwrap();
            if let Some(run) = store.newest_run().unwrap() {
                let id = run.record.run;
                let report = report_of(&store, &id).await;
                if report.targets.iter().any(|t| t.outcome != "unfinished") {
                    return (running, store, id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no target reached an outcome");
}

fn policy() -> Policy {
    Policy::from_json(r#"{"settleSeconds": 0}"#).unwrap()
}

#[tokio::test]
async fn pause_holds_new_steps_within_a_tick_and_resume_goes_on() {
    let (rig, apps) = fleet().await;
    let (running, store, run) = started(&rig, &policy()).await;
    store.set_control(&run, Control::Paused).unwrap();
    let paused_at = OffsetDateTime::now_utc();
    let finished = running.await.unwrap().unwrap();
    assert_eq!(finished.held, Some(Held::Paused));
    drop(finished);
    // No target took its first step later than one tick after the pause (plus the time a
    // step in flight then takes to settle).
    let mut untouched = 0;
    for app in &apps {
        let log = store.step_log(&run, app).await.unwrap();
        match log.iter().map(|e| e.at()).min() {
            None => untouched += 1,
            Some(first) => assert!(
                first <= paused_at + TICK + Duration::from_millis(100),
                "{app} started {} after the pause",
                first - paused_at
            ),
        }
    }
    assert!(untouched > 0, "the pause came too late to hold anything");
    // Resumed, the rollout finishes every target.
    store.set_control(&run, Control::Running).unwrap();
    drop(store);
    let finished = rig
        .local_run_ticking(&policy(), rig.dir.file("c.db"), 2, TICK)
        .await
        .unwrap();
    assert_eq!(finished.held, None);
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    assert!(
        report.targets.iter().all(|t| t.outcome == "migrated"),
        "{:?}",
        report.summary
    );
    rig.assert_invariants(&report);
}

#[tokio::test]
async fn abort_mid_run_cancels_the_untouched_and_lets_the_started_finish() {
    let (rig, apps) = fleet().await;
    let (running, store, run) = started(&rig, &policy()).await;
    let cancelled = store.abort(&run, OffsetDateTime::now_utc()).unwrap();
    assert!(cancelled > 0, "the abort came too late to cancel anything");
    let finished = running.await.unwrap().unwrap();
    assert_eq!(finished.held, None);
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    let mut seen = 0;
    for app in &apps {
        let t = report
            .targets
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(app.as_str()))
            .unwrap();
        match t.outcome.as_str() {
            // Untouched: ARM still shows its gateway connection only.
            "cancelled" => {
                seen += 1;
                assert_eq!(rig.gateway_connections(app), 1, "{app}");
                assert!(rig.subnet_of(app).is_none(), "{app}");
            }
            // Started before the abort: finished (or put back on its gateway).
            "migrated" | "rolled-back" => {}
            other => panic!("{app} ended {other}"),
        }
    }
    assert_eq!(seen, cancelled);
    assert!(store.newest_run().unwrap().unwrap().finished);
    rig.assert_invariants(&report);
}
