//! Shared test plumbing, once for every module of the integration-test binary: temporary
//! directories, the binary as a child process (killed on drop, with no settings inherited from
//! the environment), the simulator and the Service Bus fake on loopback, ARM clients for them,
//! the embedded pipeline over a temporary state file, outcome labels, and the fixtures folder.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use vnet_migrate::azure::arm::{ArmClient, ArmConfig, PacerConfig};
use vnet_migrate::azure::credential::StaticToken;
use vnet_migrate::azure::servicebus::{ServiceBusClient, StaticBearer};
use vnet_migrate::azure::ResourceId;
use vnet_migrate::migration::local::{contract, migrate_locally, Scope as LocalScope};
use vnet_migrate::migration::{FrontEnd, Migration, StepContext};
use vnet_migrate::pipeline::engine::Engine;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::local::{Finished, LocalRun, LocalRunError, StateFile};
use vnet_migrate::pipeline::message::RunId;
use vnet_migrate::pipeline::rollout::RolloutConfig;
use vnet_migrate::pipeline::runner::RunnerConfig;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::policy::Policy;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::report::{Performance, Report, TargetReport};
use vnet_migrate::sim::builder::FleetBuilder;
use vnet_migrate::sim::servicebus::{FakeOptions, ServiceBusFake, ServiceBusServer};
use vnet_migrate::sim::{Fleet, SimOptions, SimServer, Simulator};

/// Delays in the embedded runs: the simulator is instant, so nothing waits.
const TIME_SCALE: f64 = 1_000_000.0;

// ---------------------------------------------------------------------------------------
// Files

/// The recorded payloads the tests read (see `tests/fixtures/README.md`).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("vnet-migrate-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The binary as a child process

pub const BIN: &str = env!("CARGO_BIN_EXE_vnet-migrate");

/// The binary with these arguments. Settings the binary reads from the environment
/// (`VNET_MIGRATE_*`, `FUNCTIONS_*`, the Service Bus namespace) are not inherited from the
/// process running the tests: every test passes the ones it means explicitly, so nothing set
/// elsewhere can leak into a child.
pub fn bin(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for (name, _) in std::env::vars_os() {
        let inherited = name.to_str().is_some_and(|n| {
            n.starts_with("VNET_MIGRATE_")
                || n.starts_with("FUNCTIONS_")
                || n.starts_with("ServiceBusConnection__")
        });
        if inherited {
            c.env_remove(&name);
        }
    }
    c
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vnet-migrate simulate-arm --port 0 ARGS`; returns it and its URL (first stdout line).
pub fn spawn_simulator(args: &[&str]) -> (ChildGuard, String) {
    let mut all = vec!["simulate-arm", "--port", "0"];
    all.extend_from_slice(args);
    let mut child = bin(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

/// GET `url` and its JSON body (the simulator's `/_sim/…` endpoints).
pub fn get_json(url: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })
}

/// A write through the simulator's ARM API as someone other than vnet-migrate would make it
/// (`method` PUT or PATCH of `id` at `api_version`); panics unless ARM accepted it.
pub fn arm_write(url: &str, method: reqwest::Method, id: &str, api_version: &str, body: Value) {
    let target = format!("{url}{id}?api-version={api_version}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .request(method, &target)
            .bearer_auth("t")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{id}: {status}");
}

/// The resource `id` in a simulator state document (`/_sim/state`), or null.
pub fn resource_in(state: &Value, id: &str) -> Value {
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_str().unwrap().eq_ignore_ascii_case(id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A command's stdout as the one JSON document `--output json` promises.
pub fn json_stdout(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------------------------------
// Loopback servers

/// 127.0.0.1, any free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port on 127.0.0.1 that nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener on 127.0.0.1 and its base URL.
pub async fn bind_loopback() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

/// Serves `app` on `listener` until the task is aborted or the runtime ends.
pub fn spawn_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
}

/// The ARM simulator over `fleet`, serving on loopback.
pub async fn start_sim(fleet: Fleet, options: SimOptions) -> (Simulator, SimServer) {
    let sim = Simulator::new(fleet, options);
    let server = sim.serve(loopback()).await.expect("bind loopback");
    (sim, server)
}

/// The Service Bus fake on loopback, and a client for `queue` that sends `token`.
pub async fn start_service_bus(
    options: FakeOptions,
    queue: &str,
    token: &str,
) -> (ServiceBusServer, ServiceBusClient) {
    let server = ServiceBusFake::new(options)
        .listen(loopback())
        .await
        .unwrap();
    let client = ServiceBusClient::new(server.url(), queue, Arc::new(StaticBearer(token.into())));
    (server, client)
}

// ---------------------------------------------------------------------------------------
// ARM clients for loopback

/// The bearer token the tests hand to the simulator, the fake and the binary.
pub const TEST_TOKEN: &str = "test-token";

/// An ARM client configuration for a server on loopback: backoff and LRO polls in milliseconds.
pub fn loopback_arm_config(url: &str, scope: Vec<ResourceId>) -> ArmConfig {
    let mut c = ArmConfig::new(url.to_string(), scope);
    c.backoff_base = Duration::from_millis(2);
    c.lro_poll_default = Duration::from_millis(2);
    c
}

pub fn arm_client(config: ArmConfig, token: &str) -> ArmClient {
    ArmClient::new(config, Arc::new(StaticToken::new(token))).unwrap()
}

/// A client for the simulator at `url`, scoped to `subs`, paced as the simulator's speed-up.
pub fn arm_for(url: &str, subs: &[String]) -> ArmClient {
    let scope = subs
        .iter()
        .map(|s| ResourceId::subscription_id(s).unwrap())
        .collect();
    let mut c = loopback_arm_config(url, scope);
    c.request_timeout = Duration::from_secs(10);
    c.pacer = PacerConfig::default().scaled(1000.0);
    arm_client(c, TEST_TOKEN)
}

// ---------------------------------------------------------------------------------------
// Outcomes and reports

/// An outcome as the report and the README show it: `kind` or `kind:reason`.
pub fn label(outcome: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{outcome}:{r}"),
        None => outcome.to_string(),
    }
}

/// The outcome label of one target.
pub fn outcome(report: &Report, target: &ResourceId) -> String {
    let t = report
        .targets
        .iter()
        .find(|t| ResourceId::parse(&t.id).unwrap() == *target)
        .unwrap_or_else(|| panic!("{target} not in report"));
    label(&t.outcome, t.reason.as_deref())
}

/// Every target's outcome label, by lowercased resource id.
pub fn outcomes(report: &Report) -> BTreeMap<String, String> {
    report
        .targets
        .iter()
        .map(|t| {
            let id = ResourceId::parse(&t.id).unwrap();
            (id.key().to_string(), label(&t.outcome, t.reason.as_deref()))
        })
        .collect()
}

/// The report of `run` from a ledger.
pub async fn report_of(store: &dyn Ledger, run: &RunId) -> Report {
    let records = store.targets(run).await.unwrap();
    Report::new(run.as_str(), false, &records, Performance::default())
}

/// A report printed with `--output json`, read back (the fields outcomes and invariants use).
pub fn report_from_json(v: &Value) -> Report {
    let targets = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TargetReport {
            id: t["id"].as_str().unwrap().into(),
            outcome: t["outcome"].as_str().unwrap().into(),
            reason: t["reason"].as_str().map(Into::into),
            subnet: t["subnet"].as_str().map(Into::into),
            prefix: t["prefix"].as_str().map(Into::into),
            steps: 0,
            attempts: 0,
            duration_seconds: 0.0,
            downtime_seconds: t["downtimeSeconds"].as_f64(),
            finished_seconds: t["finishedSeconds"].as_f64(),
            wave: t["wave"].as_u64().map(|w| w as u32),
        })
        .collect();
    Report {
        run: v["run"].as_str().unwrap().into(),
        dry_run: false,
        targets,
        summary: Default::default(),
        by_reason: Default::default(),
        waves: Vec::new(),
        stopped: v["stopped"].as_str().map(Into::into),
        waiting: v["waiting"].as_str().map(Into::into),
        performance: Default::default(),
    }
}

// ---------------------------------------------------------------------------------------
// The simulator, a client for it and the embedded pipeline

pub struct Rig {
    pub sim: Simulator,
    /// Keeps the simulator serving for as long as the rig lives.
    _server: SimServer,
    pub arm: ArmClient,
    pub fleet: Fleet,
    pub dir: TempDir,
}

impl Rig {
    pub async fn start(fleet: Fleet) -> Rig {
        Rig::start_with(fleet, SimOptions::instant()).await
    }

    /// A rig whose simulator runs with `options` (latency model, locks, faults).
    pub async fn start_with(fleet: Fleet, options: SimOptions) -> Rig {
        let (sim, server) = start_sim(fleet.clone(), options).await;
        let arm = arm_for(&server.url(), &invariants::subscriptions(&fleet));
        Rig {
            sim,
            _server: server,
            arm,
            fleet,
            dir: TempDir::new(),
        }
    }

    pub fn subscriptions(&self) -> Vec<String> {
        invariants::subscriptions(&self.fleet)
    }

    /// The simulator's base URL (for a test that puts something between client and ARM).
    pub fn sim_url(&self) -> String {
        self._server.url()
    }

    pub fn engine(&self, store: Arc<SqliteStore>, policy: &Policy) -> Engine<Migration> {
        Engine::new(Migration::new(
            StepContext::new(self.arm.clone(), Arc::new(policy.clone()), store)
                .time_compressed(TIME_SCALE),
        ))
    }

    /// A run of the whole fleet on the embedded queue at `state`, `in_flight` steps at a time.
    pub fn local_run(
        &self,
        policy: &Policy,
        state: PathBuf,
        in_flight: usize,
    ) -> impl Future<Output = Result<Finished, LocalRunError>> + Send + 'static {
        self.local_run_ticking(policy, state, in_flight, RolloutConfig::default().tick)
    }

    /// `local_run` whose rollout looks for pause and abort every `tick`.
    pub fn local_run_ticking(
        &self,
        policy: &Policy,
        state: PathBuf,
        in_flight: usize,
        tick: Duration,
    ) -> impl Future<Output = Result<Finished, LocalRunError>> + Send + 'static {
        let mut rollout = RolloutConfig::default();
        rollout.tick = tick;
        let local = LocalRun {
            dry_run: false,
            runner: RunnerConfig {
                max_in_flight: in_flight,
                per_subscription: in_flight,
                lease: Duration::from_secs(60),
                ..policy.runner_config()
            },
            origin: "test".into(),
            progress: false,
            rollout,
            checks: None,
        };
        let scope = LocalScope {
            arm: self.arm.clone(),
            policy: Arc::new(policy.clone()),
            subscriptions: self.subscriptions(),
            apps: Vec::new(),
            time_scale: TIME_SCALE,
            applied: None,
            forecasts: None,
            front_end: FrontEnd::Simulator(self.sim_url()),
        };
        let contract = contract(policy, &[], "http://127.0.0.1", false, None);
        async move {
            let file = StateFile::open(&state)?;
            let start = file.resume_or_new(contract)?;
            migrate_locally(local, file, start, scope).await
        }
    }

    /// A whole run on the embedded queue; returns the report.
    pub async fn run(&self, policy: &Policy, state: &str) -> Report {
        let finished = self
            .local_run(policy, self.dir.file(state), 8)
            .await
            .unwrap();
        report_of(&*finished.store, &finished.run).await
    }

    pub fn assert_invariants(&self, report: &Report) {
        let v = invariants::check(&self.fleet, &self.sim.state(), report);
        assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
    }

    /// A resource from the simulator's current state.
    pub fn resource(&self, id: &ResourceId) -> Option<Value> {
        let state = self.sim.state();
        let found = state
            .with_ids()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.clone());
        found
    }

    pub fn subnet_of(&self, target: &ResourceId) -> Option<ResourceId> {
        let r = self.resource(target)?;
        r.pointer("/properties/virtualNetworkSubnetId")
            .and_then(|v| v.as_str())
            .and_then(|s| ResourceId::parse(s).ok())
    }

    pub fn gateway_connections(&self, target: &ResourceId) -> usize {
        let prefix = format!("{}/virtualnetworkconnections/", target.key());
        self.sim
            .state()
            .resources
            .iter()
            .filter(|r| {
                r.get("id")
                    .and_then(|v| v.as_str())
                    .map(|s| s.to_ascii_lowercase().starts_with(&prefix))
                    .unwrap_or(false)
            })
            // Not the connection's `gateways/primary` (the VPN package handed to the app).
            .filter(|r| {
                r.get("type")
                    .and_then(|v| v.as_str())
                    .is_some_and(|t| t.ends_with("virtualNetworkConnections"))
            })
            .filter(|r| r.pointer("/properties/isSwift").and_then(|v| v.as_bool()) != Some(true))
            .count()
    }
}

/// What each step of `target` in `run` said, in order (its step log's details).
pub async fn step_details(ledger: &dyn Ledger, run: &RunId, target: &ResourceId) -> Vec<String> {
    ledger
        .step_log(run, target)
        .await
        .unwrap()
        .iter()
        .map(|e| e.detail().to_string())
        .collect()
}

/// A fleet builder with the `net` and `apps` resource groups in West Europe.
pub fn base() -> FleetBuilder {
    let mut b = FleetBuilder::new();
    b.resource_group("net", "westeurope");
    b.resource_group("apps", "westeurope");
    b
}

/// Two gateway-connected apps on one plan in one hub: `prod-app`, tagged `env=prod`, and
/// `dev-app`, untagged (the maintenance-window tests).
pub fn prod_and_dev() -> (Fleet, ResourceId, ResourceId) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", "westeurope", "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", "westeurope", "P1v2", 1);
    let prod = b.site("apps", "prod-app", &plan);
    b.gateway_connection(&prod, &v);
    b.tag(&prod, "env", "prod");
    let dev = b.site("apps", "dev-app", &plan);
    b.gateway_connection(&dev, &v);
    (b.build(), prod, dev)
}

/// The `windows` policy field opening prod's cut-over only on the day five days from now
/// (UTC), all day: closed now, whatever the time, and for at least four days.
pub fn prod_window_in_five_days() -> serde_json::Value {
    let day = (OffsetDateTime::now_utc() + time::Duration::days(5)).weekday();
    let day = day.to_string()[..3].to_ascii_lowercase();
    serde_json::json!([{"days": [day], "startHour": 0, "endHour": 24, "tags": {"env": "prod"}}])
}

/// Four gateway-connected apps `a0`…`a3` in one hub, two on each of two plans (`plan0`,
/// `plan1`): waves of two give each wave a plan, and so a subnet, of its own.
pub fn two_plans_of_two() -> (Fleet, ResourceId, Vec<ResourceId>) {
    let mut b = base();
    let v = hub(&mut b, "hub-we", "westeurope", "10.1.0.0/16");
    let plans: Vec<ResourceId> = (0..2)
        .map(|p| b.plan("apps", &format!("plan{p}"), "westeurope", "P1v2", 1))
        .collect();
    let apps = (0..4)
        .map(|i| {
            let s = b.site("apps", &format!("a{i}"), &plans[i / 2]);
            b.gateway_connection(&s, &v);
            s
        })
        .collect();
    (b.build(), v, apps)
}

/// A VNet in `net` with its VPN gateway (gateway-based apps connect through it).
pub fn hub(b: &mut FleetBuilder, name: &str, loc: &str, space: &str) -> ResourceId {
    let v = b.vnet("net", name, loc, &[space]);
    b.gateway(&v);
    v
}
