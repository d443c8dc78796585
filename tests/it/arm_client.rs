//! The ARM client against small scripted ARM servers on 127.0.0.1 (one per test).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use vnet_migrate::azure::arm::{
    ArmClient, ArmConfig, ArmError, Deleted, PacerConfig, CLIENT_REQUEST_ID_PREFIX,
};
use vnet_migrate::azure::pacer::OpKind;
use vnet_migrate::azure::ResourceId;

use crate::support::{arm_client, bind_loopback, free_port, loopback_arm_config, spawn_router};

const TOKEN: &str = "tok-SECRET-7f3a9c";
const SUB: &str = "/subscriptions/sub1";
const RG: &str = "/subscriptions/sub1/resourceGroups/rg1";
const SITE: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Web/sites/app1";
const SUBNET: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/v1/subnets/s1";

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: String,
}

/// A script answers one request given the requests before it and the server's base URL.
type Script = dyn Fn(&Seen, &[Seen], &str) -> Response + Send + Sync;

struct Server {
    base: String,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
    fn count(&self, method: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }
}

async fn serve(
    script: impl Fn(&Seen, &[Seen], &str) -> Response + Send + Sync + 'static,
) -> Server {
    let (listener, base) = bind_loopback().await;
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let (log2, base2) = (log.clone(), base.clone());
    let app = Router::new().fallback(move |req: Request| {
        let (log, script, base) = (log2.clone(), script.clone(), base2.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            };
            if seen.path.ends_with("/slow") {
                tokio::time::sleep(ms(300)).await;
            }
            let mut log = log.lock().unwrap();
            let resp = script(&seen, &log, &base);
            log.push(seen);
            resp
        }
    });
    spawn_router(listener, app);
    Server { base, log }
}

fn reply(status: u16, headers: &[(&str, String)], body: Option<Value>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(base: &str) -> ArmConfig {
    let mut c = loopback_arm_config(base, vec![ResourceId::parse(SUB).unwrap()]);
    c.retry_after_cap = ms(10);
    c.request_timeout = Duration::from_secs(5);
    c.lro_timeout = Duration::from_secs(5);
    c.max_retries = 3;
    c
}

fn client(server: &Server) -> ArmClient {
    client_with(config(&server.base))
}

fn client_with(config: ArmConfig) -> ArmClient {
    arm_client(config, TOKEN)
}

fn site(subnet: Option<&str>) -> Value {
    json!({"id": SITE, "name": "app1", "type": "Microsoft.Web/sites", "location": "West Europe",
           "properties": {"state": "Running", "virtualNetworkSubnetId": subnet}})
}

fn assert_no_token(err: &ArmError) {
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(TOKEN), "token leaked: {shown}");
}

#[tokio::test]
async fn list_follows_next_links_and_accepts_bare_arrays() {
    let server = serve(|req, _, base| {
        if req.path.ends_with("/virtualNetworkConnections") {
            return reply(200, &[], Some(json!([{"name": "v1", "properties": {"isSwift": null}}])));
        }
        if req.query.contains("skiptoken=2") {
            reply(200, &[], Some(json!({"value": [{"name": "b"}]})))
        } else {
            let next = format!("{base}/subscriptions/sub1/providers/Microsoft.Web/sites?api-version=2024-11-01&$skiptoken=2");
            reply(200, &[], Some(json!({"value": [{"name": "a"}], "nextLink": next})))
        }
    })
    .await;
    let arm = client(&server);
    let sites: Vec<Value> = arm
        .list("/subscriptions/sub1/providers/Microsoft.Web/sites")
        .await
        .unwrap();
    let names: Vec<&str> = sites.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    let conns: Vec<Value> = arm
        .list(&format!("{SITE}/virtualNetworkConnections"))
        .await
        .unwrap();
    assert_eq!(conns.len(), 1);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].query, "api-version=2024-11-01");
    assert!(reqs
        .iter()
        .all(|r| r.headers["authorization"] == format!("Bearer {TOKEN}")));
    assert!(reqs
        .iter()
        .all(|r| !r.headers.contains_key("x-ms-client-request-id")));
    assert_eq!(arm.metrics().reads, 3);
}

/// A site PATCH as an LRO: 202 with `Azure-AsyncOperation`, the status `InProgress` once,
/// then `Succeeded`; any other read answers the site in the subnet.
fn patch_lro(req: &Seen, prior: &[Seen], base: &str) -> Response {
    match req.method.as_str() {
        "PATCH" => reply(
            202,
            &[("Azure-AsyncOperation", format!("{base}/subscriptions/sub1/providers/Microsoft.Web/sites/app1/operationResults/op1?api-version=2024-11-01"))],
            None,
        ),
        _ if req.path.contains("operationResults") => {
            let polls = prior.iter().filter(|r| r.path.contains("operationResults")).count();
            let status = if polls == 0 { "InProgress" } else { "Succeeded" };
            reply(200, &[("Retry-After", "0".into())], Some(json!({"status": status})))
        }
        _ => reply(200, &[], Some(site(Some(SUBNET)))),
    }
}

#[tokio::test]
async fn patch_202_azure_async_operation_then_get() {
    let server = serve(patch_lro).await;
    let arm = client(&server);
    let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET}});
    let result: Value = arm.patch(SITE, &body).await.unwrap();
    assert_eq!(result["properties"]["virtualNetworkSubnetId"], SUBNET);
    let reqs = server.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["PATCH", "GET", "GET", "GET"]);
    let patch = &reqs[0];
    let rid = patch.headers["x-ms-client-request-id"].to_str().unwrap();
    let rid = rid.strip_prefix(CLIENT_REQUEST_ID_PREFIX).unwrap();
    assert_eq!(uuid::Uuid::parse_str(rid).unwrap().get_version_num(), 4);
    assert_eq!(serde_json::from_str::<Value>(&patch.body).unwrap(), body);
    assert_eq!(arm.metrics().lro_polls, 2);
    assert_eq!(arm.metrics().writes, 1);
}

/// `patch_done` ends with the operation: no read of the resource after an LRO, the resource
/// when the answer itself carried it.
#[tokio::test]
async fn patch_done_ends_with_the_operation_and_reads_nothing_after_it() {
    let server = serve(|req, prior, base| match req.method.as_str() {
        // The second PATCH is answered at once, with the site.
        "PATCH" if !prior.is_empty() => reply(200, &[], Some(site(Some(SUBNET)))),
        _ => patch_lro(req, prior, base),
    })
    .await;
    let arm = client(&server);
    let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET}});
    let after_lro: Option<Value> = arm.patch_done(SITE, &body).await.unwrap();
    assert_eq!(after_lro, None);
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths[1..].iter().all(|p| p.contains("operationResults")),
        "{paths:?}"
    );
    let answered: Option<Value> = arm.patch_done(SITE, &body).await.unwrap();
    assert_eq!(
        answered.unwrap()["properties"]["virtualNetworkSubnetId"],
        SUBNET
    );
    assert_eq!(server.requests().len(), 4);
}
#[tokio::test]
async fn put_201_network_style_lro_returns_final_resource() {
    let server = serve(|req, prior, base| {
        if req.method == "PUT" {
            let op = format!("{base}/subscriptions/sub1/providers/Microsoft.Network/locations/westeurope/operations/o1?api-version=2024-07-01");
            return reply(201, &[("Azure-AsyncOperation", op)], Some(json!({"name": "s1", "properties": {"provisioningState": "Updating"}})));
        }
        if req.path.contains("/operations/") {
            let done = prior.iter().any(|r| r.path.contains("/operations/"));
            return reply(200, &[], Some(json!({"status": if done { "Succeeded" } else { "InProgress" }})));
        }
        reply(200, &[], Some(json!({"name": "s1", "properties": {"provisioningState": "Succeeded", "addressPrefix": "10.0.4.0/26"}})))
    })
    .await;
    let arm = client(&server);
    let out: Value = arm
        .put(
            SUBNET,
            &json!({"properties": {"addressPrefix": "10.0.4.0/26"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["properties"]["provisioningState"], "Succeeded");
    let reqs = server.requests();
    assert_eq!(reqs[0].query, "api-version=2024-07-01");
    assert_eq!(reqs.last().unwrap().path, SUBNET);
    assert_eq!(reqs.len(), 4);
}

#[tokio::test]
async fn location_polling_until_done() {
    let server = serve(|req, prior, base| {
        let loc = format!("{base}/subscriptions/sub1/providers/Microsoft.Network/locations/westeurope/operationResults/l1?api-version=2024-07-01");
        match (req.method.as_str(), req.path.contains("operationResults")) {
            ("PUT", _) | ("DELETE", _) => reply(202, &[("Location", loc), ("Retry-After", "1".into())], None),
            ("GET", true) => {
                let polls = prior.iter().filter(|r| r.path.contains("operationResults")).count();
                match (polls % 2, prior.iter().any(|r| r.method == "DELETE")) {
                    (0, _) => reply(202, &[("Location", loc)], None),
                    (_, false) => reply(200, &[], Some(json!({"name": "s1", "properties": {"addressPrefix": "10.0.0.0/28"}}))),
                    (_, true) => reply(204, &[], None),
                }
            }
            _ => reply(500, &[], None),
        }
    })
    .await;
    let arm = client(&server);
    let out: Value = arm
        .put(
            SUBNET,
            &json!({"properties": {"addressPrefix": "10.0.0.0/28"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["properties"]["addressPrefix"], "10.0.0.0/28");
    assert_eq!(arm.delete(SUBNET).await.unwrap(), Deleted::Removed);
    assert_eq!(server.count("GET"), 4);
    assert_eq!(arm.metrics().lro_polls, 4);
}

/// The simulator forgets a finished operation after ten simulated minutes, and ARM documents
/// no retention: a poll that comes too late is answered 404. That is no refusal of the write.
#[tokio::test]
async fn a_status_url_gone_before_its_poll_is_a_failed_operation_to_send_again() {
    let server = serve(|req, _, base| match req.method.as_str() {
        "PATCH" => reply(
            202,
            &[("Azure-AsyncOperation", format!("{base}/subscriptions/sub1/providers/Microsoft.Web/sites/app1/operationResults/op9?api-version=2024-11-01"))],
            None,
        ),
        _ => reply(404, &[], Some(json!({"error": {"code": "OperationNotFound", "message": "no operation op9"}}))),
    })
    .await;
    let arm = client(&server);
    let err = arm
        .patch::<Value>(
            SITE,
            &json!({"properties": {"virtualNetworkSubnetId": SUBNET}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ArmError::LroFailed { code, .. } if code == "OperationNotFound"),
        "{err:?}"
    );
    assert_eq!(server.count("GET"), 1);
}

#[tokio::test]
async fn lro_failure_carries_code_and_message() {
    let server = serve(|req, _, base| {
        if req.method == "PUT" {
            let op = format!("{base}/subscriptions/sub1/providers/Microsoft.Network/locations/we/operations/o2?api-version=2024-07-01");
            return reply(201, &[("Azure-AsyncOperation", op)], Some(json!({})));
        }
        reply(200, &[], Some(json!({"status": "Failed", "error": {"code": "SubnetDelegationsCannotChangeWhenSubnetUsedByResource", "message": "in use by nic1"}})))
    })
    .await;
    let arm = client(&server);
    let err = arm
        .put::<Value>(SUBNET, &json!({"properties": {}}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ArmError::LroFailed { code, message, .. }
        if code == "SubnetDelegationsCannotChangeWhenSubnetUsedByResource" && message == "in use by nic1"));
    assert_eq!(
        err.code(),
        Some("SubnetDelegationsCannotChangeWhenSubnetUsedByResource")
    );
    assert!(!err.is_transient());
    assert_no_token(&err);
}

#[tokio::test]
async fn throttled_429_with_retry_after_then_ok() {
    let server = serve(|_, prior, _| {
        if prior.is_empty() {
            reply(
                429,
                &[("Retry-After", "1".into())],
                Some(json!({"error": {"code": "TooManyRequests", "message": "slow down"}})),
            )
        } else {
            reply(200, &[], Some(site(None)))
        }
    })
    .await;
    let arm = client(&server);
    let s: Value = arm.get(SITE).await.unwrap();
    assert_eq!(s["name"], "app1");
    let m = arm.metrics();
    assert_eq!((m.requests, m.throttled_429, m.retries), (2, 1, 1));
}

#[tokio::test]
async fn web_lock_429_pascal_case_then_ok() {
    let server = serve(|req, prior, _| {
        let puts = prior.iter().filter(|r| r.method == "PUT").count();
        if req.method == "PUT" && puts == 0 {
            return reply(429, &[], Some(json!({"Code": "429", "Message": "Cannot acquire exclusive lock to create, update or delete this site. Retry the request later.",
                "Details": [{"ErrorEntity": {"ExtendedCode": "59206"}}]})));
        }
        reply(200, &[], Some(site(Some(SUBNET))))
    })
    .await;
    let arm = client(&server);
    let out: Value = arm.put(SITE, &site(Some(SUBNET))).await.unwrap();
    assert_eq!(out["properties"]["virtualNetworkSubnetId"], SUBNET);
    assert_eq!(server.count("PUT"), 2);
    // Both attempts are distinct writes, each with its own request id.
    let ids: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            r.headers["x-ms-client-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn gateway_timeout_on_applied_put_rereads_instead_of_rewriting() {
    let server = serve(|req, _, _| match req.method.as_str() {
        "PUT" => reply(504, &[("x-ms-failure-cause", "service".into())], Some(json!({"error": {"code": "GatewayTimeout", "message": "The gateway did not receive a response"}}))),
        // The write landed: ARM returns the id with other casing and extra fields.
        _ => reply(200, &[], Some(json!({"id": SITE, "name": "app1", "properties": {"state": "Running",
            "virtualNetworkSubnetId": SUBNET.to_uppercase(), "outboundVnetRouting": {"applicationTraffic": true}}}))),
    })
    .await;
    let arm = client(&server);
    let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET, "outboundVnetRouting": {"applicationTraffic": true}}});
    let out: Value = arm.put(SITE, &body).await.unwrap();
    assert_eq!(out["properties"]["state"], "Running");
    assert_eq!(server.count("PUT"), 1);
    assert_eq!(server.count("GET"), 1);
}

#[tokio::test]
async fn gateway_timeout_on_unapplied_put_retries_the_write() {
    let server = serve(|req, prior, _| match req.method.as_str() {
        "PUT" if !prior.iter().any(|r| r.method == "PUT") => reply(504, &[], None),
        "PUT" => reply(200, &[], Some(site(Some(SUBNET)))),
        _ => reply(200, &[], Some(site(None))),
    })
    .await;
    let arm = client(&server);
    let _: Value = arm
        .put(
            SITE,
            &json!({"properties": {"virtualNetworkSubnetId": SUBNET}}),
        )
        .await
        .unwrap();
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["PUT", "GET", "PUT"]);
}

#[tokio::test]
async fn gateway_timeout_on_delete_then_404_is_done() {
    let server = serve(|req, _, _| match req.method.as_str() {
        "DELETE" => reply(504, &[], None),
        _ => reply(
            404,
            &[],
            Some(json!({"error": {"code": "NotFound", "message": "no such connection"}})),
        ),
    })
    .await;
    let arm = client(&server);
    let gone = arm
        .delete(&format!("{SITE}/virtualNetworkConnections/v1"))
        .await
        .unwrap();
    assert_eq!(gone, Deleted::NotFound);
    assert_eq!(server.count("DELETE"), 1);
}

#[tokio::test]
async fn persistent_500_gives_status_error_after_max_retries() {
    let server = serve(|_, _, _| {
        reply(
            500,
            &[],
            Some(json!({"error": {"code": "InternalServerError", "message": "boom"}})),
        )
    })
    .await;
    let arm = client(&server);
    let err = arm.get_json(SITE).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.code(), Some("InternalServerError"));
    assert!(err.is_transient());
    assert_eq!(server.requests().len(), 4); // max_retries (3) + 1
    assert_eq!(arm.metrics().retries, 3);
    assert_no_token(&err);
}

#[tokio::test]
async fn scope_guard_refuses_writes_without_sending() {
    let server = serve(|_, _, _| reply(200, &[], Some(json!({})))).await;
    let mut cfg = config(&server.base);
    cfg.write_scope = vec![ResourceId::parse(RG).unwrap()];
    let arm = client_with(cfg);
    let outside = "/subscriptions/sub1/resourceGroups/RG10/providers/Microsoft.Web/sites/other";
    let body = json!({"properties": {}});
    let errs = vec![
        arm.put::<Value>(outside, &body).await.unwrap_err(),
        arm.patch::<Value>(outside, &body).await.unwrap_err(),
        arm.delete(outside).await.unwrap_err(),
        arm.post_json(&format!("{outside}/config/appsettings/list"), &body).await.unwrap_err(),
        arm.post_json("/subscriptions/sub2/providers/Microsoft.Web/locations/westeurope/purgeUnusedVirtualNetworkIntegration", &body).await.unwrap_err(),
    ];
    for e in &errs {
        assert!(matches!(e, ArmError::OutOfScope { .. }), "{e}");
        assert_no_token(e);
    }
    let none = client_with(ArmConfig {
        write_scope: vec![],
        ..config(&server.base)
    });
    assert!(matches!(
        none.delete(SITE).await,
        Err(ArmError::OutOfScope { .. })
    ));
    assert_eq!(server.requests().len(), 0);
    assert_eq!(arm.metrics().requests, 0);
    // Reads are never guarded; writes inside the scope (any id casing) go through.
    let _: Value = arm.get(outside).await.unwrap();
    let inside = "/subscriptions/SUB1/resourcegroups/RG1/providers/Microsoft.Web/sites/app1/config/appsettings/list";
    arm.post_json(inside, &body).await.unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn delete_404_is_not_found_and_get_opt_none() {
    let server = serve(|_, _, _| {
        reply(
            404,
            &[],
            Some(json!({"error": {"code": "ResourceNotFound", "message": "gone"}})),
        )
    })
    .await;
    let arm = client(&server);
    assert_eq!(arm.delete(SITE).await.unwrap(), Deleted::NotFound);
    assert!(arm.get_opt::<Value>(SITE).await.unwrap().is_none());
    let err = arm.get_json(SITE).await.unwrap_err();
    assert!(err.is_not_found() && !err.is_transient());
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn remaining_writes_header_lowers_the_pacer() {
    let server = serve(|_, _, _| {
        reply(
            200,
            &[
                ("x-ms-ratelimit-remaining-subscription-writes", "3".into()),
                ("x-ms-ratelimit-remaining-subscription-reads", "100".into()),
            ],
            Some(site(Some(SUBNET))),
        )
    })
    .await;
    let mut cfg = config(&server.base);
    // Near-zero refill so the observed value stays put during the test.
    cfg.pacer = PacerConfig {
        writes_per_sec: 0.001,
        reads_per_sec: 0.001,
        ..PacerConfig::default()
    };
    let arm = client_with(cfg);
    assert!(arm.pacer().available("sub1", OpKind::Write) > 199.0);
    let _: Value = arm
        .patch(
            SITE,
            &json!({"properties": {"virtualNetworkSubnetId": SUBNET}}),
        )
        .await
        .unwrap();
    let writes = arm.pacer().available("SUB1", OpKind::Write);
    assert!((3.0..3.1).contains(&writes), "{writes}");
    let _: Value = arm.get(SITE).await.unwrap();
    // The PATCH's answer already lowered reads to 100; the GET took one and its "100" cannot
    // raise the bucket again.
    let reads = arm.pacer().available("sub1", OpKind::Read);
    assert!((99.0..99.1).contains(&reads), "{reads}");
    // Other subscriptions keep their own buckets.
    assert!(arm.pacer().available("sub2", OpKind::Write) > 199.0);
}

#[tokio::test]
async fn token_never_appears_in_errors() {
    let server = serve(|req, _, _| match req.method.as_str() {
        "GET" => reply(
            400,
            &[],
            Some(json!({"error": {"code": "BadRequest", "message": "bad"}})),
        ),
        _ => reply(200, &[], Some(json!("not an object"))),
    })
    .await;
    let arm = client(&server);
    let mut errs = vec![
        arm.get_json(SITE).await.unwrap_err(),
        arm.put::<vnet_migrate::azure::models::Site>(SITE, &json!({}))
            .await
            .unwrap_err(),
        arm.put::<Value>(
            "/subscriptions/other/resourceGroups/r/providers/Microsoft.Web/sites/x",
            &json!({}),
        )
        .await
        .unwrap_err(),
        arm.get_json("/subscriptions/sub1/providers/Microsoft.Unknown/x/y")
            .await
            .unwrap_err(),
    ];
    let mut short = config(&server.base);
    short.request_timeout = ms(100);
    short.max_retries = 0;
    errs.push(
        client_with(short)
            .get_json(&format!("{SITE}/slow"))
            .await
            .unwrap_err(),
    );
    // A closed port: transport error.
    let mut dead = config(&format!("http://127.0.0.1:{}", free_port()));
    dead.max_retries = 1;
    errs.push(client_with(dead).get_json(SITE).await.unwrap_err());
    let kinds: Vec<&str> = errs
        .iter()
        .map(|e| match e {
            ArmError::Status { .. } => "status",
            ArmError::Decode { .. } => "decode",
            ArmError::OutOfScope { .. } => "scope",
            ArmError::Config { .. } => "config",
            ArmError::Timeout { .. } => "timeout",
            ArmError::Transport { .. } => "transport",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "status",
            "decode",
            "scope",
            "config",
            "timeout",
            "transport"
        ]
    );
    for e in &errs {
        assert_no_token(e);
    }
    assert!(!format!("{arm:?}").contains(TOKEN));
}

#[tokio::test]
async fn lro_that_never_finishes_times_out() {
    let server = serve(|req, _, base| {
        if req.method == "PATCH" {
            let op = format!(
                "{base}/subscriptions/sub1/providers/Microsoft.Web/sites/app1/operationResults/op9"
            );
            return reply(202, &[("Azure-AsyncOperation", op)], None);
        }
        reply(200, &[], Some(json!({"status": "InProgress"})))
    })
    .await;
    let mut cfg = config(&server.base);
    cfg.lro_timeout = ms(40);
    let arm = client_with(cfg);
    let err = arm
        .patch::<Value>(SITE, &json!({"properties": {}}))
        .await
        .unwrap_err();
    assert!(matches!(err, ArmError::LroTimeout { .. }), "{err}");
    assert!(err.is_transient());
    // The poll URL had no api-version; the client added the provider's.
    let polls: Vec<Seen> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(!polls.is_empty());
    assert!(polls.iter().all(|r| r.query == "api-version=2024-11-01"));
}

#[tokio::test]
async fn last_ambiguous_failure_is_still_checked_by_a_reread() {
    let server = serve(|req, _, _| match req.method.as_str() {
        "DELETE" | "POST" => reply(504, &[], None),
        _ => reply(404, &[], None),
    })
    .await;
    let mut cfg = config(&server.base);
    cfg.max_retries = 0;
    let arm = client_with(cfg);
    let conn = format!("{SITE}/virtualNetworkConnections/v1");
    assert_eq!(arm.delete(&conn).await.unwrap(), Deleted::NotFound);
    // Actions cannot be re-read: a 504 is reported as it is.
    let err = arm
        .post_json(&format!("{SITE}/restart"), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(504));
    let reqs = server.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["DELETE", "GET", "POST"]);
    for r in reqs.iter().filter(|r| r.method != "GET") {
        let rid = r.headers["x-ms-client-request-id"].to_str().unwrap();
        let rid = rid.strip_prefix(CLIENT_REQUEST_ID_PREFIX).unwrap();
        assert!(uuid::Uuid::parse_str(rid).is_ok());
    }
}

/// A lock's 429 (another operation runs on the VNet) says when that VNet is free, not when the
/// subscription's bucket refills: the pacer keeps its tokens. A throttling 429 empties it.
#[tokio::test]
async fn only_a_throttling_429_pauses_the_pacer() {
    let server = serve(|req, prior, _| {
        let same = prior
            .iter()
            .filter(|r| r.method == req.method && r.path == req.path)
            .count();
        match (req.method.as_str(), same) {
            ("PUT", 0) => reply(
                429,
                &[("Retry-After", "0.005".into())],
                Some(json!({"error": {"code": "RetryableErrorDueToAnotherOperation", "message": "Operation could not be completed because another operation on the VNet is in progress."}})),
            ),
            ("GET", 0) => reply(
                429,
                &[("Retry-After", "1".into())],
                Some(json!({"error": {"code": "SubscriptionRequestsThrottled", "message": "slow down"}})),
            ),
            ("PUT", _) => reply(200, &[], Some(json!({"id": SUBNET, "name": "s1", "properties": {"provisioningState": "Succeeded"}}))),
            _ => reply(200, &[], Some(site(None))),
        }
    })
    .await;
    let arm = client(&server);
    let _: Value = arm
        .put(
            SUBNET,
            &json!({"properties": {"addressPrefix": "10.0.0.0/26"}}),
        )
        .await
        .unwrap();
    let writes = arm.pacer().available("sub1", OpKind::Write);
    assert!(writes > 197.0, "{writes}");
    let _: Value = arm.get(SITE).await.unwrap();
    let reads = arm.pacer().available("sub1", OpKind::Read);
    assert!(reads < 5.0, "{reads}");
    assert_eq!(arm.metrics().throttled_429, 2);
}

/// Against a simulator compressed 50 times, an LRO whose 202 says `Retry-After: 0.15` (7.5
/// simulated seconds: a site joining a subnet) is polled once, when it is done, not on a
/// shorter cadence that finds it running and then waits the default interval.
#[tokio::test]
async fn a_compressed_client_polls_an_lro_when_its_retry_after_ends() {
    let patched: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
    let at = patched.clone();
    let server = serve(move |req, _, base| match req.method.as_str() {
        "PATCH" => {
            *at.lock().unwrap() = Some(std::time::Instant::now());
            reply(
                202,
                &[
                    ("Azure-AsyncOperation", format!("{base}/subscriptions/sub1/providers/Microsoft.Web/sites/app1/operationResults/op1?api-version=2024-11-01")),
                    ("Retry-After", "0.150".into()),
                ],
                None,
            )
        }
        _ if req.path.contains("operationResults") => {
            let done = at.lock().unwrap().unwrap().elapsed() >= ms(150);
            let status = if done { "Succeeded" } else { "InProgress" };
            reply(200, &[], Some(json!({"status": status})))
        }
        _ => reply(200, &[], Some(site(Some(SUBNET)))),
    })
    .await;
    let arm = client_with(
        ArmConfig::new(server.base.clone(), vec![ResourceId::parse(SUB).unwrap()])
            .time_compressed(50.0),
    );
    let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET}});
    let _: Value = arm.patch(SITE, &body).await.unwrap();
    assert_eq!(arm.metrics().lro_polls, 1);
    assert!(patched.lock().unwrap().unwrap().elapsed() >= ms(150));
}
