//! The fault model: before a request reaches routing, decides whether it is answered by an
//! injected fault, a throttling 429, or a random fault of the configured profile (possibly
//! after the request is applied, or as a connection reset).

use std::time::Duration;

use rand::Rng;

use serde_json::json;

use super::options::{FaultMode, FaultProfile, InjectedFault};
use super::reply::Reply;
use super::state::State;
use super::throttle::{OpClass, Verdict};

/// What the fault and throttling layer decided before the request is processed.
pub(super) enum Pre {
    Answer(Reply),
    Proceed {
        after: Option<Reply>,
        reset: bool,
        how: Apply,
    },
}

/// How a request that proceeds is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Apply {
    /// Applied, answered when done.
    Now,
    /// ARM's gateway timeout: 504 after ~60 s, the write applied a little later
    /// (`FaultMode::GatewayTimeout`).
    LateAfterGatewayTimeout,
    /// Applied, but the LRO it starts ends `Failed` (`FaultMode::OperationFailed`).
    FailOperation,
}

impl Pre {
    fn proceed(how: Apply) -> Self {
        Pre::Proceed {
            after: None,
            reset: false,
            how,
        }
    }
}

/// ARM's gateway timeout as recorded: the `{"error":…}` envelope naming the provider, and
/// `x-ms-failure-cause: service` (recording test_functionapp_create_with_vnet_by_subnet_rid #19).
pub(super) fn gateway_timeout(provider: &str) -> Reply {
    Reply::error(
        504,
        "GatewayTimeout",
        format!("The gateway did not receive a response from '{provider}' within the specified time period."),
    )
    .header("x-ms-failure-cause", "service")
}

/// The error body of an operation that ends `Failed` (arm-vnet reference §8).
pub(super) fn operation_error() -> serde_json::Value {
    json!({"code": "InternalServerError", "message": "An error occurred while applying the change (simulated failed operation)."})
}

/// ARM's `Retry-After` of `secs` whole simulated seconds, as the simulator sends every wait:
/// divided by its speed, with millisecond precision (`State::retry_after`).
fn retry_after_secs(st: &State, secs: u64) -> String {
    State::retry_after(Duration::from_secs(secs).div_f64(st.options.speed()))
}

fn fault_reply(st: &State, status: u16) -> Reply {
    match status {
        429 => Reply::error(
            429,
            "TooManyRequests",
            "The request was throttled (simulated fault).",
        )
        .header("Retry-After", retry_after_secs(st, 1)),
        504 => gateway_timeout("the resource provider"),
        503 => Reply::error(
            503,
            "ServiceUnavailable",
            "The service is temporarily unavailable (simulated fault).",
        )
        .header("Retry-After", retry_after_secs(st, 1)),
        s => Reply::error(
            s,
            "InternalServerError",
            "An internal error occurred (simulated fault).",
        ),
    }
}

fn injected_reply(st: &State, f: &InjectedFault) -> Reply {
    let mut r = match &f.body {
        Some(b) => Reply::new(f.status, b.clone()),
        None => fault_reply(st, f.status),
    };
    for (k, v) in &f.headers {
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        r.headers.push((k.clone(), v.clone()));
    }
    r
}

/// Injected faults first (deterministic), then the buckets, then the random profile.
pub(super) fn decide(
    st: &mut State,
    method: &str,
    path: &str,
    sub: Option<&str>,
    verdict: &Option<Verdict>,
) -> Pre {
    if let Some(i) = st.injected.iter().position(|f| f.matches(method, path)) {
        let f = st.injected[i].clone();
        st.injected[i].times -= 1;
        if st.injected[i].times == 0 {
            st.injected.remove(i);
        }
        st.stats.faults_injected += 1;
        return match f.mode {
            FaultMode::GatewayTimeout => Pre::proceed(Apply::LateAfterGatewayTimeout),
            FaultMode::OperationFailed => Pre::proceed(Apply::FailOperation),
            FaultMode::Answer if f.after_apply => Pre::Proceed {
                after: Some(injected_reply(st, &f)),
                reset: false,
                how: Apply::Now,
            },
            FaultMode::Answer => Pre::Answer(injected_reply(st, &f)),
        };
    }
    if let Some(secs) = verdict.as_ref().and_then(|v| v.retry_after) {
        return Pre::Answer(
            Reply::error(429, "SubscriptionRequestsThrottled", format!("Number of requests for subscription '{}' exceeded the limit. Please try again after '{secs}' seconds.", sub.unwrap_or_default()))
                .header("Retry-After", retry_after_secs(st, secs)),
        );
    }
    let is_write = OpClass::of(method) != OpClass::Read;
    let profile = st.options.faults;
    if profile == FaultProfile::None {
        return Pre::proceed(Apply::Now);
    }
    let sub_key = sub.unwrap_or_default().to_ascii_lowercase();
    if let Some(n) = st.storms.get_mut(&sub_key).filter(|n| **n > 0) {
        *n -= 1;
        st.stats.faults_injected += 1;
        return Pre::Answer(fault_reply(st, 429));
    }
    let r: f64 = st.rng.random();
    let pre = match profile {
        FaultProfile::Flaky if r < 0.02 => {
            Pre::Answer(fault_reply(st, if r < 0.01 { 500 } else { 503 }))
        }
        FaultProfile::Flaky if r < 0.03 => Pre::Answer(fault_reply(st, 429)),
        FaultProfile::Chaos if r < 0.05 => {
            Pre::Answer(fault_reply(st, if r < 0.025 { 500 } else { 503 }))
        }
        FaultProfile::Chaos if r < 0.06 => Pre::Proceed {
            after: None,
            reset: true,
            how: Apply::Now,
        },
        // Half of them a response lost after the write, half ARM's slow 504 with the write
        // applied later (by_subnet_rid #19–21).
        FaultProfile::Chaos if r < 0.065 && is_write => Pre::Proceed {
            after: Some(fault_reply(st, 504)),
            reset: false,
            how: Apply::Now,
        },
        FaultProfile::Chaos if r < 0.07 && is_write => Pre::proceed(Apply::LateAfterGatewayTimeout),
        FaultProfile::Chaos if r < 0.072 => {
            let len = st.rng.random_range(20..60);
            st.storms.insert(sub_key, len);
            Pre::Answer(fault_reply(st, 429))
        }
        // An LRO ending Failed (only matters when the write starts one).
        FaultProfile::Chaos if r < 0.077 && is_write => Pre::proceed(Apply::FailOperation),
        _ => return Pre::proceed(Apply::Now),
    };
    st.stats.faults_injected += 1;
    pre
}
