//! Subnet sizing and free-range allocation for regional integration. Pure and deterministic:
//! the same address space and used prefixes always give the same block.

use ipnet::{IpNet, Ipv4Net};

/// Azure keeps the first four addresses and the last one of every subnet.
pub(crate) const RESERVED_PER_SUBNET: u32 = 5;

/// The smallest subnet App Service accepts for regional integration.
const SMALLEST_PREFIX_LEN: u8 = 28;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IpamError {
    #[error("invalid address prefix {0:?}")]
    InvalidPrefix(String),
}

/// Addresses a plan needs: scaling temporarily doubles the instances' IPs, plus the reserved ones.
pub(crate) fn required_addresses(max_instances: u32) -> u32 {
    max_instances
        .saturating_mul(2)
        .saturating_add(RESERVED_PER_SUBNET)
}

/// Prefix length of the smallest block holding `addresses`, never smaller than /28.
pub(crate) fn prefix_len_for(addresses: u32) -> u8 {
    let mut len = SMALLEST_PREFIX_LEN;
    while len > 0 && block_size(len) < u64::from(addresses) {
        len -= 1;
    }
    len
}

fn block_size(prefix_len: u8) -> u64 {
    1u64 << (32 - u32::from(prefix_len))
}

fn first(n: &Ipv4Net) -> u64 {
    u64::from(u32::from(n.network()))
}

/// One past the last address of `n`.
fn end(n: &Ipv4Net) -> u64 {
    first(n) + block_size(n.prefix_len())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    first(a) < end(b) && first(b) < end(a)
}

/// The lowest free block of `prefix_len` that is aligned to its size, lies inside one of the
/// `space` prefixes (taken in address order) and overlaps nothing in `used`.
pub(crate) fn allocate(space: &[Ipv4Net], used: &[Ipv4Net], prefix_len: u8) -> Option<Ipv4Net> {
    if prefix_len > 32 {
        return None;
    }
    let size = block_size(prefix_len);
    let mut spaces: Vec<Ipv4Net> = space.iter().map(Ipv4Net::trunc).collect();
    spaces.sort_by_key(|n| (first(n), n.prefix_len()));
    let used: Vec<Ipv4Net> = used.iter().map(Ipv4Net::trunc).collect();
    for s in spaces.iter().filter(|s| s.prefix_len() <= prefix_len) {
        // The space's network address is aligned to its own (larger) size, so stepping by
        // `size` from it keeps every candidate aligned.
        let mut at = first(s);
        while at + size <= end(s) {
            let candidate = Ipv4Net::new((at as u32).into(), prefix_len).ok()?;
            match used
                .iter()
                .filter(|u| overlaps(u, &candidate))
                .map(end)
                .max()
            {
                None => return Some(candidate),
                // Jump past the furthest overlapping prefix, to the next aligned address.
                Some(blocked_until) => at = blocked_until.div_ceil(size) * size,
            }
        }
    }
    None
}

/// The preferred block when it is larger than the required one and fits, else the required one.
pub(crate) fn choose_prefix(
    space: &[Ipv4Net],
    used: &[Ipv4Net],
    required_len: u8,
    preferred_len: u8,
) -> Option<Ipv4Net> {
    if preferred_len < required_len {
        if let Some(n) = allocate(space, used, preferred_len) {
            return Some(n);
        }
    }
    allocate(space, used, required_len)
}

/// Parses ARM address prefixes; IPv6 ones are skipped (regional integration is IPv4 only).
pub(crate) fn parse_prefixes(strs: &[String]) -> Result<Vec<Ipv4Net>, IpamError> {
    let mut out = Vec::with_capacity(strs.len());
    for s in strs {
        match s.trim().parse::<IpNet>() {
            Ok(IpNet::V4(n)) => out.push(n.trunc()),
            Ok(IpNet::V6(_)) => {}
            Err(_) => return Err(IpamError::InvalidPrefix(s.clone())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn sizing() {
        assert_eq!(required_addresses(1), 7);
        assert_eq!(required_addresses(30), 65);
        assert_eq!(prefix_len_for(7), 28);
        assert_eq!(prefix_len_for(16), 28);
        assert_eq!(prefix_len_for(17), 27);
        assert_eq!(prefix_len_for(64), 26);
        assert_eq!(prefix_len_for(65), 25);
        assert_eq!(prefix_len_for(required_addresses(100)), 24);
        assert_eq!(prefix_len_for(u32::MAX), 0);
    }

    #[test]
    fn lowest_aligned_free_block() {
        let space = [net("10.0.0.0/24")];
        let used = [net("10.0.0.0/27"), net("10.0.0.64/28")];
        assert_eq!(allocate(&space, &used, 28), Some(net("10.0.0.32/28")));
        assert_eq!(allocate(&space, &used, 26), Some(net("10.0.0.128/26")));
        assert_eq!(allocate(&space, &used, 25), Some(net("10.0.0.128/25")));
        assert_eq!(allocate(&space, &used, 24), None);
    }

    #[test]
    fn spaces_in_address_order_and_too_small_spaces_skipped() {
        let space = [net("10.2.0.0/24"), net("10.1.0.0/28"), net("10.1.1.0/24")];
        assert_eq!(allocate(&space, &[], 26), Some(net("10.1.1.0/26")));
        assert_eq!(allocate(&space, &[], 28), Some(net("10.1.0.0/28")));
    }

    #[test]
    fn used_prefix_larger_than_the_space() {
        let space = [net("10.0.0.0/24"), net("10.1.0.0/24")];
        assert_eq!(
            allocate(&space, &[net("10.0.0.0/16")], 26),
            Some(net("10.1.0.0/26"))
        );
    }

    #[test]
    fn choose_prefers_the_larger_block() {
        let space = [net("10.0.0.0/25")];
        assert_eq!(choose_prefix(&space, &[], 28, 26), Some(net("10.0.0.0/26")));
        let used = [net("10.0.0.0/26"), net("10.0.0.64/27")];
        assert_eq!(
            choose_prefix(&space, &used, 28, 26),
            Some(net("10.0.0.96/28"))
        );
        // The preferred size never shrinks a block below what is required.
        assert_eq!(choose_prefix(&space, &[], 25, 26), Some(net("10.0.0.0/25")));
        assert_eq!(choose_prefix(&space, &[net("10.0.0.0/25")], 28, 26), None);
    }

    #[test]
    fn parse_skips_ipv6_and_rejects_garbage() {
        let ok = parse_prefixes(&[
            "10.0.0.0/16".into(),
            "fd00::/48".into(),
            " 10.1.0.5/24".into(),
        ])
        .unwrap();
        assert_eq!(ok, vec![net("10.0.0.0/16"), net("10.1.0.0/24")]);
        assert_eq!(
            parse_prefixes(&["10.0.0.0".into()]),
            Err(IpamError::InvalidPrefix("10.0.0.0".into()))
        );
        assert!(parse_prefixes(&["nope".into()]).is_err());
    }

    /// Small random spaces and used prefixes inside 10.0.0.0/22, so brute force is cheap.
    fn small_net(min_len: u8) -> impl Strategy<Value = Ipv4Net> {
        (0u32..1024, min_len..=30u8).prop_map(|(off, len)| {
            Ipv4Net::new((0x0A00_0000u32 + off).into(), len)
                .unwrap()
                .trunc()
        })
    }

    /// Every aligned block of every space prefix, in address order, checked one by one.
    fn brute_force(space: &[Ipv4Net], used: &[Ipv4Net], len: u8) -> Option<Ipv4Net> {
        let size = block_size(len);
        let mut spaces = space.to_vec();
        spaces.sort_by_key(|n| (first(n), n.prefix_len()));
        spaces
            .iter()
            .filter(|s| s.prefix_len() <= len)
            .find_map(|s| {
                (first(s)..end(s))
                    .step_by(size as usize)
                    .map(|at| Ipv4Net::new((at as u32).into(), len).unwrap())
                    .find(|c| !used.iter().any(|u| overlaps(u, c)))
            })
    }

    proptest! {
        #[test]
        fn allocations_are_aligned_disjoint_inside_and_big_enough(
            space in proptest::collection::vec(small_net(22), 1..4),
            mut used in proptest::collection::vec(small_net(24), 0..6),
            lens in proptest::collection::vec(24u8..=30, 1..12),
        ) {
            for len in lens {
                let expected = brute_force(&space, &used, len);
                let got = allocate(&space, &used, len);
                // Same block as exhaustive search: None only when no free aligned block exists,
                // and otherwise the lowest one.
                prop_assert_eq!(got, expected);
                if let Some(n) = got {
                        prop_assert_eq!(n.prefix_len(), len);
                        prop_assert_eq!(n.network(), n.addr());
                        prop_assert!(space.iter().any(|s| s.contains(&n)));
                        prop_assert!(used.iter().all(|u| !overlaps(u, &n)));
                        prop_assert_eq!(allocate(&space, &used, len), Some(n));
                        used.push(n);
                }
            }
        }

        #[test]
        fn sized_allocation_holds_the_required_addresses(max in 1u32..200) {
            let need = required_addresses(max);
            let len = prefix_len_for(need);
            prop_assert!(len <= 28);
            prop_assert!(block_size(len) >= u64::from(need));
            let n = allocate(&[net("10.0.0.0/16")], &[], len).unwrap();
            prop_assert!(u64::from(need) <= block_size(n.prefix_len()));
            // Smallest: one bit smaller would not hold them (unless clamped at /28).
            prop_assert!(len == 28 || block_size(len + 1) < u64::from(need));
        }
    }
}
