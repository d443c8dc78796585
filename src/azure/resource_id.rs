//! ARM resource ids: parsed once, compared and hashed case-insensitively (ARM ids are),
//! displayed with the casing they arrived in.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an ARM resource id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ARM resource id {id:?}: {why}")]
pub struct ResourceIdError {
    pub(crate) id: String,
    pub(crate) why: &'static str,
}

/// A parsed ARM resource id such as
/// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}/slots/{slot}`.
///
/// Ids below a resource (e.g. `…/sites/app/config/web`) parse too: a provider is followed by
/// any number of `type/name` pairs. Scope-only ids (a subscription or a resource group) have
/// no provider.
#[derive(Clone)]
pub struct ResourceId {
    raw: String,
    lower: String,
    subscription: String,
    resource_group: Option<String>,
    provider: Option<String>,
    /// `(type, name)` pairs after the provider, outermost first.
    segments: Vec<(String, String)>,
}

/// The kinds of resource the migration handles; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Subscription,
    ResourceGroup,
    Site,
    Slot,
    ServerFarm,
    VirtualNetwork,
    Subnet,
    Peering,
    SiteVnetConnection,
    ClassicVirtualNetwork,
    AutoscaleSetting,
    Other,
}

impl ResourceId {
    pub fn parse(s: &str) -> Result<Self, ResourceIdError> {
        let err = |why| ResourceIdError {
            id: s.to_string(),
            why,
        };
        let trimmed = s.trim().trim_end_matches('/');
        if !trimmed.starts_with('/') {
            return Err(err("must start with '/subscriptions/'"));
        }
        let parts: Vec<&str> = trimmed[1..].split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("empty path segment"));
        }
        if parts.len() < 2 || !parts[0].eq_ignore_ascii_case("subscriptions") {
            return Err(err("must start with '/subscriptions/{id}'"));
        }
        let subscription = parts[1].to_string();
        let mut i = 2;
        let mut resource_group = None;
        if parts.len() > i && parts[i].eq_ignore_ascii_case("resourceGroups") {
            let rg = parts
                .get(i + 1)
                .ok_or_else(|| err("resourceGroups without a name"))?;
            resource_group = Some(rg.to_string());
            i += 2;
        }
        let mut provider = None;
        let mut segments = Vec::new();
        if parts.len() > i {
            if !parts[i].eq_ignore_ascii_case("providers") {
                return Err(err("expected 'providers' after the scope"));
            }
            let ns = parts
                .get(i + 1)
                .ok_or_else(|| err("'providers' without a namespace"))?;
            provider = Some(ns.to_string());
            i += 2;
            let rest = &parts[i..];
            if rest.is_empty() {
                return Err(err("provider without a resource type"));
            }
            if !rest.len().is_multiple_of(2) {
                return Err(err("resource type without a name"));
            }
            segments = rest
                .chunks(2)
                .map(|c| (c[0].to_string(), c[1].to_string()))
                .collect();
        }
        let raw = format!("/{}", parts.join("/"));
        let lower = raw.to_ascii_lowercase();
        Ok(Self {
            raw,
            lower,
            subscription,
            resource_group,
            provider,
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Lowercased form: the identity used for equality, hashing, session ids and message ids.
    pub fn key(&self) -> &str {
        &self.lower
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub(crate) fn resource_group(&self) -> Option<&str> {
        self.resource_group.as_deref()
    }

    pub(crate) fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// Full type, e.g. `Microsoft.Web/sites/slots`; `None` for scope ids.
    pub(crate) fn resource_type(&self) -> Option<String> {
        let p = self.provider.as_ref()?;
        let mut t = p.clone();
        for (ty, _) in &self.segments {
            t.push('/');
            t.push_str(ty);
        }
        Some(t)
    }

    /// Last name segment (resource name, resource group name or subscription id).
    pub fn name(&self) -> &str {
        if let Some((_, n)) = self.segments.last() {
            n
        } else if let Some(rg) = &self.resource_group {
            rg
        } else {
            &self.subscription
        }
    }

    pub fn kind(&self) -> ResourceKind {
        let Some(p) = self.provider.as_deref() else {
            return if self.resource_group.is_some() {
                ResourceKind::ResourceGroup
            } else {
                ResourceKind::Subscription
            };
        };
        let types: Vec<String> = self
            .segments
            .iter()
            .map(|(t, _)| t.to_ascii_lowercase())
            .collect();
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        match (p.to_ascii_lowercase().as_str(), types.as_slice()) {
            ("microsoft.web", ["sites"]) => ResourceKind::Site,
            ("microsoft.web", ["sites", "slots"]) => ResourceKind::Slot,
            ("microsoft.web", ["serverfarms"]) => ResourceKind::ServerFarm,
            ("microsoft.web", ["sites", "virtualnetworkconnections"])
            | ("microsoft.web", ["sites", "slots", "virtualnetworkconnections"]) => {
                ResourceKind::SiteVnetConnection
            }
            ("microsoft.network", ["virtualnetworks"]) => ResourceKind::VirtualNetwork,
            ("microsoft.network", ["virtualnetworks", "subnets"]) => ResourceKind::Subnet,
            ("microsoft.network", ["virtualnetworks", "virtualnetworkpeerings"]) => {
                ResourceKind::Peering
            }
            ("microsoft.classicnetwork", ["virtualnetworks"]) => {
                ResourceKind::ClassicVirtualNetwork
            }
            ("microsoft.insights", ["autoscalesettings"]) => ResourceKind::AutoscaleSetting,
            _ => ResourceKind::Other,
        }
    }

    /// The enclosing resource (`…/sites/a/slots/b` → `…/sites/a`), resource group, or
    /// subscription; `None` for a subscription.
    pub fn parent(&self) -> Option<ResourceId> {
        if self.segments.len() > 1 {
            let cut = self.raw.len()
                - self
                    .segments
                    .last()
                    .map(|(t, n)| t.len() + n.len() + 2)
                    .unwrap_or(0);
            return Some(Self::parse(&self.raw[..cut]).expect("prefix of a valid id"));
        }
        if !self.segments.is_empty() {
            return Some(match &self.resource_group {
                Some(rg) => Self::resource_group_id(&self.subscription, rg),
                None => Self::subscription_id(&self.subscription),
            });
        }
        self.resource_group
            .as_ref()
            .map(|_| Self::subscription_id(&self.subscription))
    }

    /// A child resource: `self/{type}/{name}`. Only valid below a resource, not a scope.
    pub(crate) fn child(&self, ty: &str, name: &str) -> Result<ResourceId, ResourceIdError> {
        if self.provider.is_none() {
            return Err(ResourceIdError {
                id: self.raw.clone(),
                why: "a scope id has no child resources",
            });
        }
        Self::parse(&format!("{}/{}/{}", self.raw, ty, name))
    }

    pub fn subscription_id(sub: &str) -> ResourceId {
        Self::parse(&format!("/subscriptions/{sub}")).expect("valid subscription id")
    }

    pub(crate) fn resource_group_id(sub: &str, rg: &str) -> ResourceId {
        Self::parse(&format!("/subscriptions/{sub}/resourceGroups/{rg}")).expect("valid rg id")
    }

    /// For a slot, its site; for a site, itself; otherwise `None`.
    pub(crate) fn site(&self) -> Option<ResourceId> {
        match self.kind() {
            ResourceKind::Site => Some(self.clone()),
            ResourceKind::Slot => self.parent(),
            _ => None,
        }
    }

    /// For a subnet or peering, its VNet; for a VNet, itself.
    pub fn vnet(&self) -> Option<ResourceId> {
        match self.kind() {
            ResourceKind::VirtualNetwork => Some(self.clone()),
            ResourceKind::Subnet | ResourceKind::Peering => self.parent(),
            _ => None,
        }
    }

    /// True when `self` is `scope` or lies below it (case-insensitive, segment-wise).
    pub(crate) fn is_within(&self, scope: &ResourceId) -> bool {
        self.lower == scope.lower || self.lower.starts_with(&format!("{}/", scope.lower))
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.lower == other.lower
    }
}
impl Eq for ResourceId {}
impl Hash for ResourceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.lower.hash(state)
    }
}
impl PartialOrd for ResourceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ResourceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.lower.cmp(&other.lower)
    }
}
impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}
impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceId({})", self.raw)
    }
}
impl FromStr for ResourceId {
    type Err = ResourceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl Serialize for ResourceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}
impl<'de> Deserialize<'de> for ResourceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SLOT: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg1/providers/Microsoft.Web/sites/app1/slots/staging";

    #[test]
    fn parses_slot_and_navigates() {
        let id = ResourceId::parse(SLOT).unwrap();
        assert_eq!(id.kind(), ResourceKind::Slot);
        assert_eq!(id.name(), "staging");
        assert_eq!(id.resource_group(), Some("rg1"));
        assert_eq!(id.resource_type().unwrap(), "Microsoft.Web/sites/slots");
        let site = id.site().unwrap();
        assert_eq!(site.kind(), ResourceKind::Site);
        assert_eq!(site.name(), "app1");
        assert_eq!(site.parent().unwrap().kind(), ResourceKind::ResourceGroup);
        assert_eq!(
            site.parent().unwrap().parent().unwrap().kind(),
            ResourceKind::Subscription
        );
        assert!(id.is_within(&site));
        assert!(!site.is_within(&id));
    }

    #[test]
    fn subnet_vnet_navigation() {
        let s = ResourceId::parse("/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v1/subnets/a").unwrap();
        assert_eq!(s.kind(), ResourceKind::Subnet);
        let v = s.vnet().unwrap();
        assert_eq!(v.kind(), ResourceKind::VirtualNetwork);
        assert_eq!(v.child("subnets", "a").unwrap(), s);
    }

    #[test]
    fn case_insensitive_identity() {
        let a = ResourceId::parse(SLOT).unwrap();
        let b = ResourceId::parse(&SLOT.to_uppercase()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_string(), SLOT.to_uppercase());
        let mut set = std::collections::HashSet::new();
        set.insert(a);
        assert!(set.contains(&b));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "subscriptions/x",
            "/subscriptions",
            "/subscriptions/s/foo/bar",
            "/subscriptions/s/providers/Microsoft.Web",
            "/subscriptions/s/providers/Microsoft.Web/sites",
            "/subscriptions/s//resourceGroups/rg",
            "/resourceGroups/rg",
        ] {
            assert!(ResourceId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn kinds() {
        let k = |s: &str| ResourceId::parse(s).unwrap().kind();
        assert_eq!(k("/subscriptions/s/resourceGroups/r/providers/Microsoft.ClassicNetwork/virtualNetworks/c"), ResourceKind::ClassicVirtualNetwork);
        assert_eq!(
            k("/subscriptions/s/resourceGroups/r/providers/microsoft.web/serverFarms/p"),
            ResourceKind::ServerFarm
        );
        assert_eq!(k("/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a/virtualNetworkConnections/v"), ResourceKind::SiteVnetConnection);
        assert_eq!(k("/subscriptions/s/resourceGroups/r/providers/microsoft.insights/autoscalesettings/x"), ResourceKind::AutoscaleSetting);
    }

    fn seg() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9._-]{0,11}"
    }

    proptest! {
        #[test]
        fn round_trips(sub in seg(), rg in seg(), app in seg(), slot in proptest::option::of(seg())) {
            let mut s = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}");
            if let Some(sl) = &slot { s.push_str(&format!("/slots/{sl}")); }
            let id = ResourceId::parse(&s).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            let again = ResourceId::parse(&id.to_string()).unwrap();
            prop_assert_eq!(&again, &id);
            let json = serde_json::to_string(&id).unwrap();
            let back: ResourceId = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.as_str(), id.as_str());
        }

        #[test]
        fn equality_ignores_case(sub in seg(), rg in seg(), app in seg()) {
            let s = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}");
            let a = ResourceId::parse(&s).unwrap();
            let b = ResourceId::parse(&s.to_ascii_uppercase()).unwrap();
            let c = ResourceId::parse(&s.to_ascii_lowercase()).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&b, &c);
            prop_assert_eq!(a.key(), c.as_str());
        }

        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = ResourceId::parse(&s);
        }
    }
}
