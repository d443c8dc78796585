//! HTTP front of the simulator: turns an axum request into method, path, query and body,
//! then applies authentication, throttling, the fault verdict (`faults`) and latency around
//! one lock-protected dispatch of the ARM request (`routes`); also serves `/_sim/*`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::contention;
use super::faults::{self, decide, Apply, Pre};
use super::options::{InjectedFault, Work};
use super::reply::{Ctx, Reply};
use super::routes::route;
use super::state::State;
use super::throttle::{OpClass, Verdict};

pub(super) type Shared = Arc<Mutex<State>>;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k).to_ascii_lowercase(), percent_decode(v))
        })
        .collect()
}

pub(super) async fn handle(shared: Shared, req: Request) -> Response {
    let method = req.method().as_str().to_ascii_uppercase();
    let path = percent_decode(req.uri().path());
    let query = parse_query(req.uri().query());
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let auth_ok = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer "));
    let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let ctx = Ctx {
        base: format!("http://{host}"),
        api_version: query
            .get("api-version")
            .cloned()
            .unwrap_or_else(|| "2024-11-01".into()),
    };
    if path.starts_with("/_sim/") {
        let reply = introspect(&shared, &method, &path, &bytes);
        return into_response(reply, None, false);
    }
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return into_response(
                    Reply::error(
                        400,
                        "InvalidRequestContent",
                        format!(
                            "The request content was invalid and could not be deserialized: {e}"
                        ),
                    ),
                    None,
                    false,
                )
            }
        }
    };
    if !auth_ok {
        return into_response(
            Reply::error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            ),
            None,
            false,
        );
    }
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let sub = (segs.len() >= 2 && segs[0].eq_ignore_ascii_case("subscriptions"))
        .then(|| segs[1].to_string());
    let class = OpClass::of(&method);
    let (pre, verdict, delay) = {
        let mut st = shared.lock().expect("simulator lock");
        st.stats.requests += 1;
        match class {
            OpClass::Read => st.stats.reads += 1,
            OpClass::Write => st.stats.writes += 1,
            OpClass::Delete => st.stats.deletes += 1,
        }
        let verdict = sub
            .as_ref()
            .map(|s| st.throttle.admit(s, class, Instant::now()));
        if let Some(s) = &sub {
            let e = st
                .stats
                .by_subscription
                .entry(s.to_ascii_lowercase())
                .or_default();
            e.requests += 1;
            // Per class, the requests that took a token (a throttled one took none).
            if verdict.as_ref().is_some_and(|v| v.retry_after.is_none()) {
                match class {
                    OpClass::Read => e.reads += 1,
                    OpClass::Write => e.writes += 1,
                    OpClass::Delete => e.deletes += 1,
                }
            }
        }
        let pre = decide(&mut st, &method, &path, sub.as_deref(), &verdict);
        let delay = st.duration(match class {
            OpClass::Read => Work::Read,
            _ => Work::Write,
        });
        (pre, verdict, delay)
    };
    if !delay.is_zero() {
        crate::timer::sleep(delay).await;
    }
    let mut contended = false;
    let (reply, reset, wait) = match pre {
        Pre::Answer(r) => (r, false, Duration::ZERO),
        Pre::Proceed { after, reset, how } => {
            let mut st = shared.lock().expect("simulator lock");
            let claim = contention::claim(&st, &method, &path, &body);
            if let Some(refused) = contention::refusal(&mut st, &claim) {
                contended = true;
                (refused, false, Duration::ZERO)
            } else if how == Apply::LateAfterGatewayTimeout {
                // ARM's gateway gives up after ~60 s while the provider still works on the
                // write, which holds its locks and shows a little later (by_subnet_rid #19–21).
                let answer_in = st.duration(Work::GatewayTimeout);
                let applied_in = answer_in + st.duration(Work::LateApply);
                contention::hold(&mut st, &claim, Instant::now() + applied_in, false);
                let late = LateWrite {
                    ctx: ctx.clone(),
                    method: method.clone(),
                    path: path.clone(),
                    query: query.clone(),
                    body: body.clone(),
                };
                if applied_in.is_zero() {
                    late.apply(&mut st);
                } else {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        crate::timer::sleep(applied_in).await;
                        late.apply(&mut shared.lock().expect("simulator lock"));
                    });
                }
                (faults::gateway_timeout(provider(&segs)), false, answer_in)
            } else {
                // The request's own duration beyond the transport latency already waited.
                let work = match claim.work {
                    Work::Read | Work::Write => Duration::ZERO,
                    w => st.duration(w),
                };
                st.work = work;
                if how == Apply::FailOperation {
                    st.failing_operation = Some(faults::operation_error());
                }
                let r = route(&mut st, &ctx, &method, &path, &segs, &query, &body);
                st.work = Duration::ZERO;
                st.failing_operation = None;
                let mut wait = Duration::ZERO;
                if r.is_success() {
                    contention::hold(&mut st, &claim, Instant::now() + work, true);
                    if let (Work::SubnetJoin, Some(site)) = (claim.work, &claim.site) {
                        let seconds = (delay + work).as_secs_f64() * st.options.speed();
                        st.stats
                            .join_seconds
                            .insert(site.key().to_string(), seconds);
                    }
                    // An LRO answers at once and runs on; a synchronous write answers when
                    // done (site writes with virtualNetworkSubnetId: 200 after ~7–10 s,
                    // arm-vnet reference §13).
                    let lro = r
                        .headers
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case("azure-asyncoperation"));
                    if !lro {
                        wait = work;
                    }
                }
                match after {
                    Some(a) if r.is_success() => (a, reset, wait),
                    _ => (r, reset, wait),
                }
            }
        }
    };
    if !wait.is_zero() {
        crate::timer::sleep(wait).await;
    }
    // Contention answers are not throttling: they are counted as `contended`.
    if reply.status == 429 && !contended {
        let mut st = shared.lock().expect("simulator lock");
        st.stats.throttled429 += 1;
        if let Some(s) = &sub {
            st.stats
                .by_subscription
                .entry(s.to_ascii_lowercase())
                .or_default()
                .throttled429 += 1;
        }
    }
    into_response(reply, verdict, reset)
}

/// A write whose 504 was sent before it was applied.
struct LateWrite {
    ctx: Ctx,
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: Value,
}

impl LateWrite {
    /// Applies the write now (taking no further time: its locks were held until now).
    fn apply(&self, st: &mut State) {
        let segs: Vec<&str> = self
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        route(
            st,
            &self.ctx,
            &self.method,
            &self.path,
            &segs,
            &self.query,
            &self.body,
        );
    }
}

/// The resource provider a path addresses (`Microsoft.Web`), as ARM's gateway names it.
fn provider<'a>(segs: &[&'a str]) -> &'a str {
    segs.iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))
        .and_then(|i| segs.get(i + 1))
        .copied()
        .unwrap_or("the resource provider")
}

fn into_response(reply: Reply, verdict: Option<Verdict>, reset: bool) -> Response {
    let mut headers = HeaderMap::new();
    let mut put = |k: &str, v: &str| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.insert(n, v);
        }
    };
    if let Some(Verdict {
        remaining: (class, n),
        ..
    }) = &verdict
    {
        let name = match class {
            OpClass::Read => "x-ms-ratelimit-remaining-subscription-reads",
            OpClass::Write => "x-ms-ratelimit-remaining-subscription-writes",
            OpClass::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        };
        put(name, &n.to_string());
    }
    for (k, v) in &reply.headers {
        put(k, v);
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The body as JSON text: serialized here, or already (`Reply::stored`).
    let json = |reply: Reply| match (reply.text, reply.body) {
        (Some(text), _) => Some(Vec::from(text)),
        (None, Some(b)) => Some(serde_json::to_vec(&b).expect("a value serializes")),
        (None, None) => None,
    };
    let body = if reset {
        // Half a body, then an I/O error: hyper aborts the connection mid-stream.
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"id\":\"")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated connection reset",
            )),
        ];
        Body::from_stream(futures::stream::iter(chunks))
    } else {
        match json(reply) {
            Some(json) => {
                put("content-type", "application/json; charset=utf-8");
                Body::from(json)
            }
            None => Body::empty(),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn introspect(shared: &Shared, method: &str, path: &str, bytes: &[u8]) -> Reply {
    let mut st = shared.lock().expect("simulator lock");
    match (method, path.trim_end_matches('/')) {
        ("GET", "/_sim/state") => {
            Reply::ok(json!({"resources": st.store.all().collect::<Vec<_>>()}))
        }
        ("GET", "/_sim/stats") => Reply::ok(serde_json::to_value(&st.stats).unwrap_or_default()),
        ("GET", "/_sim/faults") => {
            Reply::ok(serde_json::to_value(&st.injected).unwrap_or_default())
        }
        ("POST", "/_sim/faults") => match serde_json::from_slice::<InjectedFault>(bytes) {
            Ok(f) => {
                st.injected.push(f.clone());
                Reply::ok(serde_json::to_value(f).unwrap_or_default())
            }
            Err(e) => Reply::error(
                400,
                "InvalidFault",
                format!("body is not an InjectedFault: {e}"),
            ),
        },
        ("GET", p) if p.starts_with("/_sim/apps/") => {
            let host = p["/_sim/apps/".len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            super::web::front_end(&st, host)
        }
        _ => Reply::not_simulated(&format!("{method} {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("api-version=2024-11-01&%24skiptoken=50&$top=2"));
        assert_eq!(q["api-version"], "2024-11-01");
        assert_eq!(q["$skiptoken"], "50");
        assert_eq!(q["$top"], "2");
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
    }
}
