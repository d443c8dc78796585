//! Host-faithful end-to-end test of `vnet-migrate serve`: the real binary as a child process,
//! the ARM simulator and the Service Bus fake on loopback, and a harness that plays the
//! Functions host (peek-lock, binary envelope, complete on 2xx, abandon otherwise).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::RwLock;
use vnet_migrate::azure::servicebus::{ReceivedMessage, SendMessage, ServiceBusClient};
use vnet_migrate::migration::discover::sites_in_scope;
use vnet_migrate::pipeline::ledger::{Ledger, RunRecord};
use vnet_migrate::pipeline::message::{Origin, RunId, Step, StepMessage};
use vnet_migrate::pipeline::queue::{Outgoing, StepSender};
use vnet_migrate::pipeline::rollout::GateKind;
use vnet_migrate::pipeline::sqlite::SqliteStore;
use vnet_migrate::pipeline::table::TableLedger;
use vnet_migrate::policy::Policy;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::azurite::{self, Azurite};
use vnet_migrate::sim::servicebus::{FakeOptions, ServiceBusServer};
use vnet_migrate::sim::{Fleet, SimOptions, Simulator};

use crate::support::{
    arm_for, base, bin, free_port, hub, outcomes, prod_and_dev, prod_window_in_five_days,
    report_of, start_service_bus, start_sim, step_details, two_plans_of_two, ChildGuard, Rig,
    TempDir, TEST_TOKEN as TOKEN,
};

const QUEUE: &str = "migration-steps";
const OUR_PRINCIPAL: &str = "11111111-2222-3333-4444-555555555555";

fn fleet() -> Fleet {
    let mut b = base();
    let v = hub(&mut b, "hub", "westeurope", "10.1.0.0/16");
    let p1 = b.plan("apps", "plan1", "westeurope", "P1v2", 2);
    let p2 = b.plan("apps", "plan2", "westeurope", "P1v2", 2);
    for (name, plan) in [("a", &p1), ("b", &p1), ("c", &p2), ("d", &p2)] {
        let s = b.site("apps", name, plan);
        b.gateway_connection(&s, &v);
        b.key_vault_reference(&s, "Secret", "Resolved");
        if name == "a" {
            let slot = b.slot(&s, "staging");
            b.gateway_connection(&slot, &v);
        }
    }
    for (name, knob) in [("rej", "reject-connect"), ("kv", "kv-breaks-after-connect")] {
        let s = b.site("apps", name, &p2);
        b.gateway_connection(&s, &v);
        b.key_vault_reference(&s, "Secret", "Resolved");
        b.tag(&s, "vnet-migrate-sim", knob);
    }
    // Cross-region without a connected peering: blocked, never written.
    let ne = b.vnet("net", "hub-ne", "northeurope", &["10.2.0.0/16"]);
    b.gateway(&ne);
    let spoke = b.vnet("net", "spoke-we", "westeurope", &["10.3.0.0/16"]);
    b.peering(&spoke, &ne, "Initiated");
    let p3 = b.plan("apps", "plan3", "westeurope", "P1v2", 1);
    let x = b.site("apps", "x", &p3);
    b.gateway_connection(&x, &ne);
    b.build()
}

fn policy_json(subs: &[String], on_deploy: &str) -> String {
    json!({ "settleSeconds": 0, "onDeploy": on_deploy, "scope": { "subscriptions": subs } })
        .to_string()
}

/// The spawned handler; killed on drop so a failing test leaves no process behind.
struct Serve {
    child: ChildGuard,
    url: String,
}

#[derive(Clone)]
struct Env {
    arm: String,
    sb: String,
    /// `VNET_MIGRATE_LEDGER`: `sqlite:PATH` or Azurite's Table endpoint.
    ledger: String,
    /// `VNET_MIGRATE_LEDGER_KEY`: Azurite's account key.
    ledger_key: Option<String>,
    policy: String,
    /// `serve --arm-speed`: the simulator's speed, which shortens the bake between waves.
    arm_speed: Option<String>,
}

/// Which ledger `serve` runs on.
#[derive(Clone, Copy)]
enum LedgerKind {
    Sqlite,
    Table,
}

/// `vnet-migrate serve` as the host starts it, with the settings of `env`; every setting is
/// passed to the child explicitly (none comes from this process's environment).
fn serve_cmd(env: &Env, port: u16, ledger: &str) -> Command {
    let mut c = bin(&["serve"]);
    c.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("VNET_MIGRATE_ARM_ENDPOINT", &env.arm)
        .env("VNET_MIGRATE_CREDENTIAL", "static")
        .env("VNET_MIGRATE_STATIC_TOKEN", TOKEN)
        .env("VNET_MIGRATE_SERVICEBUS_ENDPOINT", &env.sb)
        .env("VNET_MIGRATE_LEDGER", ledger)
        .env("VNET_MIGRATE_POLICY", &env.policy);
    if let Some(speed) = &env.arm_speed {
        c.args(["--arm-speed", speed]);
    }
    c
}

async fn spawn_serve(env: &Env) -> Serve {
    let port = free_port();
    let mut cmd = serve_cmd(env, port, &env.ledger);
    if let Some(key) = &env.ledger_key {
        cmd.env("VNET_MIGRATE_LEDGER_KEY", key);
    }
    let child = cmd
        .env("VNET_MIGRATE_STEPS_QUEUE", QUEUE)
        .env("VNET_MIGRATE_PRINCIPAL_ID", OUR_PRINCIPAL)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vnet-migrate serve");
    let serve = Serve {
        child: ChildGuard(child),
        url: format!("http://127.0.0.1:{port}"),
    };
    // Like the host: poll GET / every 25 ms until the handler answers.
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/", serve.url)).send().await {
            assert!(r.status().is_success());
            assert_eq!(r.text().await.unwrap(), "{}");
            return serve;
        }
        assert!(Instant::now() < until, "serve did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The host's invocation body for a `dataType: binary` session-queue trigger.
fn envelope(m: &ReceivedMessage) -> Value {
    let q = |s: &Option<String>| json!(serde_json::to_string(s.as_deref().unwrap_or("")).unwrap());
    let b = &m.broker;
    json!({
        "Data": { "msg": base64::engine::general_purpose::STANDARD.encode(&m.body) },
        "Metadata": {
            "DeliveryCount": b.delivery_count.unwrap_or(1).to_string(),
            "LockToken": q(&b.lock_token),
            "EnqueuedTimeUtc": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap().trim_end_matches('Z'),
            "MessageId": q(&b.message_id),
            "ContentType": q(&m.content_type),
            "SequenceNumber": b.sequence_number.unwrap_or(0).to_string(),
            "SessionId": q(&b.session_id),
            "sys": { "MethodName": "step", "UtcNow": "2026-11-23T21:00:00Z", "RandGuid": "5f0b7c1e-9a43-4b55-8a57-1f0e2f3c4d5e" }
        }
    })
}

struct Host {
    client: ServiceBusClient,
    url: RwLock<String>,
    posted: AtomicUsize,
    http: reqwest::Client,
    /// Every line the handler logged, prefixed with the MessageId it answered.
    logs: std::sync::Mutex<Vec<String>>,
    /// Every fifth message is posted twice (an at-least-once delivery).
    duplicates: bool,
}

impl Host {
    /// A host delivering the world's queue to `serve`, with or without duplicate deliveries.
    fn new(w: &World, serve: &Serve, duplicates: bool) -> Arc<Host> {
        Arc::new(Host {
            client: w.client.clone(),
            url: RwLock::new(serve.url.clone()),
            posted: AtomicUsize::new(0),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            logs: std::sync::Mutex::new(Vec::new()),
            duplicates,
        })
    }

    /// One receiver loop of the host; returns when `stop` says so.
    async fn receiver(self: Arc<Self>, stop: Arc<AtomicUsize>) {
        while stop.load(Ordering::SeqCst) == 0 {
            let Some(m) = self.client.receive(Duration::ZERO).await.unwrap() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let n = self.posted.fetch_add(1, Ordering::SeqCst) + 1;
            // Waits here while the handler restarts, as the host waits for its worker.
            let url = self.url.read().await.clone();
            let body = envelope(&m).to_string();
            let times = if self.duplicates && n.is_multiple_of(5) {
                2
            } else {
                1
            };
            let mut ok = true;
            for _ in 0..times {
                let r = self
                    .http
                    .post(format!("{url}/step"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                ok &= match r {
                    Ok(r) => {
                        let good = r.status().is_success();
                        let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
                        assert!(ctype.starts_with("application/json"), "{ctype}");
                        let v: Value = r.json().await.unwrap();
                        assert!(v.is_object());
                        let id = m.broker.message_id.as_deref().unwrap_or("?");
                        self.logs.lock().unwrap().extend(
                            v["Logs"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str)
                                .map(|l| format!("{id}: {l}")),
                        );
                        good
                    }
                    Err(_) => false,
                };
            }
            if ok {
                let _ = self.client.complete(&m).await;
            } else {
                let _ = self.client.abandon(&m).await;
            }
        }
    }
}

fn busy(sb: &ServiceBusServer) -> u64 {
    let c = sb.fake().counts(QUEUE);
    c.active + c.scheduled + c.locked
}

struct World {
    _dir: TempDir,
    /// The Table ledger's emulator, when `serve` runs on it.
    azurite: Option<Azurite>,
    sim: Simulator,
    _arm: vnet_migrate::sim::SimServer,
    sb: ServiceBusServer,
    client: ServiceBusClient,
    env: Env,
    subs: Vec<String>,
    fleet: Fleet,
}

async fn world(fleet: Fleet, on_deploy: &str, max_delivery: u32) -> World {
    world_on(LedgerKind::Sqlite, fleet, on_deploy, max_delivery).await
}

async fn world_on(kind: LedgerKind, fleet: Fleet, on_deploy: &str, max_delivery: u32) -> World {
    let dir = TempDir::new();
    let (ledger, ledger_key, azurite) = match kind {
        LedgerKind::Sqlite => {
            let path = dir.file("ledger.db").display().to_string();
            (format!("sqlite:{path}"), None, None)
        }
        LedgerKind::Table => {
            // Never skipped: no Azurite is a failure saying why.
            let az = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
            (
                az.endpoint().to_string(),
                Some(azurite::KEY.to_string()),
                Some(az),
            )
        }
    };
    let (sim, arm) = start_sim(fleet.clone(), SimOptions::instant()).await;
    let options = FakeOptions {
        max_delivery_count: max_delivery,
        ..FakeOptions::default()
    };
    let (sb, client) = start_service_bus(options, QUEUE, TOKEN).await;
    let subs = invariants::subscriptions(&fleet);
    let policy = dir.file("rollout.json");
    std::fs::write(&policy, policy_json(&subs, on_deploy)).unwrap();
    let env = Env {
        arm: arm.url(),
        sb: sb.url(),
        ledger,
        ledger_key,
        policy: policy.display().to_string(),
        arm_speed: None,
    };
    World {
        _dir: dir,
        azurite,
        sim,
        _arm: arm,
        sb,
        client,
        env,
        subs,
        fleet,
    }
}

/// What the host saw: invocations posted and the handler's log lines.
struct Played {
    posted: usize,
    logs: Vec<String>,
}

impl World {
    /// The ledger `serve` writes, opened as the test's own instance.
    async fn ledger(&self) -> Arc<dyn Ledger> {
        match &self.azurite {
            Some(az) => Arc::new(
                TableLedger::open(az.endpoint(), Azurite::auth())
                    .await
                    .unwrap(),
            ),
            None => {
                let path = self.env.ledger.strip_prefix("sqlite:").unwrap();
                Arc::new(SqliteStore::open(Path::new(path)).unwrap())
            }
        }
    }
}

/// Plays the host until the queue is idle; `restart_after` kills and restarts the handler once.
async fn play_host(w: &World, serve: &mut Serve, restart_after: Option<usize>) -> Played {
    let host = Host::new(w, serve, true);
    let stop = Arc::new(AtomicUsize::new(0));
    let receivers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(host.clone().receiver(stop.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restarted = restart_after.is_none();
    let mut idle_since: Option<Instant> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "queue not drained in 60 s: {:?}",
            w.sb.fake().counts(QUEUE)
        );
        if !restarted && host.posted.load(Ordering::SeqCst) >= restart_after.unwrap_or(0) {
            let mut url = host.url.write().await;
            serve.child.kill();
            let fresh = spawn_serve(&w.env).await;
            *url = fresh.url.clone();
            *serve = fresh;
            restarted = true;
        }
        if busy(&w.sb) == 0 {
            // Idle twice in a row, 100 ms apart, so a message between receive and send counts.
            match idle_since {
                Some(t) if t.elapsed() > Duration::from_millis(100) => break,
                Some(_) => {}
                None => idle_since = Some(Instant::now()),
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(1, Ordering::SeqCst);
    for r in receivers {
        r.await.unwrap();
    }
    let logs = std::mem::take(&mut *host.logs.lock().unwrap());
    Played {
        posted: host.posted.load(Ordering::SeqCst),
        logs,
    }
}

/// Seeds `run` like `rollout start`: ledger rows, then one discover per site in scope.
async fn start_run(w: &World, policy: &Policy, run: &RunId) {
    let arm = arm_for(&w.env.arm, &w.subs);
    let sites = sites_in_scope(&arm, &w.subs, policy, &[]).await.unwrap();
    let store = w.ledger().await;
    let now = OffsetDateTime::now_utc();
    store
        .start_run(&RunRecord {
            run: run.clone(),
            started_at: now,
            dry_run: false,
            origin: "test".into(),
        })
        .await
        .unwrap();
    for s in &sites {
        store.add_target(run, s, now).await.unwrap();
    }
    let first: Vec<Outgoing> = sites
        .iter()
        .map(|s| {
            Outgoing::now(StepMessage::new(
                run.clone(),
                s.clone(),
                Step::Discover,
                Origin::Rollout,
            ))
        })
        .collect();
    StepSender::send(&w.client, first).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_faithful_run_with_duplicates_and_a_restart_matches_the_embedded_runner() {
    host_faithful_run(LedgerKind::Sqlite).await;
}

/// The same on the Table ledger in Azurite, as in Azure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_faithful_run_on_the_table_ledger_matches_the_embedded_runner() {
    host_faithful_run(LedgerKind::Table).await;
}

async fn host_faithful_run(kind: LedgerKind) {
    let w = world_on(kind, fleet(), "plan-only", 10).await;
    let policy = Policy::from_json(&policy_json(&w.subs, "plan-only")).unwrap();

    let run = RunId("r-20261123-e2e0".into());
    let mut serve = spawn_serve(&w.env).await;
    start_run(&w, &policy, &run).await;

    let played = play_host(&w, &mut serve, Some(15)).await;
    let posted = played.posted;
    assert!(
        posted > 30,
        "too few messages to restart at a third: {posted}"
    );
    assert!(
        w.sb.fake().dead_letters(QUEUE).is_empty(),
        "{:?}",
        w.sb.fake().dead_letters(QUEUE)
    );

    let got = report_of(&*w.ledger().await, &run).await;
    let rig = Rig::start(w.fleet.clone()).await;
    let expected = rig.run(&policy, "local.db").await;
    assert_eq!(
        outcomes(&got),
        outcomes(&expected),
        "{}",
        differences(&*w.ledger().await, &run, &got, &expected, &played.logs).await
    );
    assert!(outcomes(&got).values().any(|o| o == "migrated"));
    assert!(outcomes(&got)
        .values()
        .any(|o| o.starts_with("rolled-back")));
    assert!(outcomes(&got)
        .values()
        .any(|o| o == "blocked:cross-region-no-peering"));
    let v = invariants::check(&w.fleet, &w.sim.state(), &got);
    assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
}

/// A cut-over delivered again after its target was rolled back, as Service Bus delivers a
/// message whose settlement was lost (a host restart, an expired lock): it is answered 200 and
/// not executed. Executed, it would find the gateway connection the rollback restored, remove
/// it and fail to connect again, leaving the app on no VNet at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_over_delivered_again_after_its_rollback_is_not_executed() {
    let w = world(fleet(), "plan-only", 10).await;
    let policy = Policy::from_json(&policy_json(&w.subs, "plan-only")).unwrap();
    let run = RunId("r-20261123-late".into());
    let mut serve = spawn_serve(&w.env).await;
    start_run(&w, &policy, &run).await;
    play_host(&w, &mut serve, None).await;
    let rej = |r: &vnet_migrate::report::Report| {
        r.targets
            .iter()
            .find(|t| t.id.to_ascii_lowercase().ends_with("/sites/rej"))
            .cloned()
            .unwrap()
    };
    let before = rej(&report_of(&*w.ledger().await, &run).await);
    assert_eq!(before.outcome, "rolled-back");
    let subnet = before.subnet.clone().unwrap();
    let vnet = subnet.rsplit_once("/subnets/").unwrap().0;
    // The cut-over as `prepare-subnet` sent it (its MessageId is run, target, step, attempt).
    let cut_over = json!({
        "v": 1, "run": run.as_str(), "target": before.id, "step": "disconnect", "attempt": 0,
        "dryRun": false, "origin": "rollout",
        "plan": { "vnet": vnet, "subnet": subnet, "prefix": before.prefix, "create": false }
    });
    let arm = w.sim.stats();
    let answer = reqwest::Client::new()
        .post(format!("{}/step", serve.url))
        .body(json!({"Data": {"msg": base64::engine::general_purpose::STANDARD.encode(cut_over.to_string())}, "Metadata": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let logs: Value = answer.json().await.unwrap();
    assert!(
        logs["Logs"][0].as_str().unwrap().contains("not executed"),
        "{logs}"
    );
    let after = w.sim.stats();
    assert_eq!((after.writes, after.deletes), (arm.writes, arm.deletes));
    let now = rej(&report_of(&*w.ledger().await, &run).await);
    assert_eq!((now.outcome, now.reason), (before.outcome, before.reason));
}

/// For a failed comparison: each target whose outcome differs, with its step log from the
/// ledger and what the handler answered for it, in order.
async fn differences(
    ledger: &dyn Ledger,
    run: &RunId,
    got: &vnet_migrate::report::Report,
    expected: &vnet_migrate::report::Report,
    logs: &[String],
) -> String {
    let (got, expected) = (outcomes(got), outcomes(expected));
    let mut out = String::new();
    for (target, outcome) in &got {
        if expected.get(target) == Some(outcome) {
            continue;
        }
        let id = vnet_migrate::azure::ResourceId::parse(target).unwrap();
        out.push_str(&format!(
            "\n{target}: {outcome}, expected {:?}\n  step log:\n",
            expected.get(target)
        ));
        for e in ledger.step_log(run, &id).await.unwrap() {
            out.push_str(&format!("    {} {}\n", e.at(), e.detail()));
        }
        out.push_str("  handler:\n");
        let name = format!("{} ", id.as_str());
        for l in logs
            .iter()
            .filter(|l| l.to_ascii_lowercase().contains(&name.to_ascii_lowercase()))
        {
            out.push_str(&format!("    {l}\n"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_ends_in_the_dead_letter_queue_with_its_reason() {
    let w = world(fleet(), "plan-only", 3).await;
    let mut serve = spawn_serve(&w.env).await;
    let direct = reqwest::Client::new()
        .post(format!("{}/step", serve.url))
        .body(json!({"Data": {"msg": base64::engine::general_purpose::STANDARD.encode("not a step")}, "Metadata": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 500);
    w.client
        .send(&SendMessage {
            body: b"{\"v\":1,\"run\":\"r\"}".to_vec(),
            message_id: Some("poison".into()),
            session_id: Some("poison".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    play_host(&w, &mut serve, None).await;
    let dead = w.sb.fake().dead_letters(QUEUE);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id, "poison");
    assert_eq!(dead[0].reason, "MaxDeliveryCountExceeded");
    assert_eq!(dead[0].delivery_count, 3);
}

/// A subscription the policy lists besides the fleet's own: writable, but no target's.
const OTHER_SUB: &str = "00000000-0000-0000-0000-0000000000aa";
/// A subscription outside every scope.
const FOREIGN_SUB: &str = "00000000-0000-0000-0000-0000000000bb";

/// `id` moved into subscription `sub`.
fn in_sub(id: &str, sub: &str) -> String {
    let (_, rest) = id
        .strip_prefix("/subscriptions/")
        .and_then(|r| r.split_once('/'))
        .unwrap();
    format!("/subscriptions/{sub}/{rest}")
}

/// Forged step messages, each refused before any ARM call: they end in the dead-letter queue
/// (a custom handler cannot dead-letter, so at MaxDeliveryCount) with the handler's reason
/// logged for every delivery, and the simulator sees no request at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_messages_are_dead_lettered_with_their_reason_and_never_executed() {
    let w = world(fleet(), "plan-only", 3).await;
    // The policy also lists OTHER_SUB, so the rule that refuses it below is the target's own
    // subscription, not the write scope.
    let mut subs = w.subs.clone();
    subs.push(OTHER_SUB.into());
    std::fs::write(&w.env.policy, policy_json(&subs, "plan-only")).unwrap();
    let mut serve = spawn_serve(&w.env).await;

    let app = w
        .fleet
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str())
        .find(|id| id.to_ascii_lowercase().ends_with("/microsoft.web/sites/a"))
        .unwrap()
        .to_string();
    let hub = w
        .fleet
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str())
        .find(|id| id.to_ascii_lowercase().ends_with("/virtualnetworks/hub"))
        .unwrap()
        .to_string();
    let msg = |target: &str, step: &str, extra: String| {
        format!(r#"{{"v":1,"run":"r-forged","target":"{target}","step":"{step}"{extra}}}"#)
    };
    let gateway = |vnet: &str| format!(r#","gateway":{{"name":"hub","vnetResourceId":"{vnet}"}}"#);
    let plan = |vnet: &str| {
        format!(
            r#","plan":{{"vnet":"{vnet}","subnet":"{vnet}/subnets/snet-x","prefix":"10.9.0.0/26","create":true}}"#
        )
    };
    let other_hub = in_sub(&hub, OTHER_SUB);
    let wrong_provider = app.replace("Microsoft.Web", "Microsoft.Network");
    let cases = [
        // The attack of issue 13: a rollback re-creating a gateway connection from an
        // in-scope app to a VNet of another subscription.
        (
            "gateway-other-sub",
            msg(&app, "rollback", gateway(&other_hub)),
            "gateway.vnetResourceId",
        ),
        (
            "plan-other-sub",
            msg(&app, "connect", plan(&other_hub)),
            "plan.vnet",
        ),
        (
            "target-other-sub",
            msg(
                &in_sub(&app, FOREIGN_SUB),
                "rollback",
                gateway(&in_sub(&hub, FOREIGN_SUB)),
            ),
            "outside the write scope",
        ),
        (
            "target-encoded-slash",
            msg(&format!("{app}%2F..%2Fb"), "disconnect", String::new()),
            "holds '%'",
        ),
        (
            "gateway-encoded-slash",
            msg(
                &app,
                "rollback",
                gateway(&format!("{hub}%2F..%2F..%2Fother")),
            ),
            "holds '%'",
        ),
        (
            "target-dot-dot",
            msg(&format!("{app}/../b"), "connect", String::new()),
            "relative segment",
        ),
        (
            "plan-dot-dot",
            msg(&app, "connect", plan(&format!("{hub}/../other"))),
            "relative segment",
        ),
        (
            "target-wrong-provider",
            msg(&wrong_provider, "disconnect", String::new()),
            "expected a Microsoft.Web/sites",
        ),
        (
            "gateway-wrong-provider",
            msg(&app, "rollback", gateway(&app)),
            "got a Microsoft.Web/sites id",
        ),
    ];
    for (id, body, _) in &cases {
        w.client
            .send(&SendMessage {
                body: body.clone().into_bytes(),
                message_id: Some(id.to_string()),
                session_id: Some(id.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let played = play_host(&w, &mut serve, None).await;

    let dead = w.sb.fake().dead_letters(QUEUE);
    assert_eq!(dead.len(), cases.len(), "{dead:?}");
    for (id, _, why) in &cases {
        let d = dead.iter().find(|d| d.message_id == *id).unwrap();
        assert_eq!(
            (d.reason.as_str(), d.delivery_count),
            ("MaxDeliveryCountExceeded", 3)
        );
        let lines: Vec<_> = played
            .logs
            .iter()
            .filter(|l| l.starts_with(&format!("{id}: ")))
            .collect();
        // The harness posts every fifth delivery twice, as the host may.
        assert!(
            lines.len() >= 3,
            "a refusal per delivery of {id}: {lines:?}"
        );
        assert!(lines.iter().all(|l| l.contains(why)), "{id}: {lines:?}");
    }
    assert!(played.logs.iter().any(|l| l.contains(&format!(
        "not the target's ({})",
        app.split('/').nth(2).unwrap()
    ))));
    let stats = w.sim.stats();
    assert_eq!(
        (stats.requests, stats.writes, stats.deletes),
        (0, 0, 0),
        "a refused message reaches ARM not even to read"
    );
    assert!(
        w.ledger().await.runs().await.unwrap().is_empty(),
        "nothing was recorded"
    );
}

fn arm_event(target: &str, principal: &str) -> Value {
    json!({
        "Data": { "event": {
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": "/subscriptions/x",
            "subject": target,
            "eventType": "Microsoft.Resources.ResourceWriteSuccess",
            "eventTime": "2026-11-23T21:00:00Z",
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {
                "resourceUri": target,
                "operationName": "Microsoft.Web/sites/write",
                "authorization": { "evidence": { "principalId": principal } },
                "claims": {}
            }
        }},
        "Metadata": {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_deploy_debounces_filters_and_the_event_run_completes() {
    let mut b = base();
    let v = hub(&mut b, "hub", "westeurope", "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", "westeurope", "P1v2", 1);
    let app = b.site("apps", "app1", &plan);
    b.gateway_connection(&app, &v);
    let w = world(b.build(), "migrate", 10).await;
    let mut serve = spawn_serve(&w.env).await; // GET / answered before any ledger traffic.
    let http = reqwest::Client::new();
    let base = serve.url.clone();
    let post = |path: &str, body: String| {
        http.post(format!("{base}/{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = post(
        "on-deploy",
        "{\"Data\": {\"event\": 42}, \"Metadata\": {}}".into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "malformed events are not retried");
    let ours = post(
        "on-deploy",
        arm_event(app.as_str(), OUR_PRINCIPAL).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(ours.status(), 200);
    let out = app.as_str().replace(
        &format!("/subscriptions/{}", app.subscription()),
        "/subscriptions/other",
    );
    let r = post("on-deploy", arm_event(&out, "someone-else").to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        busy(&w.sb),
        0,
        "own writes and out-of-scope sites enqueue nothing"
    );

    for _ in 0..3 {
        let r = post(
            "on-deploy",
            arm_event(app.as_str(), "someone-else").to_string(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        w.sb.fake().counts(QUEUE).active,
        1,
        "one discover for a burst"
    );
    play_host(&w, &mut serve, None).await;
    assert_eq!(w.sb.fake().counts(QUEUE).dead, 0);

    let report = status_function(&serve.url, json!({})).await;
    assert!(
        report["run"].as_str().unwrap().starts_with("ev-"),
        "{report}"
    );
    assert_eq!(report["targets"].as_array().unwrap().len(), 1);
    assert_eq!(report["targets"][0]["outcome"], "migrated", "{report}");
}

/// The most of `spans` (start, end) that overlap at any moment: the count at each start,
/// where the overlap can only grow.
fn most_at_once<T: PartialOrd>(spans: &[(T, T)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start <= e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Writes the function app's policy: no settle time, the world's subscriptions as its scope,
/// and `fields`.
fn set_policy(w: &World, fields: Value) {
    let mut policy = json!({ "settleSeconds": 0, "scope": { "subscriptions": w.subs } });
    if let (Some(p), Value::Object(f)) = (policy.as_object_mut(), fields) {
        p.extend(f);
    }
    std::fs::write(&w.env.policy, policy.to_string()).unwrap();
}

/// The body of the `status` function's answer, invoked as the Functions host does (HTTP
/// trigger, `query` as the request's query), checked to be a 200.
async fn status_function(serve_url: &str, query: Value) -> Value {
    let req = json!({"Data": {"req": {"Method": "POST", "Url": "http://localhost/api/status", "Query": query, "Headers": {}}}, "Metadata": {}});
    let r = reqwest::Client::new()
        .post(format!("{serve_url}/status"))
        .body(req.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["Outputs"]["res"]["statusCode"], 200, "{v}");
    serde_json::from_str(v["Outputs"]["res"]["body"].as_str().unwrap()).unwrap()
}

/// Exit status and stderr of `serve` started so (it must refuse to start).
fn refused(mut serve: Command) -> String {
    let out = serve.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_usable_ledger_or_scope() {
    let w = world(fleet(), "plan-only", 10).await;
    // No token and no signed request to a Table endpoint over plain http, no account key
    // for a real account, and the static test token only for loopback.
    let table = "https://acct.table.core.windows.net";
    let err = refused(serve_cmd(&w.env, 0, "http://acct.table.core.windows.net"));
    assert!(
        err.contains("http://acct.table.core.windows.net") && err.contains("loopback"),
        "{err}"
    );
    // The Entra token never goes in clear text to another host (issue 13): a Service Bus
    // endpoint is https, or http on loopback only.
    let plain_sb = Env {
        sb: "http://contoso.servicebus.windows.net".into(),
        ..w.env.clone()
    };
    let err = refused(serve_cmd(&plain_sb, 0, &w.env.ledger));
    assert!(
        err.contains("VNET_MIGRATE_SERVICEBUS_ENDPOINT") && err.contains("http only on loopback"),
        "{err}"
    );
    let mut keyed = serve_cmd(&w.env, 0, table);
    keyed.env("VNET_MIGRATE_LEDGER_KEY", azurite::KEY);
    let err = refused(keyed);
    assert!(
        err.contains("account key is only accepted for an emulator on loopback"),
        "{err}"
    );
    let err = refused(serve_cmd(&w.env, 0, table));
    assert!(
        err.contains("static credential is only allowed when every endpoint is loopback"),
        "{err}"
    );
    let err = refused(serve_cmd(
        &w.env,
        0,
        "https://acct.table.core.windows.net/ledger",
    ));
    assert!(err.contains("has no path"), "{err}");
    std::fs::write(&w.env.policy, "{}").unwrap();
    let err = refused(serve_cmd(&w.env, 0, &w.env.ledger));
    assert!(err.contains("scope.subscriptions is empty"), "{err}");
}

/// How much faster than real time `serve` runs the rollouts below: a one-minute bake is 2 s.
const ROLLOUT_SPEED: f64 = 30.0;
const BAKE: Duration = Duration::from_secs(2);

/// `vnet-migrate rollout ARGS` in Azure mode: on the Table ledger in Azurite and the Service
/// Bus fake, with the function app's policy, as an operator runs it against its resources.
fn rollout_cmd(w: &World, args: &[&str]) -> Command {
    let az = w.azurite.as_ref().expect("the Table ledger");
    let mut c = bin(&["rollout"]);
    c.args(args)
        .args([
            "--ledger",
            az.endpoint(),
            "--servicebus",
            "fake.servicebus.windows.net",
        ])
        .env("VNET_MIGRATE_LEDGER_KEY", azurite::KEY)
        .env("VNET_MIGRATE_SERVICEBUS_ENDPOINT", &w.env.sb)
        .env("VNET_MIGRATE_STEPS_QUEUE", QUEUE)
        .env("VNET_MIGRATE_STATIC_TOKEN", TOKEN)
        .env("VNET_MIGRATE_POLICY", &w.env.policy);
    c
}

/// [`rollout_cmd`], which must succeed (or exit 1: a run that needs an operator); its JSON.
fn rollout_cli(w: &World, args: &[&str]) -> Value {
    let out = rollout_cmd(w, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "rollout {args:?}: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `rollout start` in Azure with the world's policy; the run id.
fn start_in_azure(w: &World) -> RunId {
    let doc = rollout_cli(
        w,
        &[
            "start",
            "--credential",
            "static",
            "--arm-endpoint",
            &w.env.arm,
            "--policy",
            &w.env.policy,
            "-o",
            "json",
        ],
    );
    RunId(
        doc["run"]
            .as_str()
            .unwrap_or_else(|| panic!("{doc}"))
            .to_string(),
    )
}

/// One `rollout-tick` invocation as the host's timer sends it; the handler's log lines.
async fn tick(serve: &Serve) -> Vec<String> {
    let body = json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "IsPastDue": false } },
        "Metadata": {}
    });
    let r = reqwest::Client::new()
        .post(format!("{}/rollout-tick", serve.url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let ok = r.status().is_success();
    let v: Value = r.json().await.unwrap();
    assert!(ok, "{v}");
    v["Logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect()
}

async fn waves_of(w: &World, run: &RunId) -> Vec<vnet_migrate::pipeline::rollout::WaveView> {
    w.ledger().await.waves(run).await.unwrap()
}

/// Rollouts in Azure (issue 13): `rollout start` records the run and its waves in the Table
/// ledger and sends the first wave; each `rollout-tick` of the function app releases the next
/// wave only after the previous one's bake; a failure-rate gate that trips stops the rollout
/// with later waves untouched, however many ticks come, until `rollout resume`; and
/// `rollout status` prints the JSON the `status` function returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waves_are_released_by_rollout_ticks_after_their_bake_and_a_tripped_gate_holds_until_resume(
) {
    let mut w = world_on(LedgerKind::Table, fleet(), "plan-only", 10).await;
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    // Sites in id order: a | b c | d kv | rej x; kv is rolled back after its connect, so
    // wave 2 fails 1 of 2 (50%), above the gate's 40%.
    set_policy(
        &w,
        json!({
            "waves": [1, 2, 2],
            "bakeMinutes": 1,
            "gates": { "maxFailureRate": 0.4 }
        }),
    );
    let mut serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    let waves = waves_of(&w, &run).await;
    assert_eq!(
        waves.iter().map(|w| w.targets).collect::<Vec<_>>(),
        vec![1, 2, 2, 2]
    );
    assert!(waves[0].released_at.is_some());
    assert!(waves[1..].iter().all(|w| w.released_at.is_none()));

    for next in 1..=2usize {
        play_host(&w, &mut serve, None).await;
        let ended = waves_of(&w, &run).await[next - 1]
            .ended_at
            .expect("the wave ended");
        // A tick within the bake releases nothing.
        let logs = tick(&serve).await;
        assert!(logs.iter().any(|l| l.contains("Bake")), "{logs:?}");
        assert!(waves_of(&w, &run).await[next].released_at.is_none());
        tokio::time::sleep(BAKE).await;
        let logs = tick(&serve).await;
        assert!(logs.iter().any(|l| l.contains("Release")), "{logs:?}");
        let released = waves_of(&w, &run).await[next]
            .released_at
            .expect("released");
        assert!(released - ended >= time::Duration::try_from(BAKE).unwrap());
    }
    play_host(&w, &mut serve, None).await;
    tokio::time::sleep(BAKE).await;
    // The gate of wave 2 trips: the rollout stops there, tick after tick.
    for _ in 0..2 {
        let logs = tick(&serve).await;
        assert!(logs.iter().any(|l| l.contains("Stop")), "{logs:?}");
    }
    let waves = waves_of(&w, &run).await;
    let gate = waves[2].gate.clone().expect("wave 2's gate is recorded");
    assert!(!gate.passed, "{gate:?}");
    assert_eq!(waves[2].failed, 1);
    assert!(waves[3].released_at.is_none());
    let ledger = w.ledger().await;
    let report = report_of(&*ledger, &run).await;
    let wave3: Vec<_> = report
        .targets
        .iter()
        .filter(|t| t.wave == Some(3))
        .collect();
    assert_eq!(wave3.len(), 2);
    assert!(wave3.iter().all(|t| t.steps == 0), "wave 3 is untouched");
    assert_eq!(busy(&w.sb), 0, "nothing of wave 3 was sent");

    // `rollout status` in Azure prints what the `status` function returns.
    let cli = rollout_cli(&w, &["status", "-o", "json"]);
    let function = status_function(&serve.url, json!({"run": run.as_str()})).await;
    assert_eq!(cli, function);
    assert_eq!(function["run"], run.as_str());
    assert_eq!(function["finished"], false);
    assert_eq!(function["waves"].as_array().unwrap().len(), 4, "{function}");

    // Resumed from the command line: the next tick releases wave 3, the last.
    rollout_cli(&w, &["resume"]);
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Release")), "{logs:?}");
    play_host(&w, &mut serve, None).await;
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Done")), "{logs:?}");
    let done = outcomes(&report_of(&*ledger, &run).await);
    assert!(
        done.values().all(|o| !o.starts_with("unfinished")),
        "{done:?}"
    );
    let waves = waves_of(&w, &run).await;
    assert!(waves
        .windows(2)
        .all(|p| p[0].released_at <= p[1].released_at));
    assert!(w.sb.fake().dead_letters(QUEUE).is_empty());
    let v = invariants::check(&w.fleet, &w.sim.state(), &report_of(&*ledger, &run).await);
    assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
}

/// `rollout abort` in Azure while the first wave's messages wait in the queue: every
/// untouched target is `cancelled`, the queued messages are dropped by the step function
/// (Service Bus cannot withdraw them), ARM sees no write, and ticks release nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_abort_in_azure_leaves_untouched_targets_cancelled() {
    let mut w = world_on(LedgerKind::Table, fleet(), "plan-only", 10).await;
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    std::fs::write(
        &w.env.policy,
        json!({ "settleSeconds": 0, "scope": { "subscriptions": w.subs }, "waves": [2] })
            .to_string(),
    )
    .unwrap();
    let mut serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    assert_eq!(
        w.sb.fake().counts(QUEUE).active,
        2 + 5,
        "the first wave is queued, and the next wave's network preparation"
    );
    rollout_cli(&w, &["abort"]);
    play_host(&w, &mut serve, None).await;
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Done")), "{logs:?}");
    let got = outcomes(&report_of(&*w.ledger().await, &run).await);
    assert_eq!(got.len(), 7);
    assert!(got.values().all(|o| o == "cancelled"), "{got:?}");
    let stats = w.sim.stats();
    assert_eq!(
        (stats.writes, stats.deletes),
        (0, 0),
        "nothing was executed"
    );
    assert_eq!(busy(&w.sb), 0);
    assert!(waves_of(&w, &run).await[1].released_at.is_none());
}

/// `gates.manualApproval` in Azure: after the first wave's bake, `rollout-tick` judges its gate
/// (failure rate, then the Key Vault references and the probe of its migrated targets, through
/// the simulator standing in for the apps' front ends) and waits, tick after tick, with the
/// next wave untouched; `rollout status` says so as the `status` function does; `rollout
/// promote --ledger` approves it and the next tick releases it; a second promote is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_approval_in_azure_waits_until_rollout_promote() {
    let mut w = world_on(LedgerKind::Table, fleet(), "plan-only", 10).await;
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    set_policy(
        &w,
        json!({
            "waves": [1],
            "gates": { "manualApproval": true, "probe": { "path": "/health", "expectedStatus": 200 } }
        }),
    );
    let mut serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    play_host(&w, &mut serve, None).await;
    for _ in 0..2 {
        let logs = tick(&serve).await;
        assert!(logs.iter().any(|l| l.contains("AwaitApproval")), "{logs:?}");
    }
    let waves = waves_of(&w, &run).await;
    let gate = waves[0].gate.clone().expect("wave 0's gate is judged");
    assert!(gate.passed, "{gate:?}");
    assert_eq!(
        gate.checks.iter().map(|c| c.kind).collect::<Vec<_>>(),
        vec![
            GateKind::FailureRate,
            GateKind::KeyVaultReferences,
            GateKind::Probe
        ]
    );
    assert!(waves[1].released_at.is_none() && !waves[1].approved);
    assert_eq!(busy(&w.sb), 0, "nothing of wave 1 was sent");

    let cli = rollout_cli(&w, &["status", "-o", "json"]);
    assert_eq!(
        cli["waiting"],
        "waiting for approval: `rollout promote` releases wave 1"
    );
    assert_eq!(
        cli["waves"][0]["gate"]["checks"].as_array().unwrap().len(),
        3,
        "{cli}"
    );
    let function = status_function(&serve.url, json!({"run": run.as_str()})).await;
    assert_eq!(cli, function);

    rollout_cli(&w, &["promote"]);
    assert!(waves_of(&w, &run).await[1].approved);
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Release")), "{logs:?}");
    assert!(waves_of(&w, &run).await[1].released_at.is_some());
    assert!(busy(&w.sb) > 0, "wave 1's first steps are queued");

    let out = rollout_cmd(&w, &["promote"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the rollout of run {run} is not waiting for approval: steps of the released waves are in flight"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Plays the host (four receivers, duplicate deliveries or not) until `enough` says so of the
/// invocations posted so far, looked at every 20 ms; the handler's log lines.
async fn play_until(
    w: &World,
    serve: &Serve,
    duplicates: bool,
    mut enough: impl FnMut(usize) -> bool,
) -> Vec<String> {
    let host = Host::new(w, serve, duplicates);
    let stop = Arc::new(AtomicUsize::new(0));
    let receivers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(host.clone().receiver(stop.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !enough(host.posted.load(Ordering::SeqCst)) {
        assert!(Instant::now() < deadline, "not enough in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(1, Ordering::SeqCst);
    for r in receivers {
        r.await.unwrap();
    }
    let logs = std::mem::take(&mut *host.logs.lock().unwrap());
    logs
}

/// [`play_until`] without duplicate deliveries, until the queue is idle twice in a row, 100 ms
/// apart.
async fn play_until_idle(w: &World, serve: &Serve) -> Vec<String> {
    let mut idle_since: Option<Instant> = None;
    play_until(w, serve, false, |_| {
        if busy(&w.sb) > 0 {
            idle_since = None;
            return false;
        }
        idle_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(100)
    })
    .await
}

/// `n` gateway-connected apps `a00`… on one plan in one hub, one subscription.
fn one_plan(n: usize) -> (Fleet, Vec<vnet_migrate::azure::ResourceId>) {
    let mut b = base();
    let v = hub(&mut b, "hub", "westeurope", "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", "westeurope", "P1v2", 2);
    let apps = (0..n)
        .map(|i| {
            let s = b.site("apps", &format!("a{i:02}"), &plan);
            b.gateway_connection(&s, &v);
            s
        })
        .collect();
    (b.build(), apps)
}

/// `rollout pause` in Azure holds the steps already on the queue (issue 13 part 3), as the
/// embedded runner does: paused mid-run, the step function puts every step of the run off a
/// tick at a time instead of executing it, so no new target starts however many ticks pass
/// (duplicate deliveries of the held steps send nothing more); `rollout resume` lets them all
/// finish. Duplicates are delivered only while paused: a duplicate of a cut-over racing its
/// target's next step is another test's subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_in_azure_holds_queued_steps_and_resume_finishes_them() {
    let (fleet, apps) = one_plan(12);
    let mut w = world_on(LedgerKind::Table, fleet, "plan-only", 10).await;
    // A paused step is looked at again every 2 s (a minute's tick at this speed).
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    let serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    // Mid-run: a few steps taken, most targets not started.
    play_until(&w, &serve, false, |posted| posted >= 4).await;
    rollout_cli(&w, &["pause"]);
    let ledger = w.ledger().await;
    let steps_of = |r: &vnet_migrate::report::Report| -> Vec<u32> {
        r.targets.iter().map(|t| t.steps).collect()
    };
    let at_pause = steps_of(&report_of(&*ledger, &run).await);
    let untouched = at_pause.iter().filter(|s| **s == 0).count();
    assert!(untouched > 0, "{at_pause:?}");
    // Three ticks' worth of deliveries while paused.
    let started = Instant::now();
    let logs = play_until(&w, &serve, true, |_| {
        started.elapsed() > Duration::from_secs(6)
    })
    .await;
    assert!(
        logs.iter()
            .any(|l| l.contains("the rollout is paused; put off until")),
        "{logs:?}"
    );
    let paused = steps_of(&report_of(&*ledger, &run).await);
    assert_eq!(
        paused.iter().filter(|s| **s == 0).count(),
        untouched,
        "no new target started: {at_pause:?} then {paused:?}"
    );
    assert!(busy(&w.sb) > 0, "the held steps wait on the queue");

    rollout_cli(&w, &["resume"]);
    play_until_idle(&w, &serve).await;
    let report = report_of(&*ledger, &run).await;
    for app in &apps {
        assert_eq!(crate::support::outcome(&report, app), "migrated", "{app}");
    }
    assert!(w.sb.fake().dead_letters(QUEUE).is_empty());
    let v = invariants::check(&w.fleet, &w.sim.state(), &report);
    assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
}

/// `concurrency.perSubscription` in Azure: the controller starts at most that many targets of
/// one subscription (the release sends that many first steps) and each `rollout-tick` starts
/// as many more as have finished, so no more than that many are ever in progress at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_subscription_in_azure_starts_targets_as_others_finish() {
    let (fleet, apps) = one_plan(10);
    let w = world_on(LedgerKind::Table, fleet, "plan-only", 10).await;
    set_policy(
        &w,
        json!({
            "concurrency": { "perSubscription": 3 }
        }),
    );
    let serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    assert_eq!(w.sb.fake().counts(QUEUE).active, 3, "three targets started");
    let mut rounds = 0;
    loop {
        play_until_idle(&w, &serve).await;
        let logs = tick(&serve).await;
        if logs.iter().any(|l| l.contains("Done")) {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "{logs:?}");
    }
    assert!(
        rounds >= 3,
        "ten targets three at a time: {rounds} round(s)"
    );
    let ledger = w.ledger().await;
    let report = report_of(&*ledger, &run).await;
    // Each target was in progress from its first step to its last.
    let mut spans = Vec::new();
    for app in &apps {
        assert_eq!(crate::support::outcome(&report, app), "migrated", "{app}");
        let log = ledger.step_log(&run, app).await.unwrap();
        spans.push((log[0].at(), log[log.len() - 1].at()));
    }
    let most = most_at_once(&spans);
    assert!(most <= 3, "{most} targets in progress at once: {spans:?}");
    let v = invariants::check(&w.fleet, &w.sim.state(), &report);
    assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
}

/// `concurrency.perVnet` in Azure: a target's `prepare-subnet`, which starts its work in its
/// destination VNet, is put off a tick while that many other targets are at work there (past
/// their own `prepare-subnet`, without an outcome, counted from the ledger), so no more than
/// that many targets of the hub are ever in progress at once, and all of them migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_vnet_in_azure_holds_targets_while_their_vnet_is_full() {
    let (fleet, apps) = one_plan(8);
    let mut w = world_on(LedgerKind::Table, fleet, "plan-only", 10).await;
    // A held step is looked at again every 2 s (a minute's tick at this speed).
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    set_policy(
        &w,
        json!({
            "concurrency": { "perVnet": 2 }
        }),
    );
    let serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    let logs = play_until_idle(&w, &serve).await;
    assert!(
        logs.iter().any(|l| l
            .contains("2 target(s) bound for its VNet are in progress (perVnet 2); put off until")),
        "{logs:?}"
    );
    let ledger = w.ledger().await;
    let report = report_of(&*ledger, &run).await;
    // Each target was at work in the hub from its (last) prepare-subnet to its last step.
    let mut spans = Vec::new();
    for app in &apps {
        assert_eq!(crate::support::outcome(&report, app), "migrated", "{app}");
        let log = ledger.step_log(&run, app).await.unwrap();
        let start = log
            .iter()
            .rev()
            .find(|e| e.step() == Step::PrepareSubnet)
            .unwrap_or_else(|| panic!("{app}: no prepare-subnet"));
        spans.push((start.at(), log[log.len() - 1].at()));
    }
    let most = most_at_once(&spans);
    assert!(most <= 2, "{most} targets in the hub at once: {spans:?}");
    assert!(w.sb.fake().dead_letters(QUEUE).is_empty());
    let v = invariants::check(&w.fleet, &w.sim.state(), &report);
    assert!(v.is_empty(), "invariants broken:\n{}", v.join("\n"));
}

/// Network preparation ahead of the cut-over through the Functions host (issue 12 item 5):
/// while the rollout waits for `rollout promote` after wave 0, wave 1's subnet (a plan of its
/// own) already exists and wave 1 is untouched; released, its targets' own `prepare-subnet`
/// finds the subnet ready and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_waves_subnets_are_prepared_ahead_in_azure() {
    let (fleet, v, apps) = two_plans_of_two();
    let w = world_on(LedgerKind::Table, fleet, "plan-only", 10).await;
    set_policy(
        &w,
        json!({
            "waves": [2],
            "gates": { "manualApproval": true }
        }),
    );
    let serve = spawn_serve(&w.env).await;
    let run = start_in_azure(&w);
    play_until_idle(&w, &serve).await;
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("AwaitApproval")), "{logs:?}");
    let ahead = crate::network_ahead::web_subnets(&w.sim, &v);
    assert_eq!(ahead.len(), 2, "{ahead:?}");
    let ledger = w.ledger().await;
    for app in &apps[2..] {
        assert!(
            ledger.step_log(&run, app).await.unwrap().is_empty(),
            "{app}"
        );
    }
    rollout_cli(&w, &["promote"]);
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Release")), "{logs:?}");
    play_until_idle(&w, &serve).await;
    let logs = tick(&serve).await;
    assert!(logs.iter().any(|l| l.contains("Done")), "{logs:?}");
    assert_eq!(crate::network_ahead::web_subnets(&w.sim, &v), ahead);
    let report = report_of(&*ledger, &run).await;
    for app in &apps {
        assert_eq!(crate::support::outcome(&report, app), "migrated", "{app}");
    }
    for app in &apps[2..] {
        let log = step_details(&*ledger, &run, app).await;
        assert!(
            log.iter().any(|d| d.contains("already prepared")),
            "{app}: {log:?}"
        );
        assert!(
            !log.iter().any(|d| d.contains("created subnet")),
            "{app}: {log:?}"
        );
    }
}

/// Maintenance windows through the Functions host (issue 12): a cut-over outside its window
/// is not executed but put off to the window's opening (a scheduled message, no spinning),
/// with the opening in the step log and the run's status; an app no window covers goes ahead
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_over_outside_its_window_is_scheduled_for_the_opening_in_azure() {
    let (fleet, prod, dev) = prod_and_dev();
    let mut w = world_on(LedgerKind::Table, fleet, "plan-only", 10).await;
    // ARM's waits (the subnet write's LRO) shortened as for the rollouts above; the window,
    // days away, stays closed throughout at this speed.
    w.env.arm_speed = Some(ROLLOUT_SPEED.to_string());
    let policy = json!({
        "settleSeconds": 0,
        "scope": {"subscriptions": w.subs},
        "windows": prod_window_in_five_days()
    })
    .to_string();
    std::fs::write(&w.env.policy, &policy).unwrap();
    let serve = spawn_serve(&w.env).await;
    let run = RunId("r-20261202-win0".into());
    start_run(&w, &Policy::from_json(&policy).unwrap(), &run).await;
    let started = Instant::now();
    play_until(&w, &serve, false, |_| {
        started.elapsed() > Duration::from_secs(4)
    })
    .await;

    let ledger = w.ledger().await;
    let report = report_of(&*ledger, &run).await;
    assert_eq!(crate::support::outcome(&report, &dev), "migrated");
    let prod_log = step_details(&*ledger, &run, &prod).await;
    assert!(
        prod_log
            .iter()
            .any(|d| d.contains("outside its maintenance window: the cut-over waits until")),
        "{prod_log:?}"
    );
    assert!(
        !prod_log.iter().any(|d| d.contains("removed gateway")),
        "prod was cut over outside its window: {prod_log:?}"
    );
    assert!(
        report
            .targets
            .iter()
            .any(|t| t.id == prod.as_str() && t.outcome == "unfinished"),
        "{:?}",
        report.targets
    );
    // Its cut-over waits on the queue, scheduled, not delivered again and again.
    assert!(busy(&w.sb) > 0);
    // The run's status says so, and until when.
    let status = status_function(&serve.url, json!({"run": run.as_str()})).await;
    let waiting = status["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.contains("1 target(s) put off (outside their maintenance window")
            && waiting.contains("the first goes on at"),
        "{status}"
    );
}
