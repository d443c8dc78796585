//! The deployment agrees with the code: the queue name, the function names, the Service Bus
//! connection name and the app settings, across `host.json`, `function-definitions/`,
//! `infra/` (Bicep, checked as text: no Bicep compiler is available here) and the code that
//! reads them; and `infra/` holds no key or connection string.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every Rust source file under `dir`.
fn rust_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
}

/// The quoted names that follow `prefix` in `text` (`env("X")`, `var("X")`, `env = "X"`, …).
fn quoted_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest.find('"')?;
            let name = &rest[..end];
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .then(|| name.to_string())
        })
        .collect()
}

/// The app settings the Bicep gives the function app: `{ name: 'X', value: … }`.
fn bicep_app_settings(bicep: &str) -> BTreeSet<String> {
    quoted_after(&bicep.replace('\'', "\""), "{ name: \"")
        .into_iter()
        .collect()
}

/// A Bicep `var name = 'value'`.
fn bicep_var(bicep: &str, name: &str) -> String {
    let line = bicep
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("var {name} = '")))
        .unwrap_or_else(|| panic!("no var {name} in the Bicep"));
    line.split('\'').nth(1).unwrap().to_string()
}

/// Settings the code reads that the function app is deliberately not given, and why.
const NOT_IN_AZURE: &[(&str, &str)] = &[
    (
        "FUNCTIONS_CUSTOMHANDLER_PORT",
        "set by the Functions host for the handler",
    ),
    ("FUNCTIONS_APP_ROOT_PATH", "set by the Functions host"),
    (
        "VNET_MIGRATE_STATIC_TOKEN",
        "a bearer token for loopback tests; a credential, never deployed",
    ),
    (
        "VNET_MIGRATE_LEDGER_KEY",
        "Azurite's shared key; Azure uses the identity",
    ),
    (
        "VNET_MIGRATE_SERVICEBUS_ENDPOINT",
        "a URL override for the Service Bus fake and sovereign clouds",
    ),
    (
        "VNET_MIGRATE_DEADLINE_SECONDS",
        "an optional tuning of the per-invocation deadline",
    ),
    ("VNET_MIGRATE_LOG", "an optional log filter"),
];

#[test]
fn function_names_agree_across_definitions_package_handler_and_infra() {
    let folders: BTreeSet<String> = std::fs::read_dir(root().join("function-definitions"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let package = read("src/cli/package.rs");
    let routed: BTreeSet<String> = quoted_after(&read("src/functions/handler.rs"), ".route(\"/")
        .into_iter()
        .collect();
    assert_eq!(folders.len(), 4, "{folders:?}");
    // package.rs pairs each name with its definition, compiled in.
    assert_eq!(
        package
            .matches("include_str!(\"../../function-definitions/")
            .count(),
        folders.len(),
        "package.rs packages another number of functions"
    );
    for f in &folders {
        assert!(
            package.contains(&format!("\"{f}\",")),
            "package.rs does not name {f}"
        );
        assert!(
            package.contains(&format!("function-definitions/{f}/function.json")),
            "package.rs does not package {f}"
        );
    }
    assert_eq!(routed, folders, "the handler serves other functions");
    // Event Grid delivers to the function whose trigger is Event Grid's.
    let events = read("infra/modules/events.bicep");
    let on_deploy = bicep_var(&events, "onDeployFunction");
    let def = json(&format!("function-definitions/{on_deploy}/function.json"));
    assert_eq!(def["bindings"][0]["type"], "eventGridTrigger");
    assert!(events.contains("'${functionAppId}/functions/${onDeployFunction}'"));
}

#[test]
fn the_steps_queue_and_its_connection_agree() {
    let step = json("function-definitions/step/function.json");
    let trigger = &step["bindings"][0];
    assert_eq!(trigger["type"], "serviceBusTrigger");
    assert_eq!(trigger["queueName"], "%VNET_MIGRATE_STEPS_QUEUE%");
    assert_eq!(trigger["isSessionsEnabled"], true);
    let connection = trigger["connection"].as_str().unwrap();

    let app = read("infra/modules/app.bicep");
    let queue = bicep_var(&app, "stepsQueueName");
    // The code's default, the local settings and the deployed queue are one name.
    let serve = read("src/cli/serve.rs");
    assert!(
        serve.contains(&format!(
            "env(\"VNET_MIGRATE_STEPS_QUEUE\").unwrap_or_else(|| \"{queue}\".into())"
        )),
        "serve's default queue is not {queue}"
    );
    let local = json("local.settings.json.example");
    assert_eq!(local["Values"]["VNET_MIGRATE_STEPS_QUEUE"], queue.as_str());
    assert!(app.contains("{ name: 'VNET_MIGRATE_STEPS_QUEUE', value: stepsQueue.name }"));

    // The trigger's identity-based connection, which `serve` reads for its own sends too.
    let namespace_setting = format!("{connection}__fullyQualifiedNamespace");
    let settings = bicep_app_settings(&app);
    for suffix in ["__fullyQualifiedNamespace", "__credential", "__clientId"] {
        assert!(
            settings.contains(&format!("{connection}{suffix}")),
            "{connection}{suffix} missing"
        );
    }
    assert!(read("src/azure/servicebus.rs").contains(&format!("var(\"{namespace_setting}\")")));
    assert!(local["Values"][&namespace_setting].is_string());

    // The queue as the pipeline needs it (DESIGN §7: sessions per app, MessageId dedup).
    for property in [
        "requiresSession: true",
        "requiresDuplicateDetection: true",
        "duplicateDetectionHistoryTimeWindow: 'PT",
        "lockDuration: 'PT",
        "maxDeliveryCount: ",
        "deadLetteringOnMessageExpiration: true",
    ] {
        assert!(app.contains(property), "the steps queue lacks {property}");
    }
    let host = json("host.json");
    assert!(host["extensions"]["serviceBus"]["maxConcurrentSessions"].as_u64() > Some(8));
}

#[test]
fn every_setting_the_code_reads_is_deployed_or_deliberately_not() {
    let mut sources = Vec::new();
    rust_sources(&root().join("src"), &mut sources);
    let mut read_by_code = BTreeSet::new();
    for (path, text) in &sources {
        if path.components().any(|c| c.as_os_str() == "sim") {
            continue; // the simulator and fakes are test infrastructure
        }
        for prefix in ["env(\"", "var(\"", "env = \"", "_ENV: &str = \""] {
            read_by_code.extend(quoted_after(text, prefix));
        }
    }
    let app = read("infra/modules/app.bicep");
    let deployed = bicep_app_settings(&app);
    let exempt: BTreeSet<String> = NOT_IN_AZURE.iter().map(|(n, _)| n.to_string()).collect();
    for name in &read_by_code {
        assert!(
            deployed.contains(name) || exempt.contains(name),
            "the code reads {name}, which infra/ does not set and NOT_IN_AZURE does not explain"
        );
        assert!(
            !(deployed.contains(name) && exempt.contains(name)),
            "{name} is both deployed and listed as not deployed"
        );
    }
    // No stale setting: every VNET_MIGRATE_* the Bicep sets is read by the code.
    for name in deployed.iter().filter(|n| n.starts_with("VNET_MIGRATE_")) {
        assert!(
            read_by_code.contains(name),
            "infra/ sets {name}, which nothing reads"
        );
    }
    // Host storage and the ledger through the identity.
    for name in [
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "AZURE_CLIENT_ID",
        "FUNCTIONS_WORKER_RUNTIME",
    ] {
        assert!(deployed.contains(name), "{name} missing");
    }
    assert!(app.contains("{ name: 'VNET_MIGRATE_CREDENTIAL', value: 'managed-identity' }"));
    assert!(app.contains("{ name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }"));
}

#[test]
fn infra_holds_no_key_or_connection_string() {
    let mut files = vec![
        "azure.yaml".to_string(),
        "infra/main.parameters.json".into(),
    ];
    for dir in ["infra", "infra/modules", "infra/roles"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && path.extension().is_some_and(|e| e != "md") {
                files.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    for rel in &files {
        let text = read(rel);
        let lower = text.to_ascii_lowercase();
        for forbidden in [
            "listkeys",
            "accountkey",
            "sharedaccesskey",
            "primarykey",
            "vnet_migrate_ledger_key",
            "vnet_migrate_static_token",
            "usedevelopmentstorage",
            "website_contentazurefileconnectionstring",
        ] {
            assert!(!lower.contains(forbidden), "{rel} mentions {forbidden}");
        }
        // The only connection string is Application Insights' ingestion endpoint, accepted
        // only with an Entra token (DisableLocalAuth).
        let connection_strings =
            lower.matches("connectionstring").count() + lower.matches("connection_string").count();
        let insights = lower
            .matches("applicationinsights_connection_string")
            .count()
            + lower.matches("properties.connectionstring").count();
        assert_eq!(
            connection_strings, insights,
            "{rel} holds a connection string"
        );
        // A bare AzureWebJobsStorage setting is a connection string.
        assert!(!text.contains("'AzureWebJobsStorage'"), "{rel}");
    }
    let app = read("infra/modules/app.bicep");
    for must in [
        "allowSharedKeyAccess: false",
        "disableLocalAuth: true",
        "DisableLocalAuth: true",
    ] {
        assert!(app.contains(must), "app.bicep lacks {must}");
    }
    // The role is loaded from the file the library test holds to ARM_ACTIONS.
    assert!(read("infra/main.bicep").contains("loadJsonContent('roles/migrator-role.json')"));
}
