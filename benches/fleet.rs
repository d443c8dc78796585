//! `cargo bench --bench fleet` — figures for the performance bars of DESIGN §10, measured in
//! one run and printed as ratios where a ratio exists. `BENCH_TARGETS` sets the rehearsal size
//! (default 2000; the design's bar is 10000), `BENCH_SPEED` its time compression (default 50).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vnet_migrate::azure::arm::{ArmClient, ArmConfig, PacerConfig};
use vnet_migrate::azure::credential::StaticToken;
use vnet_migrate::azure::models::{AutoscaleSetting, Plan, Site, VirtualNetwork, VnetConnection};
use vnet_migrate::azure::{ResourceId, ResourceKind};
use vnet_migrate::migration::local::{contract, migrate_locally, Scope as LocalScope};
use vnet_migrate::migration::plan::{self, Integration, PlanContext, TargetState};
use vnet_migrate::migration::FrontEnd;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::pipeline::local::{LocalRun, Start, StateFile};
use vnet_migrate::pipeline::message::{Origin, RunId, Step, StepMessage};
use vnet_migrate::pipeline::runner::RunnerConfig;
use vnet_migrate::policy::Policy;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::report::{self, BucketCounts, Performance, Report};
use vnet_migrate::sim::{generate, Fleet, SimOptions, Simulator};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Plan-wide decisions for every plan of a fleet, from the fleet itself (no I/O): the pure
/// planning cost.
fn plan_all(fleet: &Fleet, policy: &Policy) -> (usize, usize, Duration) {
    let mut plans: BTreeMap<ResourceId, Plan> = BTreeMap::new();
    let mut sites: Vec<Site> = Vec::new();
    let mut vnets: Vec<VirtualNetwork> = Vec::new();
    let mut autoscale: Vec<AutoscaleSetting> = Vec::new();
    let mut conns: BTreeMap<ResourceId, Vec<VnetConnection>> = BTreeMap::new();
    for (id, r) in fleet.with_ids() {
        match id.kind() {
            ResourceKind::ServerFarm => {
                plans.insert(id, serde_json::from_value(r.clone()).unwrap());
            }
            ResourceKind::Site | ResourceKind::Slot => {
                sites.push(serde_json::from_value(r.clone()).unwrap())
            }
            ResourceKind::VirtualNetwork => vnets.push(serde_json::from_value(r.clone()).unwrap()),
            ResourceKind::AutoscaleSetting => {
                autoscale.push(serde_json::from_value(r.clone()).unwrap())
            }
            ResourceKind::SiteVnetConnection => conns
                .entry(id.parent().unwrap())
                .or_default()
                .push(serde_json::from_value(r.clone()).unwrap()),
            _ => {}
        }
    }
    let mut by_plan: BTreeMap<ResourceId, Vec<TargetState>> = BTreeMap::new();
    for s in &sites {
        let Some(p) = &s.properties.server_farm_id else {
            continue;
        };
        let integration = Integration::from_site(
            s.properties.virtual_network_subnet_id.as_ref(),
            conns.get(&s.id).map(Vec::as_slice).unwrap_or(&[]),
        );
        by_plan.entry(p.clone()).or_default().push(TargetState {
            id: s.id.clone(),
            location: s.location.clone(),
            integration,
        });
    }
    // Like the engine (migration::context), each plan sees its gateway VNets, the VNets peered
    // with them and the VNets of its regional subnets, not the whole estate.
    let by_id: BTreeMap<ResourceId, &VirtualNetwork> =
        vnets.iter().map(|v| (v.id.clone(), v)).collect();
    let mut contexts: Vec<(&Plan, &Vec<TargetState>, Vec<VirtualNetwork>)> = Vec::new();
    for (pid, targets) in &by_plan {
        let Some(p) = plans.get(pid) else { continue };
        let mut wanted: Vec<ResourceId> = Vec::new();
        for t in targets {
            match &t.integration {
                Integration::Gateway { vnet, .. } => wanted.push(vnet.clone()),
                Integration::Regional { subnet } => wanted.extend(subnet.vnet()),
                Integration::None => {}
            }
        }
        let mut mine: Vec<VirtualNetwork> = Vec::new();
        for id in &wanted {
            if let Some(v) = by_id.get(id) {
                for peer in &v.properties.virtual_network_peerings {
                    if let Some(r) = peer
                        .properties
                        .remote_virtual_network
                        .as_ref()
                        .and_then(|r| by_id.get(&r.id))
                    {
                        mine.push((*r).clone());
                    }
                }
                mine.push((*v).clone());
            }
        }
        mine.sort_by(|a, b| a.id.cmp(&b.id));
        mine.dedup_by(|a, b| a.id == b.id);
        contexts.push((p, targets, mine));
    }
    // Only the decisions are timed here; gathering the inputs is I/O in the engine.
    let deciding = Instant::now();
    let mut decided = 0;
    for (p, targets, vnets) in &contexts {
        let d = plan::decide(&PlanContext {
            plan: p,
            autoscale: &autoscale,
            targets,
            vnets,
            swift_supported: true,
            policy,
            shared: None,
        });
        decided += d.targets.len();
    }
    (by_plan.len(), decided, deciding.elapsed())
}

/// Starts `vnet-migrate serve` five times (SQLite ledger, loopback endpoints that are never
/// called) and polls `GET /` every 2 ms as the Functions host does until it answers; then reads
/// its `VmRSS` after 1 s idle.
fn serve_start() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("vnet-migrate-serve-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("rollout.json");
    std::fs::write(
        &policy,
        r#"{"scope": {"subscriptions": ["00000000-0000-0000-0000-000000000001"]}}"#,
    )
    .unwrap();
    let answers = |port: u16| -> bool {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let mut head = [0u8; 12];
        c.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1")
    };
    let (mut starts, mut rss) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vnet-migrate"))
            .args(["serve", "--arm-endpoint", "http://127.0.0.1:9"])
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("VNET_MIGRATE_POLICY", &policy)
            .env(
                "VNET_MIGRATE_LEDGER",
                format!("sqlite:{}", dir.join(format!("l{i}.db")).display()),
            )
            .env("VNET_MIGRATE_CREDENTIAL", "static")
            .env("VNET_MIGRATE_STATIC_TOKEN", "bench")
            .env("VNET_MIGRATE_SERVICEBUS_ENDPOINT", "http://127.0.0.1:9/")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while !answers(port) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "serve exited before answering"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_secs(1));
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let kb: Option<f64> = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        rss.extend(kb.map(|kb| kb / 1024.0));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.0}–{hi:.0}")
    };
    println!(
        "serve: start to first answer {} ms, idle RSS {} MB (5 starts)",
        range(&starts),
        range(&rss)
    );
}

fn main() {
    let n = env("BENCH_TARGETS", 2000.0) as usize;
    let speed = env("BENCH_SPEED", 50.0);
    println!(
        "machine: {} cores; release build",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // 1. Planning 10,000 apps (pure).
    let fleet10k = generate::generate(10_000, 7);
    let policy = Policy::default();
    let t = Instant::now();
    let (plans, targets, deciding) = plan_all(&fleet10k, &policy);
    let planning = t.elapsed();
    println!(
        "planning: {targets} targets on {plans} plans decided in {:.3}s (bar: < 1 s); {:.3}s more to turn the fleet JSON into models and gather each plan's inputs",
        deciding.as_secs_f64(),
        (planning - deciding).as_secs_f64()
    );

    // 2. Handler overhead per step (no I/O): decode the host's envelope and the step message,
    //    derive ids, encode the next message.
    let msg = StepMessage::new(
        RunId("r-bench".into()),
        fleet10k
            .resources
            .iter()
            .find_map(|r| {
                r["id"]
                    .as_str()
                    .and_then(|s| ResourceId::parse(s).ok())
                    .filter(|i| i.kind() == ResourceKind::Site)
            })
            .unwrap(),
        Step::Connect,
        Origin::Rollout,
    );
    use base64::Engine as _;
    let envelope = serde_json::json!({"Data": {"msg": base64::engine::general_purpose::STANDARD.encode(msg.encode())}, "Metadata": {"MessageId": format!("\"{}\"", msg.message_id()), "SessionId": format!("\"{}\"", msg.session_id()), "DeliveryCount": "1"}}).to_string();
    let rounds = 20_000;
    let t = Instant::now();
    for _ in 0..rounds {
        let d = vnet_migrate::functions::invocation::decode_service_bus(envelope.as_bytes(), "msg")
            .unwrap();
        let m = StepMessage::decode(&d.body).unwrap();
        let next = m.next(Step::Configure);
        std::hint::black_box((next.message_id(), next.session_id(), next.encode()));
    }
    println!("handler overhead: {:.1} µs of CPU per step for envelope + message handling (bar: well under 1 ms)", t.elapsed().as_secs_f64() * 1e6 / rounds as f64);

    // 3. `serve`: start to first answer and idle RSS.
    serve_start();

    // 4. A rehearsal: makespan against the ARM write-rate bound (BENCH_TARGETS=0 skips it).
    if n == 0 {
        return;
    }
    // One thread, as `vnet-migrate rehearse` runs (`cli::Command::runtime`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let fleet = generate::generate(n, 7);
        let sim = Simulator::new(fleet.clone(), SimOptions { speed, seed: 7, ..SimOptions::default() });
        let server = sim.serve(([127, 0, 0, 1], 0).into()).await.unwrap();
        let subs = invariants::subscriptions(&fleet);
        let scope = subs.iter().map(|s| ResourceId::subscription_id(s).unwrap()).collect();
        let arm = ArmClient::new(ArmConfig::new(server.url(), scope).time_compressed(speed), Arc::new(StaticToken::new("bench"))).unwrap();
        let state = std::env::temp_dir().join(format!("vnet-migrate-bench-{}.db", uuid::Uuid::new_v4()));
        let t = Instant::now();
        let local = LocalRun {
            dry_run: false,
            runner: RunnerConfig { max_in_flight: 256, per_subscription: 64, ..RunnerConfig::default() },
            origin: "bench".into(),
            progress: false,
            rollout: Default::default(),
            checks: None,
        };
        let scope = LocalScope { arm, policy: Arc::new(Policy::default()), subscriptions: subs, apps: Vec::new(), time_scale: speed, applied: None, forecasts: None, front_end: FrontEnd::Simulator(server.url()) };
        let file = StateFile::open(&state).unwrap();
        let start = Start::New(contract(&Policy::default(), &[], &server.url(), false, None));
        let finished = migrate_locally(local, file, start, scope).await.unwrap();
        let makespan = t.elapsed().as_secs_f64();
        let stats = sim.stats();
        let limits = PacerConfig::default().scaled(speed);
        let bucket = |reads: bool, writes: bool| {
            report::bucket_bound_seconds(
                stats.by_subscription.values().map(|s| BucketCounts {
                    reads: if reads { s.reads } else { 0 },
                    writes: if writes { s.writes } else { 0 },
                    deletes: if writes { s.deletes } else { 0 },
                }),
                &limits,
            )
        };
        let (bound, read_bound) = (bucket(false, true), bucket(true, false));
        let records = finished.store.targets(&finished.run).await.unwrap();
        let report = Report::new(finished.run.as_str(), false, &records, Performance::default());
        let broken = invariants::check(&fleet, &sim.state(), &report);
        println!(
            "rehearsal: {n} targets at speed {speed}: makespan {makespan:.1}s, ARM write bound {bound:.1}s (makespan/bound {:.2}), read bound {read_bound:.1}s; {} requests, {} writes, {} throttled (429); {:.0} steps/s; invariants {}",
            if bound > 0.0 { makespan / bound } else { f64::NAN },
            stats.requests,
            stats.writes + stats.deletes,
            stats.throttled429,
            finished.stats.steps as f64 / makespan,
            if broken.is_empty() { "hold".to_string() } else { format!("BROKEN: {}", broken.len()) }
        );
        println!("outcomes: {:?}", report.summary);
        let _ = std::fs::remove_file(&state);
    });
}
