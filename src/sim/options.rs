//! Simulator knobs, statistics and injected faults: the types callers configure the
//! simulator with and read back from it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Random fault mix applied to ARM requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultProfile {
    #[default]
    None,
    /// ≈ 2 % transient 500/503 and 1 % 429.
    Flaky,
    /// ≈ 5 % 5xx, 1 % connection resets, 1 % lost responses after a write, 429 storms.
    Chaos,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown fault profile {0:?} (expected none, flaky or chaos)")]
pub struct UnknownFaultProfile(pub String);

impl FromStr for FaultProfile {
    type Err = UnknownFaultProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "flaky" => Ok(Self::Flaky),
            "chaos" => Ok(Self::Chaos),
            _ => Err(UnknownFaultProfile(s.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Divides latencies, multiplies rate limits.
    pub speed: f64,
    /// `false` answers at once and completes every LRO on its first poll.
    pub latency: bool,
    pub throttle: bool,
    pub faults: FaultProfile,
    pub seed: u64,
    /// How long (simulated time, divided by `speed`) an `AppServiceLink` service association
    /// link outlives the last app leaving its subnet: they "often linger for minutes to days"
    /// (arm-vnet reference §13; MicrosoftDocs/azure-docs#116634, #48902;
    /// hashicorp/terraform-provider-azurerm#30011). Zero removes it at once.
    pub sal_linger: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            latency: true,
            throttle: true,
            faults: FaultProfile::None,
            seed: 0,
            sal_linger: Duration::from_secs(180),
        }
    }
}

impl SimOptions {
    /// Latency off, throttling off, no faults, no lingering links: for tests.
    pub fn instant() -> Self {
        Self {
            latency: false,
            throttle: false,
            sal_linger: Duration::ZERO,
            ..Self::default()
        }
    }

    /// `sal_linger` in real time.
    pub(crate) fn sal_linger_real(&self) -> Duration {
        self.sal_linger.div_f64(self.speed())
    }

    /// `speed` clamped to something usable (0 or negative would divide by zero).
    pub(crate) fn speed(&self) -> f64 {
        if self.speed.is_finite() && self.speed > 0.0 {
            self.speed
        } else {
            1.0
        }
    }

    /// `secs` simulated seconds as wall-clock time: divided by the speed, zero with the
    /// latency model off.
    pub(crate) fn scaled(&self, secs: f64) -> Duration {
        if self.latency {
            Duration::from_secs_f64(secs.max(0.0) / self.speed())
        } else {
            Duration::ZERO
        }
    }
}

/// What a request makes ARM do, as far as its duration goes: the latency model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    Read,
    /// Any other write: answered within a fraction of a second.
    Write,
    /// Subnet or VNet write: a Network LRO done within ~4 s, its first poll already
    /// `Succeeded` (arm-vnet reference §13: 5 of 5 recordings, e.g. vnetE2E #19→20).
    NetworkWrite,
    /// Site write setting or clearing `virtualNetworkSubnetId` (also the swift PUT):
    /// synchronous 200 after ~7–10 s (arm-vnet reference §13: vnetE2E #22, #34,
    /// vnetDelegation #22, vnetSameName #27, #42).
    SubnetJoin,
    /// `DELETE …/networkConfig/virtualNetwork`: 51–53 s in 4 of 5 recordings (arm-vnet
    /// reference §13: vnetE2E #38, vnetDelegation #25, vnetSameName #29, by_subnet_rid #26).
    SwiftDelete,
    /// ARM's gateway giving up on the resource provider: 504 after ~59 s (recording
    /// test_functionapp_create_with_vnet_by_subnet_rid #19).
    GatewayTimeout,
    /// How much later the write behind such a 504 becomes visible: the retry 3 s after it
    /// still hit the site lock (by_subnet_rid #20), so it was still being applied.
    LateApply,
}

impl Work {
    /// Simulated seconds, drawn uniformly from this range.
    pub(crate) fn seconds(self) -> (f64, f64) {
        match self {
            Work::Read => (0.03, 0.12),
            Work::Write => (0.15, 0.6),
            Work::NetworkWrite => (1.0, 4.0),
            Work::SubnetJoin => (7.0, 10.0),
            Work::SwiftDelete => (50.0, 53.0),
            Work::GatewayTimeout => (59.0, 61.0),
            Work::LateApply => (3.0, 8.0),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStats {
    pub requests: u64,
    /// GET, HEAD and OPTIONS that took a token of ARM's read bucket.
    #[serde(default)]
    pub reads: u64,
    /// PUT, PATCH and POST that took a token of ARM's write bucket.
    pub writes: u64,
    /// DELETE that took a token of ARM's delete bucket.
    #[serde(default)]
    pub deletes: u64,
    pub throttled429: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub requests: u64,
    pub(crate) reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub throttled429: u64,
    pub faults_injected: u64,
    /// Writes refused because another operation held the site or the VNet (`contention`).
    #[serde(default)]
    pub contended: u64,
    pub by_subscription: BTreeMap<String, SubscriptionStats>,
    /// Lowercased VNet (or VPN gateway) id → simulated seconds the operations ARM accepted on
    /// it held its lock, each at the lower end of the latency model (`Work::seconds`): they
    /// run one at a time, so the largest is a floor under the run.
    #[serde(default)]
    pub vnet_lock_seconds: BTreeMap<String, f64>,
    /// The same operations for as long as each held the lock in this run (the durations the
    /// latency model drew); a write applied after ARM's 504 counts the lower end, since the
    /// run need not wait for it. The holds on one VNet do not overlap and all fall within the
    /// run, so the largest sum is a floor under this run's makespan, tighter than
    /// `vnet_lock_seconds`.
    #[serde(default)]
    pub vnet_held_seconds: BTreeMap<String, f64>,
    /// When each VNet's first hold began and its last ended, in simulated seconds since the
    /// simulator started: with `vnet_held_seconds`, how long the VNet sat idle between its
    /// operations (what a schedule adds to its chain).
    #[serde(default)]
    pub vnet_span_seconds: BTreeMap<String, [f64; 2]>,
    /// Lowercased site or slot id → simulated seconds of its last accepted site write that
    /// joined a subnet: the request's transport and the join the latency model drew. What an
    /// app's downtime spans at the least, once its gateway connection is gone.
    #[serde(default)]
    pub join_seconds: BTreeMap<String, f64>,
    /// Lowercased VNet id → the site or slot whose subnet join is, so far, the last operation
    /// that held the VNet (absent when the last was another operation): that target's settle
    /// and check still follow the VNet's chain, so they add to its floor (`rehearsal::bound`).
    #[serde(default)]
    pub vnet_last_join: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn internal_error() -> u16 {
    500
}

/// How an injected fault shows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FaultMode {
    /// Answer `status` (after applying the write when `after_apply`).
    #[default]
    Answer,
    /// ARM's gateway timeout: 504 `GatewayTimeout` with `x-ms-failure-cause: service` after
    /// ~60 s, while the write is still being applied; it becomes visible a little later
    /// (recording test_functionapp_create_with_vnet_by_subnet_rid #19–21; arm-vnet reference §8).
    GatewayTimeout,
    /// The write is accepted, but its long-running operation ends `Failed` with an error body
    /// (arm-vnet reference §8: "failure carries error{code,message}").
    OperationFailed,
}

/// A deterministic fault: the next `times` requests matching `method` and `path_contains`
/// answer `status` (after applying the write first when `after_apply`).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct InjectedFault {
    #[serde(default)]
    pub method: Option<String>,
    /// Matched case-insensitively against the request path.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// The answer in `answer` mode.
    #[serde(default = "internal_error")]
    pub status: u16,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub times: u32,
    /// Apply the write, then answer this: a lost response.
    #[serde(default)]
    pub after_apply: bool,
    #[serde(default)]
    pub mode: FaultMode,
}

impl InjectedFault {
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.to_ascii_lowercase().contains(&p.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_profile_parses() {
        assert_eq!("none".parse::<FaultProfile>().unwrap(), FaultProfile::None);
        assert_eq!(
            "Flaky".parse::<FaultProfile>().unwrap(),
            FaultProfile::Flaky
        );
        assert_eq!(
            "chaos".parse::<FaultProfile>().unwrap(),
            FaultProfile::Chaos
        );
        assert!("wild".parse::<FaultProfile>().is_err());
    }

    #[test]
    fn injected_fault_matching_and_defaults() {
        let f: InjectedFault =
            serde_json::from_str(r#"{"method":"put","pathContains":"/SITES/app","status":504}"#)
                .unwrap();
        assert_eq!(f.times, 1);
        assert!(!f.after_apply);
        assert!(f.matches(
            "PUT",
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/App1"
        ));
        assert!(!f.matches("GET", "/x/sites/app"));
        assert!(!f.matches("PUT", "/x/serverfarms/p"));
    }

    #[test]
    fn latency_model_per_operation_and_its_scaling() {
        // Simulated seconds per kind of work (arm-vnet reference §13 for the timed ones).
        let table = [
            (Work::Read, (0.03, 0.12)),
            (Work::Write, (0.15, 0.6)),
            (Work::NetworkWrite, (1.0, 4.0)),
            (Work::SubnetJoin, (7.0, 10.0)),
            (Work::SwiftDelete, (50.0, 53.0)),
            (Work::GatewayTimeout, (59.0, 61.0)),
            (Work::LateApply, (3.0, 8.0)),
        ];
        let real = SimOptions::default();
        let fast = SimOptions {
            speed: 50.0,
            ..SimOptions::default()
        };
        for (work, (lo, hi)) in table {
            assert_eq!(work.seconds(), (lo, hi), "{work:?}");
            assert_eq!(real.scaled(hi), Duration::from_secs_f64(hi), "{work:?}");
            assert_eq!(
                fast.scaled(hi),
                Duration::from_secs_f64(hi / 50.0),
                "{work:?}"
            );
        }
        // A 50 s swift delete is one second at speed 50, not clamped to whole seconds.
        assert_eq!(fast.scaled(50.0), Duration::from_secs(1));
        assert_eq!(fast.scaled(4.0), Duration::from_millis(80));
        assert_eq!(SimOptions::instant().scaled(60.0), Duration::ZERO);
    }

    #[test]
    fn injected_fault_modes() {
        let f: InjectedFault =
            serde_json::from_str(r#"{"method":"PATCH","mode":"gatewayTimeout"}"#).unwrap();
        assert_eq!(f.mode, FaultMode::GatewayTimeout);
        let f: InjectedFault =
            serde_json::from_str(r#"{"method":"PUT","mode":"operationFailed"}"#).unwrap();
        assert_eq!(f.mode, FaultMode::OperationFailed);
        let f: InjectedFault = serde_json::from_str(r#"{"status":429}"#).unwrap();
        assert_eq!(f.mode, FaultMode::Answer);
    }

    #[test]
    fn stats_serialise_camel_case() {
        let v = serde_json::to_value(SimStats::default()).unwrap();
        assert!(v.get("throttled429").is_some());
        assert!(v.get("faultsInjected").is_some());
        assert!(v.get("bySubscription").is_some());
    }
}
