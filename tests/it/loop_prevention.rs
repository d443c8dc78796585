//! Loop prevention end to end: the `x-ms-client-request-id` the ARM client puts on a write is
//! the one `on-deploy` recognises when ARM echoes it back in an Event Grid event, so our own
//! writes never enqueue another migration. Against a small ARM stand-in on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};
use vnet_migrate::azure::arm::{ArmClient, CLIENT_REQUEST_ID_PREFIX};
use vnet_migrate::azure::ResourceId;
use vnet_migrate::functions::eventgrid::{classify, EventAction, EventGridEvent};

use crate::support::{arm_client, bind_loopback, loopback_arm_config, spawn_router};

const SUB: &str = "/subscriptions/sub1";
const SITE: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Web/sites/app1";
const SUBNET: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/v1/subnets/s1";

/// (method, path, x-ms-client-request-id) of every write received.
type Writes = Arc<Mutex<Vec<(String, String, String)>>>;

/// Answers every request like ARM answers a synchronous write or a read: 200 with the site.
async fn arm_stand_in() -> (String, Writes) {
    let (listener, base) = bind_loopback().await;
    let writes: Writes = Arc::default();
    let seen = writes.clone();
    let app = Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        async move {
            let method = req.method().as_str().to_string();
            if method == "PUT" || method == "PATCH" {
                let id = req
                    .headers()
                    .get("x-ms-client-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let path = req.uri().path().to_string();
                seen.lock().unwrap().push((method, path, id));
            }
            let site = json!({"id": SITE, "name": "app1", "type": "Microsoft.Web/sites",
                "properties": {"virtualNetworkSubnetId": SUBNET, "provisioningState": "Succeeded"}});
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                site.to_string(),
            )
                .into_response()
        }
    });
    spawn_router(listener, app);
    (base, writes)
}

fn client(base: &str) -> ArmClient {
    let mut config = loopback_arm_config(base, vec![ResourceId::parse(SUB).unwrap()]);
    config.request_timeout = Duration::from_secs(5);
    config.max_retries = 0;
    arm_client(config, "tok-loop")
}

/// An ARM `ResourceWriteSuccess` for `resource`, ARM's echo of the request id included.
fn arm_write_event(resource: &str, client_request_id: &str) -> EventGridEvent {
    EventGridEvent::from_value(&json!({
        "id": "e1",
        "subject": resource,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-11-23T21:00:00Z",
        "topic": "/subscriptions/sub1/resourceGroups/rg1",
        "data": {
            "authorization": {"scope": resource, "action": "Microsoft.Web/sites/write",
                "evidence": {"role": "Contributor", "principalId": "someone", "principalType": "ServicePrincipal"}},
            "claims": {"appid": "client-1"},
            "correlationId": "c1",
            "httpRequest": {"clientRequestId": client_request_id, "clientIpAddress": "127.0.0.1", "method": "PATCH"},
            "resourceUri": resource,
            "operationName": "Microsoft.Web/sites/write",
            "status": "Succeeded"
        },
        "dataVersion": "2", "metadataVersion": "1"
    }))
    .unwrap()
}

/// App Service's `AppUpdated` for the site, which carries the id in `data.clientRequestId`.
fn app_updated_event(client_request_id: &str) -> EventGridEvent {
    EventGridEvent::from_value(&json!({
        "id": "e2",
        "subject": "/Microsoft.Web/sites/app1",
        "eventType": "Microsoft.Web.AppUpdated",
        "eventTime": "2026-11-23T21:00:00Z",
        "topic": SITE,
        "data": {
            "appEventTypeDetail": {"action": "Changed"},
            "name": "app1",
            "clientRequestId": client_request_id,
            "correlationRequestId": "c2",
            "requestId": "r2",
            "verb": "PATCH"
        },
        "dataVersion": "1", "metadataVersion": "1"
    }))
    .unwrap()
}

fn assert_ignored_as_ours(action: EventAction) {
    match action {
        EventAction::Ignore(why) => assert!(
            why.contains("written by vnet-migrate"),
            "ignored, but not as our own write: {why}"
        ),
        other => panic!("our own write was not ignored: {other:?}"),
    }
}

#[tokio::test]
async fn events_of_our_own_writes_are_ignored_and_foreign_ones_are_not() {
    let (base, writes) = arm_stand_in().await;
    let arm = client(&base);
    let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET}});
    let _: Value = arm.patch(SITE, &body).await.unwrap();
    let connection = format!("{SITE}/virtualNetworkConnections/v1");
    let _: Value = arm
        .put(
            &connection,
            &json!({"properties": {"vnetResourceId": SUBNET}}),
        )
        .await
        .unwrap();

    let writes = writes.lock().unwrap().clone();
    let methods: Vec<&str> = writes.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(methods, ["PATCH", "PUT"]);
    for (method, _, id) in &writes {
        assert!(
            id.starts_with(CLIENT_REQUEST_ID_PREFIX),
            "{method} sent x-ms-client-request-id {id:?} without the prefix"
        );
        let uuid = &id[CLIENT_REQUEST_ID_PREFIX.len()..];
        assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id:?}");
    }
    assert_ne!(writes[0].2, writes[1].2, "each write has its own id");

    let site = ResourceId::parse(SITE).unwrap();
    for ((_, path, id), resource) in writes.iter().zip([SITE, connection.as_str()]) {
        assert_eq!(path, resource);
        // ARM's echo, in both places an event can carry it, and whatever its case.
        assert_ignored_as_ours(classify(&arm_write_event(resource, id), None));
        assert_ignored_as_ours(classify(&app_updated_event(id), None));
        assert_ignored_as_ours(classify(
            &arm_write_event(resource, &id.to_ascii_uppercase()),
            None,
        ));
    }

    // Someone else's write to the same site: the bare uuid this client used to send, a
    // portal-style id, and the prefix somewhere other than the start.
    let foreign_uuid = uuid::Uuid::new_v4().to_string();
    let buried = format!("portal-{}", writes[0].2);
    for foreign in [foreign_uuid.as_str(), "portal-1f2e3d4c", buried.as_str()] {
        assert_eq!(
            classify(&arm_write_event(SITE, foreign), None),
            EventAction::Migrate(site.clone()),
            "{foreign}"
        );
        assert_eq!(
            classify(&app_updated_event(foreign), None),
            EventAction::Migrate(site.clone()),
            "{foreign}"
        );
    }
}
