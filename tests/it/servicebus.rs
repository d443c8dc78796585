//! The Service Bus REST client against the fake, over real loopback HTTP.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use vnet_migrate::azure::servicebus::{
    SendMessage, ServiceBusClient, ServiceBusError, StaticBearer,
};
use vnet_migrate::azure::ResourceId;
use vnet_migrate::pipeline::message::{Origin, RunId, Step, StepMessage};
use vnet_migrate::pipeline::queue::{Outgoing, StepSender};
use vnet_migrate::sim::servicebus::{FakeOptions, QueueCounts, ServiceBusServer};

use crate::support::{bind_loopback, spawn_router, start_service_bus};

const TOKEN: &str = "test-token-5ecr3t";
const NOW: Duration = Duration::ZERO;

async fn start(opts: FakeOptions) -> (ServiceBusServer, ServiceBusClient) {
    start_service_bus(opts, "steps", TOKEN).await
}

fn msg(id: &str, session: Option<&str>, body: &str) -> SendMessage {
    SendMessage {
        body: body.as_bytes().to_vec(),
        message_id: Some(id.into()),
        session_id: session.map(str::to_string),
        content_type: Some("application/json".into()),
        ..Default::default()
    }
}

/// Service Bus takes a SessionId of at most 128 characters; a slot's step goes out under a
/// session name that fits.
#[tokio::test]
async fn a_session_id_longer_than_128_characters_is_refused_and_a_slots_step_fits() {
    let (_server, client) = start(FakeOptions::default()).await;
    let err = client
        .send(&msg("m1", Some(&"s".repeat(129)), "{}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("maximum is 128"), "{err}");
    let slot = ResourceId::parse(&format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-payments-westeurope-prod/providers/Microsoft.Web/sites/app-payments-{}/slots/staging",
        "x".repeat(40)
    ))
    .unwrap();
    assert!(slot.key().len() > 128);
    let step = StepMessage::new(RunId("r-1".into()), slot, Step::Discover, Origin::Cli);
    StepSender::send(&client, vec![Outgoing::now(step)])
        .await
        .unwrap();
}

#[tokio::test]
async fn send_receive_complete() {
    let (server, client) = start(FakeOptions::default()).await;
    let mut m = msg("m1", Some("s1"), r#"{"a":1}"#);
    m.correlation_id = Some("corr".into());
    client.send(&m).await.unwrap();
    let got = client.receive(NOW).await.unwrap().expect("a message");
    assert_eq!(got.body, br#"{"a":1}"#);
    assert_eq!(got.broker.message_id.as_deref(), Some("m1"));
    assert_eq!(got.broker.session_id.as_deref(), Some("s1"));
    assert_eq!(got.broker.correlation_id.as_deref(), Some("corr"));
    assert_eq!(got.broker.delivery_count, Some(1));
    assert!(got.broker.lock_token.is_some() && got.broker.sequence_number.is_some());
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert!(got.lock_uri.starts_with(&server.url()));
    client.complete(&got).await.unwrap();
    assert!(client.receive(NOW).await.unwrap().is_none());
    // Settling twice: the lock is gone.
    assert!(matches!(
        client.complete(&got).await,
        Err(ServiceBusError::LockLost { .. })
    ));
    assert_eq!(
        server.fake().counts("steps"),
        QueueCounts {
            completed: 1,
            ..Default::default()
        }
    );
    server.shutdown().await;
}

#[tokio::test]
async fn duplicate_message_id_is_dropped() {
    let (server, client) = start(FakeOptions::default()).await;
    client.send(&msg("dup", None, "1")).await.unwrap();
    client.send(&msg("dup", None, "2")).await.unwrap();
    let first = client.receive(NOW).await.unwrap().unwrap();
    assert_eq!(first.body, b"1");
    client.complete(&first).await.unwrap();
    // Still a duplicate after completion: the window is the fake's lifetime.
    client.send(&msg("dup", None, "3")).await.unwrap();
    assert!(client.receive(NOW).await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn scheduled_message_is_invisible_until_due() {
    let (server, client) = start(FakeOptions::default()).await;
    let mut m = msg("later", None, "x");
    m.scheduled_enqueue_time = Some(OffsetDateTime::now_utc() + time::Duration::hours(1));
    client.send(&m).await.unwrap();
    assert!(client.receive(NOW).await.unwrap().is_none());
    assert_eq!(server.fake().counts("steps").scheduled, 1);
    server.fake().advance_clock(Duration::from_secs(3601));
    let got = client.receive(NOW).await.unwrap().expect("due now");
    assert_eq!(got.broker.message_id.as_deref(), Some("later"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_locked_session_delivers_to_one_receiver_at_a_time() {
    let (server, client) = start(FakeOptions::default()).await;
    client.send(&msg("a1", Some("app-a"), "a1")).await.unwrap();
    client.send(&msg("a2", Some("app-a"), "a2")).await.unwrap();
    client.send(&msg("b1", Some("app-b"), "b1")).await.unwrap();
    let a1 = client.receive(NOW).await.unwrap().unwrap();
    let b1 = client.receive(NOW).await.unwrap().unwrap();
    assert_eq!(
        (a1.body.as_slice(), b1.body.as_slice()),
        (&b"a1"[..], &b"b1"[..])
    );
    assert!(
        client.receive(NOW).await.unwrap().is_none(),
        "app-a is locked"
    );
    // A waiting receiver gets a2 as soon as a1 is completed.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.receive(Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    client.complete(&a1).await.unwrap();
    let a2 = waiter.await.unwrap().unwrap().expect("a2 after a1");
    assert_eq!(a2.body, b"a2");
    server.shutdown().await;
}

#[tokio::test]
async fn abandon_redelivers_with_delivery_count_plus_one() {
    let (server, client) = start(FakeOptions::default()).await;
    client.send(&msg("m", Some("s"), "x")).await.unwrap();
    let first = client.receive(NOW).await.unwrap().unwrap();
    client.abandon(&first).await.unwrap();
    let second = client.receive(NOW).await.unwrap().unwrap();
    assert_eq!(second.broker.delivery_count, Some(2));
    assert_ne!(second.lock_uri, first.lock_uri);
    server.shutdown().await;
}

#[tokio::test]
async fn dead_letters_at_max_delivery_count_and_reads_back_the_reason() {
    let opts = FakeOptions {
        max_delivery_count: 3,
        ..Default::default()
    };
    let (server, client) = start(opts).await;
    client.send(&msg("poison", Some("s"), "bad")).await.unwrap();
    for n in 1..=3 {
        let m = client.receive(NOW).await.unwrap().expect("delivery");
        assert_eq!(m.broker.delivery_count, Some(n));
        client.abandon(&m).await.unwrap();
    }
    assert!(client.receive(NOW).await.unwrap().is_none());
    assert_eq!(server.fake().counts("steps").dead, 1);
    let dl = client
        .receive_dead_letter(NOW)
        .await
        .unwrap()
        .expect("dead letter");
    assert_eq!(dl.body, b"bad");
    assert_eq!(dl.broker.message_id.as_deref(), Some("poison"));
    assert_eq!(dl.dead_letter_reason(), Some("MaxDeliveryCountExceeded"));
    assert!(dl.dead_letter_description().is_some());
    assert!(dl.lock_uri.contains("$DeadLetterQueue"));
    client.complete(&dl).await.unwrap();
    assert!(client.receive_dead_letter(NOW).await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn lock_expiry_redelivers_unless_renewed() {
    let opts = FakeOptions {
        lock_duration: Duration::from_secs(30),
        ..Default::default()
    };
    let (server, client) = start(opts).await;
    client.send(&msg("m", None, "x")).await.unwrap();
    let m = client.receive(NOW).await.unwrap().unwrap();
    server.fake().advance_clock(Duration::from_secs(20));
    client.renew_lock(&m).await.unwrap();
    server.fake().advance_clock(Duration::from_secs(20));
    assert!(
        client.receive(NOW).await.unwrap().is_none(),
        "renewed lock holds"
    );
    client.renew_lock(&m).await.unwrap();
    server.fake().advance_clock(Duration::from_secs(31));
    let again = client
        .receive(NOW)
        .await
        .unwrap()
        .expect("expired lock redelivers");
    assert_eq!(again.broker.delivery_count, Some(2));
    assert!(matches!(
        client.complete(&m).await,
        Err(ServiceBusError::LockLost { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn batch_send_and_step_sender() {
    let (server, client) = start(FakeOptions::default()).await;
    let batch: Vec<SendMessage> = (0..5)
        .map(|i| {
            msg(
                &format!("b{i}"),
                Some(&format!("s{i}")),
                &format!("{{\"i\":{i}}}"),
            )
        })
        .collect();
    client.send_batch(&batch).await.unwrap();
    assert_eq!(server.fake().counts("steps").active, 5);

    let target =
        ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/App1")
            .unwrap();
    let step = StepMessage::new(RunId("r-1".into()), target, Step::Discover, Origin::Cli);
    let later = Outgoing {
        message: step.next(Step::Plan),
        visible_at: OffsetDateTime::now_utc() + time::Duration::minutes(10),
    };
    StepSender::send(&client, vec![Outgoing::now(step.clone()), later])
        .await
        .unwrap();
    // Re-sending the same step is a no-op (duplicate detection on MessageId).
    StepSender::send(&client, vec![Outgoing::now(step.clone())])
        .await
        .unwrap();
    let c = server.fake().counts("steps");
    assert_eq!((c.active, c.scheduled), (6, 1));
    for _ in 0..5 {
        let m = client.receive(NOW).await.unwrap().unwrap();
        client.complete(&m).await.unwrap();
    }
    let m = client.receive(NOW).await.unwrap().unwrap();
    assert_eq!(StepMessage::decode(&m.body).unwrap(), step);
    assert_eq!(m.broker.message_id, Some(step.message_id()));
    assert_eq!(m.broker.session_id, Some(step.session_id()));
    server.shutdown().await;
}

#[tokio::test]
async fn stats_endpoint_reports_counts() {
    let (server, client) = start(FakeOptions::default()).await;
    client.send(&msg("m", None, "x")).await.unwrap();
    let stats: serde_json::Value = reqwest::get(format!("{}/_sb/stats", server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["steps"]["active"], 1);
    assert_eq!(stats["steps"]["dead"], 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_token_never_appears_in_errors() {
    let opts = FakeOptions {
        required_token: Some("the-right-one".into()),
        ..Default::default()
    };
    let (server, client) = start(opts).await;
    let err = client.send(&msg("m", None, "x")).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err, ServiceBusError::Status { status: 401, .. }),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    let err = client.receive(NOW).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(TOKEN));
    let url = server.url();
    server.shutdown().await;
    // Transport errors (nobody listening) carry the URL, not the token.
    let dead = ServiceBusClient::new(url, "steps", Arc::new(StaticBearer(TOKEN.into())));
    let err = dead.send(&msg("m", None, "x")).await.unwrap_err();
    let text = format!("{err} {err:?} {dead:?}");
    assert!(matches!(err, ServiceBusError::Transport { .. }), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

/// A lock URI pointing elsewhere would receive our bearer token on settle: refused.
#[tokio::test]
async fn a_lock_uri_outside_the_endpoint_is_refused() {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().fallback(|| async {
        let mut h = HeaderMap::new();
        h.insert(
            "BrokerProperties",
            r#"{"LockToken":"t","DeliveryCount":1}"#.parse().unwrap(),
        );
        h.insert(
            "Location",
            "http://evil.example/steps/messages/1/t".parse().unwrap(),
        );
        (StatusCode::CREATED, h, "x")
    });
    let (listener, url) = bind_loopback().await;
    let server = spawn_router(listener, app);
    let client = ServiceBusClient::new(url, "steps", Arc::new(StaticBearer(TOKEN.into())));
    let err = client.receive(NOW).await.unwrap_err();
    assert!(
        matches!(err, ServiceBusError::Protocol { ref detail, .. } if detail.contains("outside the endpoint")),
        "{err}"
    );
    server.abort();
}

/// `vnet-migrate replay --dlq` against the fake, with the settings `serve` reads.
async fn replay_dlq(server: &ServiceBusServer, extra: &[&str]) -> std::process::Output {
    let mut c = crate::support::bin(&["replay", "--dlq", "--credential", "static"]);
    c.args(extra)
        .env("VNET_MIGRATE_STATIC_TOKEN", TOKEN)
        .env("VNET_MIGRATE_SERVICEBUS_ENDPOINT", server.url())
        .env("VNET_MIGRATE_STEPS_QUEUE", "steps");
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// A dead-lettered step replayed with `replay --dlq`: while the queue refuses the resend
/// (full), the dead letter stays, unlocked; then it is resent with a fresh MessageId and
/// without its dead-letter properties, and removed from the dead-letter queue.
#[tokio::test]
async fn replay_dlq_resends_with_a_fresh_message_id_and_completes_only_after_the_send() {
    let opts = FakeOptions {
        max_delivery_count: 1,
        max_queue_messages: Some(1),
        ..Default::default()
    };
    let (server, client) = start(opts).await;
    let target =
        ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/app1")
            .unwrap();
    let step = StepMessage::new(RunId("r-1".into()), target, Step::Connect, Origin::Rollout);
    StepSender::send(&client, vec![Outgoing::now(step.clone())])
        .await
        .unwrap();
    let m = client.receive(NOW).await.unwrap().unwrap();
    client.abandon(&m).await.unwrap();
    let dead = server.fake().dead_letters("steps");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, step.message_id());

    // Grouped by reason, nothing changed, nothing left locked.
    let out = replay_dlq(&server, &["--dry-run", "-o", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(groups["MaxDeliveryCountExceeded"]["count"], 1, "{groups}");
    let unlocked = client.receive_dead_letter(NOW).await.unwrap();
    client
        .abandon(&unlocked.expect("still there, unlocked"))
        .await
        .unwrap();

    // The queue is full: the send fails, the dead letter stays and is unlocked at once.
    client.send(&msg("filler", None, "{}")).await.unwrap();
    let out = replay_dlq(&server, &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("QuotaExceeded"), "{err}");
    assert_eq!(server.fake().dead_letters("steps").len(), 1);
    let unlocked = client.receive_dead_letter(NOW).await.unwrap();
    client
        .abandon(&unlocked.expect("left unlocked"))
        .await
        .unwrap();
    let filler = client.receive(NOW).await.unwrap().unwrap();
    client.complete(&filler).await.unwrap();

    let out = replay_dlq(&server, &["-o", "json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["replayed"], 1);
    assert!(server.fake().dead_letters("steps").is_empty());
    let resent = client
        .receive(NOW)
        .await
        .unwrap()
        .expect("the replayed step");
    let again = StepMessage::decode(&resent.body).unwrap();
    let fresh = resent.broker.message_id.clone().unwrap();
    assert_ne!(fresh, step.message_id());
    assert_eq!(fresh, again.message_id());
    // The same step, its replay counter bumped (hence the fresh MessageId), origin replay.
    assert_eq!(again, vnet_migrate::pipeline::dead_letters::replayed(&step));
    assert_eq!(resent.dead_letter_reason(), None);
    assert_eq!(resent.broker.delivery_count, Some(1));
}
