//! The fault model: before a request reaches routing, decides whether it is answered by an
//! injected fault, a throttling 429, or a random fault of the configured profile (possibly
//! after the request is applied, or as a connection reset).

use rand::Rng;

use super::options::{FaultProfile, InjectedFault};
use super::reply::Reply;
use super::state::State;
use super::throttle::{OpClass, Verdict};

/// What the fault and throttling layer decided before the request is processed.
pub(super) enum Pre {
    Answer(Reply),
    Proceed { after: Option<Reply>, reset: bool },
}

fn fault_reply(status: u16) -> Reply {
    match status {
        429 => Reply::error(429, "TooManyRequests", "The request was throttled (simulated fault).").header("Retry-After", "1"),
        504 => Reply::error(504, "GatewayTimeout", "The gateway did not receive a response from the resource provider within the specified time period."),
        503 => Reply::error(503, "ServiceUnavailable", "The service is temporarily unavailable (simulated fault).").header("Retry-After", "1"),
        s => Reply::error(s, "InternalServerError", "An internal error occurred (simulated fault)."),
    }
}

fn injected_reply(f: &InjectedFault) -> Reply {
    let mut r = match &f.body {
        Some(b) => Reply::new(f.status, b.clone()),
        None => fault_reply(f.status),
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
        let r = injected_reply(&f);
        return if f.after_apply {
            Pre::Proceed {
                after: Some(r),
                reset: false,
            }
        } else {
            Pre::Answer(r)
        };
    }
    if let Some(secs) = verdict.as_ref().and_then(|v| v.retry_after) {
        return Pre::Answer(
            Reply::error(429, "SubscriptionRequestsThrottled", format!("Number of requests for subscription '{}' exceeded the limit. Please try again after '{secs}' seconds.", sub.unwrap_or_default()))
                .header("Retry-After", secs.to_string()),
        );
    }
    let is_write = OpClass::of(method) != OpClass::Read;
    let profile = st.options.faults;
    if profile == FaultProfile::None {
        return Pre::Proceed {
            after: None,
            reset: false,
        };
    }
    let sub_key = sub.unwrap_or_default().to_ascii_lowercase();
    if let Some(n) = st.storms.get_mut(&sub_key).filter(|n| **n > 0) {
        *n -= 1;
        st.stats.faults_injected += 1;
        return Pre::Answer(fault_reply(429));
    }
    let r: f64 = st.rng.random();
    let pre = match profile {
        FaultProfile::Flaky if r < 0.02 => {
            Pre::Answer(fault_reply(if r < 0.01 { 500 } else { 503 }))
        }
        FaultProfile::Flaky if r < 0.03 => Pre::Answer(fault_reply(429)),
        FaultProfile::Chaos if r < 0.05 => {
            Pre::Answer(fault_reply(if r < 0.025 { 500 } else { 503 }))
        }
        FaultProfile::Chaos if r < 0.06 => Pre::Proceed {
            after: None,
            reset: true,
        },
        FaultProfile::Chaos if r < 0.07 && is_write => Pre::Proceed {
            after: Some(fault_reply(504)),
            reset: false,
        },
        FaultProfile::Chaos if r < 0.072 => {
            let len = st.rng.random_range(20..60);
            st.storms.insert(sub_key, len);
            Pre::Answer(fault_reply(429))
        }
        _ => {
            return Pre::Proceed {
                after: None,
                reset: false,
            }
        }
    };
    st.stats.faults_injected += 1;
    pre
}
