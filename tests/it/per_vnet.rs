//! `concurrency.perVnet` (issue 12 item 3): the embedded runner keeps at most N steps of
//! targets bound for one VNet executing at once, read from the run's step log.

use serde_json::Value;
use time::OffsetDateTime;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::policy::Policy;
use vnet_migrate::sim::SimOptions;

use crate::support::{base, hub, outcome, report_of, Rig};

const WE: &str = "westeurope";

/// Runs twelve one-app plans into one hub VNet, 8 steps in flight, under `policy`; the most
/// steps of planned targets (those past `plan`) the step log shows executing at once.
async fn most_at_once_in_the_hub(policy: &str) -> usize {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let mut apps: Vec<ResourceId> = Vec::new();
    for p in 0..12 {
        let plan = b.plan("apps", &format!("plan{p}"), WE, "P1v2", 1);
        let s = b.site("apps", &format!("app{p}"), &plan);
        b.gateway_connection(&s, &v);
        apps.push(s);
    }
    // Latency on (steps take simulated seconds), 50× faster than ARM: steps long enough (a
    // read 0.6–2.4 ms) to overlap on a loaded machine when nothing limits them.
    let options = SimOptions {
        speed: 50.0,
        seed: 5,
        ..SimOptions::default()
    };
    let rig = Rig::start_with(b.build(), options).await;
    let policy = Policy::from_json(policy).unwrap();
    let finished = rig
        .local_run(&policy, rig.dir.file("vnet.db"), 8)
        .await
        .unwrap();
    let report = report_of(&*finished.store, &finished.run).await;
    rig.assert_invariants(&report);
    // (time, +1 at a step's start / -1 at its end); ends sort before starts at one instant.
    let mut edges: Vec<(OffsetDateTime, i32)> = Vec::new();
    for a in &apps {
        assert_eq!(outcome(&report, a), "migrated", "{a}");
        for e in finished.store.step_log(&finished.run, a).await.unwrap() {
            let e: Value = serde_json::to_value(e).unwrap();
            if matches!(e["step"].as_str(), Some("discover" | "plan")) {
                continue;
            }
            let end = OffsetDateTime::parse(
                e["at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            let took = time::Duration::milliseconds(e["durationMs"].as_i64().unwrap());
            edges.push((end - took, 1));
            edges.push((end, -1));
        }
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn at_most_per_vnet_targets_of_a_vnet_execute_at_once() {
    let limited =
        most_at_once_in_the_hub(r#"{"concurrency": {"perVnet": 2}, "settleSeconds": 1}"#).await;
    assert!((1..=2).contains(&limited), "{limited} at once");
    let unlimited = most_at_once_in_the_hub(r#"{"settleSeconds": 1}"#).await;
    assert!(unlimited > 2, "{unlimited} at once without the limit");
}
