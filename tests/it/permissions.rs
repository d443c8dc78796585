//! Least privilege, held to what the code does: every request a whole run makes (migration of
//! an app and a slot, and a rollback through the 3-step handshake) is named as ARM names its
//! RBAC action, and each of those actions is in the table the custom role is checked against.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use vnet_migrate::azure::permissions::{action_for, ARM_ACTIONS};
use vnet_migrate::policy::Policy;

use crate::support::*;

const WE: &str = "westeurope";

#[derive(Clone)]
struct Recorder {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

/// Forwards a request to the simulator unchanged and notes its method and path.
async fn forward(State(r): State<Recorder>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    r.seen
        .lock()
        .unwrap()
        .push((parts.method.to_string(), parts.uri.path().to_string()));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // The Host header goes through as the client sent it: the simulator builds its LRO
    // polling URLs from it, so the polls come back through here too.
    let headers: HeaderMap = parts.headers.clone();
    let answer = r
        .http
        .request(parts.method, format!("{}{path_and_query}", r.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap();
    (status, headers, bytes).into_response()
}

#[tokio::test]
async fn every_request_of_a_run_and_a_rollback_is_an_action_of_the_role() {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let plan = b.plan("apps", "plan1", WE, "P1v2", 1);
    let migrated = b.site("apps", "app1", &plan);
    b.gateway_connection(&migrated, &v);
    let slot = b.slot(&migrated, "staging");
    b.gateway_connection(&slot, &v);
    b.key_vault_reference(&migrated, "Secret1", "Resolved");
    // The simulator refuses this app's connect: the run rolls it back through the handshake.
    let rolled_back = b.site("apps", "app2", &plan);
    b.gateway_connection(&rolled_back, &v);
    b.tag(&rolled_back, "vnet-migrate-sim", "reject-connect");

    let mut rig = Rig::start(b.build()).await;
    let recorder = Recorder {
        upstream: rig.sim_url(),
        http: reqwest::Client::new(),
        seen: Arc::default(),
    };
    let (listener, proxy_url) = bind_loopback().await;
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(recorder.clone());
    let proxy = spawn_router(listener, app);
    rig.arm = arm_for(&proxy_url, &rig.subscriptions());

    let report = rig.run(&Policy::default(), "s.db").await;
    proxy.abort();
    assert_eq!(outcome(&report, &migrated), "migrated");
    assert_eq!(outcome(&report, &slot), "migrated");
    assert!(
        outcome(&report, &rolled_back).starts_with("rolled-back"),
        "{}",
        outcome(&report, &rolled_back)
    );

    let seen = recorder.seen.lock().unwrap().clone();
    let mut used = BTreeSet::new();
    for (method, path) in &seen {
        let action = action_for(method, path)
            .unwrap_or_else(|| panic!("{method} {path} names no ARM action"));
        assert!(
            ARM_ACTIONS.contains(&action.as_str()),
            "{method} {path} needs {action}, which the role does not grant"
        );
        used.insert(action);
    }
    // The run went through the writes the role exists for, so the check above covered them:
    // the subnet, the cut-over of an app and a slot, and the rollback handshake (the refused
    // connect left no regional integration to delete).
    for needed in [
        "microsoft.web/sites/virtualnetworkconnections/delete",
        "microsoft.web/sites/slots/virtualnetworkconnections/delete",
        "microsoft.web/sites/write",
        "microsoft.web/sites/slots/write",
        "microsoft.network/virtualnetworks/subnets/write",
        "microsoft.web/sites/virtualnetworkconnections/write",
        "microsoft.web/sites/virtualnetworkconnections/gateways/write",
        "microsoft.network/virtualnetworkgateways/generatevpnclientpackage/action",
    ] {
        assert!(
            used.contains(needed),
            "the run never needed {needed}: {used:?}"
        );
    }
}
