//! The step message: the versioned wire format carried by the queue (DESIGN §3.1), and the
//! MessageId / SessionId derivations that make re-sends and replays harmless.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::reason::RollbackReason;
use crate::azure::models::{KeyVaultStatus, OutboundVnetRouting};
use crate::azure::resource_id::{Malformed, ResourceIdError, ResourceKind};
use crate::azure::servicebus::MAX_SESSION_ID;
use crate::azure::ResourceId;

pub(crate) const MESSAGE_VERSION: u32 = 1;

/// One step of a target's migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Discover,
    Plan,
    PrepareSubnet,
    Disconnect,
    Connect,
    Configure,
    Verify,
    Rollback,
}

impl Step {
    pub(crate) const ALL: [Step; 8] = [
        Step::Discover,
        Step::Plan,
        Step::PrepareSubnet,
        Step::Disconnect,
        Step::Connect,
        Step::Configure,
        Step::Verify,
        Step::Rollback,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Discover => "discover",
            Step::Plan => "plan",
            Step::PrepareSubnet => "prepare-subnet",
            Step::Disconnect => "disconnect",
            Step::Connect => "connect",
            Step::Configure => "configure",
            Step::Verify => "verify",
            Step::Rollback => "rollback",
        }
    }

    /// Scheduling priority levels of the embedded queue, highest first: [`URGENT`] (a message
    /// whose app may be off its VNet), then the steps' own levels.
    pub(crate) const PRIORITIES: [u8; 4] = [URGENT, PLANNED, 1, 0];

    /// The step's level: targets past planning (their subnet writes and cut-overs feed the
    /// VNet chains that bound a run) go before planning discovered ones, and those before
    /// discovering more, so a VNet's chain starts with the first targets planned instead of
    /// after the whole fleet was discovered and planned.
    pub(crate) fn priority(self) -> u8 {
        match self {
            Step::Discover => 0,
            Step::Plan => 1,
            _ => PLANNED,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown step {s:?} (expected one of discover, plan, prepare-subnet, disconnect, connect, configure, verify, rollback)"))
    }
}

/// What started the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Rollout,
    Event,
    Replay,
    #[default]
    Cli,
}

/// The subnet a target is moving into (decided by `plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlannedSubnet {
    pub(crate) vnet: ResourceId,
    pub(crate) subnet: ResourceId,
    /// The planned prefix; a new subnet's final prefix is allocated by `prepare-subnet`,
    /// which runs one at a time per VNet.
    pub(crate) prefix: String,
    pub(crate) create: bool,
    /// The smallest prefix (largest length) that still holds the plan's addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) required_prefix_length: Option<u8>,
}

/// The gateway-based connection as it was before `disconnect`, so `rollback` can re-create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySnapshot {
    pub(crate) name: String,
    pub(crate) vnet_resource_id: ResourceId,
    #[serde(default)]
    pub(crate) dns_servers: Option<String>,
    #[serde(default)]
    pub(crate) cert_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_blob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) routes: Option<serde_json::Value>,
}

/// Health observed before any change, compared by `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Baseline {
    #[serde(default)]
    pub(crate) key_vault_references: BTreeMap<String, KeyVaultStatus>,
}

/// A run id such as `r-20261123-ab12`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A new id from the date and 4 random hex characters.
    pub(crate) fn new(now: OffsetDateTime) -> Self {
        let r: u16 = rand::random();
        RunId(format!(
            "r-{:04}{:02}{:02}-{:04x}",
            now.year(),
            now.month() as u8,
            now.day(),
            r
        ))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepMessage {
    pub(crate) v: u32,
    pub(crate) run: RunId,
    pub target: ResourceId,
    pub step: Step,
    #[serde(default)]
    pub(crate) attempt: u32,
    #[serde(default)]
    pub(crate) dry_run: bool,
    #[serde(default)]
    pub(crate) origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan: Option<PlannedSubnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) gateway: Option<GatewaySnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Baseline>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) not_before: Option<OffsetDateTime>,
    /// Correlates every step of one target's journey (logs, Service Bus `CorrelationId`):
    /// set when its first step is made, carried by every next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<String>,
    /// Why a rollback was started (carried into the `rolled-back:<reason>` outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RollbackReason>,
    /// The site's outbound routing as the cut-over's PATCH returned it, so `configure` need not
    /// read the site again. Not part of the MessageId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) routing: Option<OutboundVnetRouting>,
    /// Bumped by `replay` so a resubmitted step gets a fresh MessageId.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) replay: u32,
    /// Re-sends of this step after transient failures (throttling, contention, 5xx), which do
    /// not count as attempts: part of the MessageId, so each re-send is a new message while a
    /// duplicate of one re-send is still dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) transient: u32,
    /// Times this step was put off until a maintenance window opened, or while its rollout was
    /// paused (not attempts either): part of the MessageId, so each deferral is a new message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) waited: u32,
    /// Network preparation ahead of the target's wave (issue 12 item 5): `plan`, then
    /// `prepare-subnet` of a new subnet, and the chain ends there. It is no step of the
    /// target's: nothing is recorded against the target and it decides no outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ahead: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("step message is not valid JSON for version {MESSAGE_VERSION}: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error(
        "step message version {0} is not supported (this build reads version {MESSAGE_VERSION})"
    )]
    Version(u32),
    /// An id of the wrong kind for its field: the step would read or write another resource.
    #[error("step message: {0}")]
    Id(#[from] ResourceIdError),
}

/// The level of a message whose app may be off its VNet right now: a cut-over re-sent after
/// its gateway connection was removed (it carries the saved connection), or a rollback. Such a
/// message goes first, and a paused run still delivers it: holding it would keep an app
/// offline until an operator resumes.
pub(crate) const URGENT: u8 = 3;

/// The level of a planned target's steps (`Step::priority`): below it, the discovery and
/// planning that feed them.
pub(crate) const PLANNED: u8 = 2;

impl StepMessage {
    /// This message's scheduling level in the embedded queue.
    pub(crate) fn priority(&self) -> u8 {
        // Preparation ahead of a wave gives way to every step of the waves released.
        if self.ahead {
            return 0;
        }
        let cut = matches!(self.step, Step::Disconnect | Step::Connect) && self.gateway.is_some();
        if cut || self.step == Step::Rollback {
            URGENT
        } else {
            self.step.priority()
        }
    }

    /// The lower-cased destination VNet of a planned target's step: the unit of the runner's
    /// per-VNet admission (`concurrency.perVnet`). None before planning.
    pub(crate) fn vnet_key(&self) -> Option<&str> {
        self.plan.as_ref().map(|p| p.vnet.key())
    }

    pub fn new(run: RunId, target: ResourceId, step: Step, origin: Origin) -> Self {
        StepMessage {
            v: MESSAGE_VERSION,
            run,
            target,
            step,
            attempt: 0,
            dry_run: false,
            origin,
            plan: None,
            gateway: None,
            baseline: None,
            not_before: None,
            trace: Some(uuid::Uuid::new_v4().simple().to_string()),
            reason: None,
            routing: None,
            replay: 0,
            transient: 0,
            waited: 0,
            ahead: false,
        }
    }

    /// The first message preparing the network of `target` ahead of its wave: its `plan`.
    pub(crate) fn ahead_of_wave(run: RunId, target: ResourceId) -> Self {
        StepMessage {
            ahead: true,
            ..StepMessage::new(run, target, Step::Plan, Origin::Rollout)
        }
    }

    pub(crate) fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The next step of the same target: carries plan, gateway snapshot and baseline; attempt 0.
    pub fn next(&self, step: Step) -> Self {
        StepMessage {
            step,
            attempt: 0,
            transient: 0,
            waited: 0,
            not_before: None,
            ..self.clone()
        }
    }

    /// The same step, put off (until a maintenance window opens, or its rollout is resumed):
    /// no attempt is spent.
    pub(crate) fn deferred(&self) -> Self {
        StepMessage {
            waited: self.waited + 1,
            not_before: None,
            ..self.clone()
        }
    }

    /// The same step again, one attempt later.
    pub(crate) fn retry(&self) -> Self {
        StepMessage {
            attempt: self.attempt + 1,
            transient: 0,
            not_before: None,
            ..self.clone()
        }
    }

    /// The same step again after a transient failure: same attempt, one re-send later.
    pub(crate) fn resend(&self) -> Self {
        StepMessage {
            transient: self.transient + 1,
            not_before: None,
            ..self.clone()
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        // Read the version first so a future format gets a precise error, not a field error.
        #[derive(Deserialize)]
        struct V {
            v: Option<u32>,
        }
        if let Ok(V { v: Some(v) }) = serde_json::from_slice::<V>(bytes) {
            if v != MESSAGE_VERSION {
                return Err(MessageError::Version(v));
            }
        }
        let m: StepMessage = serde_json::from_slice(bytes)?;
        m.check_kinds()?;
        Ok(m)
    }

    /// Each id is of the kind its field holds, and a planned subnet lies in the planned VNet.
    fn check_kinds(&self) -> Result<(), ResourceIdError> {
        self.target.check_kind(ResourceKind::TARGETS)?;
        if let Some(p) = &self.plan {
            p.vnet.check_kind(&[ResourceKind::VirtualNetwork])?;
            p.subnet.check_kind(&[ResourceKind::Subnet])?;
            if p.subnet.vnet().as_ref() != Some(&p.vnet) {
                return Err(ResourceIdError {
                    id: p.subnet.to_string(),
                    why: Malformed::NotBelow(p.vnet.to_string()),
                });
            }
        }
        if let Some(g) = &self.gateway {
            g.vnet_resource_id.check_kind(ResourceKind::ANY_VNET)?;
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("step message serialises")
    }

    /// Lowercase hex SHA-256 of `run|target-lowercased|step|attempt`, first 32 characters.
    /// A replay appends `|replay-N` and a transient re-send `|transient-N`, so neither is
    /// dropped as a duplicate. Preparation ahead of a wave appends `|ahead`, and its
    /// `prepare-subnet` names the subnet instead of the target: the targets of one plan (or
    /// of plans sharing a subnet) send one subnet write between them.
    pub fn message_id(&self) -> String {
        let named = match (&self.plan, self.step) {
            (Some(p), Step::PrepareSubnet) if self.ahead => p.subnet.key(),
            _ => self.target.key(),
        };
        let mut s = format!("{}|{}|{}|{}", self.run, named, self.step, self.attempt);
        if self.replay > 0 {
            s.push_str(&format!("|replay-{}", self.replay));
        }
        if self.transient > 0 {
            s.push_str(&format!("|transient-{}", self.transient));
        }
        if self.waited > 0 {
            s.push_str(&format!("|waited-{}", self.waited));
        }
        if self.ahead {
            s.push_str("|ahead");
        }
        let digest = Sha256::digest(s.as_bytes());
        hex::encode(digest)[..32].to_string()
    }

    /// One message in flight per target; all subnet writes in one VNet are serialised, and so
    /// are the cut-overs into it: ARM holds the VNet for the 7–10 s a site joins one of its
    /// subnets and refuses other writes meanwhile (arm-vnet reference §13), so a cut-over that
    /// removed a gateway connection while another held the VNet would keep its app offline
    /// until that one finished. A cut-over re-sent after its gateway connection was removed
    /// (it carries the saved snapshot) goes back to its target's own session: queued behind
    /// the VNet's other cut-overs, its app would stay offline until they all finished.
    /// Preparation ahead of a wave plans in the run's session (the rollout controller's), out
    /// of the target's, which holds only the target's own steps.
    fn session(&self) -> Session<'_> {
        match (self.step, &self.plan, &self.gateway) {
            (Step::PrepareSubnet, Some(p), _) | (Step::Disconnect, Some(p), None) => {
                Session::Of(&p.vnet)
            }
            _ if self.ahead => Session::Run(&self.run),
            _ => Session::Of(&self.target),
        }
    }

    /// The Service Bus SessionId (DESIGN §3.1): the lowercased id of the session's target or
    /// VNet, or the run id. An id longer than the 128 characters a SessionId may have (a
    /// slot's often is) gives its digest (`ResourceId::key_digest`) instead.
    pub fn session_id(&self) -> String {
        match self.session() {
            Session::Of(id) if id.key().len() <= MAX_SESSION_ID => id.key().to_string(),
            Session::Of(id) => id.key_digest(),
            Session::Run(run) => run.as_str().to_string(),
        }
    }

    /// The session as the state file names it: a target's or VNet's by the digest of its id
    /// always, which an index entry of a 512-byte page holds whole (a lowercased id is
    /// longer); the run's by the run id.
    pub(crate) fn stored_session(&self) -> String {
        match self.session() {
            Session::Of(id) => id.key_digest(),
            Session::Run(run) => run.as_str().to_string(),
        }
    }
}

/// Whose messages a session holds, one at a time: a target's or a VNet's, or the run's own.
enum Session<'a> {
    Of(&'a ResourceId),
    Run(&'a RunId),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target() -> ResourceId {
        ResourceId::parse("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Web/sites/App1")
            .unwrap()
    }

    #[test]
    fn decodes_design_example_and_ignores_unknown_fields() {
        let raw = r#"{ "v": 1, "run": "r-20261123-ab12", "target": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/app1/slots/s",
          "step": "connect", "attempt": 0, "dryRun": false, "origin": "rollout",
          "plan": { "vnet": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v", "subnet": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/snet-plan1", "prefix": "10.0.4.0/26", "create": true },
          "gateway": { "name": "v", "vnetResourceId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v", "dnsServers": null, "certThumbprint": "AB" },
          "baseline": { "keyVaultReferences": { "Secret1": "Resolved" } },
          "notBefore": "2026-11-23T21:00:00Z", "trace": "t", "somethingNew": 42 }"#;
        let m = StepMessage::decode(raw.as_bytes()).unwrap();
        assert_eq!(m.step, Step::Connect);
        assert_eq!(m.origin, Origin::Rollout);
        assert_eq!(m.plan.as_ref().unwrap().prefix, "10.0.4.0/26");
        assert_eq!(
            m.baseline.unwrap().key_vault_references["Secret1"],
            KeyVaultStatus::Resolved
        );
        assert!(m.not_before.is_some());
    }

    #[test]
    fn missing_optionals_default() {
        let m = StepMessage::decode(br#"{"v":1,"run":"r","target":"/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a","step":"discover"}"#).unwrap();
        assert_eq!(m.attempt, 0);
        assert_eq!(m.origin, Origin::Cli);
        assert!(!m.dry_run);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let e = StepMessage::decode(br#"{"v":2,"run":"r","target":"x","step":"discover"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(StepMessage::decode(b"not json").is_err());
        assert!(
            StepMessage::decode(br#"{"v":1,"run":"r","target":"/bad","step":"discover"}"#).is_err()
        );
        assert!(StepMessage::decode(
            br#"{"v":1,"run":"r","target":"/subscriptions/s","step":"teleport"}"#
        )
        .is_err());
    }

    #[test]
    fn ids_of_the_wrong_kind_are_refused() {
        let site = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a";
        let vnet =
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v";
        let msg = |target: &str, extra: &str| {
            format!(r#"{{"v":1,"run":"r","target":"{target}","step":"connect"{extra}}}"#)
        };
        let plan = |v: &str, s: &str| {
            format!(
                r#","plan":{{"vnet":"{v}","subnet":"{s}","prefix":"10.0.0.0/26","create":true}}"#
            )
        };
        assert!(StepMessage::decode(
            msg(site, &plan(vnet, &format!("{vnet}/subnets/a"))).as_bytes()
        )
        .is_ok());
        for (raw, want) in [
            (msg("/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/sites/a", ""), "expected a Microsoft.Web/sites or Microsoft.Web/sites/slots id"),
            (msg(vnet, ""), "got a Microsoft.Network/virtualNetworks id"),
            (msg(&format!("{site}/..", ), ""), "relative segment"),
            (msg(&format!("{site}%2F.."), ""), "holds '%'"),
            (msg(site, &plan(&format!("{vnet}/subnets/a"), &format!("{vnet}/subnets/a"))), "expected a Microsoft.Network/virtualNetworks id"),
            (msg(site, &plan(vnet, vnet)), "expected a Microsoft.Network/virtualNetworks/subnets id"),
            (msg(site, &plan(vnet, "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/other/subnets/a")), "not below"),
            (msg(site, &format!(r#","gateway":{{"name":"v","vnetResourceId":"{site}"}}"#)), "got a Microsoft.Web/sites id"),
        ] {
            let e = StepMessage::decode(raw.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{raw}: {e}");
        }
    }

    #[test]
    fn message_id_matches_the_contract() {
        let m = StepMessage::new(RunId("r-1".into()), target(), Step::Connect, Origin::Cli);
        let expected = hex::encode(Sha256::digest(
            format!("r-1|{}|connect|0", target().key()).as_bytes(),
        ));
        assert_eq!(m.message_id(), expected[..32]);
        assert_ne!(m.message_id(), m.retry().message_id());
        let mut replayed = m.clone();
        replayed.replay = 1;
        assert_ne!(m.message_id(), replayed.message_id());
    }

    #[test]
    fn transient_resends_get_fresh_message_ids_and_stay_deduplicated() {
        let m = StepMessage::new(RunId("r-1".into()), target(), Step::Connect, Origin::Cli);
        let first = m.resend();
        let second = first.resend();
        assert_eq!((first.transient, first.attempt), (1, 0));
        let expected = hex::encode(Sha256::digest(
            format!("r-1|{}|connect|0|transient-1", target().key()).as_bytes(),
        ));
        assert_eq!(first.message_id(), expected[..32]);
        assert_ne!(first.message_id(), m.message_id());
        assert_ne!(first.message_id(), second.message_id());
        // A duplicate delivery of one re-send has the same id, so it is dropped.
        assert_eq!(first.clone().message_id(), first.message_id());
        // The counter travels on the wire only when set, and survives a round trip.
        assert!(!String::from_utf8(m.encode()).unwrap().contains("transient"));
        let back = StepMessage::decode(&second.encode()).unwrap();
        assert_eq!(back.transient, 2);
        assert_eq!(back.message_id(), second.message_id());
        // A counted retry and the next step start counting re-sends afresh.
        assert_eq!(second.retry().transient, 0);
        assert_eq!(second.next(Step::Configure).transient, 0);
    }

    #[test]
    fn carried_facts_travel_only_when_set_and_leave_the_message_id_alone() {
        let m = StepMessage::new(RunId("r-1".into()), target(), Step::Plan, Origin::Cli);
        let wire = String::from_utf8(m.encode()).unwrap();
        assert!(!wire.contains("routing"), "{wire}");
        let mut carried = m.clone();
        carried.routing = Some(OutboundVnetRouting {
            application_traffic: Some(true),
            ..Default::default()
        });
        assert_eq!(carried.message_id(), m.message_id());
        let back = StepMessage::decode(&carried.encode()).unwrap();
        assert_eq!(back, carried);
        assert!(String::from_utf8(carried.encode())
            .unwrap()
            .contains(r#""routing":{"applicationTraffic":true}"#));
    }

    #[test]
    fn session_ids() {
        let mut m = StepMessage::new(
            RunId("r".into()),
            target(),
            Step::PrepareSubnet,
            Origin::Cli,
        );
        assert_eq!(m.session_id(), target().key());
        assert_eq!(m.stored_session(), target().key_digest());
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/V",
        )
        .unwrap();
        m.plan = Some(PlannedSubnet {
            vnet: vnet.clone(),
            subnet: vnet.child("subnets", "a").unwrap(),
            prefix: "10.0.0.0/26".into(),
            create: true,
            required_prefix_length: Some(26),
        });
        assert_eq!(m.session_id(), vnet.key());
        assert_eq!(m.next(Step::Disconnect).session_id(), vnet.key());
        assert_eq!(m.next(Step::Configure).session_id(), target().key());
        // Mid-cut-over (the gateway connection already removed): the target's own session.
        let mut resent = m.next(Step::Disconnect);
        resent.gateway = Some(GatewaySnapshot {
            name: "V".into(),
            vnet_resource_id: vnet.clone(),
            dns_servers: None,
            cert_thumbprint: None,
            cert_blob: None,
            routes: None,
        });
        assert_eq!(resent.session_id(), target().key());
    }

    #[test]
    fn preparation_ahead_plans_in_the_runs_session_and_writes_each_subnet_once() {
        let run = RunId("r".into());
        let ahead = StepMessage::ahead_of_wave(run.clone(), target());
        assert_eq!((ahead.step, ahead.ahead), (Step::Plan, true));
        assert_eq!(ahead.session_id(), "r");
        assert_eq!(ahead.priority(), 0);
        let own = StepMessage::new(run.clone(), target(), Step::Plan, Origin::Rollout);
        assert_ne!(ahead.message_id(), own.message_id());
        let wire = String::from_utf8(ahead.encode()).unwrap();
        assert!(wire.contains(r#""ahead":true"#), "{wire}");
        assert!(!String::from_utf8(own.encode()).unwrap().contains("ahead"));
        assert_eq!(
            StepMessage::decode(ahead.encode().as_slice()).unwrap(),
            ahead
        );
        // Two targets of one plan: one subnet write between them, in the VNet's session.
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/V",
        )
        .unwrap();
        let prepare = |t: ResourceId| {
            let mut m = StepMessage::ahead_of_wave(run.clone(), t).next(Step::PrepareSubnet);
            m.plan = Some(PlannedSubnet {
                vnet: vnet.clone(),
                subnet: vnet.child("subnets", "a").unwrap(),
                prefix: "10.0.0.0/26".into(),
                create: true,
                required_prefix_length: Some(26),
            });
            m
        };
        let other = ResourceId::parse(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Web/sites/App2",
        )
        .unwrap();
        assert_eq!(prepare(target()).message_id(), prepare(other).message_id());
        assert_eq!(prepare(target()).session_id(), vnet.key());
        let mut own = prepare(target());
        own.ahead = false;
        assert_ne!(own.message_id(), prepare(target()).message_id());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StepMessage::decode(&bytes);
        }

        #[test]
        fn round_trip(attempt in 0u32..50, transient in 0u32..50, step in 0usize..8, dry in any::<bool>()) {
            let mut m = StepMessage::new(RunId("r-x".into()), target(), Step::ALL[step], Origin::Event);
            m.attempt = attempt;
            m.transient = transient;
            m.dry_run = dry;
            let back = StepMessage::decode(&m.encode()).unwrap();
            prop_assert_eq!(back.message_id(), m.message_id());
            prop_assert_eq!(back, m);
        }

        #[test]
        fn message_id_is_case_insensitive_in_target(upper in any::<bool>()) {
            let t = if upper { target().as_str().to_uppercase() } else { target().as_str().to_lowercase() };
            let m = StepMessage::new(RunId("r".into()), ResourceId::parse(&t).unwrap(), Step::Plan, Origin::Cli);
            let n = StepMessage::new(RunId("r".into()), target(), Step::Plan, Origin::Cli);
            prop_assert_eq!(m.message_id(), n.message_id());
        }
    }
}
