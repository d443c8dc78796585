//! The state file as a contract (issue 10), through the binary against `simulate-arm` over
//! HTTP: a dry run writes nothing and never shares a state with a real run; a run resumed
//! with another scope, endpoint or policy is refused with both values named and nothing
//! written; a finished run is reported, not started again; `--new-run` leaves rolled-back
//! targets out; and `run` killed at any moment of its first second still ends with every
//! target of the fleet.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::Fleet;

use crate::cli::{outcomes, rehearse_outcomes, POLICY};
use crate::support::{bin, get_json, json_stdout, spawn_simulator, ChildGuard, TempDir};

/// A simulator over HTTP with a generated fleet, and what a rehearsal of that fleet decides.
pub(crate) struct Sim {
    _child: ChildGuard,
    pub(crate) url: String,
    subscriptions: Vec<String>,
    pub(crate) expected: BTreeMap<String, String>,
    pub(crate) dir: TempDir,
    policy: String,
}

impl Sim {
    pub(crate) fn start(generate: &str, seed: &str) -> Sim {
        let dir = TempDir::new();
        let policy = dir.file("p.json");
        std::fs::write(&policy, POLICY).unwrap();
        let (child, url) =
            spawn_simulator(&["--generate", generate, "--seed", seed, "--speed", "50"]);
        let fleet: Fleet = serde_json::from_value(get_json(&format!("{url}/_sim/state"))).unwrap();
        let fleet_file = dir.file("fleet.json");
        fleet.save(&fleet_file).unwrap();
        let policy = policy.to_str().unwrap().to_string();
        Sim {
            expected: rehearse_outcomes(&fleet_file, &policy),
            subscriptions: invariants::subscriptions(&fleet),
            _child: child,
            url,
            dir,
            policy,
        }
    }

    pub(crate) fn writes(&self) -> u64 {
        get_json(&format!("{}/_sim/stats", self.url))["writes"]
            .as_u64()
            .unwrap()
    }

    /// `command` against this simulator: the connection flags, `--state`, then `extra`.
    fn args(&self, command: &str, state: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            command,
            "--arm-speed",
            "50",
            "--credential",
            "static",
            "--output",
            "json",
            "--state",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.dir.file(state).to_str().unwrap().to_string());
        if !extra.contains(&"--arm-endpoint") {
            a.extend(["--arm-endpoint".to_string(), self.url.clone()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// The run in scope of the whole fleet, with the test policy.
    pub(crate) fn scoped(&self) -> Vec<&str> {
        let mut a = vec!["--policy", self.policy.as_str()];
        for s in &self.subscriptions {
            a.extend(["--subscription", s.as_str()]);
        }
        a
    }

    fn command(&self, state: &str, extra: &[&str]) -> std::process::Command {
        self.operator("run", state, extra)
    }

    /// Any command of the binary against this simulator, on the state file `state`.
    pub(crate) fn operator(
        &self,
        command: &str,
        state: &str,
        extra: &[&str],
    ) -> std::process::Command {
        let args = self.args(command, state, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = bin(&args);
        c.env("VNET_MIGRATE_STATIC_TOKEN", "t");
        c
    }

    pub(crate) fn run(&self, state: &str, extra: &[&str]) -> Output {
        self.command(state, extra).output().unwrap()
    }

    /// Starts `run` and SIGKILLs it once ARM has seen `writes` writes in all.
    pub(crate) fn kill_after_writes(&self, state: &str, extra: &[&str], writes: u64) {
        let child = self
            .command(state, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.writes() < writes {
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "run finished before it could be killed"
            );
            assert!(std::time::Instant::now() < deadline, "run made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill();
    }
}

/// A refusal: exit 2, one line on stderr containing every `needle`, nothing on stdout.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

pub(crate) fn exit_ok(out: &Output) {
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_dry_run_writes_nothing_from_any_state_and_never_shares_one_with_a_real_run() {
    let sim = Sim::start("40", "4");
    let scoped = sim.scoped();

    // A fresh dry run, then the same again (finished: reported, not run again).
    let out = sim.run("dry.db", &[&scoped[..], &["--dry-run"]].concat());
    exit_ok(&out);
    let report = json_stdout(&out);
    assert_eq!(report["dryRun"], true);
    assert_eq!(
        report["targets"].as_array().unwrap().len(),
        sim.expected.len()
    );
    let again = sim.run("dry.db", &[&scoped[..], &["--dry-run"]].concat());
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is finished"));
    assert_eq!(sim.writes(), 0, "a dry run wrote to ARM");

    // A real run on the dry run's state is refused.
    let out = sim.run("dry.db", &scoped);
    assert_refused(&out, &["holds a dry run"]);

    // A real run killed mid-way: a dry run on its state is refused and writes nothing.
    sim.kill_after_writes("real.db", &scoped, 10);
    let before = sim.writes();
    let out = sim.run("real.db", &[&scoped[..], &["--dry-run"]].concat());
    assert_refused(&out, &["holds a real run"]);
    let out = sim.run("real.db", &["--dry-run"]);
    assert_refused(&out, &["holds a real run"]);
    assert_eq!(sim.writes(), before, "a refused dry run wrote to ARM");
}

#[test]
fn a_resume_with_another_scope_endpoint_or_policy_is_refused_and_a_finished_run_is_not_run_again() {
    let sim = Sim::start("40", "4");
    let scoped = sim.scoped();
    sim.kill_after_writes("s.db", &scoped, 10);
    let before = sim.writes();

    let other_scope = sim.run(
        "s.db",
        &["--subscription", "00000000-0000-0000-0000-00000000beef"],
    );
    assert_refused(
        &other_scope,
        &["scope", "00000000-0000-0000-0000-00000000beef"],
    );
    let other_endpoint = sim.run("s.db", &["--arm-endpoint", "http://127.0.0.1:9"]);
    assert_refused(&other_endpoint, &[&sim.url, "http://127.0.0.1:9"]);
    let other = sim.dir.file("other.json");
    std::fs::write(&other, r#"{"settleSeconds": 1}"#).unwrap();
    let other_policy = sim.run("s.db", &["--policy", other.to_str().unwrap()]);
    assert_refused(&other_policy, &["policy", "sha256:"]);
    assert_eq!(sim.writes(), before, "a refused resume wrote to ARM");

    // With no scope flags at all, the run resumes its own scope and policy.
    let out = sim.run("s.db", &[]);
    exit_ok(&out);
    let first = json_stdout(&out);
    assert_eq!(outcomes(&first), sim.expected);

    // Finished: reported, exit 0, nothing written.
    let after = sim.writes();
    let out = sim.run("s.db", &scoped);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is finished"));
    assert_eq!(outcomes(&json_stdout(&out)), sim.expected);
    assert_eq!(sim.writes(), after);

    // A new run, asked for: the targets rolled back in the first are left out.
    let rolled_back: Vec<&String> = sim
        .expected
        .iter()
        .filter(|(_, o)| o.starts_with("rolled-back"))
        .map(|(t, _)| t)
        .collect();
    assert!(
        !rolled_back.is_empty(),
        "the fleet was chosen to roll one back"
    );
    let out = sim.run("s.db", &["--new-run"]);
    exit_ok(&out);
    let second = json_stdout(&out);
    assert_ne!(second["run"], first["run"]);
    let second = outcomes(&second);
    for t in rolled_back {
        assert!(!second.contains_key(t), "{t} was retried by --new-run");
    }
    assert!(
        second.values().all(|o| !o.starts_with("migrated")),
        "a second run migrated again: {second:?}"
    );
}

#[test]
fn run_killed_at_any_moment_of_its_first_second_still_ends_every_target() {
    let sim = Sim::start("40", "5");
    let scoped = sim.scoped();
    for i in 0..12u64 {
        let child = sim
            .command("k.db", &scoped)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        // Spread over the first second, the start of the run (listing the fleet, recording
        // the targets) included.
        std::thread::sleep(Duration::from_millis((i * 83) % 1000));
        child.kill();
    }
    let out = sim.run("k.db", &scoped);
    exit_ok(&out);
    let report: Value = json_stdout(&out);
    assert_eq!(
        outcomes(&report),
        sim.expected,
        "a resume after kills in the first second lost or changed targets"
    );
}
