//! Every recorded host payload in tests/fixtures/functions-host and every event in
//! tests/fixtures/eventgrid decodes, or is rejected with a clear reason where it is not a
//! trigger we serve. Each file is named explicitly so a new fixture fails
//! `every_fixture_is_covered` until it is asserted on.

use base64::Engine as _;
use vnet_migrate::functions::eventgrid::{classify, EventAction, EventGridEvent, EventSchema};
use vnet_migrate::functions::{
    decode_event_grid, decode_http, decode_service_bus, decode_timer, InvocationResponse,
};

use crate::support::fixture;

/// Folders under tests/fixtures.
const HOST: &str = "functions-host";
const EVENTS: &str = "eventgrid";

fn host(name: &str) -> Vec<u8> {
    std::fs::read(fixture(HOST).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn events(name: &str) -> Vec<EventGridEvent> {
    let bytes = std::fs::read(fixture(EVENTS).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    EventGridEvent::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const HOST_FILES: &[&str] = &[
    "blob-trigger-binary.request.ballerina-capture.json",
    "derived-eventgrid-trigger.request.json",
    "derived-servicebus-output.response.json",
    "derived-servicebus-session-trigger-binary.request.json",
    "derived-servicebus-session-trigger.request.json",
    "docs-http-order.request.json",
    "docs-http-order.response.json",
    "docs-queue-trigger.request.json",
    "docs-response-payload.json",
    "eventgrid-trigger-cloudevents.request.azfunc-go-fixture.json",
    "eventgrid-trigger-eventgridschema.request.azfunc-go-fixture.json",
    "host-sample-customhandlerretry.response.json",
    "host-test-invocation-result.response.json",
    "queue-trigger-string.request.ballerina-capture.json",
    "queue-trigger-with-cosmos-input.request.ballerina-capture.json",
    "queue-trigger.request.azfunc-go-fixture.json",
    "servicebus-trigger.request.azfunc-go-fixture.json",
    "timer-trigger.request.azfunc-go-fixture.json",
    "timer-trigger.request.ballerina-capture.json",
];

const EVENT_FILES: &[&str] = &[
    "arm-resource-action-success.cloudevents.json",
    "arm-resource-action-success.eventgrid.json",
    "arm-resource-delete-success.cloudevents.json",
    "arm-resource-delete-success.eventgrid.json",
    "arm-resource-write-success.cloudevents.json",
    "arm-resource-write-success.eventgrid.json",
    "arn-resource-created-or-updated.cloudevents.json",
    "arn-resource-created-or-updated.eventgrid.json",
    "eventgrid-subscription-validation.eventgrid.json",
    "web-app-updated.cloudevents.json",
    "web-app-updated.eventgrid.json",
    "web-slot-swap-completed.eventgrid.json",
    "web-slot-swap-started.cloudevents.json",
    "web-slot-swap-started.eventgrid.json",
];

#[test]
fn every_fixture_is_covered() {
    for (dir, known) in [(HOST, HOST_FILES), (EVENTS, EVENT_FILES)] {
        let mut found: Vec<String> = std::fs::read_dir(fixture(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        found.sort();
        assert_eq!(found, known.to_vec(), "fixtures in {dir} changed");
    }
}

#[test]
fn service_bus_session_trigger_binary() {
    let d = decode_service_bus(
        &host("derived-servicebus-session-trigger-binary.request.json"),
        "msg",
    )
    .unwrap();
    assert_eq!(d.body, br#"{"orderId":"o-123","step":2}"#);
    assert_eq!(d.message_id.as_deref(), Some("msg-0001"));
    assert_eq!(d.session_id.as_deref(), Some("order-o-123"));
    assert_eq!(d.delivery_count, Some(1));
    assert_eq!(d.enqueued_time_utc.as_deref(), Some("2024-05-01T12:30:00Z"));
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    assert_eq!(d.correlation_id.as_deref(), Some("corr-7"));
}

#[test]
fn service_bus_session_trigger_string_mode_is_double_encoded() {
    let d = decode_service_bus(
        &host("derived-servicebus-session-trigger.request.json"),
        "msg",
    )
    .unwrap();
    assert_eq!(d.body, br#"{"orderId":"o-123","step":2}"#);
    assert_eq!(d.session_id.as_deref(), Some("order-o-123"));
    assert_eq!(d.correlation_id.as_deref(), Some("corr-7"));
}

#[test]
fn service_bus_trigger_library_fixture_single_encoded() {
    let d = decode_service_bus(
        &host("servicebus-trigger.request.azfunc-go-fixture.json"),
        "queue",
    )
    .unwrap();
    assert_eq!(d.body, br#"{"message":"hello","number":2}"#);
    assert_eq!(
        d.message_id.as_deref(),
        Some("4e773554-f6b7-4ea2-b07d-4c5fd5aba741")
    );
    assert_eq!(d.session_id, None);
    assert_eq!(d.delivery_count, Some(1));
    assert_eq!(d.enqueued_time_utc.as_deref(), Some("2023-10-12T20:13:49Z"));
    let e = decode_service_bus(
        &host("servicebus-trigger.request.azfunc-go-fixture.json"),
        "msg",
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "Data.msg is missing");
}

#[test]
fn binary_body_round_trips_through_a_host_envelope() {
    let body: Vec<u8> = (0u8..=255).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
    let req = serde_json::json!({"Data": {"msg": b64}, "Metadata": {"MessageId": "\"m\""}});
    let d = decode_service_bus(req.to_string().as_bytes(), "msg").unwrap();
    assert_eq!(d.body, body);
    assert_eq!(d.message_id.as_deref(), Some("m"));
}

#[test]
fn storage_queue_and_blob_triggers_are_not_service_bus() {
    // Storage-queue captures: string-mode bodies decode (the envelope is the same) but they
    // carry no Service Bus metadata; we do not serve these triggers.
    let d = decode_service_bus(
        &host("queue-trigger-string.request.ballerina-capture.json"),
        "inMsg",
    )
    .unwrap();
    assert_eq!(d.body, b"aaaaa");
    assert_eq!((d.message_id, d.delivery_count), (None, None));
    let d = decode_service_bus(
        &host("queue-trigger-with-cosmos-input.request.ballerina-capture.json"),
        "inMsg",
    )
    .unwrap();
    assert_eq!(d.body, b"qqeeewwww");
    let d = decode_service_bus(
        &host("queue-trigger.request.azfunc-go-fixture.json"),
        "queue",
    )
    .unwrap();
    assert_eq!(d.body, br#"{"message":"hello","number":2}"#);
    // The docs' idealised sample: an unquoted, not-quite-JSON body passes through as text
    // (the step-message decoder is what rejects it).
    let d = decode_service_bus(&host("docs-queue-trigger.request.json"), "myQueueItem").unwrap();
    assert_eq!(d.body, br#"{ message: "Message sent" }"#);
    let e = decode_service_bus(
        br#"{"Data":{"myQueueItem":"Message sent"},"Metadata":{}}"#,
        "myQueueItem",
    )
    .unwrap_err();
    assert!(e.to_string().contains("body is not base64"), "{e}");
    // A blob trigger's base64 content decodes as binary.
    let d = decode_service_bus(
        &host("blob-trigger-binary.request.ballerina-capture.json"),
        "blobIn",
    )
    .unwrap();
    assert_eq!(d.body, b"hello from byte\n");
    // But none of them is an Event Grid, timer or HTTP invocation.
    let e = decode_timer(
        &host("queue-trigger-string.request.ballerina-capture.json"),
        "inMsg",
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "Data.inMsg is not a TimerInfo object");
}

#[test]
fn event_grid_trigger_invocations() {
    let evs = decode_event_grid(
        &host("eventgrid-trigger-eventgridschema.request.azfunc-go-fixture.json"),
        "event",
    )
    .unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].schema, EventSchema::EventGrid);
    assert_eq!(evs[0].event_type, "created");
    assert_eq!(evs[0].topic.as_deref(), Some("topic"));
    assert_eq!(evs[0].data["name"], "test");

    let evs = decode_event_grid(
        &host("eventgrid-trigger-cloudevents.request.azfunc-go-fixture.json"),
        "event",
    )
    .unwrap();
    assert_eq!(evs[0].schema, EventSchema::CloudEvents);
    assert_eq!(evs[0].event_type, "created");
    assert_eq!(evs[0].topic.as_deref(), Some("topic"));
    assert_eq!(
        evs[0].event_time.as_deref(),
        Some("2023-10-12T20:13:49.640002Z")
    );
    assert!(matches!(classify(&evs[0], None), EventAction::Ignore(w) if w.contains("created")));

    let evs = decode_event_grid(
        &host("derived-eventgrid-trigger.request.json"),
        "eventGridEvent",
    )
    .unwrap();
    assert_eq!(evs[0].event_type, "Microsoft.Web.AppUpdated");
    match classify(&evs[0], None) {
        EventAction::Migrate(id) => assert_eq!(
            id.as_str(),
            "/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Web/sites/<site-name>"
        ),
        other => panic!("{other:?}"),
    }
    let e =
        decode_event_grid(&host("derived-eventgrid-trigger.request.json"), "event").unwrap_err();
    assert_eq!(e.to_string(), "Data.event is missing");
}

#[test]
fn timer_trigger_invocations() {
    let t = decode_timer(
        &host("timer-trigger.request.azfunc-go-fixture.json"),
        "timer",
    )
    .unwrap();
    assert!(!t.is_past_due);
    assert_eq!(t.adjust_for_dst, Some(true));
    assert_eq!(t.next.as_deref(), Some("2023-10-12T20:13:49.640002Z"));
    let t = decode_timer(
        &host("timer-trigger.request.ballerina-capture.json"),
        "inMsg",
    )
    .unwrap();
    assert_eq!((t.last, t.next, t.last_updated), (None, None, None));
}

#[test]
fn http_trigger_invocation() {
    let r = decode_http(&host("docs-http-order.request.json"), "req").unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.url, "http://localhost:7071/api/order");
    assert!(r.query.is_empty() && r.params.is_empty());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["id"], 1005);
    let e = decode_http(
        &host("timer-trigger.request.azfunc-go-fixture.json"),
        "timer",
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "Data.timer.Method is missing");
}

#[test]
fn response_fixtures_parse_as_invocation_responses() {
    let r: InvocationResponse =
        serde_json::from_slice(&host("docs-http-order.response.json")).unwrap();
    assert_eq!(r.outputs["res"]["body"], "Order enqueued");
    assert!(r.logs.is_empty(), "Logs: null becomes empty");
    let r: InvocationResponse =
        serde_json::from_slice(&host("docs-response-payload.json")).unwrap();
    assert_eq!(r.logs, ["Log message 1", "Log message 2"]);
    assert_eq!(r.return_value, "{\"hello\":\"world\"}");
    let r: InvocationResponse =
        serde_json::from_slice(&host("host-test-invocation-result.response.json")).unwrap();
    assert_eq!(r.outputs.len(), 2);
    let r: InvocationResponse =
        serde_json::from_slice(&host("host-sample-customhandlerretry.response.json")).unwrap();
    assert!(r.outputs["res"]["body"].as_str().unwrap().contains("Retry"));
    let r: InvocationResponse =
        serde_json::from_slice(&host("derived-servicebus-output.response.json")).unwrap();
    assert_eq!(r.outputs["outMsg"].as_array().unwrap().len(), 2);
    assert_eq!(r.logs.len(), 1);
}

#[test]
fn arm_events_decode_in_both_schemas_and_are_not_sites() {
    for name in [
        "arm-resource-write-success.eventgrid.json",
        "arm-resource-write-success.cloudevents.json",
    ] {
        let evs = events(name);
        assert_eq!(evs.len(), 1, "{name}");
        assert_eq!(
            evs[0].event_type,
            "Microsoft.Resources.ResourceWriteSuccess"
        );
        // The documented sample writes a storage account.
        match classify(&evs[0], None) {
            EventAction::Ignore(why) => {
                assert!(
                    why.contains("Microsoft.Storage/storageAccounts"),
                    "{name}: {why}"
                )
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    for name in [
        "arm-resource-action-success.eventgrid.json",
        "arm-resource-action-success.cloudevents.json",
        "arm-resource-delete-success.eventgrid.json",
        "arm-resource-delete-success.cloudevents.json",
        "arn-resource-created-or-updated.eventgrid.json",
        "arn-resource-created-or-updated.cloudevents.json",
        "web-slot-swap-completed.eventgrid.json",
        "web-slot-swap-started.eventgrid.json",
        "web-slot-swap-started.cloudevents.json",
    ] {
        let evs = events(name);
        assert_eq!(evs.len(), 1, "{name}");
        assert!(
            matches!(classify(&evs[0], None), EventAction::Ignore(ref w) if w.contains("not one we act on")),
            "{name}"
        );
    }
    let cloud = &events("arm-resource-write-success.cloudevents.json")[0];
    assert_eq!(cloud.schema, EventSchema::CloudEvents);
    assert_eq!(
        cloud.topic.as_deref(),
        Some("/subscriptions/{subscription-id}/resourceGroups/{resource-group}")
    );
}

/// Synthetic (reference §C5): the documented ResourceWriteSuccess retargeted at a site, written
/// by the ServicePrincipal of the action sample, with its principal id undashed.
#[test]
fn synthetic_site_write_by_our_identity_is_ignored() {
    let bytes =
        std::fs::read(fixture(EVENTS).join("arm-resource-write-success.eventgrid.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let site = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Web/sites/app1";
    let ev = &mut v[0];
    ev["subject"] = site.into();
    ev["data"]["resourceUri"] = site.into();
    ev["data"]["authorization"]["evidence"] = serde_json::json!({"principalId": "0A1B2C3D4E5F60718293A4B5C6D7E8F9", "principalType": "ServicePrincipal"});
    let ev = &EventGridEvent::from_json(&v).unwrap()[0];
    assert!(matches!(classify(ev, None), EventAction::Migrate(ref id) if id.as_str() == site));
    assert!(matches!(
        classify(ev, Some("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")),
        EventAction::Ignore(ref w) if w.contains("our own identity")
    ));
}

#[test]
fn app_service_events_and_validation() {
    for name in [
        "web-app-updated.eventgrid.json",
        "web-app-updated.cloudevents.json",
    ] {
        let evs = events(name);
        match classify(&evs[0], None) {
            EventAction::Migrate(id) => {
                assert!(id.as_str().ends_with("/sites/<site-name>"), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let evs = events("eventgrid-subscription-validation.eventgrid.json");
    assert_eq!(
        classify(&evs[0], None),
        EventAction::Validate("512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into())
    );
}
