//! The binary as a user runs it: exit codes, one-line errors, nothing written on bad input,
//! no files left on any way out (Ctrl-C included), JSON output, `simulate-arm` + `run` over
//! HTTP (killed with SIGKILL and resumed), and `snapshot` → `rehearse --fleet`.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::Fleet;

use crate::support::{
    bin, free_port, get_json, json_stdout, report_from_json, spawn_simulator, ChildGuard, TempDir,
};

fn run(args: &[&str]) -> Output {
    bin(args).output().expect("binary runs")
}

pub(crate) fn outcomes(report: &Value) -> BTreeMap<String, String> {
    crate::support::outcomes(&report_from_json(report))
}

pub(crate) const POLICY: &str = r#"{"settleSeconds": 0}"#;

/// A subscription id of the right shape.
const SUB: &str = "00000000-0000-0000-0000-000000000001";

/// A run of the binary kept to itself: its working directory and its temp folder (`TMPDIR`)
/// are empty directories of their own, so whatever it leaves behind can be seen.
struct Isolated {
    dir: TempDir,
}

impl Isolated {
    fn new() -> Self {
        let dir = TempDir::new();
        for d in ["cwd", "tmp", "in"] {
            std::fs::create_dir_all(dir.file(d)).unwrap();
        }
        Isolated { dir }
    }

    /// An input file (outside the folders watched).
    fn input(&self, name: &str, text: &str) -> String {
        let p = self.dir.file("in").join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = bin(args);
        c.current_dir(self.dir.file("cwd"))
            .env("TMPDIR", self.dir.file("tmp"))
            .env("VNET_MIGRATE_STATIC_TOKEN", "t")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs to the end (killed after a minute: a refusal must not start serving). Refusals
    /// print a line, far below what a pipe holds before the process would wait on it.
    fn run(&self, args: &[&str]) -> Output {
        let mut child = self.command(args).spawn().unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} still running after a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// What the run left in its working directory and its temp folder.
    fn left_behind(&self) -> Vec<String> {
        ["cwd", "tmp"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.dir.file(d)).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Exit `code`, one line on stderr saying what is wrong.
fn assert_one_line(out: &Output, code: i32, args: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "{args:?}: {err}"
    );
    lines[0].to_string()
}

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
            SUB,
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
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: "),
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

/// Each bad input of issue 10, as the binary meets it: exit 2, one line naming what is wrong,
/// nothing written (no state, lock or temporary file in the working directory or the temp
/// folder), no panic (exit 101) and no hang.
#[test]
fn every_bad_input_exits_2_on_one_line_and_writes_nothing() {
    let iso = Isolated::new();
    let loopback = format!("http://127.0.0.1:{}", free_port());
    let base = vnet_migrate::sim::generate::generate(5, 1);
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg");
    let with = |name: &str, extra: Value| {
        let mut fleet = base.clone();
        fleet.resources.push(extra);
        iso.input(name, &serde_json::to_string(&fleet).unwrap())
    };
    let dotdot = with(
        "dotdot.json",
        json!({"id": format!("{rg}/providers/Microsoft.Web/sites/.."), "type": "Microsoft.Web/sites"}),
    );
    let encoded = with(
        "encoded.json",
        json!({"id": format!("{rg}/providers/Microsoft.Web/sites/a%2F..%2Fb"), "type": "Microsoft.Web/sites"}),
    );
    let provider = with(
        "provider.json",
        json!({"id": format!("{rg}/providers/Microsoft.Network/sites/app9"), "type": "Microsoft.Web/sites"}),
    );
    let space = with(
        "space.json",
        json!({"id": format!("{rg}/providers/Microsoft.Network/virtualNetworks/v9"), "type": "Microsoft.Network/virtualNetworks",
                                          "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/33"]}}}),
    );
    let subnet = with(
        "subnet.json",
        json!({"id": format!("{rg}/providers/Microsoft.Network/virtualNetworks/v9/subnets/s"), "type": "Microsoft.Network/virtualNetworks/subnets",
                                           "properties": {"addressPrefix": "10.1.2.3/24"}}),
    );
    let settle = iso.input("settle.json", r#"{"settleSeconds": 18446744073709551615}"#);
    let array = iso.input("array.json", "[]");
    let nested = iso.input("nested.json", r#"{"concurrency": [8, 1]}"#);
    let app = |tail: &str| format!("{rg}/providers/{tail}");
    let (app_dots, app_provider) = (
        app("Microsoft.Web/sites/../slots/x"),
        app("Microsoft.Network/sites/app1"),
    );
    let remote = [
        "--credential",
        "static",
        "--arm-endpoint",
        loopback.as_str(),
    ];
    let cases: Vec<(Vec<&str>, &str)> =
        vec![
        (
            vec!["rehearse", "--generate", "5", "--subscription", ""],
            "--subscription",
        ),
        (
            vec!["plan", "--subscription", "../.."],
            "is not a valid subscription id",
        ),
        (
            // A flag of commands that talk to ARM is no flag of `rehearse` (nor ignored).
            vec!["rehearse", "--generate", "5", "--arm-endpoint", "http://127.0.0.1:1"],
            "--arm-endpoint",
        ),
        (vec!["run", "--subscription", ""], "--subscription"),
        (
            [&["run", "--subscription", "../.."][..], &remote].concat(),
            "--subscription",
        ),
        (
            [&["plan", "--subscription", "%2F"][..], &remote].concat(),
            "--subscription",
        ),
        (
            vec!["rehearse", "--generate", "5", "--speed=1e-300"],
            "--speed",
        ),
        (
            vec!["simulate-arm", "--generate", "5", "--speed", "NaN"],
            "--speed",
        ),
        (
            [
                &["run", "--subscription", SUB, "--arm-speed", "1e-300"][..],
                &remote,
            ]
            .concat(),
            "--arm-speed",
        ),
        (
            vec!["rehearse", "--generate", "5", "--policy", &settle],
            "policy field settleSeconds: must be at most 3600",
        ),
        (vec!["rehearse", "--generate", "150000"], "--generate"),
        (
            vec!["rehearse", "--generate", "0"],
            "must be between 1 and 50000",
        ),
        (vec!["simulate-arm", "--generate", "0"], "--generate"),
        (
            vec!["rehearse", "--generate", "5", "--policy", &array],
            "policy must be a JSON object",
        ),
        (
            vec!["run", "--subscription", SUB, "--policy", &nested],
            "policy field concurrency: must be a JSON object",
        ),
        (
            vec!["rehearse", "--fleet", &dotdot],
            "relative segment \"..\"",
        ),
        (vec!["rehearse", "--fleet", &encoded], "holds '%'"),
        (
            vec!["rehearse", "--fleet", &provider],
            "its type \"Microsoft.Web/sites\" is not the type of its id (Microsoft.Network/sites)",
        ),
        (
            vec!["simulate-arm", "--fleet", &provider],
            "is not the type of its id",
        ),
        (
            vec!["rehearse", "--fleet", &space],
            "\"10.0.0.0/33\" is not an address prefix",
        ),
        (
            vec!["rehearse", "--fleet", &subnet],
            "10.1.2.3/24 has host bits set",
        ),
        (
            [&["plan", "--app", &app_dots][..], &remote].concat(),
            "--app",
        ),
        (
            [&["plan", "--app", &app_provider][..], &remote].concat(),
            "expected a Microsoft.Web/sites or Microsoft.Web/sites/slots id",
        ),
        (
            vec!["run", "--subscription", SUB, "--resource-group", "rg."],
            "--resource-group",
        ),
        (vec!["run", "--subscription", SUB, "--tag", "env"], "--tag"),
        (
            vec!["run", "--subscription", SUB, "--credential", "bogus"],
            "unknown credential kind",
        ),
        (vec![], "no command given"),
    ];
    for (args, says) in &cases {
        let out = iso.run(args);
        let line = assert_one_line(&out, 2, args);
        assert!(line.contains(says), "{args:?}: {line}");
        assert!(
            iso.left_behind().is_empty(),
            "{args:?} left {:?}",
            iso.left_behind()
        );
    }
}

/// Nothing listens where ARM should be: exit 3 with one line saying what failed and what to
/// check, and the lock of the state file is gone (as is `plan`'s temporary state).
#[test]
fn unreachable_arm_exits_3_on_one_line_and_leaves_no_lock() {
    let iso = Isolated::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    let state = iso.dir.file("run.db");
    let state = state.to_str().unwrap();
    // `--arm-speed` shortens the client's backoff between its retries.
    let remote = [
        "--credential",
        "static",
        "--arm-endpoint",
        &url,
        "--arm-speed",
        "1000",
        "--subscription",
        SUB,
    ];
    for args in [
        [&["run", "--state", state][..], &remote].concat(),
        [&["plan"][..], &remote].concat(),
    ] {
        let out = iso.run(&args);
        let line = assert_one_line(&out, 3, &args);
        assert!(line.contains("transport error"), "{line}");
        assert!(
            line.ends_with("check the network, --arm-endpoint and the credential, then run again"),
            "{line}"
        );
        assert!(
            iso.left_behind().is_empty(),
            "{args:?} left {:?}",
            iso.left_behind()
        );
    }
    assert!(
        !iso.dir.file("run.db.lock").exists(),
        "the lock outlived the run"
    );
}

/// Ctrl-C stops a rehearsal: exit 1 (targets left unfinished), one line, and its temporary
/// state, SQLite's side files and the lock are gone.
#[test]
fn ctrl_c_stops_rehearse_as_unfinished_and_removes_its_files() {
    let iso = Isolated::new();
    let mut cmd = iso.command(&[
        "rehearse",
        "--generate",
        "300",
        "--speed",
        "1",
        "--output",
        "json",
    ]);
    let mut child = ChildGuard(cmd.stdout(Stdio::null()).spawn().unwrap());
    let start = Instant::now();
    while !iso.left_behind().iter().any(|f| f.ends_with(".db.lock")) {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "rehearse ended before Ctrl-C"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no state after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: interrupted"), "{err}");
    assert!(iso.left_behind().is_empty(), "left {:?}", iso.left_behind());
}

/// A rehearsal that finishes leaves its temp folder as it found it (it used to leave its
/// `.db.lock` there, every time).
#[test]
fn a_finished_rehearsal_leaves_no_files() {
    let iso = Isolated::new();
    let policy = iso.input("p.json", POLICY);
    let args = [
        "rehearse",
        "--generate",
        "20",
        "--speed",
        "200",
        "--policy",
        &policy,
        "--output",
        "json",
    ];
    let out = iso.command(&args).output().unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_stdout(&out)["targets"].as_array().unwrap().len(), 20);
    assert!(iso.left_behind().is_empty(), "left {:?}", iso.left_behind());
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
    // A migrated app is offline at least for the join the simulator drew for it.
    let r = &p["downtimeRatio"];
    let q = |k: &str| r[k].as_f64().unwrap();
    assert!(
        q("p50") >= 1.0 && q("p50") <= q("p99") && q("p99") <= q("max"),
        "{p}"
    );
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
        "--out-file",
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
    let out = run(&["package", "--out-file", out_dir.to_str().unwrap()]);
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
