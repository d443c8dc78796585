//! `FleetBuilder`: writes ARM resources in the fleet-file shape, one call per resource, so
//! hand-written test scenarios and the generated estates (`generate`) look exactly alike.
//!
//! Everything derived (etags, resource GUIDs, certificates) is a hash of the resource id, so a
//! builder fed the same calls always produces byte-identical JSON. Methods panic when handed an
//! id this builder did not create: the builder is a scenario-writing tool, and a wrong id is a
//! bug in the scenario.
//!
//! This file holds the builder itself (subscriptions, resource groups, tags, raw access);
//! the resource types are added in `network` (VNets, subnets, gateways, peerings, classic
//! VNets) and `web` (plans, autoscale, sites, slots, VNet integration, Key Vault
//! references); `derived` computes the hashed values.

mod derived;
mod network;
mod web;

pub(crate) use derived::app_certificate;
pub(crate) use network::delegate_to_web;
// Used by `generate`'s tests to check the generated address plans.
#[cfg(test)]
pub(crate) use network::{free_block, subnet_prefixes};

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{json, Value};

use super::store::Stored;
use crate::azure::ResourceId;
use crate::fleet::Fleet;

pub(crate) const DEFAULT_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
/// Tag key carrying simulator behaviour knobs (`reject-connect`, `kv-breaks-after-connect`,
/// `probe-fails-after-connect`, `old-scale-unit`).
pub(crate) const SIM_TAG: &str = "vnet-migrate-sim";

/// Resources are kept as the simulator's store keeps them (web resources compressed, network
/// resources parsed): a generated 10,000-target fleet as `serde_json` values took ~130 MB at
/// once, which the allocator then kept for the whole rehearsal.
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    subscription: String,
    resources: Vec<(ResourceId, Stored)>,
    /// Id → position in `resources` (lookup only; output order is insertion order).
    index: HashMap<ResourceId, usize>,
    /// The compact resource `resource_mut` parsed last, compacted again when another one is
    /// opened or the resources are taken.
    open: Option<usize>,
    /// Lowercased VNet id → its gateway id, to register app certificates on the gateway.
    gateways: HashMap<String, ResourceId>,
    classic_count: u32,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetBuilder {
    pub fn new() -> Self {
        Self {
            subscription: DEFAULT_SUBSCRIPTION.to_string(),
            resources: Vec::new(),
            index: HashMap::new(),
            open: None,
            gateways: HashMap::new(),
            classic_count: 0,
        }
    }

    /// Current subscription for the calls that follow.
    pub(crate) fn subscription(&mut self, sub: &str) -> &mut Self {
        self.subscription = sub.to_string();
        self
    }

    /// A `Microsoft.Resources/resourceGroups` entry; idempotent. Resource groups are created
    /// implicitly by the other methods too (ARM refuses writes into a missing group).
    pub fn resource_group(&mut self, rg: &str, location: &str) -> ResourceId {
        let id = ResourceId::resource_group_id(&self.subscription, rg)
            .unwrap_or_else(|e| panic!("FleetBuilder: {e}"));
        if !self.index.contains_key(&id) {
            self.put(json!({
                "id": id.as_str(),
                "name": rg,
                "type": "Microsoft.Resources/resourceGroups",
                "location": location,
                "tags": {},
                "properties": {"provisioningState": "Succeeded"}
            }));
        }
        id
    }

    /// Sets tag `key` on a stored resource (site, slot, plan, VNet, …).
    pub fn tag(&mut self, resource: &ResourceId, key: &str, value: &str) {
        let r = self.resource_mut(resource);
        if !r["tags"].is_object() {
            r["tags"] = json!({});
        }
        r["tags"][key] = json!(value);
    }

    fn position(&self, id: &ResourceId) -> usize {
        match self.index.get(id) {
            Some(&i) => i,
            None => panic!("FleetBuilder: {id} was not added to this builder"),
        }
    }

    /// A stored resource, for reading what the builder derived.
    pub(crate) fn resource(&self, id: &ResourceId) -> Cow<'_, Value> {
        self.resources[self.position(id)].1.value()
    }

    /// A stored resource, for scenario tweaks the typed methods do not cover.
    pub(crate) fn resource_mut(&mut self, id: &ResourceId) -> &mut Value {
        let i = self.position(id);
        if self.resources[i].1.is_compact() {
            self.close();
            self.open = Some(i);
        }
        self.resources[i].1.open()
    }

    /// Compacts the resource `resource_mut` opened, if any.
    fn close(&mut self) {
        if let Some(i) = self.open.take() {
            self.resources[i].1.close();
        }
    }

    pub fn build(&self) -> Fleet {
        Fleet {
            resources: self
                .resources
                .iter()
                .map(|(_, r)| r.value().into_owned())
                .collect(),
        }
    }

    pub(crate) fn into_fleet(self) -> Fleet {
        Fleet {
            resources: self.into_stored().map(|(_, r)| r.into_value()).collect(),
        }
    }

    /// The resources in their stored form, in insertion order (for the simulator's store).
    pub(crate) fn into_stored(mut self) -> impl Iterator<Item = (ResourceId, Stored)> {
        self.close();
        self.resources.into_iter()
    }

    /// Inserts or replaces (ARM PUT semantics) a resource keyed by its `id`.
    fn put(&mut self, v: Value) {
        let id = ResourceId::parse(v["id"].as_str().expect("resource has an id"))
            .unwrap_or_else(|e| panic!("FleetBuilder: {e}"));
        let stored = Stored::new(&id, v);
        match self.index.get(&id) {
            Some(&i) => {
                if self.open == Some(i) {
                    self.open = None;
                }
                self.resources[i] = (id, stored);
            }
            None => {
                self.index.insert(id.clone(), self.resources.len());
                self.resources.push((id, stored));
            }
        }
    }

    fn provider_id(&self, rg: &str, ty: &str, name: &str) -> ResourceId {
        ResourceId::parse(&format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/{ty}/{name}",
            self.subscription
        ))
        .unwrap_or_else(|e| panic!("FleetBuilder: {e}"))
    }
}

fn child(parent: &ResourceId, ty: &str, name: &str) -> ResourceId {
    parent
        .child(ty, name)
        .unwrap_or_else(|e| panic!("FleetBuilder: {e}"))
}

fn same_name(v: &Value, name: &str) -> bool {
    v["name"]
        .as_str()
        .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}
