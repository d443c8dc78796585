//! Why a target ended where it did: the reasons behind `skipped:`, `blocked:`, `rolled-back:`
//! and `parked:` outcomes. Each type's `Display`/`FromStr` is the wire text after the colon
//! (DESIGN §3), so the ledger, the report and the step message keep their string format.

use std::fmt;
use std::str::FromStr;

use super::message::Step;

/// An unknown reason text (the ledger or a message holds something this version cannot read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} reason {text:?}")]
pub struct UnknownReason {
    pub(crate) kind: &'static str,
    pub(crate) text: String,
}

/// Declares a reason enum whose every variant has one fixed kebab-case text.
macro_rules! token_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub(crate) fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownReason;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
                    .ok_or_else(|| UnknownReason { kind: $kind, text: s.to_string() })
            }
        }
    };
}

token_enum! {
    /// Why a target needs no migration (`skipped:<reason>`).
    SkipReason, "skip" {
        NoIntegration => "no-integration",
        AlreadyRegional => "already-regional",
        NotFound => "not-found",
        /// A dry run ends every target it would migrate here, with the plan recorded.
        DryRun => "dry-run",
    }
}

token_enum! {
    /// Why a target cannot be migrated (`blocked:<reason>`); a blocked target is never written.
    BlockedReason, "blocked" {
        CrossRegionNoPeering => "cross-region-no-peering",
        PlanSubnetLimit => "plan-subnet-limit",
        NoAddressSpace => "no-address-space",
        ClassicVnet => "classic-vnet",
        UnsupportedSku => "unsupported-sku",
        ScaleUnitUnsupported => "scale-unit-unsupported",
        SubnetInUse => "subnet-in-use",
        /// `run --plan`: ARM no longer shows what the plan was computed from: plan again.
        Drifted => "drifted",
    }
}

token_enum! {
    /// What `verify` found wrong after the cut-over.
    HealthFailure, "health" {
        NotConnected => "not-connected",
        GatewayStillPresent => "gateway-still-present",
        KvReferencesUnresolved => "kv-references-unresolved",
        ProbeFailed => "probe-failed",
    }
}

token_enum! {
    /// Which part of re-adding the gateway-based connection (rollback, arm-vnet reference
    /// §2.2) was refused, so the operator knows what to do by hand.
    HandshakeFailure, "handshake" {
        /// The VNet has no VPN gateway any more: create a route-based point-to-site gateway
        /// (or reconnect the app elsewhere) before rolling back again.
        GatewayMissing => "gateway-missing",
        /// The gateway refused the app's certificate as a point-to-site root certificate:
        /// add it by hand (the ledger keeps the saved `certBlob`).
        RootCertificateRefused => "root-certificate-refused",
        /// The gateway would not generate a VPN client package, or the app refused it: check
        /// the gateway's point-to-site configuration.
        PackageRefused => "vpn-package-refused",
        /// Every part was accepted but the app still reports `resyncRequired`: "Sync network"
        /// the plan by hand.
        NotConnected => "gateway-not-connected",
    }
}

/// What made a step fail: an ARM error code, an HTTP status without a code, or a condition
/// of our own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// ARM's error code as it sent it (`BadRequest`, `AnotherOperationInProgress` …).
    Arm(String),
    /// An HTTP status that came without an error code (`http-500`).
    Http(u16),
    /// No answer from ARM (transport errors, timeouts), or no credential for it.
    ArmUnreachable,
    /// The ARM client refused the write itself: its target lies outside the configured write
    /// scope (the subscriptions of the run). Nothing was sent.
    OutOfScope,
    LedgerUnavailable,
    UnexpectedState,
    Health(HealthFailure),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Arm(code) => f.write_str(code),
            Cause::Http(status) => write!(f, "http-{status}"),
            Cause::ArmUnreachable => f.write_str("arm-unreachable"),
            Cause::OutOfScope => f.write_str("out-of-scope"),
            Cause::LedgerUnavailable => f.write_str("ledger-unavailable"),
            Cause::UnexpectedState => f.write_str("unexpected-state"),
            Cause::Health(h) => h.fmt(f),
        }
    }
}

impl FromStr for Cause {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownReason {
            kind: "failure",
            text: s.to_string(),
        };
        Ok(match s {
            "" => return Err(unknown()),
            "arm-unreachable" => Cause::ArmUnreachable,
            "out-of-scope" => Cause::OutOfScope,
            "ledger-unavailable" => Cause::LedgerUnavailable,
            "unexpected-state" => Cause::UnexpectedState,
            _ => {
                if let Ok(h) = s.parse() {
                    Cause::Health(h)
                } else if let Some(status) = s.strip_prefix("http-") {
                    Cause::Http(status.parse().map_err(|_| unknown())?)
                } else {
                    // ARM codes are single PascalCase words; anything else was not written by us.
                    if s.contains([':', ' ']) {
                        return Err(unknown());
                    }
                    Cause::Arm(s.to_string())
                }
            }
        })
    }
}

/// Why a target was put back on its gateway-based connection (`rolled-back:<reason>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RollbackReason {
    /// A step ran out of attempts after the gateway connection may have been removed.
    StepFailed { step: Step, cause: Cause },
    /// ARM refused the regional connection (`connect-rejected:<code>`).
    ConnectRejected(String),
    /// `verify` found the new integration unhealthy.
    Unhealthy(HealthFailure),
    /// An operator asked for it.
    Requested,
}

/// Why a target needs an operator (`parked:<reason>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParkReason {
    /// A step ran out of attempts (`<step>-failed:<cause>`; `rollback-failed:…` when even
    /// putting the gateway back failed).
    StepFailed { step: Step, cause: Cause },
    /// Subnet writes kept colliding with other writers of the VNet.
    SubnetConflict,
    /// Rollback could not re-add the gateway-based connection.
    Handshake(HandshakeFailure),
}

fn fmt_step_failed(f: &mut fmt::Formatter<'_>, step: Step, cause: &Cause) -> fmt::Result {
    write!(f, "{step}-failed:{cause}")
}

/// `<step>-failed:<cause>`.
fn parse_step_failed(s: &str) -> Option<(Step, Cause)> {
    let (head, cause) = s.split_once(':')?;
    let step = head.strip_suffix("-failed")?.parse().ok()?;
    Some((step, cause.parse().ok()?))
}

impl fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackReason::StepFailed { step, cause } => fmt_step_failed(f, *step, cause),
            RollbackReason::ConnectRejected(code) => write!(f, "connect-rejected:{code}"),
            RollbackReason::Unhealthy(h) => h.fmt(f),
            RollbackReason::Requested => f.write_str("requested"),
        }
    }
}

impl FromStr for RollbackReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "requested" {
            return Ok(RollbackReason::Requested);
        }
        if let Ok(h) = s.parse() {
            return Ok(RollbackReason::Unhealthy(h));
        }
        if let Some(code) = s
            .strip_prefix("connect-rejected:")
            .filter(|c| !c.is_empty())
        {
            return Ok(RollbackReason::ConnectRejected(code.to_string()));
        }
        parse_step_failed(s)
            .map(|(step, cause)| RollbackReason::StepFailed { step, cause })
            .ok_or_else(|| UnknownReason {
                kind: "rolled-back",
                text: s.to_string(),
            })
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::StepFailed { step, cause } => fmt_step_failed(f, *step, cause),
            ParkReason::SubnetConflict => f.write_str("subnet-conflict"),
            ParkReason::Handshake(h) => h.fmt(f),
        }
    }
}

impl FromStr for ParkReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "subnet-conflict" {
            return Ok(ParkReason::SubnetConflict);
        }
        if let Ok(h) = s.parse() {
            return Ok(ParkReason::Handshake(h));
        }
        parse_step_failed(s)
            .map(|(step, cause)| ParkReason::StepFailed { step, cause })
            .ok_or_else(|| UnknownReason {
                kind: "parked",
                text: s.to_string(),
            })
    }
}

/// Serde as the wire text, for types whose `Display`/`FromStr` are the wire format.
macro_rules! serde_as_text {
    ($($t:ty),+) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

serde_as_text!(SkipReason, BlockedReason, RollbackReason, ParkReason);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: fmt::Display + FromStr + PartialEq + fmt::Debug>(r: T)
    where
        T::Err: fmt::Debug,
    {
        assert_eq!(r.to_string().parse::<T>().unwrap(), r, "{r}");
    }

    #[test]
    fn every_reason_keeps_its_wire_text() {
        for r in SkipReason::ALL {
            round_trip(*r);
        }
        for r in BlockedReason::ALL {
            round_trip(*r);
        }
        assert_eq!(
            RollbackReason::StepFailed {
                step: Step::Connect,
                cause: Cause::Http(500)
            }
            .to_string(),
            "connect-failed:http-500"
        );
        assert_eq!(
            ParkReason::StepFailed {
                step: Step::Verify,
                cause: Cause::Health(HealthFailure::NotConnected)
            }
            .to_string(),
            "verify-failed:not-connected"
        );
        for step in Step::ALL {
            for cause in [
                Cause::Arm("AnotherOperationInProgress".into()),
                Cause::Http(503),
                Cause::ArmUnreachable,
                Cause::OutOfScope,
                Cause::LedgerUnavailable,
                Cause::UnexpectedState,
                Cause::Health(HealthFailure::ProbeFailed),
            ] {
                round_trip(RollbackReason::StepFailed {
                    step,
                    cause: cause.clone(),
                });
                round_trip(ParkReason::StepFailed { step, cause });
            }
        }
        round_trip(RollbackReason::ConnectRejected("BadRequest".into()));
        round_trip(RollbackReason::Requested);
        for h in HealthFailure::ALL {
            round_trip(RollbackReason::Unhealthy(*h));
        }
        round_trip(ParkReason::SubnetConflict);
        for h in HandshakeFailure::ALL {
            round_trip(ParkReason::Handshake(*h));
        }
        assert_eq!(
            ParkReason::Handshake(HandshakeFailure::GatewayMissing).to_string(),
            "gateway-missing"
        );
        let refused = ParkReason::StepFailed {
            step: Step::PrepareSubnet,
            cause: Cause::OutOfScope,
        };
        assert_eq!(refused.to_string(), "prepare-subnet-failed:out-of-scope");
        assert_eq!(
            "prepare-subnet-failed:out-of-scope".parse::<ParkReason>(),
            Ok(refused)
        );
    }

    #[test]
    fn unknown_texts_are_refused() {
        assert!("nope".parse::<SkipReason>().is_err());
        assert!("connect-failed:".parse::<ParkReason>().is_err());
        assert!("teleport-failed:http-500".parse::<ParkReason>().is_err());
        assert!("connect-rejected:".parse::<RollbackReason>().is_err());
        assert!("a b".parse::<Cause>().is_err());
    }
}
