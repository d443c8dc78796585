//! The binary as a user runs it: exit codes, one-line errors, JSON output, `simulate-arm` +
//! `run` over HTTP (killed with SIGKILL and resumed), and `snapshot` → `rehearse --fleet`.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::Fleet;

use crate::support::{
    bin, get_json, json_stdout, report_from_json, spawn_simulator, ChildGuard, TempDir,
};

fn run(args: &[&str]) -> Output {
    bin(args).output().expect("binary runs")
}

pub(crate) fn outcomes(report: &Value) -> BTreeMap<String, String> {
    crate::support::outcomes(&report_from_json(report))
}

pub(crate) const POLICY: &str = r#"{"settleSeconds": 0}"#;

/// `rehearse --fleet FILE --output json` with a policy: the outcomes per target.
pub(crate) fn rehearse_outcomes(fleet: &std::path::Path, policy: &str) -> BTreeMap<String, String> {
    let out = run(&[
        "rehearse",
        "--fleet",
        fleet.to_str().unwrap(),
        "--speed",
        "100",
        "--output",
        "json",
        "--policy",
        policy,
    ]);
    outcomes(&json_stdout(&out))
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = TempDir::new();
    let bad = dir.file("bad.json");
    std::fs::write(&bad, r#"{"subnet": {"preferredPrefix": 30}}"#).unwrap();
    for args in [
        vec![
            "rehearse",
            "--generate",
            "5",
            "--policy",
            bad.to_str().unwrap(),
        ],
        vec!["rehearse", "--generate", "5", "--speed", "0"],
        vec!["rehearse", "--generate", "5", "--faults", "sometimes"],
        vec!["rehearse"],
        vec!["plan", "--app", "/not/an/id"],
        vec![
            "run",
            "--credential",
            "static",
            "--subscription",
            "s",
            "--arm-endpoint",
            "https://management.azure.com",
        ],
        vec![
            "status",
            "--state",
            dir.file("missing.db").to_str().unwrap(),
        ],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{args:?}: no reason given");
        assert!(
            lines.len() == 1
                || lines[0].starts_with("error: invalid value")
                || lines[0].starts_with("error:"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !dir.file("missing.db").exists(),
        "status must not create a state file"
    );
    let out = run(&[
        "rehearse",
        "--generate",
        "5",
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("subnet.preferredPrefix"));
}

#[test]
fn rehearse_json_has_every_target_and_the_performance_block() {
    let dir = TempDir::new();
    let policy = dir.file("p.json");
    std::fs::write(&policy, POLICY).unwrap();
    let out = run(&[
        "rehearse",
        "--generate",
        "80",
        "--seed",
        "11",
        "--speed",
        "50",
        "--output",
        "json",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_stdout(&out);
    assert_eq!(report["targets"].as_array().unwrap().len(), 80);
    for key in [
        "makespanSeconds",
        "armWriteBoundSeconds",
        "lowerBoundSeconds",
        "boundRatio",
        "armRequests",
        "throttled429",
        "stepsPerSecond",
    ] {
        assert!(
            report["performance"][key].is_number(),
            "performance.{key} missing"
        );
    }
    // A floor under the run: never above the makespan it bounds.
    let p = &report["performance"];
    let bound = p["lowerBoundSeconds"].as_f64().unwrap();
    assert!(
        bound > 0.0 && bound <= p["makespanSeconds"].as_f64().unwrap(),
        "{p}"
    );
    assert!(p["boundRatio"].as_f64().unwrap() >= 1.0, "{p}");
    let total: u64 = report["summary"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 80);
    assert!(report["summary"].get("unfinished").is_none());
}

#[test]
fn run_over_http_killed_and_resumed_matches_rehearse_and_snapshot_round_trips() {
    let dir = TempDir::new();
    let policy = dir.file("p.json");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.to_str().unwrap();

    // The fleet, and what a rehearsal of it decides.
    let (sim, url) = spawn_simulator(&["--generate", "120", "--seed", "5", "--speed", "50"]);
    let fleet_file = dir.file("fleet.json");
    let fleet: Fleet = serde_json::from_value(get_json(&format!("{url}/_sim/state"))).unwrap();
    fleet.save(&fleet_file).unwrap();
    let expected = rehearse_outcomes(&fleet_file, policy);

    // snapshot (over HTTP, through the real client) gives a fleet that rehearses the same.
    let subs = invariants::subscriptions(&fleet);
    let snap_out = dir.file("snap.json").to_str().unwrap().to_string();
    let mut snap_args = vec![
        "snapshot",
        "--arm-endpoint",
        url.as_str(),
        "--credential",
        "static",
        "-o",
        snap_out.as_str(),
    ];
    for s in &subs {
        snap_args.extend(["--subscription", s.as_str()]);
    }
    let out = bin(&snap_args)
        .env("VNET_MIGRATE_STATIC_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot_file = dir.file("snap.json");
    let again = rehearse_outcomes(&snapshot_file, policy);
    assert_eq!(
        again, expected,
        "snapshot rehearses differently from the original"
    );

    // `run` against the simulator over HTTP, SIGKILLed mid-way, then resumed.
    let state = dir.file("run.db");
    let mut run_args = vec![
        "run",
        "--arm-endpoint",
        url.as_str(),
        "--arm-speed",
        "50",
        "--credential",
        "static",
        "--state",
        state.to_str().unwrap(),
        "--policy",
        policy,
        "--output",
        "json",
    ];
    for s in &subs {
        run_args.extend(["--subscription", s.as_str()]);
    }
    let child = bin(&run_args)
        .env("VNET_MIGRATE_STATIC_TOKEN", "t")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let start = Instant::now();
    loop {
        let writes = get_json(&format!("{url}/_sim/stats"))["writes"]
            .as_u64()
            .unwrap();
        if writes >= 40 {
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "run finished before it could be killed; make the fleet larger"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill(); // SIGKILL
    let out = bin(&run_args)
        .env("VNET_MIGRATE_STATIC_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = json_stdout(&out);
    assert_eq!(
        outcomes(&resumed),
        expected,
        "run over HTTP (killed and resumed) differs from the rehearsal"
    );

    // ARM's final state keeps the invariants.
    let final_state: Fleet =
        serde_json::from_value(get_json(&format!("{url}/_sim/state"))).unwrap();
    let report: vnet_migrate::report::Report = report_from_json(&resumed);
    let broken = invariants::check(&fleet, &final_state, &report);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    drop(sim);
}

#[test]
fn package_writes_a_deployable_folder_and_zip() {
    let dir = TempDir::new();
    let out_dir = dir.file("app");
    let out = run(&["package", "-o", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "host.json",
        "step/function.json",
        "on-deploy/function.json",
        "rollout-tick/function.json",
        "status/function.json",
        "vnet-migrate",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let host: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("host.json")).unwrap()).unwrap();
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "vnet-migrate"
    );
    let zip = dir.file("app.zip");
    assert!(std::fs::metadata(&zip).unwrap().len() > 1000);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        zip.to_str().unwrap()
    );
}

#[test]
fn chaos_rehearsal_ends_every_target_and_keeps_the_invariants() {
    // 5xx, connection resets, lost responses after applied writes and 429 storms: rehearse
    // itself fails (exit 2) if an invariant breaks; parked targets (exit 1) are allowed.
    let out = run(&[
        "rehearse",
        "--generate",
        "40",
        "--seed",
        "9",
        "--faults",
        "chaos",
        "--speed",
        "100",
        "--output",
        "json",
    ]);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_stdout(&out);
    assert_eq!(report["targets"].as_array().unwrap().len(), 40);
    assert!(report["summary"].get("unfinished").is_none());
    for t in report["targets"].as_array().unwrap() {
        if t["outcome"] == "parked" {
            assert!(
                t["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "parked without a reason"
            );
        }
    }
}
