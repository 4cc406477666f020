//! The lab's plan, pure and offline: which hosts stand for which parties of a
//! config, which services (protocol/port) they offer, which flows are probed,
//! what the reference evaluator expects of each flow, and the config
//! rewritten so its interfaces are the lab's. `sgctl lab diff` is this module
//! alone; `up`/`verify` add namespaces, listeners and real packets.
//!
//! Hosts, in this order:
//! - one per interface of the config (`eth0@web1` → namespace
//!   `sgl-<lab>-web1`, interface `eth0`), with the config's addresses when
//!   they lie in 198.18.0.0/15 / 2001:db8::/32, else assigned from there;
//! - one per `members:` address (in those ranges);
//! - for every CIDR or prefix list a rule names, a host inside it and one
//!   outside it (an existing peer host that already qualifies is reused).
//!
//! Every lab address comes from 198.18.0.0/15 or 2001:db8::/32 and each
//! host has at most one address per family. A peer that contains no such
//! address (203.0.113.0/24) gets no host; the plan's notes say so.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::model::{
    Direction, L4Match, Model, Offline, Peer, Protocol, Side,
    eval::{self, Decision, PacketDesc},
};

/// Every lab namespace is named `sgl-<lab>-<role>`.
pub const NETNS_PREFIX: &str = "sgl-";
/// The lab's switch namespace role (holds bridge `br0`).
pub const SWITCH_ROLE: &str = "sw";
/// Default lab name.
pub const DEFAULT_NAME: &str = "lab";
/// At most this many ports per protocol taken from the rules.
pub const MAX_PORTS_PER_PROTO: usize = 16;

const TEST_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15) {
    Ok(n) => n,
    Err(_) => panic!("valid"),
};
const TEST_V6: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32) {
    Ok(n) => n,
    Err(_) => panic!("valid"),
};
/// Ports sampled when the rules do not mention them: TCP, then UDP.
const SAMPLE_TCP: &[u16] = &[8080, 5432, 6379, 25, 9200, 4444, 2049, 1521];
const SAMPLE_UDP: &[u16] = &[5353, 123, 161, 514, 4789, 9999];

/// The namespace prefix of lab `lab`: `sgl-<lab>-`. Lab names have no `-`,
/// so no lab's prefix is a prefix of another's.
pub fn netns_prefix(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-")
}

/// Checks a lab name: 1–12 lowercase letters and digits.
///
/// # Errors
/// A message saying what a valid name looks like.
pub fn check_name(lab: &str) -> Result<(), String> {
    if (1..=12).contains(&lab.len())
        && lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "lab name `{lab}`: use 1–12 lowercase letters and digits, e.g. `--name web2`"
        ))
    }
}

/// What a host stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKind {
    /// An interface of the config: protected by its groups.
    Interface,
    /// A `members:` address of a group (elsewhere, not protected here).
    Member,
    /// A party a rule names by CIDR or prefix list (not protected).
    Peer,
}

/// One lab host: a namespace with one interface on the lab's bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Short name, shown in the matrix.
    pub role: String,
    /// Its namespace, `sgl-<lab>-<role>`.
    pub netns: String,
    /// Its interface on the bridge.
    pub iface: String,
    pub kind: HostKind,
    /// The config's interface key (`eth0@web1`), for interface hosts.
    pub config_iface: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// What it stands for, e.g. `eth0@web1 (sg-web)`, `inside pl-office`.
    pub stands_for: Vec<String>,
}

impl Host {
    /// `iface@netns`, the key of its interface in the lab config.
    pub fn lab_key(&self) -> String {
        format!("{}@{}", self.iface, self.netns)
    }

    /// Its address of one family.
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.ipv6.map(IpAddr::V6)
        } else {
            self.ipv4.map(IpAddr::V4)
        }
    }

    fn addrs(&self) -> Vec<IpAddr> {
        [self.addr(false), self.addr(true)]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// How a service is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// A TCP connection that must receive the server's byte.
    Tcp,
    /// A UDP datagram that must be echoed.
    Udp,
    /// ICMP echo (IPv4) / ICMPv6 echo (IPv6) that must be answered.
    Ping,
}

/// A protocol/port every host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub proto: Proto,
    /// Destination port (0 for ping).
    pub port: u16,
    /// Whether a rule mentions it (else it is a sample of the rest).
    pub mentioned: bool,
}

impl Service {
    /// `tcp/22`, `udp/53`, `ping`; a `*` marks a port no rule mentions.
    pub fn label(&self) -> String {
        let star = if self.mentioned { "" } else { "*" };
        match self.proto {
            Proto::Tcp => format!("tcp/{}{star}", self.port),
            Proto::Udp => format!("udp/{}{star}", self.port),
            Proto::Ping => "ping".into(),
        }
    }

    /// The packet that opens the flow, as the evaluator sees it.
    pub fn packet(&self, peer: IpAddr) -> PacketDesc {
        match self.proto {
            Proto::Tcp => PacketDesc::tcp(peer, self.port),
            Proto::Udp => PacketDesc::udp(peer, self.port),
            Proto::Ping if peer.is_ipv4() => PacketDesc::icmp(peer, 8, 0),
            Proto::Ping => PacketDesc::icmp(peer, 128, 0),
        }
    }
}

/// Hosts, services and what could not be represented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub lab: String,
    pub hosts: Vec<Host>,
    pub services: Vec<Service>,
    /// Things the lab leaves out or changes, each a sentence.
    pub notes: Vec<String>,
}

/// One probe: `from` opens `service` to `to` over one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub from: usize,
    pub to: usize,
    pub service: usize,
    pub v6: bool,
}

/// What the rules say of a flow: it must leave the source (egress of its
/// interface, if protected) and enter the destination (ingress, if protected).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub allowed: bool,
    /// The source's egress decision (`None`: not protected).
    pub egress: Option<Decision>,
    /// The destination's ingress decision (`None`: not protected).
    pub ingress: Option<Decision>,
}

impl Expected {
    /// Why, in a few words: the rules that allow, or which side denies.
    pub fn reason(&self) -> String {
        let list = |d: &Decision| {
            d.rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = vec![];
        for (side, d) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            match d {
                None => parts.push(format!("{side}: not protected")),
                Some(d) if d.allowed => parts.push(format!("{side}: {}", list(d))),
                Some(_) => parts.push(format!("{side}: no rule allows it")),
            }
        }
        parts.join("; ")
    }
}

impl Plan {
    /// Every flow to probe: each ordered pair of hosts of which at least one
    /// is protected, each service, each family both have. Flows between two
    /// unprotected hosts are left out: nothing filters them.
    pub fn flows(&self) -> Vec<Flow> {
        let mut out = vec![];
        for (to, dst) in self.hosts.iter().enumerate() {
            for (from, src) in self.hosts.iter().enumerate() {
                if from == to
                    || (src.kind != HostKind::Interface && dst.kind != HostKind::Interface)
                {
                    continue;
                }
                for service in 0..self.services.len() {
                    for v6 in [false, true] {
                        if src.addr(v6).is_some() && dst.addr(v6).is_some() {
                            out.push(Flow {
                                from,
                                to,
                                service,
                                v6,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// The evaluator's answer for `flow` under `lab_model` (a model rewritten
    /// by [`Plan::lab_model`]).
    pub fn expect(&self, lab_model: &Model, flow: &Flow) -> Expected {
        let (src, dst) = (&self.hosts[flow.from], &self.hosts[flow.to]);
        let service = &self.services[flow.service];
        let (src_addr, dst_addr) = (
            src.addr(flow.v6).expect("flows have both addresses"),
            dst.addr(flow.v6).expect("flows have both addresses"),
        );
        let decide = |host: &Host, direction: Direction, peer: IpAddr| {
            let iface = lab_model
                .interfaces
                .iter()
                .find(|i| i.key() == host.lab_key())?;
            Some(eval::decide(
                lab_model,
                iface,
                direction,
                &service.packet(peer),
            ))
        };
        let egress = decide(src, Direction::Egress, dst_addr);
        let ingress = decide(dst, Direction::Ingress, src_addr);
        Expected {
            allowed: egress.as_ref().is_none_or(|d| d.allowed)
                && ingress.as_ref().is_none_or(|d| d.allowed),
            egress,
            ingress,
        }
    }

    /// `model` with its interfaces replaced by the lab's: namespace, name and
    /// addresses of the host that stands for each, side `host` (the lab host
    /// is the protected machine itself). Interfaces the plan has no host for
    /// are dropped. Group references re-resolve to the lab addresses.
    pub fn lab_model(&self, model: &Model, file: Option<PathBuf>) -> Model {
        let mut lab = model.clone();
        lab.interfaces.retain_mut(|iface| {
            let Some(host) = self
                .hosts
                .iter()
                .find(|h| h.config_iface.as_deref() == Some(&iface.key()))
            else {
                return false;
            };
            iface.name = host.iface.clone();
            iface.netns = Some(host.netns.clone());
            iface.side = Side::Host;
            iface.addresses = Some(host.addrs());
            true
        });
        lab.file = file;
        lab.rediscover(&Offline);
        lab
    }

    /// Config interface → lab interface, with the lab addresses.
    pub fn mapping(&self) -> Vec<(String, String)> {
        self.hosts
            .iter()
            .filter_map(|h| Some((h.config_iface.clone()?, h.lab_key())))
            .collect()
    }

    /// The host with this role.
    pub fn host(&self, role: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.role == role)
    }
}

/// Plans a lab for one config (`lab up`), or for several whose flows are
/// compared (`lab diff`: interfaces, peers and ports of all of them).
pub fn plan(lab: &str, models: &[&Model]) -> Plan {
    let mut p = Planner {
        lab: lab.to_string(),
        hosts: vec![],
        notes: vec![],
    };
    let peer_sets = peer_sets(models, &mut p.notes);
    let all_cidrs: Vec<IpNet> = peer_sets
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .collect();

    p.add_interfaces(models, &all_cidrs);
    p.add_members(models);
    p.add_peers(&peer_sets);

    let services = services(models, &mut p.notes);
    p.notes.sort();
    p.notes.dedup();
    Plan {
        lab: p.lab,
        hosts: p.hosts,
        services,
        notes: p.notes,
    }
}

impl Planner {
    /// A host per interface (union by key across models, first one wins),
    /// with its declared test addresses or ones outside every rule's peers.
    fn add_interfaces(&mut self, models: &[&Model], all_cidrs: &[IpNet]) {
        for m in models {
            for iface in &m.interfaces {
                let key = iface.key();
                if self
                    .hosts
                    .iter()
                    .any(|h| h.config_iface.as_deref() == Some(&key))
                {
                    continue;
                }
                let declared = m.interface_addresses(iface);
                let mut v4 = None;
                let mut v6 = None;
                for a in declared {
                    match a {
                        IpAddr::V4(a) if TEST_V4.contains(a) && !self.taken((*a).into()) => {
                            if v4.is_none() {
                                v4 = Some(*a);
                            } else {
                                self.notes.push(format!("{key}: the lab uses one IPv4 address per host; {a} is left out"));
                            }
                        }
                        IpAddr::V6(a) if TEST_V6.contains(a) && !self.taken((*a).into()) => {
                            if v6.is_none() {
                                v6 = Some(*a);
                            } else {
                                self.notes.push(format!("{key}: the lab uses one IPv6 address per host; {a} is left out"));
                            }
                        }
                        a => self.notes.push(format!(
                            "{key}: address {a} is not in 198.18.0.0/15 or 2001:db8::/32 (or is taken); the lab assigns another"
                        )),
                    }
                }
                let outside_rules: Vec<IpNet> = all_cidrs
                    .iter()
                    .copied()
                    .filter(|c| !covers_test_range(c))
                    .collect();
                let v4 = v4.or_else(|| {
                    self.pick_outside(&outside_rules, false, 0x0a00)
                        .map(|a| match a {
                            IpAddr::V4(a) => a,
                            IpAddr::V6(_) => unreachable!("asked for IPv4"),
                        })
                });
                let v6 = v6.or_else(|| {
                    self.pick_outside(&outside_rules, true, 0x000a_0000_0000_0000_0000_0000)
                        .map(|a| match a {
                            IpAddr::V6(a) => a,
                            IpAddr::V4(_) => unreachable!("asked for IPv6"),
                        })
                });
                if iface.side == Side::Peer {
                    self.notes.push(format!(
                        "{key}: `side: peer` is enforced in the lab on the host's own interface (same policy directions)"
                    ));
                }
                let base = iface.netns.as_deref().unwrap_or(&iface.name);
                let ifname = if valid_ifname(&iface.name) {
                    iface.name.clone()
                } else {
                    "eth0".to_string()
                };
                let groups = if iface.groups.is_empty() {
                    "no groups".to_string()
                } else {
                    iface.groups.join(", ")
                };
                self.add(
                    base,
                    ifname,
                    HostKind::Interface,
                    Some(key.clone()),
                    v4,
                    v6,
                    format!("{key} ({groups})"),
                );
            }
        }
    }

    /// A host per member address of a group (in the test ranges).
    fn add_members(&mut self, models: &[&Model]) {
        for m in models {
            for (group, addrs) in &m.members {
                for a in addrs {
                    if self.hosts.iter().any(|h| h.addrs().contains(a)) {
                        continue;
                    }
                    let (v4, v6) = match a {
                        IpAddr::V4(x) if TEST_V4.contains(x) => (Some(*x), None),
                        IpAddr::V6(x) if TEST_V6.contains(x) => (None, Some(*x)),
                        _ => {
                            self.notes.push(format!(
                                "member {a} of {group} is not in 198.18.0.0/15 or 2001:db8::/32: no host stands for it"
                            ));
                            continue;
                        }
                    };
                    self.add(
                        &format!("{}-m", short(group)),
                        "eth0".into(),
                        HostKind::Member,
                        None,
                        v4,
                        v6,
                        format!("member {a} of {group}"),
                    );
                }
            }
        }
    }

    /// Hosts inside and outside each CIDR / prefix list, most specific
    /// first.
    fn add_peers(&mut self, peer_sets: &[(String, Vec<IpNet>)]) {
        for (label, cidrs) in peer_sets {
            // A family with no test address inside the peer needs no outside
            // host either: every lab address of that family is outside it.
            let mut no_inside = [false, false];
            for (inside, word) in [(true, "inside"), (false, "outside")] {
                let mut new_v4 = None;
                let mut new_v6 = None;
                for v6 in [false, true] {
                    let fam: Vec<IpNet> = cidrs
                        .iter()
                        .copied()
                        .filter(|c| matches!(c, IpNet::V6(_)) == v6)
                        .collect();
                    if fam.is_empty() || (!inside && no_inside[usize::from(v6)]) {
                        continue;
                    }
                    if inside && fam.iter().all(|c| intersect_test(c).is_none()) {
                        no_inside[usize::from(v6)] = true;
                    }
                    let qualifies = |a: IpAddr| fam.iter().any(|c| c.contains(&a)) == inside;
                    if let Some(h) = self
                        .hosts
                        .iter_mut()
                        .find(|h| h.kind == HostKind::Peer && h.addr(v6).is_some_and(&qualifies))
                    {
                        h.stands_for.push(format!("{word} {label}"));
                        continue;
                    }
                    let picked = if inside {
                        self.pick_inside(&fam)
                    } else {
                        self.pick_outside(
                            &fam,
                            v6,
                            if v6 {
                                0xffff_0000_0000_0000_0000_0000
                            } else {
                                0x0001_ff00
                            },
                        )
                    };
                    match (picked, v6) {
                        (Some(IpAddr::V4(a)), false) => new_v4 = Some(a),
                        (Some(IpAddr::V6(a)), true) => new_v6 = Some(a),
                        (None, _) if inside => self.notes.push(format!(
                            "{label}: no address of {} lies inside it; no host stands for it",
                            if v6 { "2001:db8::/32" } else { "198.18.0.0/15" }
                        )),
                        (None, _) => self.notes.push(format!(
                            "{label}: covers all of {}; there is no host outside it",
                            if v6 { "2001:db8::/32" } else { "198.18.0.0/15" }
                        )),
                        _ => unreachable!("picked the family asked for"),
                    }
                }
                if new_v4.is_some() || new_v6.is_some() {
                    let prefix = if inside { "in" } else { "out" };
                    self.add(
                        &format!("{prefix}-{}", short(label)),
                        "eth0".into(),
                        HostKind::Peer,
                        None,
                        new_v4,
                        new_v6,
                        format!("{word} {label}"),
                    );
                }
            }
        }
    }
}

struct Planner {
    lab: String,
    hosts: Vec<Host>,
    notes: Vec<String>,
}

impl Planner {
    fn taken(&self, a: IpAddr) -> bool {
        self.hosts.iter().any(|h| h.addrs().contains(&a))
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        base: &str,
        iface: String,
        kind: HostKind,
        config_iface: Option<String>,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        stands_for: String,
    ) {
        let mut role = sanitize(base);
        if role.is_empty() || role == SWITCH_ROLE {
            role = format!("h{}", self.hosts.len());
        }
        let stem = role.clone();
        let mut n = 2;
        while self.hosts.iter().any(|h| h.role == role) {
            role = format!("{stem}-{n}");
            n += 1;
        }
        self.hosts.push(Host {
            netns: format!("{}{role}", netns_prefix(&self.lab)),
            role,
            iface,
            kind,
            config_iface,
            ipv4,
            ipv6,
            stands_for: vec![stands_for],
        });
    }

    /// A free address inside one of `cidrs` (one family) and the test range.
    fn pick_inside(&self, cidrs: &[IpNet]) -> Option<IpAddr> {
        for c in cidrs {
            let Some(region) = intersect_test(c) else {
                continue;
            };
            let single = region.prefix_len() == region.max_prefix_len();
            let base = addr_u128(region.network());
            let last = addr_u128(region.broadcast());
            let start = if single { 0 } else { 1 };
            for k in start..start + 256 {
                let a = base.checked_add(k)?;
                if a > last || (!single && a == last && region.network().is_ipv4()) {
                    break;
                }
                let a = u128_addr(a, region.network().is_ipv6());
                if !self.taken(a) {
                    return Some(a);
                }
            }
        }
        None
    }

    /// A free test-range address of one family in none of `cidrs`; tries
    /// `pool_offset` (from the start of the test range) first, then the
    /// edges of each CIDR.
    fn pick_outside(&self, cidrs: &[IpNet], v6: bool, pool_offset: u128) -> Option<IpAddr> {
        let fam: Vec<&IpNet> = cidrs
            .iter()
            .filter(|c| matches!(c, IpNet::V6(_)) == v6)
            .collect();
        if fam.iter().any(|c| covers_test_range(c)) {
            return None;
        }
        let test: IpNet = if v6 { TEST_V6.into() } else { TEST_V4.into() };
        let (lo, hi) = (addr_u128(test.network()), addr_u128(test.broadcast()));
        let mut candidates: Vec<u128> = (1..=240).map(|k| lo + pool_offset + k).collect();
        for c in &fam {
            let (n, b) = (addr_u128(c.network()), addr_u128(c.broadcast()));
            for k in 2..18 {
                candidates.push(b.saturating_add(k));
                candidates.push(n.saturating_sub(k));
            }
        }
        candidates.into_iter().find_map(|a| {
            if a <= lo || a >= hi || (!v6 && matches!(a & 0xff, 0 | 255)) {
                return None;
            }
            let addr = u128_addr(a, v6);
            (!fam.iter().any(|c| c.contains(&addr)) && !self.taken(addr)).then_some(addr)
        })
    }
}

/// The CIDR sets the rules name (CIDR peers and prefix lists), deduplicated,
/// most specific first; empty prefix lists are noted and left out.
fn peer_sets(models: &[&Model], notes: &mut Vec<String>) -> Vec<(String, Vec<IpNet>)> {
    let mut sets: BTreeMap<Vec<IpNet>, String> = BTreeMap::new();
    for m in models {
        for g in &m.groups {
            for r in g.ingress.iter().chain(&g.egress) {
                let (label, cidrs) = match &r.peer {
                    Peer::Cidr(n) => (n.to_string(), vec![*n]),
                    Peer::PrefixList(id) => (id.clone(), m.peer_cidrs(&r.peer)),
                    Peer::Group(_) => continue,
                };
                if cidrs.is_empty() {
                    notes.push(format!(
                        "prefix list {label} has no entries (it matches nothing); no host stands for it"
                    ));
                    continue;
                }
                sets.entry(cidrs).or_insert(label);
            }
        }
    }
    let mut v: Vec<(String, Vec<IpNet>)> = sets.into_iter().map(|(c, l)| (l, c)).collect();
    let coverage = |cidrs: &[IpNet]| {
        cidrs
            .iter()
            .map(|c| match intersect_test(c) {
                None => 0.0,
                Some(r) => {
                    let host_bits = f64::from(r.max_prefix_len() - r.prefix_len());
                    if r.network().is_ipv4() {
                        host_bits / 17.0
                    } else {
                        host_bits / 96.0
                    }
                }
            })
            .fold(0.0, f64::max)
    };
    // Sets with several CIDRs (prefix lists) first, so their hosts carry an
    // address of each family; then the most specific first, so broad peers
    // (0.0.0.0/0) reuse the hosts of narrow ones.
    v.sort_by(|a, b| {
        b.1.len()
            .min(2)
            .cmp(&a.1.len().min(2))
            .then(coverage(&a.1).total_cmp(&coverage(&b.1)))
    });
    v
}

/// Ports the rules mention (ends of each range; `all` mentions none), a few
/// they do not, and ping.
fn services(models: &[&Model], notes: &mut Vec<String>) -> Vec<Service> {
    let mut ports: BTreeMap<Proto, Vec<u16>> = BTreeMap::new();
    let mut ranges: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
    for m in models {
        for g in &m.groups {
            for r in g.ingress.iter().chain(&g.egress) {
                let proto = match r.protocol {
                    Protocol::Tcp => Proto::Tcp,
                    Protocol::Udp => Proto::Udp,
                    Protocol::Other(n) => {
                        notes.push(format!(
                            "rule {} allows protocol {n}, which the lab does not send (it sends TCP, UDP and ICMP echo)",
                            r.id
                        ));
                        continue;
                    }
                    _ => continue,
                };
                if let L4Match::Ports(range) = r.l4
                    && !range.is_all()
                {
                    ranges
                        .entry(proto)
                        .or_default()
                        .push((range.from, range.to));
                    let v = ports.entry(proto).or_default();
                    v.push(range.from.max(1));
                    v.push(range.to.max(1));
                }
            }
        }
    }
    let mut out = vec![];
    for (proto, samples, want) in [(Proto::Tcp, SAMPLE_TCP, 2), (Proto::Udp, SAMPLE_UDP, 1)] {
        let mut v = ports.remove(&proto).unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        if v.len() > MAX_PORTS_PER_PROTO {
            notes.push(format!(
                "the rules mention {} {proto:?} ports; the lab probes the first {MAX_PORTS_PER_PROTO}",
                v.len()
            ));
            v.truncate(MAX_PORTS_PER_PROTO);
        }
        let covered = ranges.get(&proto).cloned().unwrap_or_default();
        let mut list: Vec<Service> = v
            .into_iter()
            .map(|port| Service {
                proto,
                port,
                mentioned: true,
            })
            .collect();
        list.extend(
            samples
                .iter()
                .copied()
                .filter(|p| !covered.iter().any(|(a, b)| (a..=b).contains(&p)))
                .take(want)
                .map(|port| Service {
                    proto,
                    port,
                    mentioned: false,
                }),
        );
        list.sort_by_key(|s| s.port);
        out.extend(list);
    }
    out.push(Service {
        proto: Proto::Ping,
        port: 0,
        mentioned: true,
    });
    out
}

fn covers_test_range(c: &IpNet) -> bool {
    match c {
        IpNet::V4(c) => c.contains(&TEST_V4),
        IpNet::V6(c) => c.contains(&TEST_V6),
    }
}

/// `c` ∩ the test range of its family, when that is not empty.
fn intersect_test(c: &IpNet) -> Option<IpNet> {
    match c {
        IpNet::V4(c) if c.contains(&TEST_V4) => Some(TEST_V4.into()),
        IpNet::V4(c) if TEST_V4.contains(c) => Some((*c).into()),
        IpNet::V6(c) if c.contains(&TEST_V6) => Some(TEST_V6.into()),
        IpNet::V6(c) if TEST_V6.contains(c) => Some((*c).into()),
        _ => None,
    }
}

fn addr_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_addr(a: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// Linux interface names: 1–15 bytes, no `/`, `:` or whitespace.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "lo"
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A role from a name: lowercase, `[a-z0-9-]`, readable labels for the
/// world CIDRs, at most 18 characters.
fn sanitize(s: &str) -> String {
    let s = match s {
        "0.0.0.0/0" => "any4",
        "::/0" => "any6",
        s => s
            .strip_suffix("/32")
            .filter(|a| !a.contains(':'))
            .or_else(|| s.strip_suffix("/128"))
            .unwrap_or(s),
    };
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(18).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

fn short(s: &str) -> String {
    sanitize(s).chars().take(14).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        crate::model::from_str(text, &[]).expect("valid config")
    }

    const CONFIG: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }
      - { protocol: tcp, ports: 22, prefix_list: pl-office }
      - { protocol: tcp, ports: 25, cidr: 203.0.113.0/24 }
      - { protocol: udp, ports: "5000-5010", cidr: 198.18.0.53/32 }
    egress:
      - { protocol: tcp, ports: 3306, group: sg-db }
  - id: sg-db
    ingress:
      - { protocol: tcp, ports: 3306, group: sg-web }
prefix_lists:
  - { id: pl-office, cidrs: [198.18.1.0/24, "2001:db8:1::/48"] }
interfaces:
  - { name: eth0, netns: web1, security_groups: [sg-web], addresses: [198.18.0.10, 10.0.0.1] }
  - { name: eth0, netns: db1, security_groups: [sg-db] }
members:
  sg-db: [198.18.0.30, 192.0.2.7]
"#;

    #[test]
    fn every_address_is_in_the_test_ranges_and_unique() {
        let m = model(CONFIG);
        let p = plan("t", &[&m]);
        let mut seen = std::collections::BTreeSet::new();
        for h in &p.hosts {
            assert!(h.netns.starts_with("sgl-t-"), "{h:?}");
            for a in h.addrs() {
                let ok = match a {
                    IpAddr::V4(a) => TEST_V4.contains(&a),
                    IpAddr::V6(a) => TEST_V6.contains(&a),
                };
                assert!(ok, "{} has {a}, outside the test ranges", h.role);
                assert!(seen.insert(a), "{a} is used twice");
            }
        }
    }

    #[test]
    fn hosts_stand_for_interfaces_members_and_both_sides_of_peers() {
        let m = model(CONFIG);
        let p = plan("t", &[&m]);
        let web = p.host("web1").expect("interface host");
        assert_eq!(web.ipv4, Some("198.18.0.10".parse().unwrap()));
        assert!(web.ipv6.is_some(), "an IPv6 address is assigned");
        assert!(p.host("db1").is_some_and(|h| h.ipv4.is_some()));
        assert!(p.host("sg-db-m").is_some(), "{:#?}", p.hosts);
        let office = p.office_hosts();
        assert!(office.0.is_some() && office.1.is_some(), "{:#?}", p.hosts);
        let dns = p
            .hosts
            .iter()
            .find(|h| h.ipv4 == Some("198.18.0.53".parse().unwrap()))
            .expect("a host at the /32");
        assert_eq!(dns.kind, HostKind::Peer);
        for needle in ["10.0.0.1", "192.0.2.7", "203.0.113.0/24", "0.0.0.0/0"] {
            assert!(
                p.notes.iter().any(|n| n.contains(needle)),
                "a note about {needle}: {:#?}",
                p.notes
            );
        }
    }

    impl Plan {
        fn office_hosts(&self) -> (Option<&Host>, Option<&Host>) {
            let office: Ipv4Net = "198.18.1.0/24".parse().unwrap();
            let peer = |inside: bool| {
                self.hosts.iter().find(|h| {
                    h.kind == HostKind::Peer
                        && h.ipv4.is_some_and(|a| office.contains(&a) == inside)
                })
            };
            (peer(true), peer(false))
        }
    }

    #[test]
    fn services_cover_mentioned_ports_range_ends_and_samples() {
        let m = model(CONFIG);
        let p = plan("t", &[&m]);
        let labels: Vec<String> = p.services.iter().map(Service::label).collect();
        for want in [
            "tcp/22", "tcp/25", "tcp/443", "tcp/3306", "udp/5000", "udp/5010", "ping",
        ] {
            assert!(labels.iter().any(|l| l == want), "{want} in {labels:?}");
        }
        assert!(
            labels
                .iter()
                .any(|l| l.starts_with("tcp/") && l.ends_with('*'))
        );
        assert!(
            labels
                .iter()
                .any(|l| l.starts_with("udp/") && l.ends_with('*'))
        );
        // tcp/25 is mentioned, so it is not also a sample.
        assert!(!labels.iter().any(|l| l == "tcp/25*"));
    }

    #[test]
    fn the_evaluator_judges_both_ends() {
        let m = model(CONFIG);
        let p = plan("t", &[&m]);
        let lab = p.lab_model(&m, None);
        let find = |from: &str, to: &str, label: &str, v6: bool| {
            let from = p.hosts.iter().position(|h| h.role == from).unwrap();
            let to = p.hosts.iter().position(|h| h.role == to).unwrap();
            let service = p.services.iter().position(|s| s.label() == label).unwrap();
            p.expect(
                &lab,
                &Flow {
                    from,
                    to,
                    service,
                    v6,
                },
            )
        };
        // web → db MySQL: web's egress (group ref resolved to the lab
        // address of db1) and db's ingress both allow.
        let e = find("web1", "db1", "tcp/3306", false);
        assert!(e.allowed, "{}", e.reason());
        // db → web MySQL: web's ingress has no such rule.
        let e = find("db1", "web1", "tcp/3306", false);
        assert!(!e.allowed);
        assert!(e.reason().contains("ingress: no rule"), "{}", e.reason());
        // A member is not protected; web may reach it on MySQL.
        assert!(find("web1", "sg-db-m", "tcp/3306", false).allowed);
        // sg-db has the default egress, so db1 may send anything.
        assert!(find("db1", "sg-db-m", "udp/5000", false).allowed);
    }

    #[test]
    fn lab_model_points_at_the_lab() {
        let m = model(CONFIG);
        let p = plan("t", &[&m]);
        let lab = p.lab_model(&m, None);
        let keys: Vec<String> = lab.interfaces.iter().map(|i| i.key()).collect();
        assert_eq!(keys, ["eth0@sgl-t-web1", "eth0@sgl-t-db1"]);
        let text = crate::model::aws::to_native_yaml(&lab).unwrap();
        let back = crate::model::from_str(&text, &[]).expect("the lab config is valid");
        assert_eq!(back.interfaces.len(), 2);
    }

    #[test]
    fn names() {
        assert!(check_name("demo").is_ok());
        assert!(check_name("a-b").is_err());
        assert!(check_name("").is_err());
        assert_eq!(sanitize("0.0.0.0/0"), "any4");
        assert_eq!(sanitize("2001:db8:1::/48"), "2001-db8-1-48");
        assert!(valid_ifname("eth0") && !valid_ifname("a/b") && !valid_ifname("lo"));
    }
}
