//! `serve`: the Azure Functions custom handler (DESIGN §7). Settings come from the environment
//! (app settings); the handler refuses to start rather than run without a working ledger.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use futures::future::BoxFuture;

use super::common::{self, Global};
use super::exit::Exit;
use crate::azure::credential::{
    credential_from_settings, is_loopback_endpoint, CredentialKind, TokenSource,
};
use crate::azure::servicebus::{
    endpoint_from, endpoint_from_env, BearerSource, ServiceBusClient, ServiceBusError,
    SERVICEBUS_SCOPE,
};
use crate::functions::handler::{router, Handler, Rollouts};
use crate::migration::{FrontEnd, MigratedChecks, Migration, StepContext};
use crate::pipeline::engine::Engine;
use crate::pipeline::ledger::Ledger;
use crate::pipeline::rollout::RolloutConfig;
use crate::pipeline::sqlite::SqliteStore;
use crate::pipeline::table::{check_endpoint, TableAuth, TableLedger, STORAGE_SCOPE};
use crate::policy::Policy;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) connection: common::Connection,
}

/// Service Bus tokens from the same credential kind as ARM.
struct TokenBearer(Arc<dyn TokenSource>);

impl BearerSource for TokenBearer {
    fn bearer(&self) -> BoxFuture<'_, Result<String, ServiceBusError>> {
        Box::pin(async move {
            self.0
                .token()
                .await
                .map(|t| t.secret().to_string())
                .map_err(|e| ServiceBusError::Auth(e.to_string()))
        })
    }
}

/// The steps queue from the settings (DESIGN §7): `VNET_MIGRATE_SERVICEBUS_ENDPOINT` or
/// `ServiceBusConnection__fullyQualifiedNamespace`, `VNET_MIGRATE_STEPS_QUEUE`; tokens from
/// the credential `kind`. `serve` sends on it, `replay --dlq` reads its dead letters.
/// `namespace` (`rollout --servicebus`) stands for the namespace setting.
pub(crate) fn steps_queue(
    kind: CredentialKind,
    namespace: Option<&str>,
) -> Result<ServiceBusClient> {
    let endpoint = match namespace {
        Some(ns) => endpoint_from(env("VNET_MIGRATE_SERVICEBUS_ENDPOINT").as_deref(), Some(ns))?,
        None => endpoint_from_env()?,
    };
    let token = credential_from_settings(kind, SERVICEBUS_SCOPE, &[&endpoint])
        .context("Service Bus credential")?;
    let queue = env("VNET_MIGRATE_STEPS_QUEUE").unwrap_or_else(|| "migration-steps".into());
    Ok(ServiceBusClient::new(
        endpoint,
        queue,
        Arc::new(TokenBearer(token)),
    ))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `sqlite:PATH`, or a Table Storage endpoint: `https://{account}.table.core.windows.net`
/// with the identity `kind` names, or an emulator on loopback
/// (`http://127.0.0.1:PORT/devstoreaccount1`) with its account key in
/// `VNET_MIGRATE_LEDGER_KEY` (refused for any other endpoint). The Table ledger's tables are
/// created if missing.
pub(crate) async fn open_ledger(setting: &str, kind: CredentialKind) -> Result<Arc<dyn Ledger>> {
    if let Some(path) = setting.strip_prefix("sqlite:") {
        let store = SqliteStore::open(std::path::Path::new(path))
            .with_context(|| format!("VNET_MIGRATE_LEDGER: cannot open {path}"))?;
        return Ok(Arc::new(store));
    }
    if setting.starts_with("https://") || setting.starts_with("http://") {
        let key = env("VNET_MIGRATE_LEDGER_KEY");
        check_endpoint(setting, key.is_some()).context("VNET_MIGRATE_LEDGER")?;
        let auth = match key {
            Some(key) => TableAuth::shared_key(&key).context("VNET_MIGRATE_LEDGER_KEY")?,
            None => TableAuth::Entra(
                credential_from_settings(kind, STORAGE_SCOPE, &[setting])
                    .context("Table Storage credential")?,
            ),
        };
        let ledger = TableLedger::open(setting, auth)
            .await
            .context("VNET_MIGRATE_LEDGER")?;
        return Ok(Arc::new(ledger));
    }
    bail!("VNET_MIGRATE_LEDGER must be sqlite:PATH or a Table Storage URL, got {setting:?}")
}

/// The policy file `serve` reads: `VNET_MIGRATE_POLICY`, else `rollout.json` in the app root.
pub(crate) fn policy_path() -> PathBuf {
    if let Some(p) = env("VNET_MIGRATE_POLICY") {
        return PathBuf::from(p);
    }
    match env("FUNCTIONS_APP_ROOT_PATH") {
        Some(root) => PathBuf::from(root).join("rollout.json"),
        None => PathBuf::from("rollout.json"),
    }
}

pub(crate) async fn run(global: &Global, _args: Args) -> Result<ExitCode> {
    let port: u16 = env("FUNCTIONS_CUSTOMHANDLER_PORT")
        .ok_or_else(|| {
            anyhow!("FUNCTIONS_CUSTOMHANDLER_PORT is not set (the Functions host sets it)")
        })?
        .parse()
        .context("FUNCTIONS_CUSTOMHANDLER_PORT")?;
    let path = policy_path();
    let policy =
        Policy::load_or_default(&path).with_context(|| format!("policy {}", path.display()))?;
    if policy.scope.subscriptions.is_empty() {
        bail!(
            "policy {}: scope.subscriptions is empty; serve only writes to listed subscriptions",
            path.display()
        );
    }
    let write_scope = common::write_scope(&policy.scope.subscriptions)?;
    // Under Functions the default identity is the app's managed identity, not developer tools.
    let kind_text = env("VNET_MIGRATE_CREDENTIAL").unwrap_or_else(|| "managed-identity".into());
    let kind: CredentialKind = kind_text.parse().context("VNET_MIGRATE_CREDENTIAL")?;
    let arm_global = Global {
        output: global.output,
        query: None,
        verbose: global.verbose,
        debug: global.debug,
        arm_endpoint: global.arm_endpoint.clone(),
        credential: kind_text.clone(),
        arm_speed: global.arm_speed,
    };
    let arm = common::arm_client(&arm_global, write_scope)?;

    let ledger = open_ledger(
        &env("VNET_MIGRATE_LEDGER").unwrap_or_else(|| "sqlite:vnet-migrate.db".into()),
        kind,
    )
    .await?;
    ledger
        .runs()
        .await
        .context("VNET_MIGRATE_LEDGER: cannot read the ledger")?;

    let sender = Arc::new(steps_queue(kind, None)?);

    let deadline = match env("VNET_MIGRATE_DEADLINE_SECONDS") {
        Some(s) => s.parse().context("VNET_MIGRATE_DEADLINE_SECONDS")?,
        None => 540,
    };
    let policy = Arc::new(policy);
    // ARM on loopback is a simulator, which also answers for the apps' host names.
    let front_end = if is_loopback_endpoint(&global.arm_endpoint) {
        FrontEnd::Simulator(global.arm_endpoint.clone())
    } else {
        FrontEnd::Https
    };
    let rollouts = Rollouts {
        // `--arm-speed` is refused above for anything but a simulator on loopback.
        config: RolloutConfig::of(&policy, global.arm_speed, RolloutConfig::default().tick)
            .in_azure(&policy),
        checks: Arc::new(MigratedChecks {
            arm: arm.clone(),
            policy: policy.clone(),
            front_end: front_end.clone(),
        }),
        // The `rollout-tick` timer fires every minute (function-definitions/rollout-tick).
        held_for: time::Duration::seconds_f64(60.0 / global.arm_speed),
    };
    let engine = Engine::new(Migration::new(
        StepContext::new(arm, policy.clone(), ledger.clone()).probing_through(front_end),
    ));
    let handler = Handler::new(
        engine,
        sender,
        ledger,
        policy,
        env("VNET_MIGRATE_PRINCIPAL_ID"),
        Duration::from_secs(deadline),
        rollouts,
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    println!("vnet-migrate serve listening on {addr}");
    axum::serve(listener, router(Arc::new(handler)))
        .await
        .context("serving")?;
    Ok(Exit::Done.into())
}
