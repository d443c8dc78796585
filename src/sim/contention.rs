//! Contention as ARM answers it: which running operation a write collides with (the site's
//! exclusive lock, the VNet's operation lock), the answer it then gets, and how long a write
//! holds the locks it takes.

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};

use super::options::Work;
use super::reply::Reply;
use super::state::{Hold, State};
use super::store::type_key;
use super::web::stored_subnet;
use crate::azure::{ResourceId, ResourceKind};

/// What a request does and which locks it takes while it runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Claim {
    pub(super) work: Work,
    /// The site or slot written (App Service locks it for the whole write).
    pub(super) site: Option<ResourceId>,
    /// The VNets written, each with the subnet whose state (delegation, service association
    /// link) the write changes.
    vnets: Vec<(ResourceId, Option<ResourceId>)>,
}

impl Claim {
    fn free(work: Work) -> Self {
        Claim {
            work,
            site: None,
            vnets: Vec::new(),
        }
    }
}

/// The site or slot `id` is, or sits below.
fn web_target(id: &ResourceId) -> Option<ResourceId> {
    let mut cur = Some(id.clone());
    while let Some(c) = cur {
        if matches!(c.kind(), ResourceKind::Site | ResourceKind::Slot) {
            return Some(c);
        }
        cur = c.parent();
    }
    None
}

fn subnet_in(v: &Value) -> Option<ResourceId> {
    v.as_str()
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| ResourceId::parse(s).ok())
        .filter(|s| s.kind() == ResourceKind::Subnet)
}

/// The VNets an integration change touches: the one joined and the one left (each with its
/// subnet, whose service association link the change writes).
fn integration_vnets(
    joined: Option<ResourceId>,
    left: Option<ResourceId>,
) -> Vec<(ResourceId, Option<ResourceId>)> {
    let mut out: Vec<(ResourceId, Option<ResourceId>)> = Vec::new();
    for s in joined.into_iter().chain(left) {
        if let Some(v) = s.vnet() {
            if !out.iter().any(|(o, _)| o == &v) {
                out.push((v, Some(s)));
            }
        }
    }
    out
}

/// The VPN gateway a write goes to: the gateway itself, or its `generatevpnclientpackage`.
fn gateway_written(path: &str) -> Option<ResourceId> {
    let path = match path.rsplit_once('/') {
        Some((gateway, action)) if action.eq_ignore_ascii_case("generatevpnclientpackage") => {
            gateway
        }
        _ => path,
    };
    ResourceId::parse(path)
        .ok()
        .filter(|id| type_key(id) == "microsoft.network/virtualnetworkgateways")
}

/// What `method path` with `body` does to the locks.
pub(super) fn claim(st: &State, method: &str, path: &str, body: &Value) -> Claim {
    if method == "GET" {
        return Claim::free(Work::Read);
    }
    // A VPN gateway write (PUT, or generating a client package) is a Network operation that
    // holds the gateway (arm-vnet reference §2.2, §8).
    if let Some(gateway) = gateway_written(path) {
        return Claim {
            work: Work::NetworkWrite,
            site: None,
            vnets: vec![(gateway, None)],
        };
    }
    let Ok(id) = ResourceId::parse(path) else {
        return Claim::free(Work::Write);
    };
    if let Some(target) = web_target(&id) {
        // Read only for the writes that take part in the VNet lock: reading the site costs
        // more than the rest of the claim.
        let current = || stored_subnet(st, &target);
        let swift = type_key(&id).ends_with("/networkconfig")
            && id.name().eq_ignore_ascii_case("virtualnetwork");
        // A site write that sets or clears `virtualNetworkSubnetId` (or the swift PUT) and the
        // swift DELETE write the subnets' service association links: they take part in the
        // VNet lock (arm-vnet reference §13; Azure/azure-rest-api-specs#11143).
        let (work, vnets) = match (method, id == target, swift) {
            ("PUT" | "PATCH", true, _) => {
                match body.pointer("/properties/virtualNetworkSubnetId") {
                    Some(v) => (Work::SubnetJoin, integration_vnets(subnet_in(v), current())),
                    None => (Work::Write, Vec::new()),
                }
            }
            ("PUT" | "PATCH", false, true) => (
                Work::SubnetJoin,
                integration_vnets(
                    subnet_in(&body["properties"]["subnetResourceId"]),
                    current(),
                ),
            ),
            ("DELETE", false, true) => (Work::SwiftDelete, integration_vnets(None, current())),
            _ => (Work::Write, Vec::new()),
        };
        return Claim {
            work,
            site: Some(target),
            vnets,
        };
    }
    match (id.kind(), method) {
        (ResourceKind::Subnet, _) => Claim {
            work: Work::NetworkWrite,
            site: None,
            vnets: id
                .vnet()
                .map(|v| (v, Some(id.clone())))
                .into_iter()
                .collect(),
        },
        (ResourceKind::VirtualNetwork, "PUT") => Claim {
            work: Work::NetworkWrite,
            site: None,
            vnets: vec![(id, None)],
        },
        (ResourceKind::VirtualNetwork, _) => Claim {
            work: Work::Write,
            site: None,
            vnets: vec![(id, None)],
        },
        _ => Claim::free(Work::Write),
    }
}

/// App Service's answer to a second write while the site is being written, exactly as
/// recorded: PascalCase, not ARM's `{"error":…}` envelope, no `Retry-After` (recording
/// test_functionapp_create_with_vnet_by_subnet_rid #20; arm-vnet reference §8, §3.2).
fn site_locked() -> Reply {
    let msg = "Cannot acquire exclusive lock to create, update or delete this site. Retry the request later.";
    Reply::new(
        429,
        json!({
            "Code": "429",
            "Message": msg,
            "Target": null,
            "Details": [
                {"Message": msg},
                {"Code": "429"},
                {"ErrorEntity": {
                    "ExtendedCode": "59206",
                    "MessageTemplate": msg,
                    "Parameters": [],
                    "Code": "429",
                    "Message": msg
                }}
            ],
            "Innererror": null
        }),
    )
}

/// One of the answers ARM gives a write that collides with a running operation on the VNet,
/// drawn from the seeded generator so a run sees all three: 409 `AnotherOperationInProgress`
/// (arm-vnet reference §13; Azure-Samples/azuresandbox#51, pulumi/pulumi-azure-native#699),
/// 400 `NetcfgInvalidSubnet` or 429 `RetryableErrorDueToAnotherOperation` (parallel subnet
/// writes in one VNet: one succeeds, the others get these; Azure/azure-rest-api-specs#14202,
/// arm-vnet reference §5, §8).
fn vnet_locked(
    st: &mut State,
    vnet: &ResourceId,
    subnet: Option<&ResourceId>,
    wait: Duration,
) -> Reply {
    // A VPN gateway is not a VNet: of the three answers only the retryable 429 applies.
    let answer = if vnet.kind() == ResourceKind::VirtualNetwork {
        st.rng.random_range(0..3)
    } else {
        2
    };
    match answer {
        0 => Reply::error(
            409,
            "AnotherOperationInProgress",
            format!("Another operation on this or dependent resource is in progress. Virtual network {} is being updated; retry the request later.", vnet.as_str()),
        ),
        1 => Reply::error(
            400,
            "NetcfgInvalidSubnet",
            format!(
                "Subnet '{}' is not valid in virtual network '{}'.",
                subnet.map(ResourceId::name).unwrap_or_default(),
                vnet.name()
            ),
        ),
        // Whether Network sends Retry-After here is not established (arm-vnet reference §13:
        // the recorder strips it); sent, scaled like every simulated wait.
        _ => Reply::error(
            429,
            "RetryableErrorDueToAnotherOperation",
            format!("Operation could not be completed because another operation on {} is in progress. Retry the request later.", vnet.as_str()),
        )
        .header("Retry-After", State::retry_after(wait)),
    }
}

/// ARM's answer when `claim` collides with a running operation; `None` when it may proceed.
pub(super) fn refusal(st: &mut State, claim: &Claim) -> Option<Reply> {
    let now = Instant::now();
    st.site_busy.retain(|_, until| *until > now);
    st.vnet_busy.retain(|_, h| h.until > now);
    let refused = if claim
        .site
        .as_ref()
        .is_some_and(|s| st.site_busy.contains_key(s.key()))
    {
        Some(site_locked())
    } else {
        let busy = claim.vnets.iter().find_map(|(v, s)| {
            st.vnet_busy
                .get(v.key())
                .map(|h| (v.clone(), s.clone(), h.until))
        });
        busy.map(|(v, s, until)| vnet_locked(st, &v, s.as_ref(), until - now))
    };
    if refused.is_some() {
        st.stats.contended += 1;
    }
    refused
}

/// Takes `claim`'s locks until `until` (nothing when the write takes no time), and adds to
/// each VNet's (or gateway's) lock time the least time the latency model gives its work and
/// the time it holds the lock (`awaited`: the request is answered when done, or its LRO
/// polled until then) or else the least time: such operations run one at a time, so their
/// sums bound a rehearsal from below.
pub(super) fn hold(st: &mut State, claim: &Claim, until: Instant, awaited: bool) {
    let now = Instant::now();
    if until <= now {
        return;
    }
    let least = claim.work.seconds().0;
    let held = if awaited {
        (until - now).as_secs_f64() * st.options.speed()
    } else {
        least
    };
    if let Some(s) = &claim.site {
        st.site_busy.insert(s.key().to_string(), until);
    }
    let speed = st.options.speed();
    let span = [
        (now - st.started).as_secs_f64() * speed,
        (until - st.started).as_secs_f64() * speed,
    ];
    for (v, s) in &claim.vnets {
        st.stats
            .vnet_span_seconds
            .entry(v.key().to_string())
            .and_modify(|[first, last]| {
                *first = first.min(span[0]);
                *last = last.max(span[1]);
            })
            .or_insert(span);
        *st.stats
            .vnet_lock_seconds
            .entry(v.key().to_string())
            .or_default() += least;
        *st.stats
            .vnet_held_seconds
            .entry(v.key().to_string())
            .or_default() += held;
        // Holds on one VNet never overlap, so the one taken last ends last.
        match (claim.work, &claim.site) {
            (Work::SubnetJoin, Some(site)) => {
                st.stats
                    .vnet_last_join
                    .insert(v.key().to_string(), site.key().to_string());
            }
            _ => {
                st.stats.vnet_last_join.remove(v.key());
            }
        }
        st.vnet_busy.insert(
            v.key().to_string(),
            Hold {
                until,
                subnet: s.as_ref().map(|s| s.key().to_string()),
            },
        );
    }
}

/// The operation running on `vnet` (a VNet or a VPN gateway), if any: while there is none, a
/// GET shows the resource as stored (`render_network` changes nothing).
pub(super) fn running_on<'a>(st: &'a State, vnet: &ResourceId) -> Option<&'a Hold> {
    st.vnet_busy
        .get(vnet.key())
        .filter(|h| h.until > Instant::now())
}

/// `provisioningState` of a Network resource as a GET shows it: `Updating` while an operation
/// runs on it (arm-vnet reference §13; Azure/azure-rest-api-specs#11143). For a VNet, also
/// its inline subnet under the running operation.
pub(super) fn render_network(st: &State, id: &ResourceId, mut v: Value) -> Value {
    let (hold, subnet) = match id.kind() {
        ResourceKind::Subnet => match id.vnet() {
            Some(vnet) => (running_on(st, &vnet), Some(id.clone())),
            None => return v,
        },
        _ => (running_on(st, id), None),
    };
    let Some(hold) = hold else {
        return v;
    };
    let updating = |v: &mut Value| {
        if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
            p.insert("provisioningState".into(), json!("Updating"));
        }
    };
    match subnet {
        Some(s) if hold.subnet.as_deref() == Some(s.key()) => updating(&mut v),
        Some(_) => {}
        None => {
            updating(&mut v);
            if let Some(subnets) = v
                .pointer_mut("/properties/subnets")
                .and_then(Value::as_array_mut)
            {
                for s in subnets {
                    let held = s["id"]
                        .as_str()
                        .and_then(|i| ResourceId::parse(i).ok())
                        .is_some_and(|i| hold.subnet.as_deref() == Some(i.key()));
                    if held {
                        updating(s);
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::options::SimOptions;
    use crate::sim::store::Store;

    const SITE: &str = "/subscriptions/s/resourceGroups/apps/providers/Microsoft.Web/sites/app1";
    const SUBNET: &str = "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub/subnets/a";

    fn state() -> State {
        State::new(Store::from_resources(Vec::new()), SimOptions::default())
    }

    #[test]
    fn second_concurrent_site_write_gets_the_exclusive_lock_429() {
        let mut st = state();
        let body = json!({"properties": {"virtualNetworkSubnetId": SUBNET}});
        let first = claim(&st, "PATCH", SITE, &body);
        assert_eq!(first.work, Work::SubnetJoin);
        assert!(refusal(&mut st, &first).is_none());
        hold(
            &mut st,
            &first,
            Instant::now() + Duration::from_secs(8),
            true,
        );
        let second = claim(&st, "PUT", SITE, &json!({"properties": {}}));
        let r = refusal(&mut st, &second).expect("refused");
        assert_eq!(r.status, 429);
        let b = r.body.unwrap();
        assert_eq!(b["Code"], "429");
        assert!(b.get("error").is_none(), "no ARM envelope");
        assert_eq!(b["Details"][2]["ErrorEntity"]["ExtendedCode"], "59206");
        assert!(b["Message"]
            .as_str()
            .unwrap()
            .starts_with("Cannot acquire exclusive lock"));
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| !k.eq_ignore_ascii_case("retry-after")));
        assert_eq!(st.stats.contended, 1);
    }

    #[test]
    fn vnet_lock_answers_all_three_arm_codes_and_reads_updating() {
        let mut st = state();
        let subnet = ResourceId::parse(SUBNET).unwrap();
        let first = claim(&st, "PUT", SUBNET, &json!({}));
        assert_eq!(first.work, Work::NetworkWrite);
        hold(
            &mut st,
            &first,
            Instant::now() + Duration::from_secs(60),
            true,
        );
        // A site joining another subnet of the same VNet collides with it.
        let other = SUBNET.replace("/subnets/a", "/subnets/b");
        let join = claim(
            &st,
            "PATCH",
            SITE,
            &json!({"properties": {"virtualNetworkSubnetId": other}}),
        );
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let r = refusal(&mut st, &join).expect("refused");
            let code = r.body.as_ref().unwrap()["error"]["code"]
                .as_str()
                .unwrap()
                .to_string();
            seen.insert((r.status, code));
        }
        let expected: std::collections::BTreeSet<(u16, String)> = [
            (400, "NetcfgInvalidSubnet".to_string()),
            (409, "AnotherOperationInProgress".to_string()),
            (429, "RetryableErrorDueToAnotherOperation".to_string()),
        ]
        .into();
        assert_eq!(seen, expected);
        let shown = render_network(
            &st,
            &subnet,
            json!({"properties": {"provisioningState": "Succeeded"}}),
        );
        assert_eq!(shown["properties"]["provisioningState"], "Updating");
        let b = ResourceId::parse(&other).unwrap();
        let shown = render_network(
            &st,
            &b,
            json!({"properties": {"provisioningState": "Succeeded"}}),
        );
        assert_eq!(shown["properties"]["provisioningState"], "Succeeded");
    }

    /// A join that holds its VNet for 8 s counts 7 s (the model's least) and 8 s (this run's);
    /// a write applied after a 504, which the run need not wait for, counts its least twice.
    #[test]
    fn a_hold_counts_the_least_time_and_the_time_held() {
        let mut st = state();
        let join = claim(
            &st,
            "PATCH",
            SITE,
            &json!({"properties": {"virtualNetworkSubnetId": SUBNET}}),
        );
        hold(
            &mut st,
            &join,
            Instant::now() + Duration::from_secs(8),
            true,
        );
        let hub = ResourceId::parse(SUBNET).unwrap().vnet().unwrap();
        let key = hub.key().to_string();
        assert_eq!(st.stats.vnet_lock_seconds[&key], 7.0);
        assert!((st.stats.vnet_held_seconds[&key] - 8.0).abs() < 0.01);
        let app1 = ResourceId::parse(SITE).unwrap();
        assert_eq!(st.stats.vnet_last_join[&key], app1.key());
        let other = SITE.replace("app1", "app2");
        let late = claim(
            &st,
            "PATCH",
            &other,
            &json!({"properties": {"virtualNetworkSubnetId": SUBNET}}),
        );
        hold(
            &mut st,
            &late,
            Instant::now() + Duration::from_secs(60),
            false,
        );
        assert_eq!(st.stats.vnet_lock_seconds[&key], 14.0);
        assert!((st.stats.vnet_held_seconds[&key] - 15.0).abs() < 0.01);
        let app2 = ResourceId::parse(&other).unwrap();
        assert_eq!(st.stats.vnet_last_join[&key], app2.key());
        // The span runs from the first hold's start to the end of the one that ends last.
        let [first, last] = st.stats.vnet_span_seconds[&key];
        assert!((last - first - 60.0).abs() < 0.01);
        // A subnet write after the joins: no join is the VNet's last operation any more.
        let write = claim(
            &st,
            "PUT",
            SUBNET,
            &json!({"properties": {"addressPrefix": "10.0.9.0/26"}}),
        );
        assert_eq!(write.work, Work::NetworkWrite);
        hold(
            &mut st,
            &write,
            Instant::now() + Duration::from_secs(2),
            true,
        );
        assert!(!st.stats.vnet_last_join.contains_key(&key));
    }

    #[test]
    fn swift_delete_and_plain_writes() {
        let st = state();
        let swift = format!("{SITE}/networkConfig/virtualNetwork");
        assert_eq!(
            claim(&st, "DELETE", &swift, &Value::Null).work,
            Work::SwiftDelete
        );
        let routing = claim(
            &st,
            "PATCH",
            SITE,
            &json!({"properties": {"outboundVnetRouting": {}}}),
        );
        assert_eq!(routing.work, Work::Write);
        assert!(routing.vnets.is_empty() && routing.site.is_some());
        assert_eq!(
            claim(&st, "GET", SITE, &Value::Null),
            Claim::free(Work::Read)
        );
    }
}
