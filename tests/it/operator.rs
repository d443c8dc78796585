//! Operators' tools (issue 11) through the binary against `simulate-arm` over HTTP:
//! `retry --dry-run` lists rolled-back targets by reason, `retry` migrates them once the cause
//! is gone, `rollback --app` puts a migrated app back on its gateway connection, and a
//! poisoned message in the state's dead letters is listed by `replay --dry-run` and completes
//! after `replay`.

use serde_json::{json, Value};

use crate::run_state::{exit_ok, Sim};
use crate::support::{arm_write, get_json, json_stdout, resource_in};

/// The resource `id` as the simulator holds it now.
fn resource(sim: &Sim, id: &str) -> Value {
    resource_in(&get_json(&format!("{}/_sim/state", sim.url)), id)
}

fn target<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"].as_str().unwrap().eq_ignore_ascii_case(id))
        .unwrap_or_else(|| panic!("{id} not in the report"))
}

#[test]
fn retry_after_the_cause_is_removed_and_rollback_by_hand() {
    let sim = Sim::start("80", "8");
    let out = sim.run("s.db", &sim.scoped());
    exit_ok(&out);
    let first = json_stdout(&out);
    let rejected: Vec<String> = sim
        .expected
        .iter()
        .filter(|(_, o)| o.starts_with("rolled-back:connect-rejected"))
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "the fleet was chosen for one rejected connect"
    );
    let app = &rejected[0];

    // Listed, by reason, and nothing changes.
    let before = sim.writes();
    let listed = sim
        .operator(
            "retry",
            "s.db",
            &["--reason", "connect-rejected", "--dry-run"],
        )
        .output()
        .unwrap();
    exit_ok(&listed);
    let by_reason = json_stdout(&listed);
    assert_eq!(
        by_reason["rolled-back:connect-rejected:BadRequest"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{by_reason}"
    );
    assert_eq!(sim.writes(), before);

    // The cause goes (the app's stamp accepts the subnet again): the retry migrates it.
    // (The simulator's knob tag emptied: kept or replaced, the tags no longer ask it to refuse.)
    let tags = json!({ "tags": { "vnet-migrate-sim": "" } });
    arm_write(&sim.url, reqwest::Method::PATCH, app, "2024-11-01", tags);
    let out = sim
        .operator(
            "retry",
            "s.db",
            &["--reason", "connect-rejected", "--per-minute", "6000"],
        )
        .output()
        .unwrap();
    exit_ok(&out);
    let retried = json_stdout(&out);
    assert_eq!(retried["run"], first["run"], "a retry continues its run");
    let t = target(&retried, app);
    assert_eq!(t["outcome"], "migrated", "{t}");
    assert!(resource(&sim, app)["properties"]["virtualNetworkSubnetId"].is_string());

    // One migrated app back on its gateway connection by hand.
    let out = sim
        .operator("rollback", "s.db", &["--app", app])
        .output()
        .unwrap();
    exit_ok(&out);
    let rolled = json_stdout(&out);
    let t = target(&rolled, app);
    assert_eq!(
        (t["outcome"].as_str(), t["reason"].as_str()),
        (Some("rolled-back"), Some("requested")),
        "{t}"
    );
    let site = resource(&sim, app);
    assert!(
        site["properties"]["virtualNetworkSubnetId"].is_null(),
        "{site}"
    );
    let prefix = format!("{app}/virtualNetworkConnections/").to_ascii_lowercase();
    let state = get_json(&format!("{}/_sim/state", sim.url));
    let gateway = state["resources"].as_array().unwrap().iter().any(|r| {
        r["id"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .starts_with(&prefix)
            && r["properties"]["isSwift"] != true
    });
    assert!(
        gateway,
        "no gateway connection for {app} after the rollback"
    );

    // A target never cut over has nothing to roll back to.
    let never = sim
        .expected
        .iter()
        .find(|(_, o)| o.starts_with("skipped"))
        .map(|(t, _)| t.clone())
        .unwrap();
    let out = sim
        .operator("rollback", "s.db", &["--app", &never])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no saved gateway connection"));
}

#[test]
fn a_poisoned_message_is_listed_and_completes_after_replay() {
    let sim = Sim::start("40", "5");
    sim.kill_after_writes("p.db", &sim.scoped(), 10);
    // Poison one queued step: the only message of its session, as a runner that crashed on
    // it ten times would have left it (the state file is written here as the runner would).
    let db = sim.dir.file("p.db");
    let poisoned: String = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let (seq, message_id): (i64, String) = conn
            .query_row(
                "SELECT seq, message_id FROM queue q WHERE state='active' AND head=1 AND
                   (SELECT COUNT(*) FROM queue o WHERE o.session_id=q.session_id AND o.state='active')=1
                 ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        conn.execute(
            "UPDATE queue SET state='dead', head=0, dead_reason='MaxDeliveryCountExceeded', delivery_count=10,
               dead_at=CAST(strftime('%s','now') AS INTEGER)*1000, lock_token=NULL, locked_until=NULL WHERE seq=?1",
            [seq],
        )
        .unwrap();
        message_id
    };
    // The rest of the run finishes; the poisoned target cannot.
    let out = sim.run("p.db", &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let listed = sim
        .operator("replay", "p.db", &["--dry-run"])
        .output()
        .unwrap();
    exit_ok(&listed);
    let groups = json_stdout(&listed);
    assert_eq!(groups["MaxDeliveryCountExceeded"]["count"], 1, "{groups}");
    assert!(groups["MaxDeliveryCountExceeded"]["first"].is_string());

    let out = sim
        .operator("replay", "p.db", &["--per-minute", "6000"])
        .output()
        .unwrap();
    exit_ok(&out);
    let report = json_stdout(&out);
    assert_eq!(crate::cli::outcomes(&report), sim.expected);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dead: i64 = conn
        .query_row("SELECT COUNT(*) FROM queue WHERE state='dead'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        dead, 0,
        "the dead-lettered copy of {poisoned} is still there"
    );
}
