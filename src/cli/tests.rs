//! No input makes the command line panic: arbitrary arguments through clap and the checks a
//! command runs before it does anything, arbitrary policy and fleet documents through their
//! loaders; every refusal is one line.

use super::*;
use crate::error::Chain;
use crate::fleet::Fleet;
use crate::policy::Policy;
use proptest::prelude::*;
use serde_json::{json, Value};

fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let line = Chain(e).to_string();
    assert!(!line.contains('\n') && !line.is_empty(), "{line:?}");
    line
}

/// Tokens a user might type: subcommands, flags, and values good and bad.
fn token() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "rehearse", "plan", "run", "status", "snapshot", "simulate-arm", "--generate",
        "--fleet", "--seed", "--speed", "--arm-speed", "--subscription", "--resource-group",
        "--app", "--tag", "--policy", "--faults", "--state", "--output", "--credential",
        "--port", "-o", "--dry-run", "0", "1", "-1", "5", "50000", "50001", "150000",
        "1e-300", "NaN", "inf", "0.001", "10000", "18446744073709551616", "", "..", "../..",
        "%2F", "a=b", "=", "rg.", "rg", "json", "chaos",
        "00000000-0000-0000-0000-000000000001",
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Web/sites/app1",
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/../providers/Microsoft.Web/sites/a",
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Network/sites/a",
        "/subscriptions/s/resourceGroups/rg",
    ])
    .prop_map(str::to_string);
    prop_oneof![4 => known, 1 => ".{0,24}"]
}

/// JSON values shaped like policies and fleets, with odd leaves.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "10.0.0.0/16",
            "10.0.0.1/24",
            "10.0.0.0/33",
            "::/0",
            "auto",
            "park",
            "10%",
            "150%",
            "{plan}",
            "/health",
            "../..",
            "00000000-0000-0000-0000-000000000001",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a%2F..",
            "Microsoft.Web/sites",
            "Microsoft.Network/virtualNetworks",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "scope",
            "subscriptions",
            "resourceGroups",
            "tags",
            "exclude",
            "waves",
            "concurrency",
            "perSubscription",
            "perVnet",
            "bakeMinutes",
            "gates",
            "probe",
            "windows",
            "startHour",
            "subnet",
            "namePattern",
            "preferredPrefix",
            "routing",
            "rollback",
            "maxAttempts",
            "onDeploy",
            "settleSeconds",
            "resources",
            "id",
            "type",
            "properties",
            "addressSpace",
            "addressPrefixes",
            "addressPrefix",
            "subnets",
            "serverFarmId",
            "virtualNetworkSubnetId",
            "vnetResourceId",
        ])
        .prop_map(str::to_string),
        ".{0,6}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arguments_never_panic_and_refusals_are_one_line(args in prop::collection::vec(token(), 0..8)) {
        let argv = std::iter::once("vnet-migrate".to_string()).chain(args);
        let cli = match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(e) => {
                if e.use_stderr() {
                    let line = exit::clap_one_line(&e);
                    prop_assert!(!line.contains('\n') && line.starts_with("error: "), "{}", line);
                }
                return Ok(());
            }
        };
        // What parsing let through is within bounds.
        prop_assert!(common::speed_arg(&cli.global.arm_speed.to_string()).is_ok());
        let source = match &cli.command {
            Command::Rehearse(a) => Some(&a.source),
            Command::SimulateArm(a) => Some(&a.source),
            _ => None,
        };
        if let Some(n) = source.and_then(|s| s.generate) {
            prop_assert!((1..=crate::sim::generate::MAX_TARGETS).contains(&n));
        }
        if let Some(s) = source.filter(|s| s.fleet.is_some()) {
            if let Err(e) = s.load() {
                one_line(e.as_ref());
            }
        }
        // The checks `plan`, `run` and `snapshot` make before any request.
        let scope = match &cli.command {
            Command::Plan(a) => Some(&a.scope),
            Command::Run(a) => Some(&a.scope),
            Command::Snapshot(a) => Some(&a.scope),
            _ => None,
        };
        if let Some(scope) = scope {
            let checked = common::load_policy(scope).and_then(|p| {
                let apps = common::parse_apps(&scope.apps)?;
                common::subscriptions(&p, &apps).and_then(|s| common::write_scope(&s))
            });
            if let Err(e) = checked {
                one_line(e.as_ref());
            }
        }
    }

    #[test]
    fn any_policy_document_loads_or_is_refused_on_one_line(doc in json_value(), raw in ".{0,40}") {
        for text in [doc.to_string(), json!({"scope": doc.clone()}).to_string(), raw] {
            if let Err(e) = Policy::from_json(&text) {
                let line = one_line(&e);
                prop_assert!(line.starts_with("policy "), "{}", line);
            }
        }
    }

    #[test]
    fn any_fleet_document_loads_or_is_refused_on_one_line(resources in prop::collection::vec(json_value(), 0..4)) {
        let text = json!({ "resources": resources }).to_string();
        if let Err(e) = Fleet::from_json(&text, "f.json") {
            let line = one_line(&e);
            prop_assert!(line.starts_with("fleet file f.json"), "{}", line);
        }
    }
}
