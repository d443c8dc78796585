//! What the subcommands share: global flags, scope flags and their checks, building the ARM
//! client, loading the policy, printing a report, and the temporary state of `rehearse` and
//! `plan`.
//!
//! Every value a user types is checked here, at the edge, before anything is written: clap
//! runs the `*_arg` parsers while it reads the command line, so a bad value ends the command
//! with one line naming the flag (exit 2, `exit.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::exit::Exit;
use crate::azure::arm::{ArmClient, ArmConfig};
use crate::azure::credential::{credential_from_settings, is_loopback_endpoint, CredentialKind};
use crate::azure::resource_id::{NameRule, ResourceKind};
use crate::azure::ResourceId;
use crate::policy::Policy;
use crate::report::Report;
use crate::sim::{SimOptions, Simulator};

pub use super::output::OutputFormat;

#[derive(Debug, ClapArgs)]
pub struct Global {
    /// `table` for people, `json` for machines (stdout then carries only the JSON document),
    /// `tsv` for shell scripts (values only, tab-separated).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,
    /// JMESPath query applied to the JSON document before it is printed (as in the az CLI).
    #[arg(long, global = true, value_name = "JMESPATH")]
    pub(crate) query: Option<String>,
    /// More log lines on stderr (info); `VNET_MIGRATE_LOG` or `RUST_LOG` set the filter exactly.
    #[arg(long, global = true)]
    pub(crate) verbose: bool,
    /// Every log line on stderr (debug), HTTP calls included.
    #[arg(long, global = true)]
    pub(crate) debug: bool,
    /// Set from the command's `Connection` flags (only commands that talk to ARM take them).
    #[arg(skip = DEFAULT_ARM_ENDPOINT.to_string())]
    pub(crate) arm_endpoint: String,
    #[arg(skip = DEFAULT_CREDENTIAL.to_string())]
    pub(crate) credential: String,
    #[arg(skip = 1.0)]
    pub(crate) arm_speed: f64,
}

const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
const DEFAULT_CREDENTIAL: &str = "developer-tools";

impl Global {
    /// The flags every command takes, with the connection of one that talks to ARM.
    pub(crate) fn connected(mut self, c: Option<&Connection>) -> Global {
        if let Some(c) = c {
            self.arm_endpoint = c.arm_endpoint.clone();
            self.credential = c.credential.clone();
            self.arm_speed = c.arm_speed;
        }
        self
    }
}

/// How a command that talks to ARM reaches it.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Connection {
    /// ARM base URL (sovereign clouds, the simulator).
    #[arg(long, env = "VNET_MIGRATE_ARM_ENDPOINT", default_value = DEFAULT_ARM_ENDPOINT)]
    pub(crate) arm_endpoint: String,
    /// managed-identity, workload-identity, azure-cli, developer-tools or static.
    #[arg(long, env = "VNET_MIGRATE_CREDENTIAL", default_value = DEFAULT_CREDENTIAL)]
    pub(crate) credential: String,
    /// Pace the client for an ARM simulator started with `--speed X` (loopback endpoints only;
    /// real ARM is paced at its documented limits).
    #[arg(long, default_value_t = 1.0, value_parser = speed_arg)]
    pub(crate) arm_speed: f64,
}

/// Scope flags of `plan`, `run` and `snapshot`.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Scope {
    /// Subscription in scope (its id, a GUID; repeatable).
    #[arg(long = "subscription", value_parser = subscription_arg)]
    pub(crate) subscriptions: Vec<String>,
    /// Only this resource group (its name, or its id when the name is in several
    /// subscriptions; repeatable).
    #[arg(short = 'g', long = "resource-group", value_parser = resource_group_arg)]
    pub(crate) resource_groups: Vec<String>,
    /// Only this app (ARM id of a site or slot; repeatable).
    #[arg(long = "app")]
    pub apps: Vec<String>,
    /// Only apps with this tag (`key=value`, repeatable).
    #[arg(long = "tag", value_parser = tag_arg)]
    pub(crate) tags: Vec<(String, String)>,
    /// Rollout policy file (JSON).
    #[arg(long, env = "VNET_MIGRATE_POLICY")]
    pub policy: Option<PathBuf>,
}

pub(crate) fn init_tracing(global: &Global) {
    // Logs go to stderr so that `--output json` keeps stdout clean. An explicit filter in the
    // environment wins; otherwise the flags choose the level.
    let level = if global.debug {
        "debug"
    } else if global.verbose {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VNET_MIGRATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The policy from `--policy`, else defaults; scope flags are merged into it.
pub(crate) fn load_policy(scope: &Scope) -> Result<Policy> {
    let mut policy = match &scope.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    policy
        .scope
        .subscriptions
        .extend(scope.subscriptions.iter().cloned());
    policy
        .scope
        .resource_groups
        .extend(scope.resource_groups.iter().cloned());
    policy.scope.tags.extend(scope.tags.iter().cloned());
    Ok(policy)
}

/// The `--app` ids: a site or slot each, with names ARM would accept.
pub(crate) fn parse_apps(apps: &[String]) -> Result<Vec<ResourceId>> {
    apps.iter()
        .map(|a| {
            let id = ResourceId::parse(a).context("--app")?;
            id.check_kind(ResourceKind::TARGETS).context("--app")?;
            id.check_names().context("--app")?;
            Ok(id)
        })
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

/// The write scope of a run: the subscriptions in scope (already checked at the edge).
pub(crate) fn write_scope(subscriptions: &[String]) -> Result<Vec<ResourceId>> {
    subscriptions
        .iter()
        .map(|s| ResourceId::subscription_id(s).context("write scope"))
        .collect()
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

/// Prints the report and returns its exit code (`Exit::of_report`).
pub(crate) fn finish(
    global: &Global,
    report: &Report,
    table: impl FnOnce(&Report) -> String,
) -> Result<ExitCode> {
    emit(global, report, || table(report))?;
    Ok(Exit::of_report(report).into())
}

/// Prints a command's document as `-o` and `--query` ask (`table` is its own layout).
pub(crate) fn emit(
    global: &Global,
    doc: &impl serde::Serialize,
    table: impl FnOnce() -> String,
) -> Result<()> {
    super::output::print(global.output, global.query.as_deref(), doc, table)
}

/// Where a simulated fleet comes from: a fleet file, or the deterministic generator.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct FleetSource {
    /// Fleet file (e.g. from `snapshot`).
    #[arg(long, conflicts_with = "generate")]
    pub(crate) fleet: Option<PathBuf>,
    /// Generate a realistic fleet of N targets instead.
    #[arg(long, value_name = "N", value_parser = generate_arg)]
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

    /// A simulator holding the fleet; `None` when neither `--fleet` nor `--generate` was
    /// given. A generated fleet goes straight into the simulator's store, never whole as
    /// `serde_json` values.
    pub(crate) fn simulator(&self, options: SimOptions) -> Result<Option<Simulator>> {
        Ok(match (&self.fleet, self.generate) {
            (None, Some(n)) => Some(Simulator::from_builder(
                crate::sim::generate::builder(n, self.seed),
                options,
            )),
            _ => self.load()?.map(|fleet| Simulator::new(fleet, options)),
        })
    }
}

/// The state of a command that keeps none (`rehearse`, `plan`): a fresh file in the temp
/// folder, removed with SQLite's side files when dropped, so on every way out of the command
/// (errors and Ctrl-C included, `mod.rs`). Its lock file is removed by its holder
/// (`pipeline::local`).
pub(crate) struct TempState(PathBuf);

impl TempState {
    pub(crate) fn new(command: &str) -> Self {
        TempState(std::env::temp_dir().join(format!(
            "vnet-migrate-{command}-{}.db",
            uuid::Uuid::new_v4()
        )))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        // SQLite's WAL mode keeps `-wal` and `-shm` next to the database, the store its
        // gateway log.
        for suffix in ["", "-wal", "-shm", "-gateways"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// Time compression accepted by `--speed` and `--arm-speed`: below a thousandth a 7 s site
/// write (arm-vnet reference §13) would take two hours, and above ten thousand the simulator's
/// shortest delays fall under a millisecond, the resolution of its timers.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.001..=10_000.0;

pub(crate) fn speed_arg(s: &str) -> Result<f64, String> {
    let speed: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !SPEED_RANGE.contains(&speed) {
        return Err(format!(
            "must be between {} and {} (times real time): slower turns a 7 s site write into hours, faster goes below the simulator's millisecond timers",
            SPEED_RANGE.start(),
            SPEED_RANGE.end()
        ));
    }
    Ok(speed)
}

pub(crate) fn generate_arg(s: &str) -> Result<usize, String> {
    let max = crate::sim::generate::MAX_TARGETS;
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(1..=max).contains(&n) {
        return Err(format!(
            "must be between 1 and {max} targets (a rehearsal needs a target, and holds the estate in memory: about 2 GB at {max})"
        ));
    }
    Ok(n)
}

fn subscription_arg(s: &str) -> Result<String, String> {
    NameRule::SubscriptionId
        .check(s)
        .map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A resource group name, or a resource group id (a name shared by several subscriptions).
fn resource_group_arg(s: &str) -> Result<String, String> {
    crate::policy::check_resource_group(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn tag_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or("expected key=value, e.g. env=prod")?;
    crate::policy::check_tag(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}
