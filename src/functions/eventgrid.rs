//! Event Grid events (Event Grid schema and CloudEvents 1.0, reference §C1) normalised into one
//! type, and the `on-deploy` decision: which site or slot an event concerns, and whether the
//! write was our own (feedback-loop guard, reference §C6).

use serde_json::Value;

use super::invocation::DecodeError;
use crate::azure::arm::CLIENT_REQUEST_ID_PREFIX;
use crate::azure::resource_id::{ResourceId, ResourceKind};

/// Which envelope an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSchema {
    EventGrid,
    CloudEvents,
}

/// One event, whatever its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct EventGridEvent {
    pub schema: EventSchema,
    pub(crate) id: String,
    /// `eventType` / `type`.
    pub event_type: String,
    /// ARM events: the resource id; App Service events: `/Microsoft.Web/sites/{name}`.
    pub(crate) subject: Option<String>,
    /// `topic` / `source`.
    pub topic: Option<String>,
    /// `eventTime` / `time`, as sent.
    pub event_time: Option<String>,
    pub data: Value,
}

const VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
const ARM_WRITE: &str = "Microsoft.Resources.ResourceWriteSuccess";
const APP_UPDATED: &str = "Microsoft.Web.AppUpdated";
const OID_CLAIM: &str = "http://schemas.microsoft.com/identity/claims/objectidentifier";

impl EventGridEvent {
    /// One event object in either schema.
    pub fn from_value(v: &Value) -> Result<Self, DecodeError> {
        let Value::Object(o) = v else {
            return Err(DecodeError::new("event is not a JSON object"));
        };
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let (schema, event_type, topic, event_time) = if o.contains_key("specversion") {
            (EventSchema::CloudEvents, s("type"), s("source"), s("time"))
        } else {
            (
                EventSchema::EventGrid,
                s("eventType"),
                s("topic"),
                s("eventTime"),
            )
        };
        let event_type = event_type.ok_or_else(|| {
            DecodeError::new(match schema {
                EventSchema::CloudEvents => "CloudEvent without 'type'",
                EventSchema::EventGrid => "event has neither 'eventType' nor 'specversion'",
            })
        })?;
        Ok(EventGridEvent {
            schema,
            id: s("id").ok_or_else(|| DecodeError::new("event without 'id'"))?,
            event_type,
            subject: s("subject"),
            topic,
            event_time,
            data: o.get("data").cloned().unwrap_or(Value::Null),
        })
    }

    /// An event object or an array of them (webhook batches).
    pub fn from_json(v: &Value) -> Result<Vec<Self>, DecodeError> {
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    Self::from_value(e)
                        .map_err(|err| DecodeError::new(format!("event [{i}]: {err}")))
                })
                .collect(),
            v => Ok(vec![Self::from_value(v)?]),
        }
    }

    /// Raw delivery bytes (object or array).
    pub fn parse(bytes: &[u8]) -> Result<Vec<Self>, DecodeError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("event delivery is not JSON: {e}")))?;
        Self::from_json(&v)
    }

    fn data_str(&self, path: &[&str]) -> Option<&str> {
        let mut v = &self.data;
        for p in path {
            v = v.get(*p)?;
        }
        v.as_str()
    }
}

/// Who performed an ARM write, as far as the event tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Writer {
    /// Object (principal) ids from `authorization.evidence.principalId` and the `oid` claims.
    pub(crate) principal_ids: Vec<String>,
    /// `claims.appid` (the client id).
    pub(crate) app_id: Option<String>,
    /// `httpRequest.clientRequestId` or App Service's `clientRequestId`.
    pub(crate) client_request_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
}

/// The writer's identity from an event's data.
pub(crate) fn writer(event: &EventGridEvent) -> Writer {
    let mut principal_ids = Vec::new();
    for path in [
        &["authorization", "evidence", "principalId"][..],
        &["claims", OID_CLAIM][..],
        &["claims", "oid"][..],
    ] {
        if let Some(id) = event.data_str(path) {
            if !principal_ids.iter().any(|p: &String| same_principal(p, id)) {
                principal_ids.push(id.to_string());
            }
        }
    }
    Writer {
        principal_ids,
        app_id: event.data_str(&["claims", "appid"]).map(str::to_string),
        client_request_id: event
            .data_str(&["httpRequest", "clientRequestId"])
            .or_else(|| event.data_str(&["clientRequestId"]))
            .map(str::to_string),
        correlation_id: event
            .data_str(&["correlationId"])
            .or_else(|| event.data_str(&["correlationRequestId"]))
            .map(str::to_string),
    }
}

/// Principal ids compared without dashes, case-insensitively (the activity log drops dashes).
pub(crate) fn same_principal(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (norm(a.trim()), norm(b.trim()));
    !a.is_empty() && a == b
}

/// True when the event carries our client-request-id marker (see [`CLIENT_REQUEST_ID_PREFIX`]).
pub(crate) fn has_our_request_marker(w: &Writer) -> bool {
    [&w.client_request_id, &w.correlation_id]
        .into_iter()
        .flatten()
        .any(|id| {
            // Bytes, not a str slice: an id from the event may have a multi-byte character
            // where the prefix ends.
            id.as_bytes()
                .get(..CLIENT_REQUEST_ID_PREFIX.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(CLIENT_REQUEST_ID_PREFIX.as_bytes()))
        })
}

/// What `on-deploy` does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// Enqueue `discover` for this site or slot.
    Migrate(ResourceId),
    /// Subscription validation: the code to echo.
    Validate(String),
    Ignore(String),
}

/// Decides what an event means for us. `our_principal` is the handler identity's object id.
pub fn classify(event: &EventGridEvent, our_principal: Option<&str>) -> EventAction {
    let ty = event.event_type.as_str();
    if ty.eq_ignore_ascii_case(VALIDATION) {
        return match event.data_str(&["validationCode"]) {
            Some(code) if !code.is_empty() => EventAction::Validate(code.to_string()),
            _ => EventAction::Ignore("validation event without data.validationCode".into()),
        };
    }
    let target = if ty.eq_ignore_ascii_case(ARM_WRITE) {
        arm_write_target(event)
    } else if ty.eq_ignore_ascii_case(APP_UPDATED) {
        app_updated_target(event)
    } else {
        return EventAction::Ignore(format!("event type {ty} is not one we act on"));
    };
    let target = match target {
        Ok(t) => t,
        Err(why) => return EventAction::Ignore(why),
    };
    let w = writer(event);
    if let Some(ours) = our_principal {
        if w.principal_ids.iter().any(|p| same_principal(p, ours)) {
            return EventAction::Ignore(format!(
                "{} was written by our own identity",
                target.as_str()
            ));
        }
    }
    if has_our_request_marker(&w) {
        return EventAction::Ignore(format!(
            "{} was written by vnet-migrate (client request id marker)",
            target.as_str()
        ));
    }
    EventAction::Migrate(target)
}

fn arm_write_target(event: &EventGridEvent) -> Result<ResourceId, String> {
    let raw = event
        .data_str(&["resourceUri"])
        .or(event.subject.as_deref())
        .ok_or("ARM event without subject or data.resourceUri")?;
    let id = ResourceId::parse(raw).map_err(|e| format!("ARM event subject: {e}"))?;
    match id.kind() {
        ResourceKind::Site | ResourceKind::Slot => Ok(id),
        ResourceKind::SiteVnetConnection => id
            .parent()
            .ok_or_else(|| format!("{raw} has no parent site")),
        _ => Err(format!(
            "{} is not a site, slot or virtualNetworkConnection",
            id.resource_type().unwrap_or_else(|| "scope".into())
        )),
    }
}

/// App Service events: `topic` is the site id, `subject` is `/Microsoft.Web/sites/{name}` and,
/// for a slot, `/Microsoft.Web/sites/{name}/slots/{slot}` (a topic that is only a resource
/// group is completed from the subject).
fn app_updated_target(event: &EventGridEvent) -> Result<ResourceId, String> {
    let topic = event
        .topic
        .as_deref()
        .ok_or("App Service event without topic/source")?;
    let topic = ResourceId::parse(topic).map_err(|e| format!("App Service event topic: {e}"))?;
    let subject = event.subject.as_deref().unwrap_or("");
    let tail: Vec<&str> = subject.trim_matches('/').split('/').collect();
    let from_subject = match tail.as_slice() {
        [p, s, site] if is_sites(p, s) => Some((site.to_string(), None)),
        [p, s, site, sl, slot] if is_sites(p, s) && sl.eq_ignore_ascii_case("slots") => {
            Some((site.to_string(), Some(slot.to_string())))
        }
        _ => None,
    };
    let site = match topic.kind() {
        ResourceKind::Site => topic.clone(),
        ResourceKind::Slot => return Ok(topic),
        ResourceKind::ResourceGroup => {
            let (name, _) = from_subject
                .as_ref()
                .ok_or_else(|| format!("App Service event subject {subject:?} names no site"))?;
            ResourceId::parse(&format!(
                "{}/providers/Microsoft.Web/sites/{name}",
                topic.as_str()
            ))
            .map_err(|e| e.to_string())?
        }
        _ => {
            return Err(format!(
                "App Service event topic {} is not a site",
                topic.as_str()
            ))
        }
    };
    match from_subject {
        Some((_, Some(slot))) => site.child("slots", &slot).map_err(|e| e.to_string()),
        _ => Ok(site),
    }
}

fn is_sites(provider: &str, ty: &str) -> bool {
    provider.eq_ignore_ascii_case("Microsoft.Web") && ty.eq_ignore_ascii_case("sites")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SITE: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Web/sites/app1";
    const OUR_OID: &str = "6f1c2a4e-0b1d-4c7e-9a1b-2c3d4e5f6a7b";

    fn arm_write(subject: &str, principal: &str) -> EventGridEvent {
        EventGridEvent::from_value(&json!({
            "subject": subject,
            "eventType": "Microsoft.Resources.ResourceWriteSuccess",
            "eventTime": "2026-11-23T21:00:00Z",
            "id": "e1",
            "topic": "/subscriptions/s1/resourceGroups/rg",
            "data": {
                "authorization": {"scope": subject, "action": "Microsoft.Web/sites/write",
                    "evidence": {"role": "Contributor", "principalId": principal, "principalType": "ServicePrincipal"}},
                "claims": {"appid": "client-1", OID_CLAIM: principal},
                "correlationId": "c1",
                "resourceUri": subject,
                "operationName": "Microsoft.Web/sites/write",
                "status": "Succeeded"
            },
            "dataVersion": "2", "metadataVersion": "1"
        }))
        .unwrap()
    }

    fn site() -> ResourceId {
        ResourceId::parse(SITE).unwrap()
    }

    #[test]
    fn site_write_migrates_the_site() {
        let ev = arm_write(SITE, "someone-else");
        assert_eq!(classify(&ev, Some(OUR_OID)), EventAction::Migrate(site()));
    }

    #[test]
    fn slot_write_migrates_the_slot() {
        let slot = format!("{SITE}/slots/staging");
        let ev = arm_write(&slot, "someone-else");
        assert_eq!(
            classify(&ev, None),
            EventAction::Migrate(ResourceId::parse(&slot).unwrap())
        );
    }

    #[test]
    fn vnet_connection_write_migrates_its_site_or_slot() {
        let ev = arm_write(&format!("{SITE}/virtualNetworkConnections/vnet1"), "x");
        assert_eq!(classify(&ev, None), EventAction::Migrate(site()));
        let ev = arm_write(
            &format!("{SITE}/slots/blue/virtualNetworkConnections/vnet1"),
            "x",
        );
        assert_eq!(
            classify(&ev, None),
            EventAction::Migrate(site().child("slots", "blue").unwrap())
        );
    }

    #[test]
    fn our_own_write_is_ignored_whatever_the_dashes_and_case() {
        let undashed = OUR_OID.replace('-', "").to_uppercase();
        let ev = arm_write(SITE, &undashed);
        match classify(&ev, Some(OUR_OID)) {
            EventAction::Ignore(why) => assert!(why.contains("our own identity"), "{why}"),
            other => panic!("expected Ignore, got {other:?}"),
        }
    }

    #[test]
    fn our_client_request_marker_is_ignored() {
        let mut ev = arm_write(SITE, "x");
        ev.data["httpRequest"] = json!({"clientRequestId": "vnet-migrate-1234", "method": "PUT"});
        assert!(matches!(classify(&ev, None), EventAction::Ignore(w) if w.contains("marker")));
    }

    #[test]
    fn odd_client_request_ids_are_not_ours_and_do_not_panic() {
        for id in [
            "vnet-migrat\u{e9}-1",
            "vnet-migrate\u{e9}1",
            "vnet-migrate",
            "",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            let mut ev = arm_write(SITE, "x");
            ev.data["httpRequest"] = json!({"clientRequestId": id});
            assert_eq!(classify(&ev, None), EventAction::Migrate(site()), "{id:?}");
        }
    }

    #[test]
    fn validation_event_yields_the_code() {
        let ev = EventGridEvent::from_value(&json!({
            "id": "v", "eventType": VALIDATION, "topic": "/subscriptions/x", "subject": "s",
            "data": {"validationCode": "512d38b6"}, "dataVersion": "1"
        }))
        .unwrap();
        assert_eq!(
            classify(&ev, None),
            EventAction::Validate("512d38b6".into())
        );
    }

    #[test]
    fn malformed_or_foreign_events_are_ignored_with_a_reason() {
        let ev = arm_write("not-an-id", "x");
        assert!(
            matches!(classify(&ev, None), EventAction::Ignore(w) if w.contains("invalid ARM resource id"))
        );
        let storage =
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa";
        assert!(matches!(classify(&arm_write(storage, "x"), None),
            EventAction::Ignore(w) if w.contains("Microsoft.Storage/storageAccounts")));
        let mut ev = arm_write(SITE, "x");
        ev.event_type = "Microsoft.Resources.ResourceDeleteSuccess".into();
        assert!(
            matches!(classify(&ev, None), EventAction::Ignore(w) if w.contains("not one we act on"))
        );
        assert!(EventGridEvent::from_value(&json!({"id": "x"})).is_err());
        assert!(EventGridEvent::from_value(&json!([1])).is_err());
    }

    #[test]
    fn app_updated_for_a_slot_subject_and_rg_topic() {
        let ev = EventGridEvent::from_value(&json!({
            "id": "a", "eventType": APP_UPDATED, "topic": "/subscriptions/s1/resourceGroups/rg",
            "subject": "/Microsoft.Web/sites/app1/slots/green", "data": {"name": "app1"}
        }))
        .unwrap();
        assert_eq!(
            classify(&ev, None),
            EventAction::Migrate(site().child("slots", "green").unwrap())
        );
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_odd_subjects_and_topics(
            subject in "(/[A-Za-z.$-]{0,12}){0,10}",
            topic in "(/[A-Za-z.$-]{0,12}){0,6}",
            ty in prop::sample::select(vec![ARM_WRITE, APP_UPDATED, VALIDATION, "x"]),
        ) {
            let ev = EventGridEvent::from_value(&json!({
                "id": "p", "eventType": ty, "subject": subject, "topic": topic,
                "data": {"resourceUri": subject, "claims": {"oid": subject}}
            }))
            .unwrap();
            let _ = classify(&ev, Some(&subject));
        }
    }
}
