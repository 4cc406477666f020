//! Compiler: the rules of one interface → entries of the two policy LPM tries
//! (layout in `sg_common::policy`). Pure code: no aya, no kernel.
//!
//! Union semantics with longest-prefix match:
//! - **Who.** For every distinct peer prefix P, the class of P is the set of
//!   rules with a peer prefix that contains P. An address's longest matching
//!   prefix is contained in every other prefix that contains the address, so
//!   its class holds every rule that matches the address. Equal rule sets are
//!   hash-consed into one class id.
//! - **What.** Per class and protocol, the 16-bit port space is cut into the
//!   elementary intervals of the rules' ranges; each interval gets the union
//!   of the rules covering it (rules for all protocols pushed down into every
//!   protocol-specific interval), adjacent intervals with the same value are
//!   merged, and each run becomes ≤ 30 prefix blocks.
//! - **Fewer prefixes.** Adjacent prefixes of one class are aggregated (see
//!   [`aggregate`]): the trie's depth, and so its lookup cost, follows what
//!   the rules say rather than how many members say it.

mod aggregate;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use sg_common::{
    Direction,
    policy::{
        AddrKeyV4, AddrKeyV6, ClassId, GEN_DIR_BITS, HIT_UNTRACKED, PORT_KEY_ALL_PROTOCOLS,
        PORT_KEY_PROTOCOL, PolicyHit, PortKey, gen_dir,
    },
    proto,
};

/// One rule as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Stable rule id; its hash keys the hit counter.
    pub id: String,
    /// `None`: every protocol.
    pub proto: Option<u8>,
    /// Inclusive range of the 16-bit policy port: destination port for
    /// TCP/UDP, `type << 8 | code` for ICMP; `(0, 65535)` for any.
    pub ports: (u16, u16),
    /// Peer prefixes (canonical: no host bits). Rules referencing the same
    /// group share one list: the compiler and the fingerprint treat each
    /// list once.
    pub peers: std::sync::Arc<[IpNet]>,
    pub untracked_tcp: bool,
    pub untracked_udp: bool,
}

impl Rule {
    /// A tracked rule (the untracked flags come from the model's analysis
    /// of both directions; set them by hand only in tests and benchmarks).
    pub fn tracked(id: &str, proto: Option<u8>, ports: (u16, u16), peers: Vec<IpNet>) -> Rule {
        Rule {
            id: id.to_string(),
            proto,
            ports,
            peers: peers.into(),
            untracked_tcp: false,
            untracked_udp: false,
        }
    }

    /// [`Rule::tracked`] with its peers written as prefixes, for tests and
    /// benchmarks. Panics on a peer that is not a prefix.
    #[cfg(any(test, feature = "test-support"))]
    pub fn tracked_parsed(id: &str, proto: Option<u8>, ports: (u16, u16), peers: &[&str]) -> Rule {
        let peers = peers.iter().map(|p| p.parse().expect("a prefix")).collect();
        Rule::tracked(id, proto, ports, peers)
    }

    fn untracked_for(&self, proto: u8) -> bool {
        match proto {
            proto::TCP => self.untracked_tcp,
            proto::UDP => self.untracked_udp,
            _ => false,
        }
    }
}

/// Map entries of one generation, ready to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub generation: u32,
    /// (LPM prefix length, key data, class).
    pub addr_v4: Vec<(u32, AddrKeyV4, ClassId)>,
    pub addr_v6: Vec<(u32, AddrKeyV6, ClassId)>,
    pub ports: Vec<(u32, PortKey, PolicyHit)>,
    /// Hash of every rule id, for the hit-counter map.
    pub rule_hashes: BTreeMap<u32, String>,
    /// Fingerprint of the address entries whatever their generation
    /// (direction, prefix, class; never 0): a version with the same one
    /// can keep the live version's address entries.
    pub addr_fingerprint: u64,
}

impl CompiledPolicy {
    fn fingerprint_addresses(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (len, key, class) in &self.addr_v4 {
            (len, key.gen_dir[3] & 1, key.addr, class).hash(&mut h);
        }
        for (len, key, class) in &self.addr_v6 {
            (len, key.gen_dir[3] & 1, key.addr, class).hash(&mut h);
        }
        h.finish() | 1
    }
}

/// Stable 32-bit hash of a rule id (FNV-1a): the key of its hit counter,
/// identical across generations and restarts.
pub fn rule_hash(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Test-only fault switch (feature `test-support`): when this variable is
/// set, the compiler silently drops the first inbound rule of every
/// interface. It exists to prove that the differential test and `sgctl lab
/// verify` catch a broken data path; a release `sgctl` ignores it.
pub const FAULT_DROP_FIRST_RULE: &str = "SG_FAULT_DROP_FIRST_RULE";

/// The rules left after the fault switch (see [`FAULT_DROP_FIRST_RULE`]).
fn with_fault(inbound: &[Rule]) -> &[Rule] {
    #[cfg(feature = "test-support")]
    if std::env::var_os(FAULT_DROP_FIRST_RULE).is_some() && !inbound.is_empty() {
        return &inbound[1..];
    }
    inbound
}

/// Compiles the inbound and outbound rules of one interface for `generation`.
pub fn compile(generation: u32, inbound: &[Rule], outbound: &[Rule]) -> CompiledPolicy {
    let inbound = with_fault(inbound);
    let mut out = CompiledPolicy {
        generation,
        ..CompiledPolicy::default()
    };
    for rule in inbound.iter().chain(outbound) {
        out.rule_hashes.insert(rule_hash(&rule.id), rule.id.clone());
    }
    for (direction, rules) in [
        (Direction::Inbound, inbound),
        (Direction::Outbound, outbound),
    ] {
        let gd = gen_dir(generation, direction as u32);
        // Rule sets → class ids (1, 2, … in prefix order), shared by both
        // address families.
        let (prefixes, sets) = classify(rules);
        for (prefix, set) in aggregate::aggregate(prefixes) {
            let class = set as ClassId + 1;
            match prefix {
                IpNet::V4(net) => out.addr_v4.push((
                    GEN_DIR_BITS + net.prefix_len() as u32,
                    AddrKeyV4 {
                        // Stamped with the policy id when installed.
                        policy: [0; 4],
                        gen_dir: gd,
                        addr: net.network().octets(),
                    },
                    class,
                )),
                IpNet::V6(net) => out.addr_v6.push((
                    GEN_DIR_BITS + net.prefix_len() as u32,
                    AddrKeyV6 {
                        policy: [0; 4],
                        gen_dir: gd,
                        addr: net.network().octets(),
                    },
                    class,
                )),
            }
        }
        for (index, set) in sets.iter().enumerate() {
            let members: Vec<&Rule> = set.iter().map(|&i| &rules[i]).collect();
            port_entries(gd, index as ClassId + 1, &members, &mut out.ports);
        }
    }
    out.addr_fingerprint = out.fingerprint_addresses();
    out
}

/// Every distinct peer prefix (sorted) with its class: an index into the
/// returned rule sets, each the (sorted) indices of the rules whose peers
/// contain the prefix. Sets are numbered in prefix order.
///
/// Rules that share their peer list (sixteen groups referencing one group
/// of ten thousand members) are one list here: each prefix is inserted once
/// per distinct list, not once per rule.
fn classify(rules: &[Rule]) -> (Vec<(IpNet, usize)>, Vec<Vec<usize>>) {
    // Distinct peer lists (by identity: shared lists are one allocation)
    // → the rules that have them.
    let mut list_of: HashMap<*const IpNet, usize> = HashMap::new();
    let mut lists: Vec<(&[IpNet], Vec<usize>)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let next = lists.len();
        let list = *list_of.entry(rule.peers.as_ptr()).or_insert(next);
        if list == next {
            lists.push((&rule.peers, Vec::new()));
        }
        lists[list].1.push(i);
    }
    let mut by_prefix: HashMap<IpNet, Vec<usize>> = HashMap::new();
    for (list, (peers, _)) in lists.iter().enumerate() {
        for peer in peers.iter() {
            let entry = by_prefix.entry(peer.trunc()).or_default();
            if entry.last() != Some(&list) {
                entry.push(list);
            }
        }
    }
    // Only the lengths some peer has can hold a covering prefix: with
    // thousands of /32 members and a few wider peers that is a handful of
    // lookups per prefix instead of 33 (or 129).
    let lengths = |v4: bool| -> BTreeSet<u8> {
        by_prefix
            .keys()
            .filter(|p| matches!(p, IpNet::V4(_)) == v4)
            .map(IpNet::prefix_len)
            .collect()
    };
    let (lengths_v4, lengths_v6) = (lengths(true), lengths(false));
    let mut prefixes: Vec<IpNet> = by_prefix.keys().copied().collect();
    prefixes.sort();
    // A prefix's lists → its set of rules. Each rule is in one list, so
    // equal sets of lists are equal sets of rules and the other way round.
    let mut set_of: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut sets: Vec<Vec<usize>> = Vec::new();
    let classified = prefixes
        .into_iter()
        .map(|prefix| {
            let lengths = match prefix {
                IpNet::V4(_) => &lengths_v4,
                IpNet::V6(_) => &lengths_v6,
            };
            let mut covering: Vec<usize> = Vec::new();
            for &len in lengths.range(..=prefix.prefix_len()) {
                let Ok(sup) = IpNet::new(prefix.addr(), len) else {
                    continue;
                };
                if let Some(found) = by_prefix.get(&sup.trunc()) {
                    covering.extend(found);
                }
            }
            covering.sort_unstable();
            covering.dedup();
            let next = sets.len();
            let set = *set_of.entry(covering).or_insert_with_key(|lists_here| {
                let mut rules_here: Vec<usize> = lists_here
                    .iter()
                    .flat_map(|&l| lists[l].1.iter().copied())
                    .collect();
                rules_here.sort_unstable();
                sets.push(rules_here);
                next
            });
            (prefix, set)
        })
        .collect();
    (classified, sets)
}

/// The value for a packet of `proto` admitted by the rules `set` (never
/// empty). As in the reference evaluator, the flow is untracked only when
/// every rule that admits it admits it untracked: tracking is the safe side.
fn hit_value(set: &[&Rule], proto: Option<u8>) -> PolicyHit {
    let untracked = proto.is_some_and(|p| set.iter().all(|r| r.untracked_for(p)));
    PolicyHit {
        rule: rule_hash(&set[0].id),
        flags: if untracked { HIT_UNTRACKED } else { 0 },
    }
}

fn port_key(gd: [u8; 4], class: ClassId, proto: u8, port: u16) -> PortKey {
    PortKey {
        policy: [0; 4],
        gen_dir: gd,
        class: class.to_be_bytes(),
        proto,
        port: port.to_be_bytes(),
        _pad: 0,
    }
}

/// Port-trie entries of one class.
fn port_entries(
    gd: [u8; 4],
    class: ClassId,
    members: &[&Rule],
    out: &mut Vec<(u32, PortKey, PolicyHit)>,
) {
    let all: Vec<&Rule> = members
        .iter()
        .copied()
        .filter(|r| r.proto.is_none())
        .collect();
    if !all.is_empty() {
        // Any protocol without a more specific entry: tracked (untracked
        // flows exist only for TCP and UDP, which get their own entries).
        out.push((
            PORT_KEY_ALL_PROTOCOLS,
            port_key(gd, class, 0, 0),
            hit_value(&all, None),
        ));
    }
    let mut protos: BTreeSet<u8> = members.iter().filter_map(|r| r.proto).collect();
    // The /64 entry is tracked; TCP/UDP need their own entries when the
    // all-protocol rules admit them untracked.
    if !all.is_empty() && all.iter().all(|r| r.untracked_tcp) {
        protos.insert(proto::TCP);
    }
    if !all.is_empty() && all.iter().all(|r| r.untracked_udp) {
        protos.insert(proto::UDP);
    }
    for proto in protos {
        let specific: Vec<&Rule> = members
            .iter()
            .copied()
            .filter(|r| r.proto == Some(proto))
            .collect();
        // Elementary interval starts: every range start and every end + 1.
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
        for r in &specific {
            cuts.insert(r.ports.0 as u32);
            cuts.insert(r.ports.1 as u32 + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().filter(|c| *c <= 0xffff).collect();
        let mut runs: Vec<(u32, u32, PolicyHit)> = Vec::new();
        for (i, &lo) in cuts.iter().enumerate() {
            let hi = cuts.get(i + 1).map_or(0xffff, |next| next - 1);
            let mut set: Vec<&Rule> = specific
                .iter()
                .copied()
                .filter(|r| r.ports.0 as u32 <= lo && hi <= r.ports.1 as u32)
                .collect();
            set.extend(all.iter().copied());
            if set.is_empty() {
                continue;
            }
            let value = hit_value(&set, Some(proto));
            match runs.last_mut() {
                Some(last) if last.1 + 1 == lo && last.2 == value => last.1 = hi,
                _ => runs.push((lo, hi, value)),
            }
        }
        for (lo, hi, value) in runs {
            if lo == 0 && hi == 0xffff {
                out.push((PORT_KEY_PROTOCOL, port_key(gd, class, proto, 0), value));
                continue;
            }
            for (base, bits) in prefix_blocks(lo, hi) {
                out.push((
                    PORT_KEY_PROTOCOL + bits,
                    port_key(gd, class, proto, base),
                    value,
                ));
            }
        }
    }
}

/// Splits the inclusive range [lo, hi] of 16-bit values into aligned prefix
/// blocks (base, prefix bits); at most 30.
pub fn prefix_blocks(lo: u32, hi: u32) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let mut start = lo;
    while start <= hi {
        // Largest aligned block at `start` that stays within `hi`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            1u32 << start.trailing_zeros().min(16)
        };
        while start + size - 1 > hi {
            size >>= 1;
        }
        blocks.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    blocks
}

/// In-memory model of the two kernel lookups over compiled entries, for
/// testing the compiler without a kernel. Longest prefix wins, as in the LPM trie.
pub fn lookup(
    policy: &CompiledPolicy,
    direction: Direction,
    peer: std::net::IpAddr,
    proto: u8,
    port: u16,
) -> Option<PolicyHit> {
    let gd = gen_dir(policy.generation, direction as u32);
    let class = match peer {
        std::net::IpAddr::V4(a) => longest(
            policy
                .addr_v4
                .iter()
                .filter(|(_, k, _)| k.gen_dir == gd)
                .map(|(len, k, c)| (len - GEN_DIR_BITS, k.addr.to_vec(), *c)),
            &a.octets(),
        ),
        std::net::IpAddr::V6(a) => longest(
            policy
                .addr_v6
                .iter()
                .filter(|(_, k, _)| k.gen_dir == gd)
                .map(|(len, k, c)| (len - GEN_DIR_BITS, k.addr.to_vec(), *c)),
            &a.octets(),
        ),
    }?;
    let mut want = vec![proto];
    want.extend_from_slice(&port.to_be_bytes());
    let entries = policy
        .ports
        .iter()
        .filter(|(_, k, _)| k.gen_dir == gd && k.class == class.to_be_bytes())
        .map(|(len, k, hit)| {
            let mut data = vec![k.proto];
            data.extend_from_slice(&k.port);
            (len - PORT_KEY_ALL_PROTOCOLS, data, *hit)
        });
    longest(entries, &want)
}

fn longest<V: Copy>(entries: impl Iterator<Item = (u32, Vec<u8>, V)>, want: &[u8]) -> Option<V> {
    let mut best: Option<(u32, V)> = None;
    for (bits, data, value) in entries {
        if prefix_matches(&data, want, bits) && best.is_none_or(|(b, _)| bits > b) {
            best = Some((bits, value));
        }
    }
    best.map(|(_, v)| v)
}

fn prefix_matches(a: &[u8], b: &[u8], bits: u32) -> bool {
    (0..bits as usize).all(|i| {
        let mask = 0x80u8 >> (i % 8);
        (a[i / 8] & mask) == (b[i / 8] & mask)
    })
}

/// The compiler's view of the rules a model puts on `iface` for `direction`.
pub fn rules_from_model(
    model: &crate::model::Model,
    iface: &crate::model::Interface,
    direction: crate::model::Direction,
) -> Vec<Rule> {
    use crate::model::L4Match;
    model
        .rules_for(iface, direction)
        .map(|r| Rule {
            id: r.id.to_string(),
            proto: r.protocol.number(),
            ports: match r.l4 {
                L4Match::Ports(range) => (range.from, range.to),
                L4Match::Icmp {
                    icmp_type: None, ..
                }
                | L4Match::Any => (0, 0xffff),
                L4Match::Icmp {
                    icmp_type: Some(t),
                    icmp_code: None,
                } => ((t as u16) << 8, ((t as u16) << 8) | 0xff),
                L4Match::Icmp {
                    icmp_type: Some(t),
                    icmp_code: Some(c),
                } => {
                    let port = ((t as u16) << 8) | c as u16;
                    (port, port)
                }
            },
            // Shared as it comes from the model when already canonical.
            peers: if r.peers.iter().all(|p| p.trunc() == *p) {
                r.peers.clone()
            } else {
                r.peers.iter().map(IpNet::trunc).collect()
            },
            untracked_tcp: r.tracking.untracked_tcp,
            untracked_udp: r.tracking.untracked_udp,
        })
        .collect()
}

/// Idle timeouts (seconds, by `CtState`) for an interface's settings.
pub fn timeouts_s(
    t: &crate::model::ConntrackTimeouts,
) -> [u64; sg_common::conntrack::TIMEOUT_SLOTS] {
    use crate::model::ConntrackTimeouts as T;
    [
        T::TCP_SYN,
        T::TCP_SYN_RECV,
        t.tcp_established,
        T::TCP_FIN,
        T::TCP_CLOSED,
        t.udp,
        t.udp_stream,
        T::ICMP,
        T::OTHER,
    ]
    .map(u64::from)
}

/// Fingerprint of the rules of a policy (inbound, outbound): what
/// interfaces share a policy by. Every field of every rule; each distinct
/// peer list is hashed once (the rules that reference one group share its
/// list). Never 0.
pub fn rules_fingerprint(inbound: &[Rule], outbound: &[Rule]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut lists: HashMap<*const IpNet, u64> = HashMap::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for rules in [inbound, outbound] {
        rules.len().hash(&mut h);
        for r in rules {
            (&r.id, r.proto, r.ports, r.untracked_tcp, r.untracked_udp).hash(&mut h);
            let list = *lists.entry(r.peers.as_ptr()).or_insert_with(|| {
                let mut lh = std::collections::hash_map::DefaultHasher::new();
                r.peers.hash(&mut lh);
                lh.finish()
            });
            list.hash(&mut h);
        }
    }
    h.finish() | 1
}

/// Compiles everything `model` puts on `iface` for `generation`.
pub fn compile_iface(
    model: &crate::model::Model,
    iface: &crate::model::Interface,
    generation: u32,
) -> CompiledPolicy {
    let rules = |d: Direction| rules_from_model(model, iface, d.into());
    compile(
        generation,
        &rules(Direction::Inbound),
        &rules(Direction::Outbound),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_blocks_cover_exactly() {
        for (lo, hi) in [
            (0, 65535),
            (1, 65535),
            (80, 80),
            (1024, 65535),
            (22, 3389),
            (0, 0),
            (65535, 65535),
            (1, 65534),
        ] {
            let blocks = prefix_blocks(lo, hi);
            assert!(blocks.len() <= 30, "{lo}-{hi}: {} blocks", blocks.len());
            let mut next = lo;
            for (base, bits) in blocks {
                assert_eq!(base as u32, next, "blocks contiguous for {lo}-{hi}");
                let size = 1u32 << (16 - bits);
                assert_eq!(base as u32 % size, 0, "aligned");
                next += size;
            }
            assert_eq!(next, hi + 1, "blocks end at {hi}");
        }
    }

    #[test]
    fn union_of_covering_prefixes_and_ports() {
        let rules = [
            Rule::tracked_parsed("wide-https", Some(6), (443, 443), &["0.0.0.0/0"]),
            Rule::tracked_parsed("office-ssh", Some(6), (22, 22), &["198.18.1.0/24"]),
            Rule::tracked_parsed("host-range", Some(6), (8000, 8100), &["198.18.1.7/32"]),
            Rule::tracked_parsed("all-from-db", None, (0, 65535), &["198.18.2.0/24"]),
        ];
        let p = compile(7, &rules, &[]);
        let hit = |peer: &str, proto, port| {
            lookup(&p, Direction::Inbound, peer.parse().unwrap(), proto, port).map(|h| h.rule)
        };
        let h = |id| Some(rule_hash(id));
        assert_eq!(
            hit("198.18.1.7", 6, 443),
            h("wide-https"),
            "/32 inherits the /0 rule"
        );
        assert_eq!(
            hit("198.18.1.7", 6, 22),
            h("office-ssh"),
            "/32 inherits the /24 rule"
        );
        assert_eq!(hit("198.18.1.7", 6, 8050), h("host-range"));
        assert_eq!(hit("198.18.1.8", 6, 8050), None, "range only for .7");
        assert_eq!(hit("198.19.0.1", 6, 22), None);
        assert_eq!(hit("198.18.2.9", 17, 53), h("all-from-db"));
        let both = [h("wide-https"), h("all-from-db")];
        assert!(
            both.contains(&hit("198.18.2.9", 6, 443)),
            "either allowing rule"
        );
        assert_eq!(
            hit("198.18.2.9", 6, 22),
            h("all-from-db"),
            "all-protocol rule pushed into tcp"
        );
        assert_eq!(
            hit("2001:db8::1", 6, 443),
            None,
            "IPv4 rules never match IPv6"
        );
        assert_eq!(
            lookup(
                &p,
                Direction::Outbound,
                "198.18.1.7".parse().unwrap(),
                6,
                443
            ),
            None,
            "directions separate"
        );
    }

    #[test]
    fn untracked_flag_only_for_its_protocol() {
        let mut all = Rule::tracked_parsed("all-world", None, (0, 65535), &["0.0.0.0/0"]);
        all.untracked_tcp = true;
        let p = compile(1, &[all], &[]);
        let flags = |proto| {
            lookup(
                &p,
                Direction::Inbound,
                "198.18.0.1".parse().unwrap(),
                proto,
                80,
            )
            .unwrap()
            .flags
        };
        assert_eq!(flags(6), HIT_UNTRACKED);
        assert_eq!(flags(17), 0);
        assert_eq!(flags(1), 0);
    }
}
