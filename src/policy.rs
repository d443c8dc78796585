//! The rollout policy (`rollout.json`, DESIGN §9; schema in `docs/policy.schema.json`).
//!
//! Every field has a default, so an empty object (or no file at all, see
//! [`Policy::load_or_default`]) is a valid policy. Unknown fields are rejected: a typo in a
//! safety setting must not silently fall back to a default. Numbers are bounded (each limit
//! says why), names follow ARM's rules, and every error is one line naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::azure::resource_id::{NameError, NameRule, ResourceId, ResourceIdError, ResourceKind};
use crate::pipeline::runner::RunnerConfig;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy is not valid JSON")]
    Syntax(#[source] serde_json::Error),
    /// A JSON document of another shape (serde would read an array as a struct's fields in
    /// order, so `[]` would pass for the defaults).
    #[error("policy must be a JSON object ({{\"field\": value, …}}), got {0}")]
    NotAnObject(&'static str),
    #[error("policy field {field}: {message}")]
    Field { field: String, message: String },
    /// A field of the published schema the tool does not honour yet: accepting it would let a
    /// user believe it is honoured (DESIGN §9: a field accepted and ignored is a defect).
    #[error("policy field {0} is not supported yet: remove it")]
    Unsupported(&'static str),
}

/// A scope value ARM would refuse (shared with the scope flags of the command line).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScopeValueError {
    #[error(transparent)]
    Id(#[from] ResourceIdError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("tag name {0:?}: must be 1 to 512 characters, without '<', '>', '%', '&', '\\', '?', '/' or control characters")]
    TagName(String),
    #[error("tag {0:?}: its value must be at most 256 characters")]
    TagValue(String),
}

/// A resource group in scope: its name, or its id (a name shared by several subscriptions).
pub(crate) fn check_resource_group(s: &str) -> Result<(), ScopeValueError> {
    if s.starts_with('/') {
        let id = ResourceId::parse(s)?;
        id.check_kind(&[ResourceKind::ResourceGroup])?;
        id.check_names()?;
    } else {
        NameRule::ResourceGroup.check(s)?;
    }
    Ok(())
}

/// ARM's tag limits: names 1–512 characters without `<>%&\?/` or control characters, values up
/// to 256 characters (MicrosoftDocs/azure-docs resource-name-rules.md, Microsoft.Resources
/// tagNames and tagNames/tagValues).
pub(crate) fn check_tag(name: &str, value: &str) -> Result<(), ScopeValueError> {
    let bad_char = |c: char| "<>%&\\?/".contains(c) || c.is_control();
    if !(1..=512).contains(&name.chars().count()) || name.chars().any(bad_char) {
        return Err(ScopeValueError::TagName(name.to_string()));
    }
    if value.chars().count() > 256 {
        return Err(ScopeValueError::TagValue(name.to_string()));
    }
    Ok(())
}

/// Upper bounds of the policy's numbers. A bound is where a larger value can only be a typo or
/// harm: it is named in the error.
const MAX_SETTLE_SECONDS: u64 = 3_600;
const MAX_ATTEMPTS: u32 = 100;
/// ARM's per-subscription write bucket holds 200 requests (arm-vnet reference §8): more
/// targets at once than that only wait for tokens, and hold their apps mid-migration meanwhile.
const MAX_CONCURRENCY: u32 = 200;
const MAX_BAKE_MINUTES: u32 = 7 * 24 * 60;

fn field_err(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    pub(crate) scope: Scope,
    /// Wave sizes, canary first; targets left over after the last wave form one more wave.
    pub(crate) waves: Vec<WaveSize>,
    pub(crate) concurrency: Concurrency,
    /// Wait after a wave's last terminal outcome before its gates are judged and the next
    /// wave starts.
    pub(crate) bake_minutes: u32,
    pub(crate) gates: Gates,
    /// Maintenance windows: a target's cut-over starts only inside one of the windows whose
    /// tags it carries; a target no window covers may be cut over at any time.
    pub(crate) windows: Vec<Window>,
    pub(crate) subnet: SubnetPolicy,
    pub(crate) routing: Routing,
    pub(crate) rollback: RollbackMode,
    /// Step attempts (each with in-step retries) before a target is parked.
    pub(crate) max_attempts: u32,
    pub(crate) on_deploy: OnDeploy,
    /// Delay between configure and verify, so the app has restarted on the new network.
    pub(crate) settle_seconds: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            waves: Vec::new(),
            concurrency: Concurrency::default(),
            bake_minutes: 0,
            gates: Gates::default(),
            windows: Vec::new(),
            subnet: SubnetPolicy::default(),
            routing: Routing::default(),
            rollback: RollbackMode::Auto,
            max_attempts: 5,
            on_deploy: OnDeploy::PlanOnly,
            settle_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Scope {
    /// Subscription ids; empty = every subscription the run was given.
    pub subscriptions: Vec<String>,
    /// Resource group names, or resource group ids when a name is ambiguous across subscriptions.
    pub(crate) resource_groups: Vec<String>,
    /// Every tag listed must be present with this value (tag names compare case-insensitively).
    pub(crate) tags: BTreeMap<String, String>,
    /// Ids left out, with everything below them (a site excludes its slots).
    pub(crate) exclude: Vec<ResourceId>,
}

impl Scope {
    /// Whether a target (site or slot) with these tags is in scope.
    pub(crate) fn includes(&self, id: &ResourceId, tags: Option<&Map<String, Value>>) -> bool {
        self.places(id) && tags_match(&self.tags, tags)
    }

    /// Whether an id lies in the scope's subscriptions and resource groups and is not
    /// excluded: everything but the tags, which only ARM knows.
    pub(crate) fn places(&self, id: &ResourceId) -> bool {
        let sub_ok = self.subscriptions.is_empty()
            || self
                .subscriptions
                .iter()
                .any(|s| s.eq_ignore_ascii_case(id.subscription()));
        let rg_ok = self.resource_groups.is_empty()
            || self.resource_groups.iter().any(|rg| {
                if rg.starts_with('/') {
                    ResourceId::parse(rg).is_ok_and(|scope| id.is_within(&scope))
                } else {
                    id.resource_group()
                        .is_some_and(|own| own.eq_ignore_ascii_case(rg))
                }
            });
        sub_ok && rg_ok && !self.excludes(id)
    }

    /// Whether an id is one of the excluded ids or lies below one.
    pub(crate) fn excludes(&self, id: &ResourceId) -> bool {
        self.exclude.iter().any(|ex| id.is_within(ex))
    }
}

/// Every required tag is present with the same value; tag names are case-insensitive in ARM.
pub(crate) fn tags_match(
    required: &BTreeMap<String, String>,
    tags: Option<&Map<String, Value>>,
) -> bool {
    required.iter().all(|(k, v)| {
        tags.into_iter()
            .flatten()
            .any(|(tk, tv)| tk.eq_ignore_ascii_case(k) && tv.as_str() == Some(v.as_str()))
    })
}

/// A wave size: a number of targets (`5`) or a share of the targets in scope (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaveSize {
    Count(u32),
    Percent(u32),
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Count(n) => s.serialize_u32(*n),
            WaveSize::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WaveSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of targets or a percentage like \"10%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WaveSize, E> {
                u32::try_from(v)
                    .map(WaveSize::Count)
                    .map_err(|_| E::custom(format!("wave size {v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WaveSize, E> {
                Err(E::custom(format!("must be at least 1, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WaveSize, E> {
                let bad = || E::custom(format!("expected a percentage like \"10%\", got {v:?}"));
                let n = v.trim().strip_suffix('%').ok_or_else(bad)?;
                n.trim()
                    .parse::<u32>()
                    .map(WaveSize::Percent)
                    .map_err(|_| bad())
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Concurrency {
    pub(crate) per_subscription: u32,
    /// Planned targets of one destination VNet executing a step at once; none = no limit but
    /// the subscription's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_vnet: Option<u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            per_subscription: 16,
            per_vnet: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Gates {
    /// Share of a wave's targets (0–1) that may fail before the rollout pauses.
    pub(crate) max_failure_rate: f64,
    /// Checked per target at verify and again over a wave's migrated targets after its bake.
    pub(crate) key_vault_references_must_resolve: bool,
    /// Checked per target at verify and again over a wave's migrated targets after its bake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) probe: Option<Probe>,
    /// After a wave's bake and passed gate, the next wave waits for `rollout promote`.
    pub(crate) manual_approval: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_failure_rate: 0.1,
            key_vault_references_must_resolve: true,
            probe: None,
            manual_approval: false,
        }
    }
}

/// An HTTP GET of the app's own host name after migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Probe {
    pub(crate) path: String,
    pub(crate) expected_status: u16,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            path: "/".to_string(),
            expected_status: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Allowed UTC hours `[startHour, endHour)` on `days` (empty = every day) for targets carrying
/// `tags` (empty = every target). `endHour <= startHour` spans midnight into the next day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Window {
    pub(crate) days: Vec<Day>,
    pub(crate) start_hour: u8,
    pub(crate) end_hour: u8,
    pub(crate) tags: BTreeMap<String, String>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            days: Vec::new(),
            start_hour: 0,
            end_hour: 24,
            tags: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct SubnetPolicy {
    /// Name of a plan's new subnet; `{plan}` is replaced by the plan name.
    pub(crate) name_pattern: String,
    /// Prefix length used for a new subnet when space allows and it is larger than required.
    pub(crate) preferred_prefix: u8,
    /// Reuse empty subnets of other names (otherwise only the pattern's name or a linked one).
    pub(crate) reuse_empty_subnets: bool,
    /// The multi-plan subnet join: the plans of one subscription moving into one VNet share
    /// one subnet there (`plan::share`).
    pub(crate) shared_across_plans: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) network_security_group_id: Option<ResourceId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) route_table_id: Option<ResourceId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nat_gateway_id: Option<ResourceId>,
}

impl Default for SubnetPolicy {
    fn default() -> Self {
        Self {
            name_pattern: "snet-{plan}-integration".to_string(),
            preferred_prefix: 26,
            reuse_empty_subnets: false,
            shared_across_plans: false,
            network_security_group_id: None,
            route_table_id: None,
            nat_gateway_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct Routing {
    pub(crate) all_traffic: bool,
    pub(crate) image_pull: bool,
    pub(crate) content_share: bool,
    pub(crate) backup_restore: bool,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            all_traffic: true,
            image_pull: false,
            content_share: false,
            backup_restore: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RollbackMode {
    /// Restore the gateway connection automatically.
    Auto,
    /// Leave the target for an operator.
    Park,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnDeploy {
    Migrate,
    PlanOnly,
    Ignore,
}

/// Azure subnet names: 1–80 of letters, digits, `_`, `.`, `-`; start with a letter or digit,
/// end with a letter, digit or `_`.
fn valid_subnet_name_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Plan names are up to 60 characters and subnet names up to 80.
const MAX_PATTERN_FIXED_CHARS: usize = 20;

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_json(s: &str) -> Result<Policy, PolicyError> {
        // Shapes first: serde reads a JSON array where a struct is expected as its fields in
        // order, so `[]` would be the defaults and `"concurrency": [8]` would set a field.
        let doc: Value = serde_json::from_str(s).map_err(PolicyError::Syntax)?;
        objects_where_expected(&doc, &shape(), "")?;
        refuse_unsupported(&doc)?;
        let mut de = serde_json::Deserializer::from_str(s);
        let policy: Policy = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() && path != "." {
                field_err(&path, inner.to_string())
            } else {
                PolicyError::Syntax(inner)
            }
        })?;
        de.end().map_err(PolicyError::Syntax)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads and validates a policy file; a missing file is an error.
    pub(crate) fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Like [`Policy::load`], but a file that does not exist means the defaults (the
    /// `VNET_MIGRATE_POLICY` default path need not exist).
    pub(crate) fn load_or_default(path: &Path) -> Result<Policy, PolicyError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            _ => Self::load(path),
        }
    }

    /// The embedded runner's admission limits (`concurrency`), other settings at their defaults.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            per_subscription: self.concurrency.per_subscription as usize,
            per_vnet: self.concurrency.per_vnet.map(|n| n as usize),
            ..RunnerConfig::default()
        }
    }

    /// The name of the plan's own integration subnet.
    pub(crate) fn subnet_name(&self, plan_name: &str) -> String {
        self.subnet.name_pattern.replace("{plan}", plan_name)
    }

    /// The name of the subnet the plans of `subscription` share in a VNet
    /// (`subnet.sharedAcrossPlans`): the pattern with `shared-` and the subscription id's first
    /// eight characters for `{plan}`, since a VNet may serve plans of several subscriptions
    /// and ARM joins plans of one subscription only (arm-vnet reference §6).
    pub(crate) fn shared_subnet_name(&self, subscription: &str) -> String {
        let short: String = subscription
            .chars()
            .take(8)
            .collect::<String>()
            .to_ascii_lowercase();
        self.subnet_name(&format!("shared-{short}"))
    }

    /// Range and format checks serde cannot express; the first failure is returned.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        for (i, s) in self.scope.subscriptions.iter().enumerate() {
            NameRule::SubscriptionId
                .check(s)
                .map_err(|e| field_err(&format!("scope.subscriptions[{i}]"), e.to_string()))?;
        }
        for (i, rg) in self.scope.resource_groups.iter().enumerate() {
            check_resource_group(rg)
                .map_err(|e| field_err(&format!("scope.resourceGroups[{i}]"), e.to_string()))?;
        }
        for (k, v) in &self.scope.tags {
            check_tag(k, v).map_err(|e| field_err("scope.tags", e.to_string()))?;
        }
        for (i, w) in self.waves.iter().enumerate() {
            match *w {
                WaveSize::Count(0) => {
                    return Err(field_err(
                        &format!("waves[{i}]"),
                        "must be at least 1, got 0",
                    ))
                }
                WaveSize::Percent(p) if !(1..=100).contains(&p) => {
                    return Err(field_err(
                        &format!("waves[{i}]"),
                        format!("percentage must be between 1 and 100, got {p}"),
                    ))
                }
                _ => {}
            }
        }
        let limits = [
            (
                "concurrency.perSubscription",
                Some(self.concurrency.per_subscription),
            ),
            ("concurrency.perVnet", self.concurrency.per_vnet),
        ];
        for (field, n) in limits {
            if let Some(n) = n.filter(|n| !(1..=MAX_CONCURRENCY).contains(n)) {
                return Err(field_err(
                    field,
                    format!(
                        "must be between 1 and {MAX_CONCURRENCY} (ARM's write bucket per subscription), got {n}"
                    ),
                ));
            }
        }
        if self.bake_minutes > MAX_BAKE_MINUTES {
            return Err(field_err(
                "bakeMinutes",
                format!(
                    "must be at most {MAX_BAKE_MINUTES} (one week per wave), got {}",
                    self.bake_minutes
                ),
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            if w.start_hour > 23 {
                return Err(field_err(
                    &format!("windows[{i}].startHour"),
                    format!("must be between 0 and 23, got {}", w.start_hour),
                ));
            }
            if w.end_hour > 24 {
                return Err(field_err(
                    &format!("windows[{i}].endHour"),
                    format!("must be between 0 and 24, got {}", w.end_hour),
                ));
            }
        }
        let rate = self.gates.max_failure_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(field_err(
                "gates.maxFailureRate",
                format!("must be between 0 and 1, got {rate}"),
            ));
        }
        if let Some(p) = &self.gates.probe {
            if !p.path.starts_with('/') {
                return Err(field_err(
                    "gates.probe.path",
                    format!("must start with '/', got {:?}", p.path),
                ));
            }
            if !(100..=599).contains(&p.expected_status) {
                return Err(field_err(
                    "gates.probe.expectedStatus",
                    format!("must be between 100 and 599, got {}", p.expected_status),
                ));
            }
        }
        self.validate_subnet()?;
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(field_err(
                "maxAttempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS} (more only delays parking a target that keeps failing), got {}",
                    self.max_attempts
                ),
            ));
        }
        if self.settle_seconds > MAX_SETTLE_SECONDS {
            return Err(field_err(
                "settleSeconds",
                format!(
                    "must be at most {MAX_SETTLE_SECONDS} (an app restarts on its new network within minutes, arm-vnet reference §13; a longer wait keeps the target mid-migration), got {}",
                    self.settle_seconds
                ),
            ));
        }
        Ok(())
    }

    fn validate_subnet(&self) -> Result<(), PolicyError> {
        let pattern = &self.subnet.name_pattern;
        let fixed = pattern.replace("{plan}", "");
        let sample = self.subnet_name("p");
        let first_ok = sample
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let last_ok = sample
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !pattern.contains("{plan}") || !valid_subnet_name_chars(&fixed) || !first_ok || !last_ok
        {
            return Err(field_err(
                "subnet.namePattern",
                format!(
                    "must contain {{plan}} and otherwise only letters, digits, '_', '.', '-' \
                     (starting with a letter or digit, ending with a letter, digit or '_'), got {pattern:?}"
                ),
            ));
        }
        if fixed.len() > MAX_PATTERN_FIXED_CHARS {
            return Err(field_err(
                "subnet.namePattern",
                format!(
                    "at most {MAX_PATTERN_FIXED_CHARS} characters besides {{plan}} (subnet names \
                     are limited to 80), got {}",
                    fixed.len()
                ),
            ));
        }
        let p = self.subnet.preferred_prefix;
        if !(16..=28).contains(&p) {
            return Err(field_err(
                "subnet.preferredPrefix",
                format!("must be between 16 and 28, got {p}"),
            ));
        }
        let ids = [
            (
                "subnet.networkSecurityGroupId",
                &self.subnet.network_security_group_id,
                "Microsoft.Network/networkSecurityGroups",
            ),
            (
                "subnet.routeTableId",
                &self.subnet.route_table_id,
                "Microsoft.Network/routeTables",
            ),
            (
                "subnet.natGatewayId",
                &self.subnet.nat_gateway_id,
                "Microsoft.Network/natGateways",
            ),
        ];
        for (field, id, ty) in ids {
            if let Some(id) = id {
                if !id
                    .resource_type()
                    .is_some_and(|t| t.eq_ignore_ascii_case(ty))
                {
                    return Err(field_err(field, format!("must be a {ty} id, got {id}")));
                }
            }
        }
        Ok(())
    }
}

/// Fields of the published schema (DESIGN §9) that have no behaviour yet, as dotted paths.
/// A document naming one is refused whatever its value: even `false` would read as a promise
/// the runner does not keep. Empty while every field has its behaviour.
pub(crate) const UNSUPPORTED: [&str; 0] = [];

fn refuse_unsupported(doc: &Value) -> Result<(), PolicyError> {
    for field in UNSUPPORTED {
        let mut at = Some(doc);
        for part in field.split('.') {
            at = at.and_then(|v| v.get(part));
        }
        if at.is_some() {
            return Err(PolicyError::Unsupported(field));
        }
    }
    Ok(())
}

/// A policy with every nested object present (a probe, a window), so its JSON shows where the
/// document must hold objects.
fn shape() -> Value {
    let mut full = Policy::default();
    full.gates.probe = Some(Probe::default());
    full.windows = vec![Window::default()];
    serde_json::to_value(full).expect("policy serialises")
}

/// Refuses a non-object wherever `shape` has an object (and in each element of an array whose
/// shape has one); what the fields hold is left to serde, `null` included (`"probe": null` is
/// no probe, and serde names a required object that is null).
fn objects_where_expected(doc: &Value, shape: &Value, path: &str) -> Result<(), PolicyError> {
    match (shape, doc) {
        (Value::Object(fields), Value::Object(given)) => {
            for (k, v) in given {
                if let Some(s) = fields.get(k) {
                    let at = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    objects_where_expected(v, s, &at)?;
                }
            }
            Ok(())
        }
        (Value::Object(_), other) if path.is_empty() => {
            Err(PolicyError::NotAnObject(json_kind(other)))
        }
        (Value::Object(_), Value::Null) => Ok(()),
        (Value::Object(_), other) => Err(field_err(
            path,
            format!("must be a JSON object, got {}", json_kind(other)),
        )),
        (Value::Array(items), Value::Array(given)) => match items.first() {
            Some(item) => given
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| objects_where_expected(v, item, &format!("{path}[{i}]"))),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    const SCHEMA: &str = include_str!("../docs/policy.schema.json");

    fn err(doc: Value) -> String {
        Policy::from_json(&doc.to_string()).unwrap_err().to_string()
    }

    /// A policy with every optional field present, so its JSON shows every property.
    fn full() -> Policy {
        Policy::from_json(
            &json!({
                "scope": {"subscriptions": ["00000000-0000-0000-0000-000000000001"],
                          "resourceGroups": ["rg-apps", "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/rg2"],
                          "tags": {"env": "prod"},
                          "exclude": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/keep"]},
                "waves": [1, "10%", 50],
                "concurrency": {"perSubscription": 8, "perVnet": 2},
                "bakeMinutes": 30,
                "gates": {"maxFailureRate": 0.2, "keyVaultReferencesMustResolve": false,
                          "probe": {"path": "/health", "expectedStatus": 204}, "manualApproval": true},
                "subnet": {"namePattern": "snet-{plan}", "preferredPrefix": 27, "reuseEmptySubnets": true, "sharedAcrossPlans": true,
                           "networkSecurityGroupId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/networkSecurityGroups/nsg",
                           "routeTableId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/routeTables/rt",
                           "natGatewayId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/natGateways/nat"},
                "routing": {"allTraffic": false, "imagePull": true, "contentShare": true, "backupRestore": true},
                "rollback": "park",
                "maxAttempts": 3,
                "onDeploy": "migrate",
                "settleSeconds": 10
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn empty_document_is_the_defaults() {
        let p = Policy::from_json("{}").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(p.concurrency.per_subscription, 16);
        assert!(p.gates.key_vault_references_must_resolve);
        assert_eq!(p.subnet.preferred_prefix, 26);
        assert!(p.routing.all_traffic && !p.routing.backup_restore);
        assert_eq!(p.rollback, RollbackMode::Auto);
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.on_deploy, OnDeploy::PlanOnly);
        assert_eq!(p.settle_seconds, 60);
        assert_eq!(p.subnet_name("plan1"), "snet-plan1-integration");
    }

    #[test]
    fn full_document_round_trips() {
        let p = full();
        assert_eq!(
            p.waves,
            vec![
                WaveSize::Count(1),
                WaveSize::Percent(10),
                WaveSize::Count(50)
            ]
        );
        assert_eq!(p.on_deploy, OnDeploy::Migrate);
        let again = Policy::from_json(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn errors_name_the_field_on_one_line() {
        let cases = [
            (
                json!({"subnet": {"preferredPrefix": 30}}),
                "policy field subnet.preferredPrefix: must be between 16 and 28, got 30",
            ),
            (
                json!({"subnet": {"preferredPrefix": 8}}),
                "policy field subnet.preferredPrefix: must be between 16 and 28, got 8",
            ),
            (
                json!({"maxAttempts": 0}),
                "policy field maxAttempts: must be between 1 and 100 (more only delays parking a target that keeps failing), got 0",
            ),
            (
                json!({"concurrency": {"perSubscription": 0}}),
                "policy field concurrency.perSubscription: must be between 1 and 200 (ARM's write bucket per subscription), got 0",
            ),
            (
                json!({"concurrency": {"perVnet": 100000}}),
                "policy field concurrency.perVnet: must be between 1 and 200 (ARM's write bucket per subscription), got 100000",
            ),
            (
                json!({"settleSeconds": u64::MAX}),
                "policy field settleSeconds: must be at most 3600 (an app restarts on its new network within minutes, arm-vnet reference §13; a longer wait keeps the target mid-migration), got 18446744073709551615",
            ),
            (
                json!({"bakeMinutes": 10081}),
                "policy field bakeMinutes: must be at most 10080 (one week per wave), got 10081",
            ),
            (
                json!([]),
                "policy must be a JSON object ({\"field\": value, …}), got an array",
            ),
            (
                json!("{}"),
                "policy must be a JSON object ({\"field\": value, …}), got a string",
            ),
            (
                json!({"concurrency": [8, 1]}),
                "policy field concurrency: must be a JSON object, got an array",
            ),
            (
                json!({"windows": [{"startHour": 24}]}),
                "policy field windows[0].startHour: must be between 0 and 23, got 24",
            ),
            (
                json!({"gates": {"probe": ["/health"]}}),
                "policy field gates.probe: must be a JSON object, got an array",
            ),
            (
                json!({"scope": {"subscriptions": ["../.."]}}),
                "policy field scope.subscriptions[0]: \"../..\" is not a valid subscription id: expected a GUID like 00000000-0000-0000-0000-000000000000",
            ),
            (
                json!({"scope": {"resourceGroups": ["rg."]}}),
                "policy field scope.resourceGroups[0]: \"rg.\" is not a valid resource group name: must not end with '.'",
            ),
            (
                json!({"waves": [1, "150%"]}),
                "policy field waves[1]: percentage must be between 1 and 100, got 150",
            ),
            (
                json!({"waves": [0]}),
                "policy field waves[0]: must be at least 1, got 0",
            ),
            (
                json!({"gates": {"maxFailureRate": 1.5}}),
                "policy field gates.maxFailureRate: must be between 0 and 1, got 1.5",
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(err(doc), want);
        }
        let cases = [
            (
                json!({"subnet": {"namePattern": "snet-integration"}}),
                "policy field subnet.namePattern:",
            ),
            (
                json!({"subnet": {"namePattern": "snet {plan}"}}),
                "policy field subnet.namePattern:",
            ),
            (
                json!({"subnet": {"namePattern": "{plan}-"}}),
                "policy field subnet.namePattern:",
            ),
            (
                json!({"subnet": {"prefferedPrefix": 26}}),
                "policy field subnet.prefferedPrefix: unknown field",
            ),
            (json!({"wave": [1]}), "policy field wave: unknown field"),
            (
                json!({"scope": {"exclude": ["not-an-id"]}}),
                "policy field scope.exclude[0]: invalid ARM resource id",
            ),
            (
                json!({"subnet": {"routeTableId": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/networkSecurityGroups/x"}}),
                "policy field subnet.routeTableId: must be a Microsoft.Network/routeTables id",
            ),
            (
                json!({"waves": ["ten"]}),
                "policy field waves[0]: expected a percentage",
            ),
            (
                json!({"rollback": "maybe"}),
                "policy field rollback: unknown variant",
            ),
            (
                json!({"onDeploy": "always"}),
                "policy field onDeploy: unknown variant",
            ),
            (
                json!({"gates": {"probe": {"path": "health"}}}),
                "policy field gates.probe.path:",
            ),
            (
                json!({"scope": {"resourceGroups": ["a/b"]}}),
                "policy field scope.resourceGroups[0]:",
            ),
            (
                json!({"scope": {"resourceGroups": ["/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Web/sites/a"]}}),
                "policy field scope.resourceGroups[0]: invalid ARM resource id",
            ),
            (
                json!({"scope": {"resourceGroups": ["/subscriptions/s/resourceGroups/rg"]}}),
                "policy field scope.resourceGroups[0]: \"s\" is not a valid subscription id",
            ),
            (
                json!({"scope": {"exclude": ["/subscriptions/s/resourceGroups/%2E%2E"]}}),
                "policy field scope.exclude[0]: invalid ARM resource id",
            ),
            (
                json!({"scope": {"tags": {"a/b": "x"}}}),
                "policy field scope.tags: tag name \"a/b\"",
            ),
        ];
        for (doc, want) in cases {
            let got = err(doc.clone());
            assert!(got.starts_with(want), "{doc}: {got}");
            assert!(!got.contains('\n'), "{got}");
        }
        assert!(Policy::from_json("{")
            .unwrap_err()
            .to_string()
            .starts_with("policy is not valid JSON"));
        assert!(Policy::from_json("{} x").is_err());
    }

    #[test]
    fn null_is_left_to_serde() {
        let p = Policy::from_json(r#"{"gates": {"probe": null}}"#).unwrap();
        assert_eq!(p.gates.probe, None);
        assert!(err(json!({"concurrency": null}))
            .starts_with("policy field concurrency: invalid type: null"));
        assert_eq!(
            err(json!(null)),
            "policy must be a JSON object ({\"field\": value, …}), got null"
        );
    }

    #[test]
    fn load_and_load_or_default() {
        let dir =
            std::env::temp_dir().join(format!("vnet-migrate-policy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("rollout.json");
        assert!(matches!(
            Policy::load(&missing),
            Err(PolicyError::Io { .. })
        ));
        assert_eq!(
            Policy::load_or_default(&missing).unwrap(),
            Policy::default()
        );
        std::fs::write(&missing, r#"{"maxAttempts": 2}"#).unwrap();
        assert_eq!(Policy::load_or_default(&missing).unwrap().max_attempts, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scope_matching() {
        let p = full();
        let id = |s: &str| ResourceId::parse(s).unwrap();
        let tags = json!({"Env": "prod"});
        let tags = tags.as_object();
        let app = id("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/RG-APPS/providers/Microsoft.Web/sites/a");
        assert!(p.scope.includes(&app, tags));
        assert!(!p.scope.includes(&app, None));
        let other_sub =
            id("/subscriptions/x/resourceGroups/rg-apps/providers/Microsoft.Web/sites/a");
        assert!(!p.scope.includes(&other_sub, tags));
        let mut s = p.scope.clone();
        s.subscriptions.clear();
        let kept =
            id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/KEEP/slots/x");
        assert!(!s.includes(&kept, tags));
        let by_rg_id = id("/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/rg2/providers/Microsoft.Web/sites/b");
        assert!(s.includes(&by_rg_id, tags));
        assert!(Scope::default().includes(&kept, None));
    }

    fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").expect("local $ref");
                &schema["$defs"][name]
            }
            None => node,
        }
    }

    /// Walks the schema alongside a value: object properties must match exactly, both ways;
    /// declared defaults must equal the value in `Policy::default()`'s JSON.
    fn compare(schema: &Value, node: &Value, full: &Value, defaults: Option<&Value>, path: &str) {
        let node = resolve(schema, node);
        if let (Some(d), Some(want)) = (node.get("default"), defaults) {
            assert_eq!(d, want, "schema default of {path}");
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            assert_eq!(
                node["additionalProperties"],
                json!(false),
                "{path} must reject unknown fields"
            );
            // Refused fields (`"not": {}`) are in the schema, not in the policy.
            let in_schema: BTreeSet<&String> = props
                .iter()
                .filter(|(_, sub)| sub.get("not").is_none())
                .map(|(k, _)| k)
                .collect();
            let in_policy: BTreeSet<&String> = full.as_object().expect(path).keys().collect();
            assert_eq!(in_schema, in_policy, "properties of {path}");
            for (k, sub) in props.iter().filter(|(k, _)| in_schema.contains(k)) {
                let d = defaults.and_then(|d| d.get(k));
                compare(schema, sub, &full[k], d, &format!("{path}.{k}"));
            }
        } else if let (Some(items), Some(arr)) = (node.get("items"), full.as_array()) {
            for (i, v) in arr.iter().enumerate() {
                compare(schema, items, v, None, &format!("{path}[{i}]"));
            }
        }
    }

    #[test]
    fn schema_matches_policy_both_ways() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let full = serde_json::to_value(full()).unwrap();
        let defaults = serde_json::to_value(Policy::default()).unwrap();
        compare(&schema, &schema, &full, Some(&defaults), "policy");
    }

    /// Where each field's behaviour is proven: (dotted field, source file, test function).
    const BEHAVIOUR: &[(&str, &str, &str)] = &[
        ("scope.subscriptions", "policy.rs", "scope_matching"),
        ("scope.resourceGroups", "policy.rs", "scope_matching"),
        ("scope.tags", "policy.rs", "scope_matching"),
        ("scope.exclude", "policy.rs", "scope_matching"),
        (
            "windows",
            "window.rs",
            "a_weekend_night_window_holds_a_tuesday_night_until_saturday",
        ),
        (
            "windows",
            "windows.rs",
            "a_cut_over_outside_its_window_waits_for_the_opening_and_others_do_not",
        ),
        (
            "waves",
            "rollout.rs",
            "waves_take_sizes_and_percentages_in_a_stable_order",
        ),
        (
            "waves",
            "rollout_waves.rs",
            "four_waves_release_in_order_each_after_its_bake",
        ),
        (
            "bakeMinutes",
            "rollout.rs",
            "the_next_wave_waits_for_the_bake",
        ),
        (
            "bakeMinutes",
            "rollout_waves.rs",
            "four_waves_release_in_order_each_after_its_bake",
        ),
        (
            "gates.maxFailureRate",
            "rollout.rs",
            "a_tripped_gate_stops_until_resumed",
        ),
        (
            "gates.maxFailureRate",
            "rollout_waves.rs",
            "a_gate_tripped_in_wave_two_stops_until_resume_and_abort_cancels",
        ),
        (
            "gates.manualApproval",
            "rollout.rs",
            "manual_approval_waits_for_promote_after_a_passed_gate",
        ),
        (
            "gates.manualApproval",
            "rollout_gates.rs",
            "manual_approval_waits_for_promote_between_waves",
        ),
        (
            "gates.manualApproval",
            "functions_host.rs",
            "manual_approval_in_azure_waits_until_rollout_promote",
        ),
        (
            "gates.keyVaultReferencesMustResolve",
            "rollout_gates.rs",
            "a_key_vault_reference_broken_during_the_bake_trips_the_gate",
        ),
        (
            "gates.probe.path",
            "rollout_gates.rs",
            "a_probe_failing_during_the_bake_trips_the_gate",
        ),
        (
            "gates.probe.expectedStatus",
            "rollout_gates.rs",
            "a_probe_failing_during_the_bake_trips_the_gate",
        ),
        (
            "concurrency.perSubscription",
            "runner.rs",
            "a_backlog_that_cannot_be_admitted_is_awaited_not_polled",
        ),
        (
            "concurrency.perSubscription",
            "functions_host.rs",
            "per_subscription_in_azure_starts_targets_as_others_finish",
        ),
        (
            "concurrency.perVnet",
            "runner.rs",
            "at_most_per_vnet_targets_of_one_vnet_run_at_once",
        ),
        (
            "concurrency.perVnet",
            "per_vnet.rs",
            "at_most_per_vnet_targets_of_a_vnet_execute_at_once",
        ),
        (
            "concurrency.perVnet",
            "functions_host.rs",
            "per_vnet_in_azure_holds_targets_while_their_vnet_is_full",
        ),
        (
            "gates.keyVaultReferencesMustResolve",
            "scenarios.rs",
            "key_vault_references_breaking_after_connect_park_when_policy_says_so",
        ),
        (
            "rollback",
            "scenarios.rs",
            "key_vault_references_breaking_after_connect_park_when_policy_says_so",
        ),
        (
            "subnet.namePattern",
            "plan.rs",
            "same_region_gets_a_new_preferred_subnet",
        ),
        (
            "subnet.preferredPrefix",
            "plan.rs",
            "small_space_falls_back_from_preferred_to_required",
        ),
        (
            "subnet.reuseEmptySubnets",
            "plan.rs",
            "empty_subnets_are_reused_only_when_the_policy_says_so",
        ),
        (
            "subnet.sharedAcrossPlans",
            "sharing.rs",
            "plans_of_a_subscription_share_one_subnet_sized_for_all",
        ),
        (
            "subnet.sharedAcrossPlans",
            "sharing.rs",
            "an_existing_shared_subnet_takes_later_plans_while_it_has_room",
        ),
        (
            "subnet.sharedAcrossPlans",
            "shared_subnets.rs",
            "plans_of_one_subscription_migrate_into_one_subnet_sized_for_all",
        ),
        (
            "subnet.networkSecurityGroupId",
            "plan.rs",
            "subnet_linked_to_the_plan_is_reused",
        ),
        (
            "maxAttempts",
            "scenarios.rs",
            "a_subnet_write_whose_operation_fails_is_written_again",
        ),
        (
            "onDeploy",
            "functions_host.rs",
            "on_deploy_debounces_filters_and_the_event_run_completes",
        ),
        (
            "routing.allTraffic",
            "steps.rs",
            "routing_is_read_in_both_shapes",
        ),
        (
            "routing.imagePull",
            "steps.rs",
            "routing_is_read_in_both_shapes",
        ),
        (
            "routing.contentShare",
            "steps.rs",
            "routing_is_read_in_both_shapes",
        ),
        (
            "routing.backupRestore",
            "steps.rs",
            "routing_is_read_in_both_shapes",
        ),
    ];

    /// Fields the code honours (each is read where it acts) but no test proves yet: the gap is
    /// named here so it stays visible; a field may leave this list only for `BEHAVIOUR`.
    const HONOURED_UNTESTED: &[&str] = &[
        "subnet.routeTableId",
        "subnet.natGatewayId",
        "settleSeconds",
    ];

    /// The sources the behaviour tests live in, by file name.
    fn source(file: &str) -> &'static str {
        match file {
            "policy.rs" => include_str!("policy.rs"),
            "rollout.rs" => include_str!("pipeline/rollout.rs"),
            "runner.rs" => include_str!("pipeline/runner.rs"),
            "plan.rs" => include_str!("migration/plan.rs"),
            "sharing.rs" => include_str!("migration/sharing.rs"),
            "steps.rs" => include_str!("migration/steps.rs"),
            "scenarios.rs" => include_str!("../tests/it/scenarios.rs"),
            "functions_host.rs" => include_str!("../tests/it/functions_host.rs"),
            "rollout_waves.rs" => include_str!("../tests/it/rollout_waves.rs"),
            "rollout_gates.rs" => include_str!("../tests/it/rollout_gates.rs"),
            "window.rs" => include_str!("migration/window.rs"),
            "windows.rs" => include_str!("../tests/it/windows.rs"),
            "per_vnet.rs" => include_str!("../tests/it/per_vnet.rs"),
            "shared_subnets.rs" => include_str!("../tests/it/shared_subnets.rs"),
            other => panic!("no source {other}"),
        }
    }

    /// The schema's leaf fields (dotted), each with whether the schema refuses it.
    fn leaves(schema: &Value, node: &Value, path: &str, out: &mut Vec<(String, bool)>) {
        let node = resolve(schema, node);
        match node.get("properties").and_then(Value::as_object) {
            Some(props) => {
                for (k, sub) in props {
                    let at = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(schema, sub, &at, out);
                }
            }
            _ => out.push((path.to_string(), node.get("not").is_some())),
        }
    }

    /// DESIGN §9: every field has behaviour or is refused. Walks the published schema: a
    /// field the schema refuses must be refused at load with its one-line reason, whatever
    /// its value; any other field names the test that proves what it changes (which must
    /// exist), or stands in the short, named list of honoured but untested fields.
    #[test]
    fn every_schema_field_has_behaviour_or_is_refused() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let mut all = Vec::new();
        leaves(&schema, &schema, "", &mut all);
        assert!(all.len() > 20, "{all:?}");
        let mut refused: Vec<&str> = all
            .iter()
            .filter(|(_, r)| *r)
            .map(|(p, _)| p.as_str())
            .collect();
        refused.sort();
        let mut unsupported = UNSUPPORTED.to_vec();
        unsupported.sort();
        assert_eq!(refused, unsupported);
        for (path, is_refused) in &all {
            if *is_refused {
                // Even the value that states what the tool does is refused.
                for value in [json!(null), json!(false), json!(1), json!([])] {
                    let mut doc = value;
                    for part in path.rsplit('.') {
                        doc = json!({ part: doc });
                    }
                    assert_eq!(
                        err(doc),
                        format!("policy field {path} is not supported yet: remove it")
                    );
                }
                continue;
            }
            let proofs: Vec<_> = BEHAVIOUR.iter().filter(|(f, _, _)| f == path).collect();
            if proofs.is_empty() {
                assert!(
                    HONOURED_UNTESTED.contains(&path.as_str()),
                    "policy field {path} has neither a behaviour test nor a refusal"
                );
            }
            for (_, file, test) in proofs {
                assert!(
                    source(file).contains(&format!("fn {test}(")),
                    "{path}: no test {test} in {file}"
                );
            }
        }
        for (f, _, _) in BEHAVIOUR {
            assert!(
                all.iter().any(|(p, r)| p == f && !r),
                "{f} is not a schema field"
            );
        }
        for f in HONOURED_UNTESTED {
            assert!(
                !BEHAVIOUR.iter().any(|(b, _, _)| b == f),
                "{f} is tested now"
            );
            assert!(
                all.iter().any(|(p, r)| p == f && !r),
                "{f} is not a schema field"
            );
        }
    }
}
