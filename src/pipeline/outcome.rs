//! Terminal outcomes: every target in scope ends in exactly one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reason::{BlockedReason, ParkReason, RollbackReason, SkipReason, UnknownReason};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Migrated,
    Skipped(SkipReason),
    Blocked(BlockedReason),
    RolledBack(RollbackReason),
    /// Needs an operator: the pipeline could not reach a safe end by itself.
    Parked(ParkReason),
    Cancelled,
}

impl Outcome {
    /// `migrated`, `skipped`, `blocked`, `rolled-back`, `parked`, `cancelled`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Migrated => "migrated",
            Outcome::Skipped(_) => "skipped",
            Outcome::Blocked(_) => "blocked",
            Outcome::RolledBack(_) => "rolled-back",
            Outcome::Parked(_) => "parked",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The text after the colon (`no-integration` of `skipped:no-integration`).
    pub(crate) fn reason(&self) -> Option<String> {
        match self {
            Outcome::Skipped(r) => Some(r.to_string()),
            Outcome::Blocked(r) => Some(r.to_string()),
            Outcome::RolledBack(r) => Some(r.to_string()),
            Outcome::Parked(r) => Some(r.to_string()),
            Outcome::Migrated | Outcome::Cancelled => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(r) => write!(f, "{}:{}", self.kind(), r),
            None => f.write_str(self.kind()),
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, reason) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        fn need<T: FromStr<Err = UnknownReason>>(s: &str, r: Option<&str>) -> Result<T, String> {
            r.filter(|r| !r.is_empty())
                .ok_or_else(|| format!("outcome {s:?} needs a reason"))?
                .parse()
                .map_err(|e: UnknownReason| format!("outcome {s:?}: {e}"))
        }
        match kind {
            "migrated" if reason.is_none() => Ok(Outcome::Migrated),
            "cancelled" if reason.is_none() => Ok(Outcome::Cancelled),
            "skipped" => Ok(Outcome::Skipped(need(s, reason)?)),
            "blocked" => Ok(Outcome::Blocked(need(s, reason)?)),
            "rolled-back" => Ok(Outcome::RolledBack(need(s, reason)?)),
            "parked" => Ok(Outcome::Parked(need(s, reason)?)),
            _ => Err(format!("unknown outcome {s:?}")),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reason::Cause;
    use crate::pipeline::Step;

    #[test]
    fn round_trips() {
        for o in [
            Outcome::Migrated,
            Outcome::Cancelled,
            Outcome::Skipped(SkipReason::NoIntegration),
            Outcome::Blocked(BlockedReason::PlanSubnetLimit),
            Outcome::RolledBack(RollbackReason::ConnectRejected("BadRequest".into())),
            Outcome::Parked(ParkReason::StepFailed {
                step: Step::Rollback,
                cause: Cause::Arm("Conflict".into()),
            }),
        ] {
            assert_eq!(o.to_string().parse::<Outcome>().unwrap(), o);
        }
        // Today's wire texts, as the ledger and the report JSON hold them.
        for text in [
            "skipped:dry-run",
            "blocked:cross-region-no-peering",
            "rolled-back:connect-rejected:BadRequest",
            "rolled-back:kv-references-unresolved",
            "rolled-back:verify-failed:http-500",
            "parked:rollback-failed:arm-unreachable",
            "parked:verify-failed:not-connected",
            "parked:subnet-conflict",
        ] {
            assert_eq!(text.parse::<Outcome>().unwrap().to_string(), text);
        }
        assert!("blocked".parse::<Outcome>().is_err());
        assert!("blocked:tuesday".parse::<Outcome>().is_err());
        assert!("migrated:x".parse::<Outcome>().is_err());
    }
}
