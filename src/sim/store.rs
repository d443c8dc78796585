//! The generic ARM resource store: resources keyed by lowercased id, indexed by lowercased
//! type so type-wide scans stay cheap on large fleets, and by the references requests follow
//! backwards (`Ref`), so no request scans a type to find the few resources it is about.
//!
//! Most resources are kept as their compact JSON text, LZ4-compressed, and parsed when a
//! request reads them: a parsed `serde_json::Value` takes about six times the memory of its
//! text (a map and a string allocation per field), and a request reads only the few
//! resources it is about, while the store holds the whole fleet (10,000 targets: ~22 MB of
//! JSON, and ~8 KB for each site a PATCH has rewritten). JSON's repeated keys compress a few
//! times over, and LZ4 (de)compresses a site in microseconds, against the milliseconds a step
//! takes. Network resources
//! stay parsed: they are few (a few hundred in 10,000 targets) but large (a hub VNet holds
//! every integration subnet with its service association links), and every join, subnet
//! write and connection listing reads one.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{network, web};
use crate::azure::ResourceId;

/// A reference from one resource to another that requests look up the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ref {
    /// A site's or slot's own App Service plan (`properties.serverFarmId`): `GET {plan}/sites`,
    /// the plan's members on every integration change.
    Plan,
    /// The VNet whose `GatewaySubnet` a VPN gateway's ip configurations sit in: the gateway
    /// of a VNet during the gateway handshake.
    GatewayVnet,
}

/// The references `value` (stored at `id`) holds.
fn references(id: &ResourceId, value: &Value) -> Vec<(Ref, ResourceId)> {
    match type_key(id).as_str() {
        "microsoft.web/sites" | "microsoft.web/sites/slots" => web::declared_plan(id, value)
            .map(|p| (Ref::Plan, p))
            .into_iter()
            .collect(),
        "microsoft.network/virtualnetworkgateways" => network::gateway_vnets(value)
            .into_iter()
            .map(|v| (Ref::GatewayVnet, v))
            .collect(),
        _ => Vec::new(),
    }
}

/// The fields of a resource `references` reads (a site's `serverFarmId`, a gateway's
/// `ipConfigurations`), read without parsing the rest: replacing a site unlinks the
/// references of the one it replaces.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Referencing {
    properties: Lenient<ReferencingProperties>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ReferencingProperties {
    server_farm_id: Value,
    ip_configurations: Value,
}

/// The references of a stored resource.
fn stored_references(id: &ResourceId, stored: &Stored) -> Vec<(Ref, ResourceId)> {
    match stored {
        Stored::Parsed(v) => references(id, v),
        Stored::Compact(_) => {
            let p = stored.read_as::<Referencing>().properties.0;
            let fields = json!({"properties": {
                "serverFarmId": p.server_farm_id,
                "ipConfigurations": p.ip_configurations,
            }});
            references(id, &fields)
        }
    }
}

/// `T` read from a JSON object, `T::default()` from any other value: a partial read sees
/// the field of a non-object as absent, as indexing a `Value` does (`v["a"]["b"]`).
#[derive(Debug, Default)]
pub(crate) struct Lenient<T>(pub(crate) T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for Any<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Lenient)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient::default())
            }
        }
        d.deserialize_any(Any(PhantomData))
    }
}

/// One stored resource (also how `FleetBuilder` keeps what it builds, so a generated fleet
/// reaches the store without being parsed again).
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    /// Compact JSON text, LZ4-compressed (its length prepended).
    Compact(Box<[u8]>),
    Parsed(Value),
}

impl Stored {
    pub(crate) fn new(id: &ResourceId, value: Value) -> Self {
        Self::of(id, Cow::Owned(value))
    }

    /// `new` for a value the caller may go on using: a compacted one is packed from it and
    /// not copied.
    fn of(id: &ResourceId, value: Cow<'_, Value>) -> Self {
        if type_key(id).starts_with("microsoft.network/") {
            Stored::Parsed(value.into_owned())
        } else {
            Stored::Compact(pack(&value))
        }
    }

    pub(crate) fn value(&self) -> Cow<'_, Value> {
        match self {
            Stored::Compact(packed) => Cow::Owned(unpack(packed)),
            Stored::Parsed(v) => Cow::Borrowed(v),
        }
    }

    /// The fields `T` declares, decoded from the stored text without building the rest of
    /// the value (a site is kilobytes of settings; a plan's checks read two fields of each
    /// member); all absent when the value is no object. `T`'s fields must accept any JSON:
    /// `Value`s, or `Lenient`, defaulted.
    pub(crate) fn read_as<T: DeserializeOwned + Default>(&self) -> T {
        let read: Lenient<T> = match self {
            Stored::Compact(packed) => serde_json::from_slice(&decompress(packed))
                .expect("a partial read accepts any JSON the store wrote"),
            Stored::Parsed(v) => {
                Lenient::deserialize(v).expect("a partial read accepts any JSON the store holds")
            }
        };
        read.0
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Stored::Compact(packed) => unpack(&packed),
            Stored::Parsed(v) => v,
        }
    }

    /// SHA-256 of the resource as stored: equal for equal content, different after any change
    /// (a compact resource's bytes are the LZ4 of its compact text, both deterministic), and
    /// computed without rendering the resource (a site is kilobytes of JSON).
    fn content_digest(&self) -> [u8; 32] {
        match self {
            Stored::Compact(packed) => Sha256::digest(packed).into(),
            Stored::Parsed(v) => {
                let mut hasher = Sha256::new();
                serde_json::to_writer(&mut hasher, v).expect("a value serializes");
                hasher.finalize().into()
            }
        }
    }

    pub(crate) fn is_compact(&self) -> bool {
        matches!(self, Stored::Compact(_))
    }

    /// The value in place, parsed first when compact (`close` compacts it again).
    pub(crate) fn open(&mut self) -> &mut Value {
        match self {
            Stored::Parsed(v) => v,
            Stored::Compact(packed) => {
                *self = Stored::Parsed(unpack(packed));
                self.open()
            }
        }
    }

    /// Compacts a value `open` parsed.
    pub(crate) fn close(&mut self) {
        if let Stored::Parsed(v) = self {
            *self = Stored::Compact(pack(v));
        }
    }
}

fn pack(value: &Value) -> Box<[u8]> {
    let text = serde_json::to_vec(value).expect("a value serializes");
    lz4_flex::compress_prepend_size(&text).into()
}

/// The store compressed the text of a value, so it decompresses and parses.
fn unpack(packed: &[u8]) -> Value {
    serde_json::from_slice(&decompress(packed)).expect("the store holds the JSON it wrote")
}

fn decompress(packed: &[u8]) -> Vec<u8> {
    lz4_flex::decompress_size_prepended(packed).expect("the store holds the LZ4 it wrote")
}

/// A resource's lowercased id, one allocation shared by the store's maps (at 10,000 targets a
/// copy per map took megabytes).
type Key = Arc<str>;

#[derive(Debug, Default, Clone)]
pub(crate) struct Store {
    /// Lowercased id → the resource.
    resources: BTreeMap<Key, Stored>,
    by_type: HashMap<String, BTreeSet<Key>>,
    /// (reference, referenced key) → keys of the resources holding that reference, kept in
    /// step with `resources` by `put` and `remove_tree`.
    referrers: HashMap<(Ref, String), BTreeSet<Key>>,
}

/// The range of an ordered map or set of keys from `start` on.
fn from(start: &str) -> (Bound<&str>, Bound<&str>) {
    (Bound::Included(start), Bound::Unbounded)
}

/// Lowercased full type of a resource id (`microsoft.web/sites/slots`), or the ARM names of
/// scope types.
pub(crate) fn type_key(id: &ResourceId) -> String {
    id.type_name().to_ascii_lowercase()
}

impl Store {
    /// Loads fleet resources; entries without a valid id are skipped (Fleet::load rejects them).
    pub(crate) fn from_resources(resources: Vec<Value>) -> Self {
        let mut s = Self::default();
        for r in resources {
            if let Some(id) = r
                .get("id")
                .and_then(Value::as_str)
                .and_then(|i| ResourceId::parse(i).ok())
            {
                s.put(&id, r);
            }
        }
        s
    }

    /// Takes over resources already in their stored form (`FleetBuilder::into_stored`).
    pub(crate) fn from_stored(resources: impl IntoIterator<Item = (ResourceId, Stored)>) -> Self {
        let mut s = Self::default();
        for (id, stored) in resources {
            let refs = stored_references(&id, &stored);
            s.insert(&id, refs, stored);
        }
        s
    }

    /// The resource as stored (change it through `put` or `update`).
    pub(crate) fn get(&self, id: &ResourceId) -> Option<Cow<'_, Value>> {
        self.resources.get(id.key()).map(Stored::value)
    }

    /// The fields `T` declares of the resource (`Stored::read_as`).
    pub(crate) fn get_as<T: DeserializeOwned + Default>(&self, id: &ResourceId) -> Option<T> {
        self.resources.get(id.key()).map(Stored::read_as)
    }

    /// Changes a resource in place with `f`, for changes that leave the `Ref` indexes alone
    /// (a VNet's subnets, a provisioning state); anything else goes through `put`, which
    /// reindexes. `None` when there is no such resource.
    pub(crate) fn update<R>(
        &mut self,
        id: &ResourceId,
        f: impl FnOnce(&mut Value) -> R,
    ) -> Option<R> {
        let stored = self.resources.get_mut(id.key())?;
        let compact = stored.is_compact();
        let out = f(stored.open());
        if compact {
            stored.close();
        }
        Some(out)
    }

    /// `Stored::content_digest` of the resource: what an ETag derived from its content hashes.
    pub(crate) fn content_digest(&self, id: &ResourceId) -> Option<[u8; 32]> {
        self.resources.get(id.key()).map(Stored::content_digest)
    }

    pub(crate) fn contains(&self, id: &ResourceId) -> bool {
        self.resources.contains_key(id.key())
    }

    /// Inserts or replaces; returns true when the resource is new.
    pub(crate) fn put(&mut self, id: &ResourceId, value: Value) -> bool {
        self.put_cow(id, Cow::Owned(value))
    }

    /// `put` of a value the caller goes on using (a written site is also its answer).
    pub(crate) fn put_copy(&mut self, id: &ResourceId, value: &Value) -> bool {
        self.put_cow(id, Cow::Borrowed(value))
    }

    fn put_cow(&mut self, id: &ResourceId, value: Cow<'_, Value>) -> bool {
        let refs = references(id, &value);
        self.insert(id, refs, Stored::of(id, value))
    }

    /// `put` with the references of the value already read.
    fn insert(&mut self, id: &ResourceId, refs: Vec<(Ref, ResourceId)>, stored: Stored) -> bool {
        let key: Key = match self.resources.get_key_value(id.key()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(id.key()),
        };
        self.by_type
            .entry(type_key(id))
            .or_default()
            .insert(key.clone());
        let old = self.resources.remove(&key);
        if let Some(o) = &old {
            self.unlink(id, o);
        }
        self.link(&key, refs);
        self.resources.insert(key, stored);
        old.is_none()
    }

    fn link(&mut self, key: &Key, refs: Vec<(Ref, ResourceId)>) {
        for (r, target) in refs {
            self.referrers
                .entry((r, target.key().to_string()))
                .or_default()
                .insert(key.clone());
        }
    }

    fn unlink(&mut self, id: &ResourceId, stored: &Stored) {
        for (r, target) in stored_references(id, stored) {
            let k = (r, target.key().to_string());
            if let Some(set) = self.referrers.get_mut(&k) {
                set.remove(id.key());
                if set.is_empty() {
                    self.referrers.remove(&k);
                }
            }
        }
    }

    /// The resources holding reference `r` to `target` (key and stored form), in id order.
    pub(crate) fn referrers<'a>(
        &'a self,
        r: Ref,
        target: &ResourceId,
    ) -> impl Iterator<Item = (&'a str, &'a Stored)> + 'a {
        self.referrers
            .get(&(r, target.key().to_string()))
            .into_iter()
            .flatten()
            .filter_map(|k| self.resources.get(k).map(|v| (&**k, v)))
    }

    /// Removes the resource and everything below it; returns whether it existed.
    pub(crate) fn remove_tree(&mut self, id: &ResourceId) -> bool {
        let prefix = format!("{}/", id.key());
        let doomed: Vec<Key> = self
            .resources
            .range::<str, _>(from(id.key()))
            .take_while(|(k, _)| &***k == id.key() || k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let existed = doomed.iter().any(|k| &**k == id.key());
        for k in doomed {
            let Some(old) = self.resources.remove(&k) else {
                continue;
            };
            let Ok(doomed_id) = ResourceId::parse(&k) else {
                continue;
            };
            self.unlink(&doomed_id, &old);
            if let Some(set) = self.by_type.get_mut(&type_key(&doomed_id)) {
                set.remove(&k);
            }
        }
        existed
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = Cow<'_, Value>> {
        self.resources.values().map(Stored::value)
    }

    /// Keys of the resources of type `ty` lying within `scope` (a subscription, group or
    /// parent resource), in id order.
    fn keys_within<'a>(
        &'a self,
        ty: &str,
        scope: &ResourceId,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        // The type index is ordered, so the resources below `scope` are one contiguous range.
        let prefix = format!("{}/", scope.key());
        self.by_type
            .get(&ty.to_ascii_lowercase())
            .into_iter()
            .flat_map(move |keys| {
                let within = prefix.clone();
                keys.range::<str, _>(from(&prefix))
                    .take_while(move |k| k.starts_with(&within))
            })
    }

    fn read(&self, key: &str) -> Option<Value> {
        self.resources.get(key).map(|v| v.value().into_owned())
    }

    /// Resources of type `ty` lying within `scope` (a subscription, group or parent resource).
    pub(crate) fn of_type_within(&self, ty: &str, scope: &ResourceId) -> Vec<Value> {
        self.stored_within(ty, scope)
            .map(|v| v.value().into_owned())
            .collect()
    }

    /// `of_type_within` in stored form, for partial reads.
    pub(crate) fn stored_within<'a>(
        &'a self,
        ty: &str,
        scope: &ResourceId,
    ) -> impl Iterator<Item = &'a Stored> + 'a {
        self.keys_within(ty, scope)
            .filter_map(|k| self.resources.get(k))
    }

    /// One page of `of_type_within`: how many there are, and those from `skip` on (at most
    /// `top`), reading only these: a listing of a subscription's thousands of sites, page by
    /// page, reads each site once, not once per page.
    pub(crate) fn page_of_type_within(
        &self,
        ty: &str,
        scope: &ResourceId,
        skip: usize,
        top: usize,
    ) -> (usize, Vec<Value>) {
        let total = self.keys_within(ty, scope).count();
        let page = self
            .keys_within(ty, scope)
            .skip(skip)
            .take(top)
            .filter_map(|k| self.read(k))
            .collect();
        (total, page)
    }

    /// A resource group exists when stored explicitly or when anything lives inside it
    /// (fleet files usually list no resource groups).
    pub(crate) fn group_exists(&self, rg: &ResourceId) -> bool {
        self.contains(rg) || self.any_within(rg)
    }

    pub(crate) fn any_within(&self, scope: &ResourceId) -> bool {
        let prefix = format!("{}/", scope.key());
        self.resources
            .range::<str, _>(from(&prefix))
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Location of the first resource inside `scope` (for implicit resource groups).
    pub(crate) fn first_location_within(&self, scope: &ResourceId) -> Option<String> {
        let prefix = format!("{}/", scope.key());
        self.resources
            .range::<str, _>(from(&prefix))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .find_map(|(_, v)| {
                v.value()
                    .get("location")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
    }
}

/// JSON merge for PATCH: objects merge recursively, everything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    #[test]
    fn put_get_remove_tree_case_insensitive() {
        let site = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a";
        let mut st = Store::default();
        assert!(st.put(&id(site), json!({"id": site})));
        assert!(st.put(&id(&format!("{site}/slots/x")), json!({})));
        assert!(st.put(&id(&format!("{site}x")), json!({})));
        assert!(st.get(&id(&site.to_uppercase())).is_some());
        assert!(st.group_exists(&id("/subscriptions/s/resourcegroups/RG")));
        let sub = id("/subscriptions/s");
        assert_eq!(st.of_type_within("Microsoft.Web/sites", &sub).len(), 2);
        assert!(st.remove_tree(&id(site)));
        assert_eq!(
            st.of_type_within("microsoft.web/sites/slots", &sub).len(),
            0
        );
        assert_eq!(st.of_type_within("microsoft.web/sites", &sub).len(), 1);
        assert!(!st.remove_tree(&id(site)));
    }

    #[test]
    fn a_page_of_a_listing_counts_all_and_reads_its_own() {
        let mut st = Store::default();
        for name in ["c", "a", "b"] {
            let site =
                format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{name}");
            st.put(&id(&site), json!({"id": site, "name": name}));
        }
        let sub = id("/subscriptions/s");
        let (total, page) = st.page_of_type_within("microsoft.web/sites", &sub, 1, 1);
        assert_eq!((total, page.len()), (3, 1));
        assert_eq!(page[0]["name"], "b", "in id order");
        let (total, page) = st.page_of_type_within("microsoft.web/sites", &sub, 2, 50);
        assert_eq!((total, page.len()), (3, 1));
        assert_eq!(
            st.page_of_type_within("microsoft.web/sites/slots", &sub, 0, 50)
                .0,
            0
        );
    }

    fn referrer_keys(st: &Store, r: Ref, target: &str) -> Vec<String> {
        st.referrers(r, &id(target))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    #[test]
    fn reference_index_follows_puts_and_removals() {
        let rg = "/subscriptions/s/resourceGroups/rg/providers";
        let (p1, p2) = (
            format!("{rg}/Microsoft.Web/serverfarms/p1"),
            format!("{rg}/Microsoft.Web/serverfarms/p2"),
        );
        let a = format!("{rg}/Microsoft.Web/sites/a");
        let b = format!("{rg}/Microsoft.Web/sites/b");
        let mut st = Store::default();
        st.put(
            &id(&a),
            json!({"id": a, "properties": {"serverFarmId": p1}}),
        );
        // A bare plan name resolves in the site's resource group.
        st.put(
            &id(&b),
            json!({"id": b, "properties": {"serverFarmId": "P1"}}),
        );
        assert_eq!(
            referrer_keys(&st, Ref::Plan, &p1),
            vec![a.to_lowercase(), b.to_lowercase()]
        );
        // Moving a site to another plan moves it in the index.
        st.put(
            &id(&a),
            json!({"id": a, "properties": {"serverFarmId": p2}}),
        );
        assert_eq!(referrer_keys(&st, Ref::Plan, &p1), vec![b.to_lowercase()]);
        assert_eq!(referrer_keys(&st, Ref::Plan, &p2), vec![a.to_lowercase()]);
        // A slot naming its own plan is indexed under it; removing the site removes both.
        let slot = format!("{b}/slots/stage");
        st.put(
            &id(&slot),
            json!({"id": slot, "properties": {"serverFarmId": p2}}),
        );
        assert_eq!(referrer_keys(&st, Ref::Plan, &p2).len(), 2);
        assert!(st.remove_tree(&id(&b)));
        assert!(referrer_keys(&st, Ref::Plan, &p1).is_empty());
        assert_eq!(referrer_keys(&st, Ref::Plan, &p2), vec![a.to_lowercase()]);

        let vnet = format!("{rg}/Microsoft.Network/virtualNetworks/v");
        let gw = format!("{rg}/Microsoft.Network/virtualNetworkGateways/g");
        st.put(
            &id(&gw),
            json!({"id": gw, "properties": {"ipConfigurations": [
                {"properties": {"subnet": {"id": format!("{vnet}/subnets/GatewaySubnet")}}}]}}),
        );
        assert_eq!(
            referrer_keys(&st, Ref::GatewayVnet, &vnet),
            vec![gw.to_lowercase()]
        );
        st.put(&id(&gw), json!({"id": gw, "properties": {}}));
        assert!(referrer_keys(&st, Ref::GatewayVnet, &vnet).is_empty());
    }

    /// Web resources (the bulk of a fleet) are kept as text and read as copies; network
    /// resources stay parsed and are read in place. Both change through `update`, and text
    /// keeps the fields in their order.
    #[test]
    fn web_resources_are_kept_as_text_and_network_resources_parsed() {
        let rg = "/subscriptions/s/resourceGroups/rg/providers";
        let site = id(&format!("{rg}/Microsoft.Web/sites/a"));
        let vnet = id(&format!("{rg}/Microsoft.Network/virtualNetworks/v"));
        let mut st = Store::default();
        st.put(&site, json!({"id": site.as_str(), "z": 1, "a": {"n": 1}}));
        st.put(
            &vnet,
            json!({"id": vnet.as_str(), "properties": {"subnets": []}}),
        );
        assert!(matches!(st.resources[site.key()], Stored::Compact(_)));
        assert!(matches!(st.get(&site), Some(Cow::Owned(_))));
        assert!(matches!(st.get(&vnet), Some(Cow::Borrowed(_))));
        assert_eq!(st.update(&site, |v| v["a"]["n"] = json!(2)), Some(()));
        let read = st.get(&site).unwrap().into_owned();
        assert_eq!(read, json!({"id": site.as_str(), "z": 1, "a": {"n": 2}}));
        let keys: Vec<&String> = read.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "z", "a"]);
        st.update(&vnet, |v| {
            v["properties"]["subnets"] = json!([{"name": "s"}])
        });
        assert_eq!(
            st.get(&vnet).unwrap()["properties"]["subnets"][0]["name"],
            "s"
        );
        assert_eq!(
            st.update(&id(&format!("{rg}/Microsoft.Web/sites/b")), |_| ()),
            None
        );
        assert_eq!(st.all().count(), 2);
    }

    /// A site as the simulator keeps it after a PATCH (repeated keys, ids and defaults) is
    /// stored compressed, well under its text, and reads back identical, field order included.
    #[test]
    fn a_compressed_resource_reads_back_identical() {
        let rg = "/subscriptions/s/resourceGroups/rg/providers";
        let site = id(&format!("{rg}/Microsoft.Web/sites/a"));
        let settings: Vec<Value> = (0..40)
            .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}"), "slotSetting": false}))
            .collect();
        let value = json!({
            "id": site.as_str(), "name": "a", "type": "Microsoft.Web/sites",
            "location": "westeurope", "tags": {"team": "payments", "env": "prod"},
            "properties": {"state": "Running", "enabled": true, "httpsOnly": true,
                "hostNames": ["a.azurewebsites.net"], "unicode": "é ✓",
                "siteConfig": {"appSettings": settings, "numberOfWorkers": 1, "ratio": 0.25,
                    "vnetRouteAllEnabled": null}}
        });
        let mut st = Store::default();
        st.put(&site, value.clone());
        let Stored::Compact(packed) = &st.resources[site.key()] else {
            panic!("a site is kept compact");
        };
        let text = value.to_string();
        assert!(
            packed.len() * 2 < text.len(),
            "{} of {}",
            packed.len(),
            text.len()
        );
        let read = st.get(&site).unwrap().into_owned();
        assert_eq!(read, value);
        assert_eq!(read.to_string(), text);
    }

    /// A partial read sees what indexing the whole value sees, kept compact or parsed: the
    /// fields it names, absent when their parent is no object, everything else skipped.
    #[test]
    fn a_partial_read_sees_what_the_whole_value_shows() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Fields {
            name: Value,
            properties: Lenient<Properties>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Properties {
            server_farm_id: Value,
        }
        let rg = "/subscriptions/s/resourceGroups/rg/providers";
        let site = id(&format!("{rg}/Microsoft.Web/sites/a"));
        let vnet = id(&format!("{rg}/Microsoft.Network/virtualNetworks/v"));
        let shapes = [
            json!({"serverFarmId": "p", "siteConfig": {"a": [1, {"b": null}]}}),
            json!({"siteConfig": {}}),
            json!("text"),
            json!([1, {"serverFarmId": "q"}, [2.5]]),
            json!(null),
            json!(-3),
            json!(4.5),
            json!(true),
        ];
        for properties in shapes {
            for rid in [&site, &vnet] {
                let mut st = Store::default();
                let value = json!({"z": [properties], "name": "a", "properties": properties});
                st.put(rid, value);
                let fields = st.get_as::<Fields>(rid).expect("stored");
                let whole = st.get(rid).expect("stored");
                assert_eq!(fields.name, whole["name"]);
                assert_eq!(
                    fields.properties.0.server_farm_id, whole["properties"]["serverFarmId"],
                    "{properties}"
                );
            }
        }
        let mut st = Store::default();
        st.put(&site, json!(["not", "an", "object"]));
        assert!(st.get_as::<Fields>(&site).expect("stored").name.is_null());
        assert!(Store::default().get_as::<Fields>(&site).is_none());
    }

    #[test]
    fn merge_is_recursive_for_objects_only() {
        let mut a = json!({"p": {"x": 1, "y": {"z": 2}}, "l": [1, 2]});
        merge(&mut a, &json!({"p": {"y": {"w": 3}, "x": null}, "l": [3]}));
        assert_eq!(
            a,
            json!({"p": {"x": null, "y": {"z": 2, "w": 3}}, "l": [3]})
        );
    }
}
