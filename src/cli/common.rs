//! What the subcommands share: global flags, scope flags, building the ARM client, loading the
//! policy, printing a report and choosing the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, ValueEnum};

use crate::azure::arm::{ArmClient, ArmConfig};
use crate::azure::credential::{credential_from_settings, is_loopback_endpoint, CredentialKind};
use crate::azure::ResourceId;
use crate::policy::Policy;
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, ClapArgs)]
pub struct Global {
    /// `table` for people, `json` for machines (stdout then carries only the JSON document).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,
    /// ARM base URL (sovereign clouds, the simulator).
    #[arg(
        long,
        global = true,
        env = "VNET_MIGRATE_ARM_ENDPOINT",
        default_value = "https://management.azure.com"
    )]
    pub(crate) arm_endpoint: String,
    /// managed-identity, workload-identity, azure-cli, developer-tools or static.
    #[arg(
        long,
        global = true,
        env = "VNET_MIGRATE_CREDENTIAL",
        default_value = "developer-tools"
    )]
    pub(crate) credential: String,
    /// Subscription in scope (repeatable).
    #[arg(long = "subscription", global = true)]
    pub(crate) subscriptions: Vec<String>,
    /// Pace the client for an ARM simulator started with `--speed X` (loopback endpoints only;
    /// real ARM is paced at its documented limits).
    #[arg(long, global = true, default_value_t = 1.0)]
    pub(crate) arm_speed: f64,
}

/// Scope flags of `plan`, `run` and `snapshot`.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Scope {
    /// Only this resource group (repeatable).
    #[arg(long = "resource-group")]
    pub(crate) resource_groups: Vec<String>,
    /// Only this app (ARM id of a site; repeatable).
    #[arg(long = "app")]
    pub apps: Vec<String>,
    /// Only apps with this tag (`key=value`, repeatable).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Rollout policy file (JSON).
    #[arg(long, env = "VNET_MIGRATE_POLICY")]
    pub policy: Option<PathBuf>,
}

pub(crate) fn init_tracing() {
    // Logs go to stderr so that `--output json` keeps stdout clean.
    let filter = tracing_subscriber::EnvFilter::try_from_env("VNET_MIGRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The policy from `--policy`, else defaults; scope flags are merged into it.
pub(crate) fn load_policy(global: &Global, scope: &Scope) -> Result<Policy> {
    let mut policy = match &scope.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    policy
        .scope
        .subscriptions
        .extend(global.subscriptions.iter().cloned());
    policy
        .scope
        .resource_groups
        .extend(scope.resource_groups.iter().cloned());
    for t in &scope.tags {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--tag {t:?}: expected key=value"))?;
        policy.scope.tags.insert(k.to_string(), v.to_string());
    }
    Ok(policy)
}

pub(crate) fn parse_apps(apps: &[String]) -> Result<Vec<ResourceId>> {
    apps.iter()
        .map(|a| ResourceId::parse(a).context("--app"))
        .collect()
}

/// Subscriptions in scope: flags, policy, or those of the `--app` ids.
pub(crate) fn subscriptions(policy: &Policy, apps: &[ResourceId]) -> Result<Vec<String>> {
    let mut subs: Vec<String> = policy.scope.subscriptions.clone();
    subs.extend(apps.iter().map(|a| a.subscription().to_string()));
    subs.sort_by_key(|s| s.to_ascii_lowercase());
    subs.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    anyhow::ensure!(
        !subs.is_empty(),
        "no scope: pass --subscription (or --app, or scope.subscriptions in the policy)"
    );
    Ok(subs)
}

/// The ARM client for real Azure (or any endpoint), allowed to write only inside `scope`.
pub(crate) fn arm_client(global: &Global, write_scope: Vec<ResourceId>) -> Result<ArmClient> {
    let kind: CredentialKind = global.credential.parse().context("--credential")?;
    let cred = credential_from_settings(
        kind,
        &format!("{}/.default", arm_audience(&global.arm_endpoint)),
        &[&global.arm_endpoint],
    )
    .context("credential")?;
    let mut config = ArmConfig::new(global.arm_endpoint.clone(), write_scope);
    if global.arm_speed != 1.0 {
        anyhow::ensure!(
            global.arm_speed > 0.0 && global.arm_speed.is_finite(),
            "--arm-speed must be a positive number, got {}",
            global.arm_speed
        );
        anyhow::ensure!(
            is_loopback_endpoint(&global.arm_endpoint),
            "--arm-speed is only for a simulator on loopback, not {}",
            global.arm_endpoint
        );
        config = config.time_compressed(global.arm_speed);
    }
    Ok(ArmClient::new(config, cred)?)
}

/// Token audience: public ARM unless the endpoint says otherwise (sovereign clouds use their host).
fn arm_audience(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.starts_with("https://") {
        e.to_string()
    } else {
        "https://management.azure.com".to_string()
    }
}

/// Prints the report and returns the exit code: 0, or 1 when a target needs an operator.
pub(crate) fn finish(
    global: &Global,
    report: &Report,
    table: impl FnOnce(&Report) -> String,
) -> Result<ExitCode> {
    match global.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        OutputFormat::Table => print!("{}", table(report)),
    }
    Ok(if report.needs_operator() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where a simulated fleet comes from: a fleet file, or the deterministic generator.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct FleetSource {
    /// Fleet file (e.g. from `snapshot`).
    #[arg(long, conflicts_with = "generate")]
    pub(crate) fleet: Option<PathBuf>,
    /// Generate a realistic fleet of N targets instead.
    #[arg(long, value_name = "N")]
    pub(crate) generate: Option<usize>,
    /// Seed of the generator and of the simulator's latencies and faults.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
}

impl FleetSource {
    /// The fleet; `None` when neither `--fleet` nor `--generate` was given.
    pub(crate) fn load(&self) -> Result<Option<crate::sim::Fleet>> {
        Ok(match (&self.fleet, self.generate) {
            (Some(path), _) => Some(crate::sim::Fleet::load(path)?),
            (None, Some(n)) => Some(crate::sim::generate::generate(n, self.seed)),
            (None, None) => None,
        })
    }
}

pub(crate) fn check_speed(speed: f64) -> Result<()> {
    anyhow::ensure!(
        speed > 0.0 && speed.is_finite(),
        "--speed must be a positive number, got {speed}"
    );
    Ok(())
}
