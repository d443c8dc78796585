//! Terminal outcomes: every target in scope ends in exactly one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Migrated,
    Skipped(String),
    Blocked(String),
    RolledBack(String),
    /// Needs an operator: the pipeline could not reach a safe end by itself.
    Parked(String),
    Cancelled,
}

impl Outcome {
    /// `migrated`, `skipped`, `blocked`, `rolled-back`, `parked`, `cancelled`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Migrated => "migrated",
            Outcome::Skipped(_) => "skipped",
            Outcome::Blocked(_) => "blocked",
            Outcome::RolledBack(_) => "rolled-back",
            Outcome::Parked(_) => "parked",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Skipped(r)
            | Outcome::Blocked(r)
            | Outcome::RolledBack(r)
            | Outcome::Parked(r) => Some(r),
            Outcome::Migrated | Outcome::Cancelled => None,
        }
    }

    /// Everything but `parked` is an outcome the pipeline reached by itself (exit code 0).
    pub fn is_expected(&self) -> bool {
        !matches!(self, Outcome::Parked(_))
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
            Some((k, r)) => (k, Some(r.to_string())),
            None => (s, None),
        };
        let need = |r: Option<String>| {
            r.filter(|r| !r.is_empty())
                .ok_or_else(|| format!("outcome {s:?} needs a reason"))
        };
        match kind {
            "migrated" if reason.is_none() => Ok(Outcome::Migrated),
            "cancelled" if reason.is_none() => Ok(Outcome::Cancelled),
            "skipped" => Ok(Outcome::Skipped(need(reason)?)),
            "blocked" => Ok(Outcome::Blocked(need(reason)?)),
            "rolled-back" => Ok(Outcome::RolledBack(need(reason)?)),
            "parked" => Ok(Outcome::Parked(need(reason)?)),
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

    #[test]
    fn round_trips() {
        for o in [
            Outcome::Migrated,
            Outcome::Cancelled,
            Outcome::Skipped("no-integration".into()),
            Outcome::Blocked("plan-subnet-limit".into()),
            Outcome::RolledBack("connect-rejected".into()),
            Outcome::Parked("rollback-failed".into()),
        ] {
            assert_eq!(o.to_string().parse::<Outcome>().unwrap(), o);
        }
        assert!("blocked".parse::<Outcome>().is_err());
        assert!("migrated:x".parse::<Outcome>().is_err());
        assert!(!Outcome::Parked("x".into()).is_expected());
    }
}
