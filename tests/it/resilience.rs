//! Idempotence and crash safety: every step run twice changes nothing the second time, and a
//! run stopped after any single ARM write and resumed from its state file ends in the same
//! ARM state as an uninterrupted run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::migration::discover::sites_in_scope;
use vnet_migrate::pipeline::message::{Origin, RunId, Step, StepMessage};
use vnet_migrate::pipeline::reason::RollbackReason;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::policy::Policy;
use vnet_migrate::sim::Fleet;

use crate::support::{base, hub, Rig, TempDir};

/// Five targets covering every write path: migrate (two apps sharing a new subnet, a slot),
/// connect rejected (rollback), Key Vault break (rollback after verify).
fn fleet() -> Fleet {
    let mut b = base();
    let v = hub(&mut b, "hub", "westeurope", "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", "westeurope", "P1v2", 2);
    for name in ["a", "b", "rej", "kv"] {
        let s = b.site("apps", name, &plan);
        b.gateway_connection(&s, &v);
        b.key_vault_reference(&s, "Secret", "Resolved");
        match name {
            "rej" => b.tag(&s, "vnet-migrate-sim", "reject-connect"),
            "kv" => b.tag(&s, "vnet-migrate-sim", "kv-breaks-after-connect"),
            "a" => {
                let slot = b.slot(&s, "staging");
                b.gateway_connection(&slot, &v);
            }
            _ => {}
        }
    }
    b.build()
}

fn writes(rig: &Rig) -> u64 {
    let s = rig.sim.stats();
    s.writes + s.deletes
}

/// The ARM state that matters, without server-generated noise (etags).
fn normalized(fleet: &Fleet) -> BTreeMap<String, Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("etag");
                // A rollback resumed after a crash generates a fresh VPN package (a new SAS
                // URL, as Azure would); any package of the right gateway is as good.
                m.remove("vpnPackageUri");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    fleet
        .resources
        .iter()
        .map(|r| {
            let mut r = r.clone();
            strip(&mut r);
            (r["id"].as_str().unwrap().to_ascii_lowercase(), r)
        })
        .collect()
}

#[tokio::test]
async fn every_step_twice_changes_nothing_the_second_time() {
    let rig = Rig::start(fleet()).await;
    let dir = TempDir::new();
    let store = Arc::new(SqliteStore::open(&dir.file("s.db")).unwrap());
    let policy = Policy::default();
    let engine = rig.engine(store, &policy);
    let run = RunId("r-idem".into());
    let sites = sites_in_scope(&rig.arm, &rig.subscriptions(), &policy, &[])
        .await
        .unwrap();
    let mut queue: VecDeque<StepMessage> = sites
        .into_iter()
        .map(|s| StepMessage::new(run.clone(), s, Step::Discover, Origin::Cli))
        .collect();
    let mut executed = 0;
    let mut outcomes: BTreeMap<ResourceId, String> = BTreeMap::new();
    while let Some(msg) = queue.pop_front() {
        let first = rig_exec(&engine, &msg).await;
        let after_first = (writes(&rig), normalized(&rig.sim.state()));
        let second = rig_exec(&engine, &msg).await;
        // A write ARM refuses changes nothing, so only a rejected connect may be sent again.
        let rejected = first
            .next
            .iter()
            .any(|o| matches!(o.message.reason, Some(RollbackReason::ConnectRejected(_))));
        if !rejected {
            assert_eq!(
                writes(&rig),
                after_first.0,
                "{} of {} wrote again on its second run",
                msg.step,
                msg.target
            );
        }
        assert_eq!(
            normalized(&rig.sim.state()),
            after_first.1,
            "{} of {} changed ARM on its second run",
            msg.step,
            msg.target
        );
        assert_eq!(
            first.outcome, second.outcome,
            "{} decided differently the second time",
            msg.step
        );
        let steps = |e: &vnet_migrate::pipeline::engine::Executed| {
            e.next
                .iter()
                .map(|o| (o.message.target.clone(), o.message.step))
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(&first), steps(&second));
        if let Some(o) = &first.outcome {
            outcomes.insert(msg.target.clone(), o.to_string());
        }
        queue.extend(first.next.into_iter().map(|o| o.message));
        executed += 1;
    }
    assert!(executed >= 25, "only {executed} steps ran");
    let o = |name: &str| {
        outcomes
            .iter()
            .find(|(k, _)| k.as_str().ends_with(name))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(o("/sites/a"), "migrated");
    assert_eq!(o("/sites/a/slots/staging"), "migrated");
    assert_eq!(o("/sites/b"), "migrated");
    assert!(o("/sites/rej").starts_with("rolled-back:connect-rejected"));
    assert_eq!(o("/sites/kv"), "rolled-back:kv-references-unresolved");
}

async fn rig_exec(
    engine: &vnet_migrate::pipeline::engine::Engine<vnet_migrate::migration::Migration>,
    msg: &StepMessage,
) -> vnet_migrate::pipeline::engine::Executed {
    engine.execute(msg).await
}

#[tokio::test]
async fn crash_after_every_arm_write_then_resume_ends_in_the_same_state() {
    // Reference: an uninterrupted run.
    let reference = Rig::start(fleet()).await;
    let report = reference.run(&Policy::default(), "ref.db").await;
    reference.assert_invariants(&report);
    let expected = normalized(&reference.sim.state());
    let total = writes(&reference);
    assert!(
        total >= 10,
        "fleet too small to be interesting: {total} writes"
    );

    for k in 1..=total {
        let rig = Rig::start(fleet()).await;
        let state = rig.dir.file("crash.db");
        let task = tokio::spawn(rig.local_run(&Policy::default(), state.clone(), 4));
        // Stop the runner as soon as the k-th write has reached ARM.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while writes(&rig) < k && !task.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "write {k} never happened"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        task.abort();
        match task.await {
            // Finished before the stop reached it (the last writes): nothing to resume.
            Ok(done) => assert!(!done.unwrap().resumed),
            Err(e) => {
                assert!(e.is_cancelled());
                let resumed = rig.local_run(&Policy::default(), state, 4).await.unwrap();
                assert!(
                    resumed.resumed,
                    "crash after write {k}: the second run did not resume the first"
                );
            }
        }
        let got = normalized(&rig.sim.state());
        assert_eq!(
            got, expected,
            "crash after write {k}: final ARM state differs from the uninterrupted run"
        );
    }
}
