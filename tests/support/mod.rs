//! Shared test plumbing: a simulator on loopback, an ARM client for it, and the embedded
//! pipeline over a temporary state file.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vnet_migrate::azure::arm::{ArmClient, ArmConfig, PacerConfig};
use vnet_migrate::azure::credential::StaticToken;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::migration::context::PlanCache;
use vnet_migrate::migration::invariants;
use vnet_migrate::pipeline::engine::{Engine, StepContext};
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::local::LocalRun;
use vnet_migrate::pipeline::runner::RunnerConfig;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::policy::Policy;
use vnet_migrate::report::{Performance, Report};
use vnet_migrate::sim::{Fleet, SimOptions, SimServer, Simulator};

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

pub struct Rig {
    pub sim: Simulator,
    pub server: SimServer,
    pub arm: ArmClient,
    pub fleet: Fleet,
    pub dir: TempDir,
}

pub fn arm_for(url: &str, subs: &[String]) -> ArmClient {
    let scope = subs
        .iter()
        .map(|s| ResourceId::subscription_id(s))
        .collect();
    let mut c = ArmConfig::new(url.to_string(), scope);
    c.backoff_base = Duration::from_millis(2);
    c.lro_poll_default = Duration::from_millis(2);
    c.request_timeout = Duration::from_secs(10);
    c.pacer = PacerConfig::default().scaled(1000.0);
    ArmClient::new(c, Arc::new(StaticToken::new("test-token"))).unwrap()
}

impl Rig {
    pub async fn start(fleet: Fleet) -> Rig {
        Self::start_with(fleet, SimOptions::instant()).await
    }

    pub async fn start_with(fleet: Fleet, options: SimOptions) -> Rig {
        let sim = Simulator::new(fleet.clone(), options);
        let server = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let arm = arm_for(&server.url(), &invariants::subscriptions(&fleet));
        Rig {
            sim,
            server,
            arm,
            fleet,
            dir: TempDir::new(),
        }
    }

    pub fn subscriptions(&self) -> Vec<String> {
        invariants::subscriptions(&self.fleet)
    }

    pub fn engine(&self, store: Arc<SqliteStore>, policy: &Policy) -> Engine {
        Engine::new(StepContext {
            arm: self.arm.clone(),
            policy: Arc::new(policy.clone()),
            ledger: store,
            plans: PlanCache::default(),
            time_scale: 1_000_000.0,
        })
    }

    /// A whole run on the embedded queue; returns the report.
    pub async fn run(&self, policy: &Policy, state: &str) -> Report {
        let state = self.dir.file(state);
        let finished = LocalRun {
            arm: self.arm.clone(),
            policy: Arc::new(policy.clone()),
            state,
            subscriptions: self.subscriptions(),
            apps: Vec::new(),
            dry_run: false,
            time_scale: 1_000_000.0,
            runner: RunnerConfig {
                max_in_flight: 8,
                per_subscription: 8,
                lease: Duration::from_secs(60),
            },
            origin: "test".into(),
            progress: false,
        }
        .execute()
        .await
        .unwrap();
        let records = finished.store.targets(&finished.run).await.unwrap();
        Report::new(
            finished.run.as_str(),
            false,
            &records,
            Performance::default(),
        )
    }

    /// Outcome of one target, as `kind` or `kind:reason`.
    pub fn outcome(report: &Report, target: &ResourceId) -> String {
        let t = report
            .targets
            .iter()
            .find(|t| ResourceId::parse(&t.id).unwrap() == *target)
            .unwrap_or_else(|| panic!("{target} not in report"));
        match &t.reason {
            Some(r) => format!("{}:{}", t.outcome, r),
            None => t.outcome.clone(),
        }
    }

    pub fn assert_invariants(&self, report: &Report) {
        let v = invariants::check(&self.fleet, &self.sim.state(), report);
        assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
    }

    /// A resource from the simulator's current state.
    pub fn resource(&self, id: &ResourceId) -> Option<serde_json::Value> {
        self.sim.state().resources.into_iter().find(|r| {
            r.get("id")
                .and_then(|v| v.as_str())
                .and_then(|s| ResourceId::parse(s).ok())
                .as_ref()
                == Some(id)
        })
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
            .filter(|r| r.pointer("/properties/isSwift").and_then(|v| v.as_bool()) != Some(true))
            .count()
    }
}
