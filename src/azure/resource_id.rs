//! ARM resource ids: parsed once, compared and hashed case-insensitively (ARM ids are),
//! displayed with the casing they arrived in.
//!
//! Parsing is strict: an id comes from fleet files, step messages, the ledger, the command
//! line and ARM itself, and is turned back into request paths, so a segment that would change
//! the path it names (`.`/`..`, percent-encoded characters, `?`/`#`) or hide in it (control
//! characters, whitespace at its edges) is refused rather than passed on. Where a kind of
//! resource is expected, [`ResourceId::check_kind`] refuses an id of another type, and
//! [`NameRule`] holds ARM's naming rules for the names a user types.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an ARM resource id (or not the one expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ARM resource id {id:?}: {why}")]
pub struct ResourceIdError {
    pub(crate) id: String,
    pub(crate) why: Malformed,
}

/// What is wrong with an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("must start with '/subscriptions/{{id}}'")]
    NoSubscription,
    #[error("empty path segment")]
    EmptySegment,
    #[error("relative segment {0:?} (ids name resources, not paths)")]
    DotSegment(String),
    /// `%` (percent-encoding: `%2F` is a `/` once decoded), `?`/`#` (they end the path of a
    /// request URL: "don't use # in a resource name", MicrosoftDocs/azure-docs
    /// resource-name-rules.md), `\` and control characters.
    #[error("segment {segment:?} holds {ch:?} (refused: '%' and percent-encoding, '/' inside a name, '?', '#', '\\', control characters)")]
    ForbiddenChar { segment: String, ch: char },
    /// ARM names never start or end with whitespace ("can't end with space" in every rule
    /// that allows spaces at all, resource-name-rules.md).
    #[error("segment {0:?} starts or ends with whitespace")]
    EdgeWhitespace(String),
    #[error("resourceGroups without a name")]
    ResourceGroupWithoutName,
    #[error("expected 'providers' after the scope")]
    ExpectedProviders,
    #[error("'providers' without a namespace")]
    NoNamespace,
    #[error("provider without a resource type")]
    NoResourceType,
    #[error("resource type without a name")]
    NoName,
    /// Its parts are kept as 32-bit offsets.
    #[error("longer than 4 GiB")]
    TooLong,
    #[error("a scope id has no child resources")]
    ScopeHasNoChildren,
    #[error("not below {0}")]
    NotBelow(String),
    /// A valid id of the wrong type where one kind is expected (a fleet's site under
    /// `Microsoft.Network`, a message's subnet that is a VNet).
    #[error("expected {}, got a {got} id", expected_text(.expected))]
    WrongKind {
        expected: &'static [ResourceKind],
        got: String,
    },
}

fn expected_text(kinds: &[ResourceKind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.arm_type()).collect();
    format!("a {} id", names.join(" or "))
}

/// A parsed ARM resource id such as
/// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}/slots/{slot}`.
///
/// Ids below a resource (e.g. `…/sites/app/config/web`) parse too: a provider is followed by
/// any number of `type/name` pairs. Scope-only ids (a subscription or a resource group) have
/// no provider.
///
/// The id is held as one shared allocation (the text as it arrived, then its lowercased
/// form) with the byte spans of its parts: a rehearsal holds hundreds of thousands of ids
/// (messages, plan decisions, the simulator's indexes) and clones them freely, and an id of
/// a separate string per part took about ten allocations, each clone as many again.
#[derive(Clone)]
pub struct ResourceId {
    /// The id as it arrived, then the same bytes lowercased (ASCII: the same length).
    text: Arc<str>,
    /// Where each part lies in the id as it arrived, as byte ranges.
    subscription: Span,
    resource_group: Option<Span>,
    provider: Option<Span>,
    /// Where the `type/name` pairs after the provider begin (the id's length when none).
    segments_at: u32,
}

/// A byte range of an id (ids are short: far below 4 GiB).
type Span = (u32, u32);

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

impl ResourceKind {
    /// The targets of a migration: sites and their slots.
    pub(crate) const TARGETS: &'static [ResourceKind] = &[ResourceKind::Site, ResourceKind::Slot];
    /// What gateway-based integration and peerings may reach: VNets, classic ones included.
    pub(crate) const ANY_VNET: &'static [ResourceKind] = &[
        ResourceKind::VirtualNetwork,
        ResourceKind::ClassicVirtualNetwork,
    ];

    /// The kind of a `type` property's value (case-insensitive, as ARM types are).
    pub(crate) fn of_type(ty: &str) -> ResourceKind {
        if ty.eq_ignore_ascii_case(ResourceKind::ResourceGroup.arm_type()) {
            ResourceKind::ResourceGroup
        } else if ty.eq_ignore_ascii_case(ResourceKind::Subscription.arm_type()) {
            ResourceKind::Subscription
        } else {
            ResourceKind::of_resource_type(ty)
        }
    }

    /// The kind of a resource type below a provider (`Microsoft.Web/sites/slots`).
    fn of_resource_type(ty: &str) -> ResourceKind {
        let mut parts = ty.split('/');
        let provider = parts.next().unwrap_or_default();
        ResourceKind::of_provider_types(provider, parts)
    }

    /// The kind of a provider's nested `types` (case-insensitive), without building the type.
    fn of_provider_types<'a>(provider: &str, types: impl Iterator<Item = &'a str>) -> ResourceKind {
        const KINDS: &[(&str, &[&str], ResourceKind)] = &[
            ("microsoft.web", &["sites"], ResourceKind::Site),
            ("microsoft.web", &["sites", "slots"], ResourceKind::Slot),
            ("microsoft.web", &["serverfarms"], ResourceKind::ServerFarm),
            (
                "microsoft.web",
                &["sites", "virtualnetworkconnections"],
                ResourceKind::SiteVnetConnection,
            ),
            (
                "microsoft.web",
                &["sites", "slots", "virtualnetworkconnections"],
                ResourceKind::SiteVnetConnection,
            ),
            (
                "microsoft.network",
                &["virtualnetworks"],
                ResourceKind::VirtualNetwork,
            ),
            (
                "microsoft.network",
                &["virtualnetworks", "subnets"],
                ResourceKind::Subnet,
            ),
            (
                "microsoft.network",
                &["virtualnetworks", "virtualnetworkpeerings"],
                ResourceKind::Peering,
            ),
            (
                "microsoft.classicnetwork",
                &["virtualnetworks"],
                ResourceKind::ClassicVirtualNetwork,
            ),
            (
                "microsoft.insights",
                &["autoscalesettings"],
                ResourceKind::AutoscaleSetting,
            ),
        ];
        // No kind above nests more than three types deep.
        let mut found = [""; 4];
        let mut n = 0;
        for t in types {
            if n == found.len() {
                return ResourceKind::Other;
            }
            found[n] = t;
            n += 1;
        }
        let found = &found[..n];
        KINDS
            .iter()
            .find(|(p, ts, _)| {
                p.eq_ignore_ascii_case(provider)
                    && ts.len() == found.len()
                    && ts.iter().zip(found).all(|(a, b)| a.eq_ignore_ascii_case(b))
            })
            .map_or(ResourceKind::Other, |(_, _, kind)| *kind)
    }

    /// The ARM type as a `type` property spells it (for messages).
    pub(crate) fn arm_type(self) -> &'static str {
        match self {
            ResourceKind::Subscription => "Microsoft.Resources/subscriptions",
            ResourceKind::ResourceGroup => "Microsoft.Resources/resourceGroups",
            ResourceKind::Site => "Microsoft.Web/sites",
            ResourceKind::Slot => "Microsoft.Web/sites/slots",
            ResourceKind::ServerFarm => "Microsoft.Web/serverfarms",
            ResourceKind::VirtualNetwork => "Microsoft.Network/virtualNetworks",
            ResourceKind::Subnet => "Microsoft.Network/virtualNetworks/subnets",
            ResourceKind::Peering => "Microsoft.Network/virtualNetworks/virtualNetworkPeerings",
            ResourceKind::SiteVnetConnection => "Microsoft.Web/sites/virtualNetworkConnections",
            ResourceKind::ClassicVirtualNetwork => "Microsoft.ClassicNetwork/virtualNetworks",
            ResourceKind::AutoscaleSetting => "Microsoft.Insights/autoscalesettings",
            ResourceKind::Other => "other",
        }
    }
}

/// A value that must stay one path segment once joined into an id: no `/`, and a valid segment.
fn one_segment(seg: &str) -> Result<(), Malformed> {
    if seg.contains('/') {
        return Err(Malformed::ForbiddenChar {
            segment: seg.to_string(),
            ch: '/',
        });
    }
    check_segment(seg)
}

/// Refuses a segment that would change the path it stands in, or hide in it.
fn check_segment(seg: &str) -> Result<(), Malformed> {
    if seg.is_empty() {
        return Err(Malformed::EmptySegment);
    }
    // Nearly every segment is printable ASCII: decided byte by byte, without decoding chars.
    let bytes = seg.as_bytes();
    let plain = |b: &u8| (b' '..0x7f).contains(b) && !matches!(b, b'%' | b'?' | b'#' | b'\\');
    if bytes.iter().all(plain)
        && bytes[0] != b' '
        && bytes[bytes.len() - 1] != b' '
        && seg != "."
        && seg != ".."
    {
        return Ok(());
    }
    if seg == "." || seg == ".." {
        return Err(Malformed::DotSegment(seg.to_string()));
    }
    if let Some(ch) = seg
        .chars()
        .find(|c| matches!(c, '%' | '?' | '#' | '\\') || c.is_control())
    {
        return Err(Malformed::ForbiddenChar {
            segment: seg.to_string(),
            ch,
        });
    }
    if seg.starts_with(char::is_whitespace) || seg.ends_with(char::is_whitespace) {
        return Err(Malformed::EdgeWhitespace(seg.to_string()));
    }
    Ok(())
}

impl ResourceId {
    pub fn parse(s: &str) -> Result<Self, ResourceIdError> {
        let err = |why| ResourceIdError {
            id: s.to_string(),
            why,
        };
        let Some(path) = s.strip_prefix('/') else {
            return Err(err(Malformed::NoSubscription));
        };
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts {
            check_segment(p).map_err(err)?;
        }
        if parts.len() < 2 || !parts[0].eq_ignore_ascii_case("subscriptions") {
            return Err(err(Malformed::NoSubscription));
        }
        // Byte offset in `s` of a part: each is a slice of `s`.
        let start = |i: usize| parts[i].as_ptr() as usize - s.as_ptr() as usize;
        let span = |i: usize| -> Span { (start(i) as u32, (start(i) + parts[i].len()) as u32) };
        let subscription = span(1);
        let mut i = 2;
        let mut resource_group = None;
        if parts.len() > i && parts[i].eq_ignore_ascii_case("resourceGroups") {
            if parts.len() == i + 1 {
                return Err(err(Malformed::ResourceGroupWithoutName));
            }
            resource_group = Some(span(i + 1));
            i += 2;
        }
        let mut provider = None;
        let mut segments_at = s.len();
        if parts.len() > i {
            if !parts[i].eq_ignore_ascii_case("providers") {
                return Err(err(Malformed::ExpectedProviders));
            }
            if parts.len() == i + 1 {
                return Err(err(Malformed::NoNamespace));
            }
            provider = Some(span(i + 1));
            i += 2;
            let rest = &parts[i..];
            if rest.is_empty() {
                return Err(err(Malformed::NoResourceType));
            }
            if !rest.len().is_multiple_of(2) {
                return Err(err(Malformed::NoName));
            }
            segments_at = start(i);
        }
        if u32::try_from(s.len()).is_err() {
            return Err(err(Malformed::TooLong));
        }
        let mut text = String::with_capacity(2 * s.len());
        text.push_str(s);
        text.push_str(s);
        text[s.len()..].make_ascii_lowercase();
        Ok(Self {
            text: text.into(),
            subscription,
            resource_group,
            provider,
            segments_at: segments_at as u32,
        })
    }

    /// The id as it arrived.
    fn raw(&self) -> &str {
        &self.text[..self.text.len() / 2]
    }

    fn part(&self, (from, to): Span) -> &str {
        &self.raw()[from as usize..to as usize]
    }

    /// The `type/name` pairs after the provider, as text (empty for a scope id).
    fn segments_text(&self) -> &str {
        &self.raw()[self.segments_at as usize..]
    }

    /// The `(type, name)` pairs after the provider, outermost first.
    fn segments(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut parts = self.segments_text().split('/');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// The innermost `(type, name)` pair.
    fn last_segment(&self) -> Option<(&str, &str)> {
        let mut parts = self.segments_text().rsplitn(3, '/');
        let name = parts.next().filter(|n| !n.is_empty())?;
        Some((parts.next()?, name))
    }

    /// Ok when the id is one of `kinds`; otherwise an error naming what was expected.
    pub(crate) fn check_kind(&self, kinds: &'static [ResourceKind]) -> Result<(), ResourceIdError> {
        if kinds.contains(&self.kind()) {
            return Ok(());
        }
        Err(ResourceIdError {
            id: self.raw().to_string(),
            why: Malformed::WrongKind {
                expected: kinds,
                got: self.type_name(),
            },
        })
    }

    pub fn as_str(&self) -> &str {
        self.raw()
    }

    /// Lowercased form: the identity used for equality, hashing, session ids and message ids.
    pub fn key(&self) -> &str {
        &self.text[self.text.len() / 2..]
    }

    /// The SHA-256 of `key`, in hex: 64 characters whatever the id's length. For where a
    /// long id does not fit: a Service Bus SessionId (at most 128 characters), a Table Storage
    /// key, an index entry kept within its page.
    pub fn key_digest(&self) -> String {
        key_digest(self.key())
    }

    pub fn subscription(&self) -> &str {
        self.part(self.subscription)
    }

    pub(crate) fn resource_group(&self) -> Option<&str> {
        self.resource_group.map(|s| self.part(s))
    }

    pub(crate) fn provider(&self) -> Option<&str> {
        self.provider.map(|s| self.part(s))
    }

    /// Full type, e.g. `Microsoft.Web/sites/slots`; `None` for scope ids.
    pub(crate) fn resource_type(&self) -> Option<String> {
        let mut t = self.provider()?.to_string();
        for (ty, _) in self.segments() {
            t.push('/');
            t.push_str(ty);
        }
        Some(t)
    }

    /// The type as ARM's `type` property spells it: the full resource type, or for scope ids
    /// `Microsoft.Resources/resourceGroups` / `Microsoft.Resources/subscriptions`.
    pub(crate) fn type_name(&self) -> String {
        match self.resource_type() {
            Some(t) => t,
            None if self.resource_group.is_some() => ResourceKind::ResourceGroup.arm_type().into(),
            None => ResourceKind::Subscription.arm_type().into(),
        }
    }

    /// Last name segment (resource name, resource group name or subscription id).
    pub fn name(&self) -> &str {
        if let Some((_, n)) = self.last_segment() {
            n
        } else if let Some(rg) = self.resource_group() {
            rg
        } else {
            self.subscription()
        }
    }

    pub fn kind(&self) -> ResourceKind {
        match self.provider() {
            Some(p) => ResourceKind::of_provider_types(p, self.segments().map(|(ty, _)| ty)),
            None if self.resource_group.is_some() => ResourceKind::ResourceGroup,
            None => ResourceKind::Subscription,
        }
    }

    /// The enclosing resource (`…/sites/a/slots/b` → `…/sites/a`), resource group, or
    /// subscription; `None` for a subscription.
    pub fn parent(&self) -> Option<ResourceId> {
        let segments = self.segments().count();
        let cut = if segments > 1 {
            self.raw().len()
                - self
                    .last_segment()
                    .map(|(t, n)| t.len() + n.len() + 2)
                    .unwrap_or(0)
        } else if segments == 1 {
            match self.resource_group {
                Some((_, end)) => end as usize,
                None => self.subscription.1 as usize,
            }
        } else {
            // A resource group's parent is its subscription; a subscription has none.
            self.resource_group?;
            self.subscription.1 as usize
        };
        Some(self.prefix(cut))
    }

    /// The id made of the first `cut` bytes of this one, `cut` being where one of its parts
    /// ends: its parts were checked when this id was parsed, so they are only cut, not parsed.
    fn prefix(&self, cut: usize) -> ResourceId {
        let mut text = String::with_capacity(2 * cut);
        text.push_str(&self.raw()[..cut]);
        text.push_str(&self.key()[..cut]);
        let ends_within = |s: &Span| s.1 as usize <= cut;
        let provider = self.provider.filter(|_| cut > self.segments_at as usize);
        ResourceId {
            text: text.into(),
            subscription: self.subscription,
            resource_group: self.resource_group.filter(ends_within),
            provider,
            segments_at: if provider.is_some() {
                self.segments_at
            } else {
                cut as u32
            },
        }
    }

    /// A child resource: `self/{type}/{name}`. Only valid below a resource, not a scope; `ty`
    /// and `name` must each be one segment (a `/` in a name would make it another resource).
    pub(crate) fn child(&self, ty: &str, name: &str) -> Result<ResourceId, ResourceIdError> {
        let err = |why| ResourceIdError {
            id: format!("{}/{ty}/{name}", self.raw()),
            why,
        };
        if self.provider.is_none() {
            return Err(err(Malformed::ScopeHasNoChildren));
        }
        one_segment(ty).and(one_segment(name)).map_err(err)?;
        Self::parse(&format!("{}/{}/{}", self.raw(), ty, name))
    }

    /// The id of a subscription; refused unless `sub` is one valid segment.
    pub fn subscription_id(sub: &str) -> Result<ResourceId, ResourceIdError> {
        one_segment(sub).map_err(|why| ResourceIdError {
            id: format!("/subscriptions/{sub}"),
            why,
        })?;
        Self::parse(&format!("/subscriptions/{sub}"))
    }

    /// The id of a resource group; refused unless `sub` and `rg` are one valid segment each.
    pub(crate) fn resource_group_id(sub: &str, rg: &str) -> Result<ResourceId, ResourceIdError> {
        let id = format!("/subscriptions/{sub}/resourceGroups/{rg}");
        one_segment(sub)
            .and(one_segment(rg))
            .map_err(|why| ResourceIdError {
                id: id.clone(),
                why,
            })?;
        Self::parse(&id)
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
        let (inner, outer) = (self.key(), scope.key());
        inner == outer || (inner.starts_with(outer) && inner[outer.len()..].starts_with('/'))
    }
}

/// ARM's rules for the names a user types where this tool takes them (scope flags, policy
/// scope, `--app`), from MicrosoftDocs/azure-docs `resource-name-rules.md` unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// A GUID in its 36-character form: "The ID of the target subscription. The value must be
    /// an UUID." (azure-rest-api-specs common-types `SubscriptionIdParameter`); ARM answers
    /// anything else with 400 `InvalidSubscriptionId` "The provided subscription identifier
    /// '…' is malformed or invalid." (Azure/apiops#460, MicrosoftDocs/azure-docs#77959).
    SubscriptionId,
    /// 1–90 letters, digits, `_`, `-`, `.`, `(`, `)`, not ending in `.` (Microsoft.Resources
    /// resourcegroups; ARM's 400 `InvalidResourceGroup`, Azure/azure-cli#14481).
    ResourceGroup,
    /// 2–60 letters, digits and `-`, not starting or ending with `-` (Microsoft.Web sites).
    Site,
    /// 2–59 letters, digits and `-` (Microsoft.Web sites/slots).
    Slot,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::SubscriptionId => "subscription id",
            NameRule::ResourceGroup => "resource group name",
            NameRule::Site => "app name",
            NameRule::Slot => "slot name",
        })
    }
}

/// A name ARM would refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid {rule}: {why}")]
pub(crate) struct NameError {
    pub(crate) rule: NameRule,
    pub(crate) name: String,
    pub(crate) why: &'static str,
}

impl NameRule {
    pub(crate) fn check(self, name: &str) -> Result<(), NameError> {
        let bad = |why| {
            Err(NameError {
                rule: self,
                name: name.to_string(),
                why,
            })
        };
        // Letters and digits in ARM's sense include Unicode ones (`Char.IsLetterOrDigit` for
        // resource groups, Punycode-mappable characters for sites).
        let len = name.chars().count();
        match self {
            NameRule::SubscriptionId => {
                if name.len() != 36 || uuid::Uuid::try_parse(name).is_err() {
                    return bad("expected a GUID like 00000000-0000-0000-0000-000000000000");
                }
            }
            NameRule::ResourceGroup => {
                if !(1..=90).contains(&len) {
                    return bad("must be 1 to 90 characters");
                }
                let allowed =
                    |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')');
                if !name.chars().all(allowed) {
                    return bad("only letters, digits, '_', '-', '.', '(' and ')' are allowed");
                }
                if name.ends_with('.') {
                    return bad("must not end with '.'");
                }
            }
            NameRule::Site | NameRule::Slot => {
                let max = if self == NameRule::Site { 60 } else { 59 };
                if !(2..=max).contains(&len) {
                    return bad(if self == NameRule::Site {
                        "must be 2 to 60 characters"
                    } else {
                        "must be 2 to 59 characters"
                    });
                }
                if !name.chars().all(|c| c.is_alphanumeric() || c == '-') {
                    return bad("only letters, digits and '-' are allowed");
                }
                if self == NameRule::Site && (name.starts_with('-') || name.ends_with('-')) {
                    return bad("must not start or end with '-'");
                }
            }
        }
        Ok(())
    }
}

impl ResourceId {
    /// The names in this id a user could have mistyped, checked against ARM's rules: the
    /// subscription, the resource group, and a site's or slot's own names.
    pub(crate) fn check_names(&self) -> Result<(), NameError> {
        NameRule::SubscriptionId.check(self.subscription())?;
        if let Some(rg) = self.resource_group() {
            NameRule::ResourceGroup.check(rg)?;
        }
        let segments: Vec<(&str, &str)> = self.segments().collect();
        match (self.kind(), segments.as_slice()) {
            (ResourceKind::Site, [(_, site)]) => NameRule::Site.check(site),
            (ResourceKind::Slot, [(_, site), (_, slot)]) => {
                NameRule::Site.check(site)?;
                NameRule::Slot.check(slot)
            }
            _ => Ok(()),
        }
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ResourceId {}
impl Hash for ResourceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}
impl PartialOrd for ResourceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ResourceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}
/// `ResourceId::key_digest` of the id whose key is `key`.
pub(crate) fn key_digest(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw())
    }
}
impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceId({})", self.raw())
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
        s.serialize_str(self.raw())
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
    fn refuses_segments_that_change_the_path() {
        let site = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites";
        for (bad, why) in [
            (format!("{site}/.."), Malformed::DotSegment("..".into())),
            (
                "/subscriptions/../..".to_string(),
                Malformed::DotSegment("..".into()),
            ),
            (
                "/subscriptions/s/resourceGroups/./providers/Microsoft.Web/sites/a".to_string(),
                Malformed::DotSegment(".".into()),
            ),
            (
                format!("{site}/a%2Fb"),
                Malformed::ForbiddenChar {
                    segment: "a%2Fb".into(),
                    ch: '%',
                },
            ),
            (
                format!("{site}/a%"),
                Malformed::ForbiddenChar {
                    segment: "a%".into(),
                    ch: '%',
                },
            ),
            (
                format!("{site}/a?x=1"),
                Malformed::ForbiddenChar {
                    segment: "a?x=1".into(),
                    ch: '?',
                },
            ),
            (
                format!("{site}/a#b"),
                Malformed::ForbiddenChar {
                    segment: "a#b".into(),
                    ch: '#',
                },
            ),
            (
                format!("{site}/a\\b"),
                Malformed::ForbiddenChar {
                    segment: "a\\b".into(),
                    ch: '\\',
                },
            ),
            (
                format!("{site}/a\nb"),
                Malformed::ForbiddenChar {
                    segment: "a\nb".into(),
                    ch: '\n',
                },
            ),
            (
                format!("{site}/a\u{7f}"),
                Malformed::ForbiddenChar {
                    segment: "a\u{7f}".into(),
                    ch: '\u{7f}',
                },
            ),
            (
                format!("{site}/a\n"),
                Malformed::ForbiddenChar {
                    segment: "a\n".into(),
                    ch: '\n',
                },
            ),
            (format!("{site}/ a"), Malformed::EdgeWhitespace(" a".into())),
            (format!(" {site}/a"), Malformed::NoSubscription),
            (format!("{site}/a/"), Malformed::EmptySegment),
            (
                "/subscriptions/s/resourceGroups/rg /providers/Microsoft.Web/sites/a".to_string(),
                Malformed::EdgeWhitespace("rg ".into()),
            ),
            (
                "/subscriptions/s//resourceGroups/rg".to_string(),
                Malformed::EmptySegment,
            ),
        ] {
            let e = ResourceId::parse(&bad).unwrap_err();
            assert_eq!(e.why, why, "{bad}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        // Spaces inside a name are ARM's to judge (some types allow them), at the edges never.
        assert!(ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/microsoft.insights/actiongroups/Smart Detection").is_ok());
    }

    #[test]
    fn values_joined_into_ids_stay_one_segment() {
        assert!(ResourceId::subscription_id("00000000-0000-0000-0000-000000000001").is_ok());
        for bad in ["", "..", "a/resourceGroups/b", "%2F", "a b ", "x\t"] {
            assert!(ResourceId::subscription_id(bad).is_err(), "{bad:?}");
            assert!(ResourceId::resource_group_id("s", bad).is_err(), "{bad:?}");
        }
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        assert!(vnet.child("subnets", "a/b/c").is_err());
        assert!(vnet.child("subnets", "..").is_err());
        assert_eq!(
            ResourceId::subscription_id("s")
                .unwrap()
                .child("subnets", "a")
                .unwrap_err()
                .why,
            Malformed::ScopeHasNoChildren
        );
    }

    #[test]
    fn check_kind_names_the_type_wanted() {
        const SITES: &[ResourceKind] = &[ResourceKind::Site, ResourceKind::Slot];
        let wrong = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/sites/a",
        )
        .unwrap();
        let e = wrong.check_kind(SITES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid ARM resource id \"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/sites/a\": \
             expected a Microsoft.Web/sites or Microsoft.Web/sites/slots id, got a Microsoft.Network/sites id"
        );
        let site = ResourceId::parse(SLOT).unwrap().site().unwrap();
        assert!(site.check_kind(SITES).is_ok());
        let rg = ResourceId::resource_group_id("s", "rg").unwrap();
        assert_eq!(rg.type_name(), "Microsoft.Resources/resourceGroups");
        assert_eq!(
            site.parent().unwrap().parent().unwrap().type_name(),
            "Microsoft.Resources/subscriptions"
        );
    }

    #[test]
    fn name_rules_follow_arm() {
        let ok = |r: NameRule, n: &str| assert!(r.check(n).is_ok(), "{r} {n:?}");
        let bad = |r: NameRule, n: &str| assert!(r.check(n).is_err(), "{r} {n:?}");
        ok(
            NameRule::SubscriptionId,
            "00000000-0000-0000-0000-000000000001",
        );
        ok(
            NameRule::SubscriptionId,
            "630F6BD9-CDA8-4F5C-8A85-4D5D7725487E",
        );
        for s in [
            "",
            "s",
            "../..",
            "00000000000000000000000000000001",
            "{00000000-0000-0000-0000-000000000001}",
            "00000000-0000-0000-0000-00000000000g",
        ] {
            bad(NameRule::SubscriptionId, s);
        }
        for rg in ["r", "rg-apps_(1).x", "Ünïcode", &"a".repeat(90)] {
            ok(NameRule::ResourceGroup, rg);
        }
        for rg in ["", "rg.", "a/b", "a b", "a%2F", &"a".repeat(91)] {
            bad(NameRule::ResourceGroup, rg);
        }
        for site in ["ab", "app-1", &"a".repeat(60)] {
            ok(NameRule::Site, site);
        }
        for site in ["a", "-app", "app-", "app_1", "a.b", &"a".repeat(61)] {
            bad(NameRule::Site, site);
        }
        ok(NameRule::Slot, "staging");
        bad(NameRule::Slot, &"a".repeat(60));
        let e = NameRule::ResourceGroup.check("rg.").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"rg.\" is not a valid resource group name: must not end with '.'"
        );
    }

    #[test]
    fn check_names_covers_subscription_group_site_and_slot() {
        let id = |s: &str| ResourceId::parse(s).unwrap();
        let sub = "00000000-0000-0000-0000-000000000001";
        assert!(id(&format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/app1/slots/staging")).check_names().is_ok());
        assert!(id(SLOT).check_names().is_ok());
        for bad in [
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/app1".to_string(),
            format!("/subscriptions/{sub}/resourceGroups/rg./providers/Microsoft.Web/sites/app1"),
            format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/a"),
            format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/app1/slots/s_1"),
        ] {
            assert!(id(&bad).check_names().is_err(), "{bad}");
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

    /// Every part of an id as parsing finds it, to compare ids beyond their text.
    fn parts(id: &ResourceId) -> (String, String, Option<String>, Option<String>, String) {
        (
            id.key().to_string(),
            id.subscription().to_string(),
            id.resource_group().map(str::to_string),
            id.provider().map(str::to_string),
            id.segments_text().to_string(),
        )
    }

    /// `parent` cuts the id rather than parsing the cut text: the same id, part for part.
    #[test]
    fn a_parent_is_what_parsing_its_text_gives() {
        for id in [
            "/subscriptions/S/resourceGroups/R/providers/Microsoft.Web/sites/A/slots/B/virtualNetworkConnections/V",
            "/subscriptions/S/resourceGroups/R/providers/Microsoft.Web/sites/A/slots/B",
            "/subscriptions/S/resourceGroups/R/providers/Microsoft.Web/sites/A",
            "/subscriptions/S/providers/Microsoft.Insights/autoscaleSettings/X",
            "/subscriptions/S/resourceGroups/R",
        ] {
            let mut id = ResourceId::parse(id).unwrap();
            while let Some(parent) = id.parent() {
                let parsed = ResourceId::parse(parent.as_str()).unwrap();
                assert_eq!(parts(&parent), parts(&parsed), "parent of {id}");
                assert_eq!(parent.kind(), parsed.kind());
                id = parent;
            }
            assert_eq!(id.kind(), ResourceKind::Subscription);
        }
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

        /// The byte-wise check of plain segments agrees with the rules as written for chars.
        #[test]
        fn a_segment_is_checked_the_same_byte_by_byte(seg in "[ -~\\t\u{a0}\u{e9}\u{2028}]{0,6}") {
            let by_chars = if seg.is_empty() {
                Err(Malformed::EmptySegment)
            } else if seg == "." || seg == ".." {
                Err(Malformed::DotSegment(seg.clone()))
            } else if let Some(ch) = seg.chars().find(|c| matches!(c, '%' | '?' | '#' | '\\') || c.is_control()) {
                Err(Malformed::ForbiddenChar { segment: seg.clone(), ch })
            } else if seg.starts_with(char::is_whitespace) || seg.ends_with(char::is_whitespace) {
                Err(Malformed::EdgeWhitespace(seg.clone()))
            } else {
                Ok(())
            };
            prop_assert_eq!(check_segment(&seg), by_chars);
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

        /// Anything accepted displays as an id that parses back to the same id, displayed the
        /// same way (fleet files, messages and the ledger store the displayed form).
        #[test]
        fn accepted_ids_round_trip(s in "(/[A-Za-z0-9 .%?#_()-]{0,6}){1,8}/?") {
            if let Ok(id) = ResourceId::parse(&s) {
                let again = ResourceId::parse(id.as_str()).unwrap();
                prop_assert_eq!(&again, &id);
                prop_assert_eq!(again.as_str(), id.as_str());
                prop_assert!(!id.as_str().contains(['%', '?', '#']));
                prop_assert!(!id.as_str().split('/').any(|seg| seg == "." || seg == ".."));
            }
        }

        /// A forbidden character anywhere in a name makes the id invalid.
        #[test]
        fn forbidden_characters_are_refused(app in seg(), at in 0usize..12, ch in prop::sample::select(vec!['%', '?', '#', '\\', '\n', '\t', '\u{0}'])) {
            let at = at.min(app.len());
            let name = format!("{}{ch}{}", &app[..at], &app[at..]);
            let s = format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{name}");
            prop_assert!(ResourceId::parse(&s).is_err());
        }
    }
}
