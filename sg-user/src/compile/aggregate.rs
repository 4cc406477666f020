//! Fewer address entries with the same answers: the classified prefixes of
//! one direction, aggregated as routers aggregate routes with one next hop.
//!
//! An LPM trie's lookup cost grows with its depth, which grows with its
//! entries; group membership is often contiguous (a subnet's hosts, a
//! container range), and 100,000 adjacent /32 members of one class say no
//! more than the handful of CIDR blocks that cover them. Two rewrites, each
//! leaving every address's longest-match class unchanged:
//!
//! - **Siblings of one class become their parent.** The two halves of P
//!   cover all of P, so P's own entry (if any) was shadowed everywhere and
//!   the halves' class is the answer for all of P; entries longer than the
//!   halves still win where they match.
//! - **An entry with its nearest cover's class is dropped.** Addresses it
//!   matched, and no longer entry matches, fall to that cover: same class.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `prefixes` (each with its class) → an equivalent, usually shorter list,
/// sorted (IPv4 before IPv6, then by address and length).
pub fn aggregate(prefixes: Vec<(IpNet, usize)>) -> Vec<(IpNet, usize)> {
    let (v4, v6): (Vec<_>, Vec<_>) = prefixes
        .into_iter()
        .partition(|(p, _)| matches!(p, IpNet::V4(_)));
    let mut out = aggregate_family(v4, Family::V4);
    out.extend(aggregate_family(v6, Family::V6));
    out
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn width(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn net(self, bits: u128, len: u32) -> IpNet {
        let len = len as u8;
        match self {
            Family::V4 => Ipv4Net::new(Ipv4Addr::from(bits as u32), len)
                .expect("length within the family")
                .into(),
            Family::V6 => Ipv6Net::new(Ipv6Addr::from(bits), len)
                .expect("length within the family")
                .into(),
        }
    }

    /// Whether the prefix (`outer`, `outer_len`) contains the address `bits`.
    fn contains(self, outer: u128, outer_len: u32, bits: u128) -> bool {
        outer_len == 0 || (outer ^ bits) >> (self.width() - outer_len) == 0
    }
}

fn network_bits(p: &IpNet) -> u128 {
    match p {
        IpNet::V4(n) => u128::from(u32::from(n.network())),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

fn aggregate_family(prefixes: Vec<(IpNet, usize)>, family: Family) -> Vec<(IpNet, usize)> {
    let width = family.width();
    // Network bits → class, one map per prefix length.
    let mut by_len: Vec<HashMap<u128, usize>> = vec![HashMap::new(); width as usize + 1];
    for (prefix, class) in prefixes {
        by_len[prefix.prefix_len() as usize].insert(network_bits(&prefix), class);
    }
    // Longest first: a parent made at one level can pair up at the next.
    for len in (1..=width).rev() {
        let level = std::mem::take(&mut by_len[len as usize]);
        let half = 1u128 << (width - len);
        let mut kept = HashMap::with_capacity(level.len());
        for (&bits, &class) in &level {
            if level.get(&(bits ^ half)) == Some(&class) {
                by_len[len as usize - 1].insert(bits & !half, class);
            } else {
                kept.insert(bits, class);
            }
        }
        by_len[len as usize] = kept;
    }
    let mut all: Vec<(u128, u32, usize)> = by_len
        .iter()
        .enumerate()
        .flat_map(|(len, level)| level.iter().map(move |(&bits, &c)| (bits, len as u32, c)))
        .collect();
    // By address, then length: every prefix comes right before the prefixes
    // it contains, so the open covers form a stack.
    all.sort_unstable_by_key(|&(bits, len, _)| (bits, len));
    let mut covers: Vec<(u128, u32, usize)> = Vec::new();
    let mut out = Vec::with_capacity(all.len());
    for (bits, len, class) in all {
        while covers
            .last()
            .is_some_and(|&(outer, outer_len, _)| !family.contains(outer, outer_len, bits))
        {
            covers.pop();
        }
        if covers.last().is_some_and(|&(_, _, c)| c == class) {
            continue;
        }
        covers.push((bits, len, class));
        out.push((family.net(bits, len), class));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The class of the longest prefix containing `addr` (a linear scan:
    /// the definition, not an implementation).
    fn longest_match(entries: &[(IpNet, usize)], addr: std::net::IpAddr) -> Option<usize> {
        entries
            .iter()
            .filter(|(p, _)| p.contains(&addr))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|&(_, c)| c)
    }

    /// Addresses where answers can change: each prefix's first and last
    /// address and their neighbours.
    fn probes(entries: &[(IpNet, usize)]) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for (p, _) in entries {
            for a in [p.network(), p.broadcast()] {
                out.push(a);
                match a {
                    std::net::IpAddr::V4(v) => {
                        let n = u32::from(v);
                        out.push(Ipv4Addr::from(n.wrapping_add(1)).into());
                        out.push(Ipv4Addr::from(n.wrapping_sub(1)).into());
                    }
                    std::net::IpAddr::V6(v) => {
                        let n = u128::from(v);
                        out.push(Ipv6Addr::from(n.wrapping_add(1)).into());
                        out.push(Ipv6Addr::from(n.wrapping_sub(1)).into());
                    }
                }
            }
        }
        out
    }

    fn same_answers(before: &[(IpNet, usize)]) -> Vec<(IpNet, usize)> {
        let after = aggregate(before.to_vec());
        for addr in probes(before) {
            assert_eq!(
                longest_match(&after, addr),
                longest_match(before, addr),
                "{addr} changed its class: {before:?} → {after:?}"
            );
        }
        after
    }

    #[test]
    fn contiguous_hosts_of_one_class_become_a_few_blocks() {
        // 198.18.0.77 .. +100,000: the benchmark's 100k-prefix set.
        let start = u32::from(Ipv4Addr::new(198, 18, 0, 77));
        let hosts: Vec<(IpNet, usize)> = (0..100_000)
            .map(|i| {
                (
                    Ipv4Net::new(Ipv4Addr::from(start + i), 32).unwrap().into(),
                    0,
                )
            })
            .collect();
        let after = aggregate(hosts);
        assert!(after.len() <= 2 * 17, "{} blocks: {after:?}", after.len());
        let covered: u64 = after
            .iter()
            .map(|(p, _)| 1u64 << (32 - p.prefix_len()))
            .sum();
        assert_eq!(covered, 100_000, "exactly the hosts, no more: {after:?}");
    }

    #[test]
    fn a_shadowed_parent_takes_its_halves_class_and_exceptions_stay() {
        let p = |s: &str| -> IpNet { s.parse().unwrap() };
        let before = vec![
            (p("10.0.0.0/24"), 1),
            (p("10.0.0.0/25"), 2),
            (p("10.0.0.128/25"), 2),
            (p("10.0.0.5/32"), 3),
            (p("10.0.0.6/32"), 2),
        ];
        let after = same_answers(&before);
        assert_eq!(
            after,
            vec![(p("10.0.0.0/24"), 2), (p("10.0.0.5/32"), 3)],
            "the /25s merge over the /24, the /32 with the same class goes"
        );
    }

    #[test]
    fn classes_differ_nothing_merges() {
        let p = |s: &str| -> IpNet { s.parse().unwrap() };
        let before = vec![(p("2001:db8::/33"), 1), (p("2001:db8:8000::/33"), 2)];
        assert_eq!(same_answers(&before), before);
    }

    fn arb_prefix() -> impl Strategy<Value = (IpNet, usize)> {
        // A small address space and few classes, so prefixes nest, touch and
        // share classes often.
        prop_oneof![
            (0u32..64, 26u8..=32, 0usize..3).prop_map(|(host, len, c)| {
                let net = Ipv4Net::new(Ipv4Addr::new(198, 18, 0, host as u8), len).unwrap();
                (net.trunc().into(), c)
            }),
            (0u32..64, 122u8..=128, 0usize..3).prop_map(|(host, len, c)| {
                let addr = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(host));
                (Ipv6Net::new(addr, len).unwrap().trunc().into(), c)
            }),
            Just(("0.0.0.0/0".parse().unwrap(), 0)),
        ]
    }

    proptest! {
        #[test]
        fn every_address_keeps_its_class(entries in prop::collection::vec(arb_prefix(), 0..40)) {
            // One class per prefix, as the classifier gives.
            let mut unique: HashMap<IpNet, usize> = HashMap::new();
            for (p, c) in entries {
                unique.insert(p, c);
            }
            let before: Vec<(IpNet, usize)> = unique.into_iter().collect();
            let after = same_answers(&before);
            prop_assert!(after.len() <= before.len());
        }
    }
}
