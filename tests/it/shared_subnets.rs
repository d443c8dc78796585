//! The multi-plan subnet join (`subnet.sharedAcrossPlans`, issue 12 item 4), run through the
//! HTTP client against the simulator, which joins several plans of one subscription in a
//! subnet of at least /26 as ARM does.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use vnet_migrate::azure::ResourceId;
use vnet_migrate::policy::Policy;
use vnet_migrate::sim::SimOptions;

use crate::support::{base, hub, outcome, Rig};

const WE: &str = "westeurope";

/// The smallest block holding `addresses`, at least a /26 (ARM's minimum for a shared subnet).
fn shared_prefix_len(addresses: u32) -> u8 {
    (0..=26u8)
        .rev()
        .find(|len| (1u64 << (32 - u32::from(*len))) >= u64::from(addresses))
        .unwrap()
}

#[tokio::test]
async fn plans_of_one_subscription_migrate_into_one_subnet_sized_for_all() {
    let mut b = base();
    let v = hub(&mut b, "hub-we", WE, "10.1.0.0/16");
    let mut apps = Vec::new();
    let mut instances = 0;
    for p in 0..20u32 {
        let capacity = 1 + p % 3;
        instances += capacity;
        let plan = b.plan("apps", &format!("plan{p}"), WE, "P1v2", capacity);
        for i in 0..(1 + p % 2) {
            let s = b.site("apps", &format!("app{p}-{i}"), &plan);
            b.gateway_connection(&s, &v);
            apps.push(s);
        }
    }
    // Latency and locks on, 500× faster than ARM; 8 steps in flight.
    let options = SimOptions {
        speed: 500.0,
        seed: 12,
        ..SimOptions::default()
    };
    let rig = Rig::start_with(b.build(), options).await;
    let policy =
        Policy::from_json(r#"{"subnet": {"sharedAcrossPlans": true}, "settleSeconds": 1}"#)
            .unwrap();
    let report = rig.run(&policy, "shared.db").await;
    for a in &apps {
        assert_eq!(outcome(&report, a), "migrated", "{a}");
    }
    let subnets: BTreeSet<ResourceId> = apps.iter().map(|a| rig.subnet_of(a).unwrap()).collect();
    assert_eq!(subnets.len(), 1, "{subnets:?}");
    let subnet = subnets.into_iter().next().unwrap();
    assert_eq!(subnet.name(), "snet-shared-00000000-integration");
    // 2 × 39 instances + 5 = 83 addresses: a /25.
    let want = shared_prefix_len(2 * instances + 5);
    assert_eq!(want, 25);
    let vnet = rig.resource(&v).unwrap();
    let prefix: Ipv4Net = vnet["properties"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == subnet.name())
        .and_then(|s| s["properties"]["addressPrefix"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(prefix.prefix_len(), want);
    // Twenty plans share it: the invariants check it holds them all, and that no subnets
    // overlap.
    rig.assert_invariants(&report);
}
