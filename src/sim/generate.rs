//! Deterministic generator of realistic App Service estates for rehearsals, demos, tests and
//! benchmarks. `generate(n, seed)` always yields byte-identical JSON for the same arguments:
//! all randomness comes from one `ChaCha8Rng`, and output order is creation order.
//!
//! The estate: 3–5 subscriptions over 2–4 regions; per subscription and region a hub VNet with
//! a VPN gateway; teams with resource groups, spoke VNets and plans of mixed SKUs; 1–8 apps per
//! plan, some with a `staging` slot. Each plan is drawn from a scenario (same-region gateway,
//! cross-region with or without a usable peering, three gateway VNets, full VNet, already
//! regional, no integration, classic VNet, unsupported SKU) in roughly the shares the migration
//! meets in real fleets, plus autoscale, Key Vault references and the simulator's quirk tags.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::builder::{delegate_to_web, FleetBuilder, SIM_TAG};
use crate::azure::ResourceId;
use crate::fleet::Fleet;

/// (ARM location, short code used in names).
const REGIONS: [(&str, &str); 4] = [
    ("westeurope", "weu"),
    ("northeurope", "neu"),
    ("eastus", "eus"),
    ("westus2", "wus2"),
];

const TEAMS: [&str; 16] = [
    "payments",
    "orders",
    "catalog",
    "identity",
    "search",
    "billing",
    "shipping",
    "reporting",
    "crm",
    "hr",
    "portal",
    "inventory",
    "pricing",
    "loyalty",
    "media",
    "support",
];

const KV_SETTINGS: [&str; 5] = [
    "DbPassword",
    "StorageKey",
    "ApiSecret",
    "ServiceBusKey",
    "JwtSigningKey",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    SameRegion,
    CrossPeered,
    CrossUnpeered,
    ThreeVnets,
    FullVnet,
    Regional,
    NoIntegration,
    Classic,
    UnsupportedSku,
}

/// Plan-level weights of the common scenarios; slots shift a few points towards "no
/// integration". The rare scenarios are scheduled (see `scheduled`) so every estate of a
/// hundred targets or more contains them.
const SCENARIOS: [(Scenario, u32); 4] = [
    (Scenario::SameRegion, 60),
    (Scenario::CrossPeered, 8),
    (Scenario::Regional, 8),
    (Scenario::NoIntegration, 5),
];

/// The rare scenarios for the `k`-th plan (1-based): about 4 % of plans cross-region without
/// a usable peering, 3 % each for three gateway VNets, full VNets and unsupported SKUs, 2 %
/// for classic VNets.
fn scheduled(k: usize) -> Option<Scenario> {
    match (k % 33, k % 50, k % 25) {
        (_, 12, _) => Some(Scenario::Classic),
        (_, _, 18) => Some(Scenario::CrossUnpeered),
        (7, _, _) => Some(Scenario::ThreeVnets),
        (20, _, _) => Some(Scenario::FullVnet),
        (26, _, _) => Some(Scenario::UnsupportedSku),
        _ => None,
    }
}

const SKUS: [(&str, u32); 5] = [
    ("P1v2", 35),
    ("P2v3", 25),
    ("S1", 25),
    ("B1", 7),
    ("EP1", 8),
];

/// Share of apps with a `staging` slot, and of apps with Key Vault references.
const SLOT_SHARE: f64 = 0.15;
const KV_SHARE: f64 = 0.30;

#[derive(Clone)]
enum Integration {
    None,
    Gateway(ResourceId),
    Regional(ResourceId),
}

/// How a slot relates to its site's integration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotMode {
    /// The slot has the same integration as the site.
    Same,
    /// The slot has no integration.
    Bare,
    /// Only the slot is integrated; the production site has nothing.
    SlotOnly,
}

/// The largest estate `--generate` accepts. A rehearsal holds the whole estate in memory (the
/// simulator's store, ARM resources as compressed JSON): its peak RSS was about 150 MB at
/// 10,000 targets (BENCHMARKS.md) and grows with the estate (50,000 not measured).
/// (On such estates a team's VNets fill up with integration subnets; the plans that find no
/// room stay on their gateway connections.)
pub const MAX_TARGETS: usize = 50_000;

/// A deterministic estate of `n_targets` sites + slots (exactly) from `seed` (the command line
/// asks for at most [`MAX_TARGETS`]).
pub fn generate(n_targets: usize, seed: u64) -> Fleet {
    builder(n_targets, seed).into_fleet()
}

/// The builder holding `generate`'s estate, for a simulator to take over as it is
/// (`Simulator::from_builder`).
pub fn builder(n_targets: usize, seed: u64) -> FleetBuilder {
    let mut g = Gen::new(n_targets, seed);
    while g.remaining > 0 {
        g.plan_group();
    }
    g.b
}

struct Subscription {
    id: String,
    teams: Vec<&'static str>,
}

struct Gen {
    rng: ChaCha8Rng,
    b: FleetBuilder,
    subs: Vec<Subscription>,
    /// Indices into `REGIONS`.
    regions: Vec<usize>,
    remaining: usize,
    /// Offset inside 10.0.0.0/8 of the next VNet address space (bump allocator).
    next_space: u32,
    /// Cache key → VNet (hubs, spokes, classic VNets), so scenarios share networks.
    vnets: BTreeMap<String, ResourceId>,
    plan_count: usize,
    site_count: usize,
    kv_site_count: usize,
    small_plan_count: usize,
}

struct Ctx {
    sub: usize,
    region: usize,
    team: &'static str,
}

impl Gen {
    fn new(n_targets: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_subs = rng.random_range(3..=5);
        let subs = (0..n_subs)
            .map(|_| {
                let id = uuid::Builder::from_random_bytes(rng.random::<u128>().to_le_bytes())
                    .into_uuid()
                    .to_string();
                let mut teams = TEAMS.to_vec();
                teams.shuffle(&mut rng);
                teams.truncate(rng.random_range(3..=6));
                Subscription { id, teams }
            })
            .collect();
        let mut regions: Vec<usize> = (0..REGIONS.len()).collect();
        regions.shuffle(&mut rng);
        regions.truncate(rng.random_range(2..=4));
        Self {
            rng,
            b: FleetBuilder::new(),
            subs,
            regions,
            remaining: n_targets,
            next_space: 0,
            vnets: BTreeMap::new(),
            plan_count: 0,
            site_count: 0,
            kv_site_count: 0,
            small_plan_count: 0,
        }
    }

    /// One plan and its apps (and slots), drawn from one scenario.
    fn plan_group(&mut self) {
        let sub = self.rng.random_range(0..self.subs.len());
        let region = self.regions[self.rng.random_range(0..self.regions.len())];
        let teams = &self.subs[sub].teams;
        let team = teams[self.rng.random_range(0..teams.len())];
        self.b.subscription(&self.subs[sub].id);
        let ctx = Ctx { sub, region, team };

        let mut scenario =
            scheduled(self.plan_count + 1).unwrap_or_else(|| weighted(&mut self.rng, &SCENARIOS));
        let mut n_apps = self.rng.random_range(1..=8usize);
        if scenario == Scenario::ThreeVnets {
            if self.remaining < 3 {
                scenario = Scenario::SameRegion;
            } else {
                n_apps = n_apps.max(3);
            }
        }
        let n_apps = n_apps.min(self.remaining);
        let plan = self.plan(&ctx, scenario);
        let integrations = self.integrations(&ctx, scenario, &plan, n_apps);
        for integration in integrations {
            // A slot may have used the last target.
            if self.remaining == 0 {
                break;
            }
            self.app(&ctx, &plan, integration);
        }
    }

    fn plan(&mut self, ctx: &Ctx, scenario: Scenario) -> ResourceId {
        let (location, rs) = REGIONS[ctx.region];
        let sku = if scenario == Scenario::UnsupportedSku {
            if self.rng.random_bool(0.5) {
                "F1"
            } else {
                "I1v2"
            }
        } else {
            weighted(&mut self.rng, &SKUS)
        };
        let capacity = match sku {
            "P1v2" | "P2v3" => self.rng.random_range(1..=4),
            "S1" | "EP1" => self.rng.random_range(1..=3),
            "B1" | "I1v2" => self.rng.random_range(1..=2),
            _ => 1,
        };
        self.plan_count += 1;
        let name = format!("asp-{}-{rs}-{:03}", ctx.team, self.plan_count);
        let rg = format!("rg-{}-{rs}", ctx.team);
        let plan = self.b.plan(&rg, &name, location, sku, capacity);
        match sku {
            "EP1" => {
                let burst = self.rng.random_range(5..=30);
                self.b.resource_mut(&plan)["properties"]["maximumElasticWorkerCount"] =
                    json!(burst);
            }
            "P1v2" | "P2v3" | "S1" if self.rng.random_bool(0.4) => {
                // Maxima above the SKU ceiling happen (the cap is applied by the platform).
                let ceiling = if sku == "S1" { 15 } else { 40 };
                let max = self.rng.random_range(2..=ceiling).max(capacity);
                self.b.autoscale(&plan, max);
            }
            _ => {}
        }
        if sku == "S1" || sku == "B1" {
            // Basic/Standard plans are the ones left on old scale units; about one in 40.
            if self.small_plan_count % 40 == 3 {
                self.b.tag(&plan, SIM_TAG, "old-scale-unit");
            }
            self.small_plan_count += 1;
        }
        plan
    }

    /// The integration of each app of the plan.
    fn integrations(
        &mut self,
        ctx: &Ctx,
        scenario: Scenario,
        plan: &ResourceId,
        n_apps: usize,
    ) -> Vec<Integration> {
        let all = |i: Integration| vec![i; n_apps];
        match scenario {
            Scenario::SameRegion | Scenario::UnsupportedSku => {
                let vnet = if scenario == Scenario::SameRegion && self.rng.random_bool(0.3) {
                    self.spoke(ctx, ctx.region, "01", 20)
                } else {
                    self.hub(ctx.sub, ctx.region)
                };
                if scenario == Scenario::SameRegion && self.rng.random_bool(0.12) {
                    // An empty subnet prepared earlier under the default name (none when a
                    // very large estate has filled the VNet).
                    let len = if self.rng.random_bool(0.8) { 26 } else { 28 };
                    if let Some(prefix) = self.b.free_prefix(&vnet, len) {
                        let name = format!("snet-{}-integration", plan.name());
                        self.b.subnet_with(&vnet, &name, &prefix, delegate_to_web);
                    }
                }
                all(Integration::Gateway(vnet))
            }
            Scenario::CrossPeered | Scenario::CrossUnpeered => {
                let others: Vec<usize> = self
                    .regions
                    .iter()
                    .copied()
                    .filter(|&r| r != ctx.region)
                    .collect();
                let remote = others[self.rng.random_range(0..others.len())];
                let state = match scenario {
                    Scenario::CrossPeered => Some("Connected"),
                    _ if self.rng.random_bool(0.5) => Some("Initiated"),
                    _ => None,
                };
                let tag = format!(
                    "dr-{}-{}",
                    REGIONS[ctx.region].1,
                    state.map_or("none", |s| if s == "Connected" { "c" } else { "i" })
                );
                let vnet = self.spoke(ctx, remote, &tag, 22);
                if let Some(state) = state {
                    let hub = self.hub(ctx.sub, ctx.region);
                    self.b.peering(&hub, &vnet, state);
                }
                all(Integration::Gateway(vnet))
            }
            Scenario::ThreeVnets => {
                let vnets = [
                    self.hub(ctx.sub, ctx.region),
                    self.spoke(ctx, ctx.region, "01", 20),
                    self.spoke(ctx, ctx.region, "02", 20),
                ];
                // Uneven use, so "the two with most apps" is usually decided by counts.
                const PICK: [usize; 8] = [0, 1, 2, 0, 0, 1, 0, 2];
                (0..n_apps)
                    .map(|i| Integration::Gateway(vnets[PICK[i % PICK.len()]].clone()))
                    .collect()
            }
            Scenario::FullVnet => {
                let vnet = self.full_vnet(ctx);
                all(Integration::Gateway(vnet))
            }
            Scenario::Regional => {
                let vnet = if self.rng.random_bool(0.5) {
                    self.hub(ctx.sub, ctx.region)
                } else {
                    self.spoke(ctx, ctx.region, "01", 20)
                };
                let len = if self.rng.random_bool(0.7) { 26 } else { 27 };
                let Some(prefix) = self.b.free_prefix(&vnet, len) else {
                    // A very large estate has filled the VNet: the plan is still on its
                    // gateway connection.
                    return all(Integration::Gateway(vnet));
                };
                let name = format!("snet-{}-integration", plan.name());
                let subnet = self.b.subnet(&vnet, &name, &prefix);
                let mut v = all(Integration::Regional(subnet));
                if n_apps >= 2 && self.rng.random_bool(0.3) {
                    // A straggler of a half-migrated plan, still on the gateway of the same VNet.
                    v[n_apps - 1] = Integration::Gateway(vnet);
                }
                v
            }
            Scenario::NoIntegration => all(Integration::None),
            Scenario::Classic => {
                let key = format!("classic|{}|{}", ctx.sub, ctx.region);
                let vnet = match self.vnets.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let (location, rs) = REGIONS[ctx.region];
                        let v = self.b.classic_vnet(
                            &format!("rg-classic-{rs}"),
                            &format!("vnet-classic-{rs}"),
                            location,
                        );
                        self.vnets.insert(key, v.clone());
                        v
                    }
                };
                all(Integration::Gateway(vnet))
            }
        }
    }

    /// One site (and maybe its slot) with Key Vault references and quirk tags.
    fn app(&mut self, ctx: &Ctx, plan: &ResourceId, integration: Integration) {
        let rs = REGIONS[ctx.region].1;
        self.site_count += 1;
        self.remaining -= 1;
        let name = format!("app-{}-{:04}", ctx.team, self.site_count);
        let site = self.b.site(&format!("rg-{}-{rs}", ctx.team), &name, plan);

        let slot_mode = (self.remaining > 0 && self.rng.random_bool(SLOT_SHARE)).then(|| {
            let r: f64 = self.rng.random();
            match &integration {
                Integration::Regional(_) if r < 0.5 => SlotMode::Same,
                Integration::Regional(_) => SlotMode::Bare,
                _ if r < 0.5 => SlotMode::Same,
                _ if r < 0.75 => SlotMode::Bare,
                _ => SlotMode::SlotOnly,
            }
        });
        if slot_mode != Some(SlotMode::SlotOnly) {
            self.integrate(&site, &integration);
        }

        let with_kv = self.rng.random_bool(KV_SHARE);
        if with_kv {
            self.kv_references(&site);
        }
        if self.site_count % 97 == 50 {
            self.b.tag(&site, SIM_TAG, "reject-connect");
        } else if with_kv {
            self.kv_site_count += 1;
            if self.kv_site_count % 31 == 15 {
                self.b.tag(&site, SIM_TAG, "kv-breaks-after-connect");
            }
        }

        if let Some(mode) = slot_mode {
            self.remaining -= 1;
            let slot = self.b.slot(&site, "staging");
            if mode != SlotMode::Bare {
                self.integrate(&slot, &integration);
            }
            if with_kv && self.rng.random_bool(0.5) {
                self.kv_references(&slot);
            }
        }
    }

    fn integrate(&mut self, target: &ResourceId, integration: &Integration) {
        match integration {
            Integration::None => {}
            Integration::Gateway(vnet) => {
                self.b.gateway_connection(target, vnet);
            }
            Integration::Regional(subnet) => self.b.regional(target, subnet),
        }
    }

    fn kv_references(&mut self, target: &ResourceId) {
        let n = self.rng.random_range(1..=3);
        let start = self.rng.random_range(0..KV_SETTINGS.len());
        for i in 0..n {
            let setting = KV_SETTINGS[(start + i) % KV_SETTINGS.len()];
            self.b.key_vault_reference(target, setting, "Resolved");
        }
    }

    /// The hub VNet of a subscription and region: a /16 with a gateway and shared subnets.
    fn hub(&mut self, sub: usize, region: usize) -> ResourceId {
        let key = format!("hub|{sub}|{region}");
        if let Some(v) = self.vnets.get(&key) {
            return v.clone();
        }
        let (location, rs) = REGIONS[region];
        let space = self.space(16);
        self.b.subscription(&self.subs[sub].id);
        let vnet = self.b.vnet(
            &format!("rg-connectivity-{rs}"),
            &format!("vnet-hub-{rs}"),
            location,
            &[&space],
        );
        self.b.gateway(&vnet);
        for (name, len) in [
            ("AzureFirewallSubnet", 26),
            ("AzureBastionSubnet", 26),
            ("snet-shared", 24),
            ("snet-privateendpoints", 24),
        ] {
            self.used_subnet(&vnet, name, len);
        }
        self.vnets.insert(key, vnet.clone());
        vnet
    }

    /// A team spoke VNet with its own gateway, in `region` (maybe not the team's region).
    fn spoke(&mut self, ctx: &Ctx, region: usize, tag: &str, len: u8) -> ResourceId {
        let key = format!("spoke|{}|{}|{region}|{tag}", ctx.sub, ctx.team);
        if let Some(v) = self.vnets.get(&key) {
            return v.clone();
        }
        let (location, rs) = REGIONS[region];
        let space = self.space(len);
        let vnet = self.b.vnet(
            &format!("rg-{}-{rs}", ctx.team),
            &format!("vnet-{}-{rs}-{tag}", ctx.team),
            location,
            &[&space],
        );
        self.b.gateway(&vnet);
        self.used_subnet(&vnet, "snet-app", 24);
        self.used_subnet(&vnet, "snet-data", 26);
        self.vnets.insert(key, vnet.clone());
        vnet
    }

    /// A legacy /24 spoke with a gateway whose address space is entirely taken by subnets.
    fn full_vnet(&mut self, ctx: &Ctx) -> ResourceId {
        let key = format!("full|{}|{}|{}", ctx.sub, ctx.team, ctx.region);
        if let Some(v) = self.vnets.get(&key) {
            return v.clone();
        }
        let (location, rs) = REGIONS[ctx.region];
        let space = self.space(24);
        let vnet = self.b.vnet(
            &format!("rg-{}-{rs}", ctx.team),
            &format!("vnet-{}-{rs}-legacy", ctx.team),
            location,
            &[&space],
        );
        self.b.gateway(&vnet);
        let mut i = 0;
        for len in 25..=29 {
            while self.b.free_prefix(&vnet, len).is_some() {
                i += 1;
                self.used_subnet(&vnet, &format!("snet-legacy-{i}"), len);
            }
        }
        self.vnets.insert(key, vnet.clone());
        vnet
    }

    /// A subnet in use by a NIC, at the lowest free block of `/len`: one of the fixed subnets
    /// a new VNet is sized for.
    fn used_subnet(&mut self, vnet: &ResourceId, name: &str, len: u8) {
        let prefix = self
            .b
            .free_prefix(vnet, len)
            .unwrap_or_else(|| panic!("generator sized {vnet} too small for a /{len}"));
        let nic = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/nic-{}-{name}/ipConfigurations/ipconfig1",
            vnet.subscription(),
            vnet.resource_group().unwrap_or_default(),
            vnet.name(),
        );
        self.b.subnet_with(vnet, name, &prefix, |s| {
            s["properties"]["ipConfigurations"] = json!([{ "id": nic }]);
        });
    }

    /// The next VNet address space inside 10.0.0.0/8, aligned to its size. Only enormous
    /// fleets exhaust 10/8; they wrap around, which Azure allows for VNets that are not peered.
    fn space(&mut self, len: u8) -> String {
        let size = 1u32 << (32 - len);
        let mut offset = self.next_space.div_ceil(size) * size;
        if offset + size > 1 << 24 {
            offset = 0;
        }
        self.next_space = offset + size;
        Ipv4Net::new(Ipv4Addr::from((10u32 << 24) + offset), len)
            .expect("len <= 32")
            .to_string()
    }
}

fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (item, w) in items {
        if roll < *w {
            return *item;
        }
        roll -= w;
    }
    items[items.len() - 1].0
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use ipnet::Ipv4Net;
    use serde_json::Value;

    use super::*;
    use crate::azure::models::{
        normalize_location, AutoscaleSetting, KeyVaultReference, Plan, Site, VirtualNetwork,
        VnetConnection,
    };
    use crate::azure::ResourceKind;
    use crate::sim::builder::{free_block, subnet_prefixes};

    fn ty(r: &Value) -> String {
        r["type"].as_str().unwrap_or_default().to_ascii_lowercase()
    }

    fn key(s: &str) -> String {
        s.to_ascii_lowercase()
    }

    fn of_type<'a>(f: &'a Fleet, t: &str) -> Vec<&'a Value> {
        let t = t.to_ascii_lowercase();
        f.resources.iter().filter(|r| ty(r) == t).collect()
    }

    fn is_target(r: &Value) -> bool {
        matches!(
            ty(r).as_str(),
            "microsoft.web/sites" | "microsoft.web/sites/slots"
        )
    }

    fn vnet_space(v: &Value) -> Vec<Ipv4Net> {
        v["properties"]["addressSpace"]["addressPrefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().parse().unwrap())
            .collect()
    }

    fn vnet_used(v: &Value) -> Vec<Ipv4Net> {
        v["properties"]["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(subnet_prefixes)
            .collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Category {
        SameRegion,
        CrossPeered,
        CrossUnpeered,
        Full,
        Regional,
        NoIntegration,
        Classic,
        UnsupportedSku,
    }

    /// Classifies every target from the resources alone, the way the planner would see them.
    fn categories(f: &Fleet) -> BTreeMap<String, Category> {
        let by_id: HashMap<String, &Value> = f
            .resources
            .iter()
            .map(|r| (key(r["id"].as_str().unwrap()), r))
            .collect();
        let mut conns: HashMap<String, String> = HashMap::new();
        for c in f
            .resources
            .iter()
            .filter(|r| ty(r).ends_with("virtualnetworkconnections"))
        {
            let id = ResourceId::parse(c["id"].as_str().unwrap()).unwrap();
            let vnet = c["properties"]["vnetResourceId"].as_str().unwrap();
            conns.insert(id.parent().unwrap().key().to_string(), key(vnet));
        }
        let vnets = of_type(f, "Microsoft.Network/virtualNetworks");
        let mut out = BTreeMap::new();
        for t in f.resources.iter().filter(|r| is_target(r)) {
            let id = key(t["id"].as_str().unwrap());
            let loc = normalize_location(t["location"].as_str().unwrap());
            let plan = by_id[&key(t["properties"]["serverFarmId"].as_str().unwrap())];
            let cat = if t["properties"]["virtualNetworkSubnetId"].is_string() {
                Category::Regional
            } else if let Some(vnet_id) = conns.get(&id) {
                let vnet = by_id[vnet_id];
                let kind = ResourceId::parse(vnet_id).unwrap().kind();
                let tier = plan["sku"]["tier"].as_str().unwrap();
                if kind == ResourceKind::ClassicVirtualNetwork {
                    Category::Classic
                } else if tier == "Free" || tier == "IsolatedV2" {
                    Category::UnsupportedSku
                } else if normalize_location(vnet["location"].as_str().unwrap()) == loc {
                    if free_block(&vnet_space(vnet), &vnet_used(vnet), 29).is_none() {
                        Category::Full
                    } else {
                        Category::SameRegion
                    }
                } else {
                    let remote = ResourceId::parse(vnet_id).unwrap();
                    let peered = vnets.iter().any(|v| {
                        let v: VirtualNetwork = serde_json::from_value((*v).clone()).unwrap();
                        normalize_location(&v.location) == loc
                            && v.properties
                                .virtual_network_peerings
                                .iter()
                                .any(|p| p.is_connected_to(&remote))
                    });
                    if peered {
                        Category::CrossPeered
                    } else {
                        Category::CrossUnpeered
                    }
                }
            } else {
                Category::NoIntegration
            };
            out.insert(id, cat);
        }
        out
    }

    fn json(f: &Fleet) -> String {
        serde_json::to_string(f).unwrap()
    }

    #[test]
    fn deterministic_per_seed() {
        let a = generate(300, 7);
        assert_eq!(json(&a), json(&generate(300, 7)));
        assert_ne!(json(&a), json(&generate(300, 8)));
        assert!(generate(0, 7).resources.is_empty());
    }

    #[test]
    fn produces_exactly_n_targets() {
        for n in [1, 2, 3, 17, 200] {
            let f = generate(n, n as u64);
            assert_eq!(f.resources.iter().filter(|r| is_target(r)).count(), n);
        }
    }

    fn share(cats: &BTreeMap<String, Category>, c: Category) -> f64 {
        cats.values().filter(|&&x| x == c).count() as f64 / cats.len() as f64
    }

    #[test]
    fn requested_mix_is_present() {
        for seed in [1, 2, 3] {
            let f = generate(500, seed);
            let cats = categories(&f);
            assert_eq!(cats.len(), 500);
            let bounds = [
                (Category::SameRegion, 0.45, 0.75),
                (Category::CrossPeered, 0.03, 0.16),
                (Category::CrossUnpeered, 0.01, 0.10),
                (Category::Full, 0.002, 0.08),
                (Category::Regional, 0.02, 0.20),
                (Category::NoIntegration, 0.03, 0.18),
                (Category::Classic, 0.002, 0.06),
                (Category::UnsupportedSku, 0.002, 0.08),
            ];
            for (c, lo, hi) in bounds {
                let s = share(&cats, c);
                assert!(
                    (lo..=hi).contains(&s),
                    "seed {seed}: {c:?} share {s:.3} not in {lo}..{hi}"
                );
            }
            check_estate(&f, seed);
        }
    }

    /// Everything beyond target categories: estate shape, slots, subnets, plans, autoscale,
    /// Key Vault references and quirk tags.
    fn check_estate(f: &Fleet, seed: u64) {
        let sites = of_type(f, "Microsoft.Web/sites");
        let slots = of_type(f, "Microsoft.Web/sites/slots");
        let plans = of_type(f, "Microsoft.Web/serverfarms");
        let vnets = of_type(f, "Microsoft.Network/virtualNetworks");

        let subs: BTreeSet<String> = f
            .resources
            .iter()
            .map(|r| {
                ResourceId::parse(r["id"].as_str().unwrap())
                    .unwrap()
                    .subscription()
                    .to_string()
            })
            .collect();
        assert!(
            (3..=5).contains(&subs.len()),
            "seed {seed}: {} subscriptions",
            subs.len()
        );
        let regions: BTreeSet<&str> = plans
            .iter()
            .map(|p| p["location"].as_str().unwrap())
            .collect();
        assert!((2..=4).contains(&regions.len()));

        // Slots: ~15 % of apps; some with their own connection, some whose site has none.
        let slot_share = slots.len() as f64 / sites.len() as f64;
        assert!(
            (0.06..=0.25).contains(&slot_share),
            "slot share {slot_share}"
        );
        let connected: BTreeSet<String> = f
            .resources
            .iter()
            .filter(|r| ty(r).ends_with("virtualnetworkconnections"))
            .map(|c| {
                let id = ResourceId::parse(c["id"].as_str().unwrap()).unwrap();
                id.parent().unwrap().key().to_string()
            })
            .collect();
        let slot_ids: Vec<ResourceId> = slots
            .iter()
            .map(|s| ResourceId::parse(s["id"].as_str().unwrap()).unwrap())
            .collect();
        assert!(slot_ids
            .iter()
            .any(|s| connected.contains(s.key()) && connected.contains(s.site().unwrap().key())));
        assert!(slot_ids.iter().any(|s| {
            let site = f
                .resources
                .iter()
                .find(|r| r["id"] == s.site().unwrap().as_str())
                .unwrap();
            connected.contains(s.key())
                && !connected.contains(s.site().unwrap().key())
                && site["properties"]["virtualNetworkSubnetId"].is_null()
        }));

        // Plans whose apps use three gateway VNets.
        let mut plan_vnets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in f
            .resources
            .iter()
            .filter(|r| ty(r).ends_with("virtualnetworkconnections"))
        {
            let target = ResourceId::parse(c["id"].as_str().unwrap())
                .unwrap()
                .parent()
                .unwrap();
            let t = f
                .resources
                .iter()
                .find(|r| r["id"] == target.as_str())
                .unwrap();
            plan_vnets
                .entry(key(t["properties"]["serverFarmId"].as_str().unwrap()))
                .or_default()
                .insert(key(c["properties"]["vnetResourceId"].as_str().unwrap()));
        }
        assert!(
            plan_vnets.values().any(|v| v.len() >= 3),
            "seed {seed}: no 3-VNet plan"
        );

        // Empty, delegated subnets under the default name of a plan that still uses a gateway.
        let plan_names: BTreeSet<String> = plans
            .iter()
            .map(|p| key(p["name"].as_str().unwrap()))
            .collect();
        let prepared = vnets
            .iter()
            .flat_map(|v| v["properties"]["subnets"].as_array().unwrap())
            .filter(|s| {
                let name = key(s["name"].as_str().unwrap());
                let plan = name
                    .strip_prefix("snet-")
                    .and_then(|n| n.strip_suffix("-integration"))
                    .unwrap_or_default();
                let sub: crate::azure::models::Subnet =
                    serde_json::from_value((*s).clone()).unwrap();
                plan_names.contains(plan)
                    && sub.is_delegated_to_web()
                    && sub.linked_plans().is_empty()
                    && !sub.has_other_users()
            })
            .count();
        assert!(
            prepared >= 1,
            "seed {seed}: no prepared default-named subnet"
        );

        // Regional targets: their subnet is delegated and linked to their plan.
        for t in sites.iter().chain(slots.iter()) {
            let Some(subnet_id) = t["properties"]["virtualNetworkSubnetId"].as_str() else {
                continue;
            };
            let subnet_id = ResourceId::parse(subnet_id).unwrap();
            let vnet = vnets
                .iter()
                .find(|v| v["id"] == subnet_id.vnet().unwrap().as_str())
                .unwrap();
            let v: VirtualNetwork = serde_json::from_value((*vnet).clone()).unwrap();
            let s = v
                .properties
                .subnets
                .iter()
                .find(|s| s.name == subnet_id.name())
                .unwrap();
            let plan =
                ResourceId::parse(t["properties"]["serverFarmId"].as_str().unwrap()).unwrap();
            assert!(s.is_delegated_to_web());
            assert!(s.linked_plans().contains(&plan));
        }

        // Plans: SKU mix and worker ceilings.
        let skus: BTreeSet<&str> = plans
            .iter()
            .map(|p| p["sku"]["name"].as_str().unwrap())
            .collect();
        for s in ["P1v2", "P2v3", "S1", "B1", "EP1"] {
            assert!(skus.contains(s), "seed {seed}: no {s} plan");
        }
        assert!(skus.contains("F1") || skus.contains("I1v2"));
        for p in &plans {
            let plan: Plan = serde_json::from_value((*p).clone()).unwrap();
            let want = match plan.sku.tier.as_deref().unwrap() {
                "Basic" => 3,
                "Standard" => 10,
                "PremiumV2" | "PremiumV3" => 30,
                "ElasticPremium" => {
                    assert_eq!(plan.properties.elastic_scale_enabled, Some(true));
                    assert!(plan.properties.maximum_elastic_worker_count.unwrap() >= 5);
                    100
                }
                "Free" => 1,
                "IsolatedV2" => 100,
                other => panic!("unexpected tier {other}"),
            };
            assert_eq!(plan.properties.maximum_number_of_workers, Some(want));
        }

        // Autoscale on ~30 % of plans, capacities as strings, some above the SKU ceiling.
        let autoscale = of_type(f, "Microsoft.Insights/autoscaleSettings");
        let a_share = autoscale.len() as f64 / plans.len() as f64;
        assert!(
            (0.15..=0.45).contains(&a_share),
            "autoscale share {a_share}"
        );
        let mut above = 0;
        for a in &autoscale {
            assert!(a["properties"]["profiles"][0]["capacity"]["maximum"].is_string());
            let s: AutoscaleSetting = serde_json::from_value((*a).clone()).unwrap();
            let target = s.properties.target_resource_uri.unwrap();
            let plan = plans.iter().find(|p| p["id"] == target.as_str()).unwrap();
            if s.properties.profiles[0].capacity.maximum.unwrap()
                > plan["properties"]["maximumNumberOfWorkers"]
                    .as_u64()
                    .unwrap() as u32
            {
                above += 1;
            }
        }
        assert!(
            above >= 1,
            "seed {seed}: no autoscale maximum above the SKU ceiling"
        );

        // Key Vault references on ~30 % of apps, all resolved.
        let kv = of_type(f, "Microsoft.Web/sites/config/configreferences");
        let kv_sites: BTreeSet<String> = kv
            .iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap();
                key(&id[..id.find("/config/").unwrap()])
            })
            .collect();
        let kv_share = kv_sites.len() as f64 / sites.len() as f64;
        assert!((0.2..=0.4).contains(&kv_share), "kv share {kv_share}");
        assert!(kv.iter().all(|r| r["properties"]["status"] == "Resolved"));

        // Quirk tags.
        let tagged = |v: &str| {
            f.resources
                .iter()
                .filter(|r| r["tags"][SIM_TAG] == v)
                .count()
        };
        assert!(tagged("reject-connect") >= 1);
        assert!(tagged("kv-breaks-after-connect") >= 1);
        assert!(tagged("old-scale-unit") >= 1);
        assert!(tagged("reject-connect") + tagged("kv-breaks-after-connect") <= sites.len() / 20);
    }

    fn all_ids(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        (
                            "id"
                            | "serverFarmId"
                            | "vnetResourceId"
                            | "virtualNetworkSubnetId"
                            | "targetResourceUri"
                            | "link",
                            Value::String(s),
                        ) => out.push(s.clone()),
                        _ => all_ids(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| all_ids(x, out)),
            _ => {}
        }
    }

    #[test]
    fn ids_parse_and_references_resolve() {
        let f = generate(400, 11);
        let mut ids = Vec::new();
        for r in &f.resources {
            all_ids(r, &mut ids);
        }
        assert!(ids.len() > f.resources.len());
        for id in &ids {
            ResourceId::parse(id).unwrap_or_else(|e| panic!("{e}"));
        }
        let top: BTreeSet<String> = f
            .resources
            .iter()
            .map(|r| key(r["id"].as_str().unwrap()))
            .collect();
        assert_eq!(top.len(), f.resources.len(), "duplicate ids");
        for r in &f.resources {
            if is_target(r) {
                let plan = r["properties"]["serverFarmId"].as_str().unwrap();
                assert!(top.contains(&key(plan)), "{plan} missing");
                let rg = ResourceId::parse(r["id"].as_str().unwrap()).unwrap();
                let rg =
                    ResourceId::resource_group_id(rg.subscription(), rg.resource_group().unwrap())
                        .unwrap();
                assert!(top.contains(rg.key()), "{rg} missing");
            }
            if ty(r).ends_with("virtualnetworkconnections") {
                let vnet = r["properties"]["vnetResourceId"].as_str().unwrap();
                assert!(top.contains(&key(vnet)), "{vnet} missing");
                let target = ResourceId::parse(r["id"].as_str().unwrap())
                    .unwrap()
                    .parent()
                    .unwrap();
                assert!(top.contains(target.key()));
            }
        }
    }

    #[test]
    fn subnets_fit_their_vnet_and_never_overlap() {
        let f = generate(600, 5);
        let vnets = of_type(&f, "Microsoft.Network/virtualNetworks");
        let mut spaces = Vec::new();
        for v in &vnets {
            let space = vnet_space(v);
            let used = vnet_used(v);
            for (i, a) in used.iter().enumerate() {
                assert!(space.iter().any(|s| s.contains(a)), "{a} outside {space:?}");
                for b in &used[i + 1..] {
                    assert!(
                        !a.contains(&b.network()) && !b.contains(&a.network()),
                        "{a} overlaps {b}"
                    );
                }
            }
            spaces.extend(space);
        }
        // Every VNet has its own address space.
        for (i, a) in spaces.iter().enumerate() {
            for b in &spaces[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "{a} / {b}"
                );
            }
        }
        let full = vnets
            .iter()
            .filter(|v| free_block(&vnet_space(v), &vnet_used(v), 29).is_none())
            .count();
        assert!(
            full >= 1 && full * 5 < vnets.len(),
            "{full} of {} VNets full",
            vnets.len()
        );
    }

    #[test]
    fn models_parse_every_resource() {
        let f = generate(300, 3);
        let mut seen = BTreeSet::new();
        for r in &f.resources {
            let t = ty(r);
            let v = r.clone();
            let ok = match t.as_str() {
                "microsoft.web/sites" | "microsoft.web/sites/slots" => {
                    let s: Site = serde_json::from_value(v).unwrap();
                    s.properties.server_farm_id.is_some()
                }
                "microsoft.web/serverfarms" => {
                    let p: Plan = serde_json::from_value(v).unwrap();
                    p.sku.capacity.is_some()
                }
                "microsoft.network/virtualnetworks" => {
                    let n: VirtualNetwork = serde_json::from_value(v).unwrap();
                    n.properties.resource_guid.is_some()
                }
                "microsoft.insights/autoscalesettings" => {
                    let a: AutoscaleSetting = serde_json::from_value(v).unwrap();
                    a.properties.profiles[0].capacity.maximum.is_some()
                }
                "microsoft.web/sites/virtualnetworkconnections"
                | "microsoft.web/sites/slots/virtualnetworkconnections" => {
                    let c: VnetConnection = serde_json::from_value(v).unwrap();
                    c.is_gateway() && c.properties.cert_thumbprint.as_ref().unwrap().len() == 40
                }
                "microsoft.web/sites/config/configreferences"
                | "microsoft.web/sites/slots/config/configreferences" => {
                    let k: KeyVaultReference = serde_json::from_value(v).unwrap();
                    k.setting_name().is_some() && k.properties.vault_name.is_some()
                }
                _ => true,
            };
            assert!(ok, "{t}: {}", r["id"]);
            seen.insert(t);
        }
        for t in [
            "microsoft.resources/resourcegroups",
            "microsoft.web/sites",
            "microsoft.web/sites/slots",
            "microsoft.web/serverfarms",
            "microsoft.network/virtualnetworks",
            "microsoft.network/virtualnetworkgateways",
            "microsoft.classicnetwork/virtualnetworks",
            "microsoft.insights/autoscalesettings",
            "microsoft.web/sites/virtualnetworkconnections",
            "microsoft.web/sites/slots/virtualnetworkconnections",
            "microsoft.web/sites/config/configreferences",
        ] {
            assert!(seen.contains(t), "no {t} generated");
        }
    }

    /// Top-level and `properties` key names of one resource.
    type Shape = (Vec<String>, Vec<String>);

    /// Top-level and `properties` key sets per type.
    fn shapes(f: &Fleet) -> BTreeMap<String, BTreeSet<Shape>> {
        let mut out: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
        for r in &f.resources {
            let keys = |v: &Value| -> Vec<String> {
                v.as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default()
            };
            out.entry(ty(r))
                .or_default()
                .insert((keys(r), keys(&r["properties"])));
        }
        out
    }

    #[test]
    fn builder_scenarios_look_like_generated_ones() {
        let mut b = FleetBuilder::new();
        let hub = b.vnet("rg-net", "hub", "westeurope", &["10.0.0.0/16"]);
        b.gateway(&hub);
        let dr = b.vnet("rg-net", "dr", "northeurope", &["10.1.0.0/16"]);
        b.gateway(&dr);
        b.peering(&hub, &dr, "Connected");
        let classic = b.classic_vnet("rg-classic", "old", "westeurope");
        let plan = b.plan("rg-app", "asp-1", "westeurope", "P1v2", 2);
        b.autoscale(&plan, 12);
        let a = b.site("rg-app", "app-1", &plan);
        let s = b.slot(&a, "staging");
        b.gateway_connection(&a, &hub);
        b.gateway_connection(&s, &classic);
        b.key_vault_reference(&a, "DbPassword", "Resolved");
        b.key_vault_reference(&s, "DbPassword", "Resolved");
        let snet = b.subnet(&hub, "snet-asp-2-integration", "10.0.8.0/26");
        let plan2 = b.plan("rg-app", "asp-2", "westeurope", "EP1", 1);
        let a2 = b.site("rg-app", "app-2", &plan2);
        b.regional(&a2, &snet);
        b.tag(&a2, SIM_TAG, "reject-connect");

        let built = shapes(&b.build());
        let generated = shapes(&generate(500, 1));
        for (t, variants) in &built {
            let g = generated
                .get(t)
                .unwrap_or_else(|| panic!("generator makes no {t}"));
            for v in variants {
                assert!(
                    g.contains(v),
                    "{t}: builder shape {v:?} not among generated {g:?}"
                );
            }
        }
    }

    /// A VNet a very large estate has filled (one seed did at 80,000 targets) leaves the plans
    /// on their gateway connections instead of stopping the generator.
    #[test]
    fn full_vnets_leave_plans_on_their_gateway() {
        let mut g = Gen::new(10, 1);
        let ctx = Ctx {
            sub: 0,
            region: g.regions[0],
            team: g.subs[0].teams[0],
        };
        let sub = g.subs[0].id.clone();
        g.b.subscription(&sub);
        let vnets = [
            g.hub(ctx.sub, ctx.region),
            g.spoke(&ctx, ctx.region, "01", 20),
        ];
        for v in &vnets {
            let mut i = 0;
            for len in 26..=28 {
                while let Some(p) = g.b.free_prefix(v, len) {
                    i += 1;
                    g.b.subnet(v, &format!("filler-{i}"), &p);
                }
            }
        }
        let plan = g.plan(&ctx, Scenario::SameRegion);
        // Enough draws for both VNets and every subnet size.
        for _ in 0..40 {
            let regional = g.integrations(&ctx, Scenario::Regional, &plan, 3);
            assert!(regional
                .iter()
                .all(|i| matches!(i, Integration::Gateway(v) if vnets.contains(v))));
            let same = g.integrations(&ctx, Scenario::SameRegion, &plan, 2);
            assert!(same.iter().all(|i| matches!(i, Integration::Gateway(_))));
        }
    }
}
