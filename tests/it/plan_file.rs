//! Plan → review → apply (issue 10), through the binary against `simulate-arm` over HTTP:
//! `plan --out-file` writes nothing to ARM and reserves prefixes that overlap nothing;
//! `run --plan` creates exactly the planned subnets with the planned prefixes and reaches the
//! forecast outcomes; a target ARM drifted from since the plan is held back as
//! `blocked:drifted` and gets no write.

use std::collections::BTreeMap;
use std::process::Output;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::Fleet;

use crate::cli::POLICY;
use crate::support::{
    arm_write, bin, get_json, json_stdout, resource_in, spawn_simulator, ChildGuard, TempDir,
};

struct Sim {
    _child: ChildGuard,
    url: String,
    dir: TempDir,
    subscriptions: Vec<String>,
}

impl Sim {
    fn start(generate: &str, seed: &str) -> Sim {
        let (child, url) =
            spawn_simulator(&["--generate", generate, "--seed", seed, "--speed", "50"]);
        let fleet: Fleet = serde_json::from_value(get_json(&format!("{url}/_sim/state"))).unwrap();
        Sim {
            subscriptions: invariants::subscriptions(&fleet),
            _child: child,
            url,
            dir: TempDir::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Output {
        let mut all = vec![
            args[0],
            "--arm-endpoint",
            self.url.as_str(),
            "--arm-speed",
            "50",
            "--credential",
            "static",
        ];
        all.extend_from_slice(&args[1..]);
        bin(&all)
            .env("VNET_MIGRATE_STATIC_TOKEN", "t")
            .output()
            .unwrap()
    }

    /// `plan --out-file plan.json` over the whole fleet; the plan file.
    fn plan(&self) -> Value {
        self.plan_with(POLICY)
    }

    /// `plan` under the policy document `policy`.
    fn plan_with(&self, policy_text: &str) -> Value {
        let policy = self.dir.file("p.json");
        std::fs::write(&policy, policy_text).unwrap();
        let out_file = self.dir.file("plan.json");
        let mut args = vec![
            "plan",
            "--policy",
            policy.to_str().unwrap(),
            "--out-file",
            out_file.to_str().unwrap(),
        ];
        for s in &self.subscriptions {
            args.extend(["--subscription", s.as_str()]);
        }
        let out = self.command(&args);
        assert!(
            out.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap()
    }

    /// `run --plan plan.json`: the JSON report and stderr.
    fn apply(&self) -> (Value, String) {
        let plan = self.dir.file("plan.json");
        let state = self.dir.file("run.db");
        let out = self.command(&[
            "run",
            "--plan",
            plan.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--output",
            "json",
        ]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "run --plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            json_stdout(&out),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state(&self) -> Value {
        get_json(&format!("{}/_sim/state", self.url))
    }

    fn writes(&self) -> u64 {
        get_json(&format!("{}/_sim/stats", self.url))["writes"]
            .as_u64()
            .unwrap()
    }

    /// PUT a subnet as someone else would (through ARM, not through vnet-migrate).
    fn put_subnet(&self, id: &str, prefix: &str) {
        let body = json!({"properties": {"addressPrefix": prefix}});
        arm_write(&self.url, reqwest::Method::PUT, id, "2024-05-01", body);
    }
}

/// Every subnet in ARM: id (lowercase) → prefix.
fn subnets(state: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in state["resources"].as_array().unwrap() {
        let is_vnet = r["type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Network/virtualNetworks"));
        if !is_vnet {
            continue;
        }
        for s in r["properties"]["subnets"].as_array().into_iter().flatten() {
            if let Some(p) = s["properties"]["addressPrefix"].as_str() {
                out.insert(
                    s["id"].as_str().unwrap().to_ascii_lowercase(),
                    p.to_string(),
                );
            }
        }
    }
    out
}

/// The VNet of a subnet id (lowercase).
fn vnet_of(subnet: &str) -> &str {
    subnet.rsplit_once("/subnets/").unwrap().0
}

fn planned_new_subnets(plan: &Value) -> BTreeMap<String, String> {
    plan["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["create"] == true)
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_ascii_lowercase(),
                s["prefix"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn outcome_label(t: &Value) -> String {
    match t["reason"].as_str() {
        Some(r) => format!("{}:{r}", t["outcome"].as_str().unwrap()),
        None => t["outcome"].as_str().unwrap().to_string(),
    }
}

/// The multi-plan subnet join: plans of one subscription share a subnet per VNet.
const SHARED: &str = r#"{"settleSeconds": 0, "subnet": {"sharedAcrossPlans": true}}"#;

#[test]
fn plan_then_run_plan_creates_exactly_the_planned_subnets_for_any_generated_fleet() {
    for (seed, policy) in [("3", POLICY), ("6", POLICY), ("11", POLICY), ("6", SHARED)] {
        let sim = Sim::start("60", seed);
        let before = subnets(&sim.state());
        let plan = sim.plan_with(policy);
        assert_eq!(sim.writes(), 0, "seed {seed}: plan wrote to ARM");
        // Each subnet is planned once; a shared one names the plans that join it, and the
        // targets of several plans move into it.
        let planned_ids: Vec<&str> = plan["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<&str> = planned_ids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            planned_ids.len(),
            "seed {seed}: {planned_ids:?}"
        );
        let shared_with = |s: &Value| s["sharedWith"].as_array().map_or(0, Vec::len);
        let joined = plan["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .map(shared_with)
            .max();
        if policy == SHARED {
            assert!(joined.unwrap_or(0) > 0, "seed {seed}: no subnet is shared");
        } else {
            assert_eq!(joined.unwrap_or(0), 0, "seed {seed}");
        }

        // Reserved prefixes overlap neither each other nor what the VNets hold.
        let planned = planned_new_subnets(&plan);
        assert!(!planned.is_empty(), "seed {seed}: nothing to create");
        let mut by_vnet: BTreeMap<&str, Vec<Ipv4Net>> = BTreeMap::new();
        for (id, p) in before.iter().chain(planned.iter()) {
            by_vnet
                .entry(vnet_of(id))
                .or_default()
                .push(p.parse().unwrap());
        }
        for (vnet, prefixes) in &by_vnet {
            for (i, a) in prefixes.iter().enumerate() {
                for b in &prefixes[i + 1..] {
                    assert!(
                        !(a.contains(b) || b.contains(a)),
                        "seed {seed}: {a} and {b} overlap in {vnet}"
                    );
                }
            }
        }

        let (report, _) = sim.apply();
        let after = subnets(&sim.state());
        let created: BTreeMap<String, String> = after
            .into_iter()
            .filter(|(id, _)| !before.contains_key(id))
            .collect();
        assert_eq!(
            created, planned,
            "seed {seed}: run --plan created other subnets than planned"
        );

        // Each target reached its forecast: `migrate` ends migrated (or rolled back by its
        // health check), anything else exactly as forecast.
        let forecast: BTreeMap<String, String> = plan["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_ascii_lowercase(),
                    t["forecast"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let got: BTreeMap<String, String> = report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_ascii_lowercase(),
                    outcome_label(t),
                )
            })
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            forecast.keys().collect::<Vec<_>>(),
            "seed {seed}: other targets"
        );
        for (id, f) in &forecast {
            let g = &got[id];
            let as_forecast = match f.as_str() {
                "migrate" => g == "migrated" || g.starts_with("rolled-back"),
                _ => g == f,
            };
            assert!(as_forecast, "seed {seed}: {id} forecast {f}, got {g}");
        }
    }
}

#[test]
fn targets_arm_drifted_from_are_held_back_and_get_no_write() {
    let sim = Sim::start("60", "3");
    let plan = sim.plan();
    // Someone takes the block reserved for one new subnet, under another name.
    let (taken, prefix) = planned_new_subnets(&plan).into_iter().next().unwrap();
    let vnet = vnet_of(&taken).to_string();
    sim.put_subnet(&format!("{vnet}/subnets/someone-else"), &prefix);
    let before = sim.state();

    let (report, stderr) = sim.apply();
    let drifted: Vec<&Value> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| outcome_label(t) == "blocked:drifted")
        .collect();
    let into_vnet: Vec<&Value> = plan["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["subnet"]
                .as_str()
                .is_some_and(|s| vnet_of(&s.to_ascii_lowercase()) == vnet)
        })
        .collect();
    assert!(!into_vnet.is_empty());
    assert_eq!(
        drifted.len(),
        into_vnet.len(),
        "every target planned into the changed VNet is held back, no other"
    );
    assert!(stderr.contains("run `plan` again"), "{stderr}");
    // Held back means untouched: the site as it was before the run, gateway connection
    // included, and the taken block was not created again.
    let after = sim.state();
    for t in drifted {
        let id = t["id"].as_str().unwrap();
        assert_eq!(
            resource_in(&after, id),
            resource_in(&before, id),
            "{id} was written"
        );
    }
    assert!(!subnets(&after).contains_key(&taken), "{taken} was created");
}

#[test]
fn a_plan_is_applied_only_where_it_was_made() {
    let sim = Sim::start("20", "3");
    sim.plan();
    let plan = sim.dir.file("plan.json");
    let state = sim.dir.file("elsewhere.db");
    let out = bin(&[
        "run",
        "--arm-endpoint",
        "http://127.0.0.1:9",
        "--credential",
        "static",
        "--plan",
        plan.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ])
    .env("VNET_MIGRATE_STATIC_TOKEN", "t")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&sim.url) && err.contains("http://127.0.0.1:9"),
        "{err}"
    );
    assert!(!state.exists(), "a refused run created its state file");
}
