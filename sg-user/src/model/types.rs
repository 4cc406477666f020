//! The validated policy model: what a config means once every field has been
//! checked. Nothing here parses files or knows about the kernel.
//!
//! Rules are stored as written (one peer each; AWS permissions that bundle
//! several peers become one rule per peer). [`super::Model::rules_for`] gives
//! the resolved view the compiler and the evaluator use: peers expanded to
//! CIDRs, tracked/untracked decided.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::Serialize;

/// IANA protocol numbers the model names.
pub use sg_common::proto;

/// The protocol a rule allows. Numbers that have a name are always stored as
/// the name (`6` is [`Protocol::Tcp`]), so equal rules compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (6): ports are destination ports.
    Tcp,
    /// UDP (17): ports are destination ports.
    Udp,
    /// ICMP for IPv4 (1): type and code instead of ports.
    Icmp,
    /// ICMPv6 (58): type and code instead of ports.
    Icmpv6,
    /// Every protocol (`all`, AWS `-1`).
    All,
    /// Any other IANA protocol number; ports are ignored.
    Other(u8),
}

impl Protocol {
    /// Maps an IANA number to a protocol, naming the ones that have names.
    pub fn from_number(n: u8) -> Self {
        match n {
            proto::TCP => Self::Tcp,
            proto::UDP => Self::Udp,
            proto::ICMP => Self::Icmp,
            proto::ICMPV6 => Self::Icmpv6,
            n => Self::Other(n),
        }
    }

    /// Parses what a user or AWS writes: a name (`tcp`, `udp`, `icmp`,
    /// `icmpv6`, `all`), `-1`, or a number 0–255. Case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "icmp" => Some(Self::Icmp),
            "icmpv6" => Some(Self::Icmpv6),
            "all" | "-1" => Some(Self::All),
            other => other.parse::<u8>().ok().map(Self::from_number),
        }
    }

    /// The IANA number, or `None` for [`Protocol::All`].
    pub fn number(self) -> Option<u8> {
        match self {
            Self::Tcp => Some(proto::TCP),
            Self::Udp => Some(proto::UDP),
            Self::Icmp => Some(proto::ICMP),
            Self::Icmpv6 => Some(proto::ICMPV6),
            Self::All => None,
            Self::Other(n) => Some(n),
        }
    }

    /// Whether this rule protocol covers a packet of IANA protocol `n`.
    pub fn matches(self, n: u8) -> bool {
        self.number().is_none_or(|p| p == n)
    }

    /// TCP and UDP have ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }

    /// ICMP and ICMPv6 have type and code.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Icmpv6 => f.write_str("icmpv6"),
            Self::All => f.write_str("all"),
            Self::Other(n) => write!(f, "{n}"),
        }
    }
}

/// An inclusive range of destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port (inclusive), `>= from`.
    pub to: u16,
}

impl PortRange {
    /// All ports, 0–65535.
    pub const ALL: Self = Self {
        from: 0,
        to: u16::MAX,
    };

    /// One port.
    pub const fn single(port: u16) -> Self {
        Self {
            from: port,
            to: port,
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.from..=self.to).contains(&port)
    }

    /// Whether every port of `other` is in `self`.
    pub fn covers(self, other: Self) -> bool {
        self.from <= other.from && other.to <= self.to
    }

    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.to) - u32::from(self.from) + 1
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether this is 0–65535.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            f.write_str("all")
        } else if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// What a rule matches beyond protocol and peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Match {
    /// TCP/UDP destination ports.
    Ports(PortRange),
    /// ICMP/ICMPv6 type and code; `None` = any. A code is only ever set
    /// together with a type (type -1 forces code -1).
    Icmp {
        /// ICMP type, `None` = any.
        icmp_type: Option<u8>,
        /// ICMP code, `None` = any.
        icmp_code: Option<u8>,
    },
    /// Nothing beyond the protocol (`all` and other protocol numbers).
    Any,
}

impl L4Match {
    /// Whether this matches a packet's destination port (TCP/UDP) or ICMP
    /// type/code. Missing packet fields only match wildcards.
    pub fn matches(&self, port: Option<u16>, icmp: Option<(u8, u8)>) -> bool {
        match *self {
            Self::Any => true,
            Self::Ports(r) => r.is_all() || port.is_some_and(|p| r.contains(p)),
            Self::Icmp {
                icmp_type,
                icmp_code,
            } => match (icmp_type, icmp) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(t), Some((pt, pc))) => t == pt && icmp_code.is_none_or(|c| c == pc),
            },
        }
    }

    /// Whether every packet `other` matches is matched by `self` (same protocol assumed).
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Ports(a), Self::Ports(b)) => a.covers(*b),
            (
                Self::Icmp {
                    icmp_type: t1,
                    icmp_code: c1,
                },
                Self::Icmp {
                    icmp_type: t2,
                    icmp_code: c2,
                },
            ) => match (t1, t2) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a == b && (c1.is_none() || c1 == c2),
            },
            _ => false,
        }
    }
}

/// Who a rule talks to: the source of inbound traffic, the destination of outbound.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// An IPv4 or IPv6 CIDR, canonical (no host bits).
    Cidr(IpNet),
    /// A prefix list by id (`prefix_lists:`).
    PrefixList(String),
    /// Another (or the same) security group by id: the addresses of every
    /// interface it is attached to, plus its `members:`.
    Group(String),
}

impl Peer {
    /// Whether this is `0.0.0.0/0` or `::/0`.
    pub fn is_world(&self) -> bool {
        matches!(self, Self::Cidr(n) if n.prefix_len() == 0)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(n) => write!(f, "{n}"),
            Self::PrefixList(id) => write!(f, "pl:{id}"),
            Self::Group(id) => write!(f, "sg:{id}"),
        }
    }
}

/// The direction of a rule, seen from the protected machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Inbound: the peer is the packet's source.
    Ingress,
    /// Outbound: the peer is the packet's destination.
    Egress,
}

impl Direction {
    /// The other direction.
    pub fn opposite(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }

    /// Short name used in rule ids: `in` / `out`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Ingress => "in",
            Self::Egress => "out",
        }
    }

    /// Config key: `ingress` / `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The config's words (AWS's ingress/egress) and the data path's
/// (`sg_common::Direction`, inbound/outbound as carried in map keys and
/// events) name the same two things; this is the one mapping between them.
impl From<Direction> for sg_common::Direction {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => sg_common::Direction::Inbound,
            Direction::Egress => sg_common::Direction::Outbound,
        }
    }
}

impl From<sg_common::Direction> for Direction {
    fn from(d: sg_common::Direction) -> Self {
        match d {
            sg_common::Direction::Inbound => Direction::Ingress,
            sg_common::Direction::Outbound => Direction::Egress,
        }
    }
}

/// A stable rule id.
///
/// Either given explicitly (`id:` on a native rule), or derived from the
/// rule's content as `GROUP/in|out/MATCH/PEER`, e.g.
/// `sg-web/in/tcp:443/0.0.0.0/0`, `sg-web/in/icmp:8.0/198.18.0.0/15`,
/// `sg-db/in/tcp:3306/sg:sg-web`, `sg-web/out/all/::/0`. Content ids do not
/// change when rules are reordered or descriptions edited; duplicate rules
/// are a validation error, so they are unique.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RuleId(pub String);

impl RuleId {
    /// The content-derived id of a rule.
    pub fn derive(
        group: &str,
        direction: Direction,
        protocol: Protocol,
        l4: &L4Match,
        peer: &Peer,
    ) -> Self {
        let m = match (protocol, l4) {
            (p, L4Match::Ports(r)) => format!("{p}:{r}"),
            (
                p,
                L4Match::Icmp {
                    icmp_type,
                    icmp_code,
                },
            ) => match (icmp_type, icmp_code) {
                (None, _) => p.to_string(),
                (Some(t), None) => format!("{p}:{t}"),
                (Some(t), Some(c)) => format!("{p}:{t}.{c}"),
            },
            (p, L4Match::Any) => p.to_string(),
        };
        Self(format!("{group}/{}/{m}/{peer}", direction.short()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where something was written: file, line (YAML) or JSON path (AWS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// 1-based line (native YAML).
    pub line: Option<u64>,
    /// A path into the document, e.g. `SecurityGroups[0].IpPermissions[1].IpRanges[0]`.
    pub path: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            sep = ":";
        }
        if let Some(line) = self.line {
            write!(f, "{sep}{line}")?;
            sep = ":";
        }
        if let Some(path) = &self.path {
            write!(f, "{sep}{path}")?;
        }
        Ok(())
    }
}

/// One rule of a group, as written (one peer).
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// Stable id (see [`RuleId`]).
    pub id: RuleId,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports or ICMP type/code.
    pub l4: L4Match,
    /// The peer.
    pub peer: Peer,
    /// Free-text description.
    pub description: Option<String>,
    /// Where the rule was written (not part of the policy).
    #[serde(skip)]
    pub origin: Origin,
    /// Its index in the list as written (AWS: after one-rule-per-peer expansion).
    #[serde(skip)]
    pub index: usize,
}

/// A security group.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// Unique id (`sg-web`, `sg-0123…`, `default`).
    pub id: String,
    /// Optional name (AWS `GroupName`).
    pub name: Option<String>,
    /// Optional description.
    pub description: Option<String>,
    /// Inbound rules.
    pub ingress: Vec<Rule>,
    /// Outbound rules. When the config omitted `egress`, this holds the AWS
    /// default: all protocols to `0.0.0.0/0` and to `::/0`.
    pub egress: Vec<Rule>,
    /// Where the group was written.
    #[serde(skip)]
    pub origin: Origin,
}

impl Group {
    /// The rules of one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether this is the default group (id or name `default`).
    pub fn is_default(&self) -> bool {
        self.id == "default" || self.name.as_deref() == Some("default")
    }
}

/// A named set of CIDRs that rules can reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrefixList {
    /// Unique id.
    pub id: String,
    /// Declared maximum size; counts against the rule quota like AWS.
    pub max_entries: Option<u32>,
    /// The CIDRs (canonical).
    pub cidrs: Vec<IpNet>,
}

impl PrefixList {
    /// What one reference to this list counts against a rule quota.
    pub fn quota_weight(&self) -> u32 {
        self.max_entries
            .unwrap_or(u32::try_from(self.cidrs.len()).unwrap_or(u32::MAX))
    }
}

/// A closed set of values chosen by name in a config or on the command line
/// (an interface's side, the ingress hook, the kernel log level). The CLI
/// builds its flags from it, so each value is defined once, here.
pub trait Choice: Copy + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];
    /// How it is written.
    fn name(self) -> &'static str;
    /// One line on what it means (`None`: the name says it).
    fn help(self) -> Option<&'static str> {
        None
    }
    /// The value written `name`.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

/// Which end of a link an interface is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The protected machine's own interface: hook ingress = [`Direction::Ingress`].
    #[default]
    Host,
    /// The host end of a container's veth: packets arriving here leave the
    /// container, so hook ingress = [`Direction::Egress`].
    Peer,
}

impl Choice for Side {
    const ALL: &'static [Side] = &[Side::Host, Side::Peer];

    fn name(self) -> &'static str {
        match self {
            Side::Host => "host",
            Side::Peer => "peer",
        }
    }

    fn help(self) -> Option<&'static str> {
        Some(match self {
            Side::Host => "The protected machine's own interface",
            Side::Peer => "The host side of a container's veth: directions reversed",
        })
    }
}

impl Side {
    /// The rule direction that applies to packets the kernel sees at the
    /// interface's ingress hook (`hook_ingress = true`) or egress hook.
    pub fn policy_direction(self, hook_ingress: bool) -> Direction {
        match (self, hook_ingress) {
            (Self::Host, true) | (Self::Peer, false) => Direction::Ingress,
            (Self::Host, false) | (Self::Peer, true) => Direction::Egress,
        }
    }
}

/// Idle timeouts of an interface's connection tracking, in seconds.
///
/// The configurable ones use AWS ranges (DESIGN §1). The others are fixed,
/// chosen after Linux nf_conntrack's defaults:
/// - TCP handshake (SYN seen, no answer yet): [`Self::TCP_SYN`] = 120 s
/// - TCP half-open (SYN answered, handshake not finished): [`Self::TCP_SYN_RECV`] = 60 s
/// - TCP closing (a FIN seen, either way): [`Self::TCP_FIN`] = 120 s
/// - TCP closed (FIN both ways, or an RST): [`Self::TCP_CLOSED`] = 10 s
/// - ICMP echo: [`Self::ICMP`] = 30 s
/// - other protocols: [`Self::OTHER`] = 600 s (AWS)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackTimeouts {
    /// TCP established, 60–432000, default 432000.
    pub tcp_established: u32,
    /// UDP seen both ways more than once, 60–180, default 180.
    pub udp_stream: u32,
    /// Other UDP, 30–60, default 30.
    pub udp: u32,
}

impl ConntrackTimeouts {
    /// TCP: SYN seen, no reply yet.
    pub const TCP_SYN: u32 = 120;
    /// TCP: SYN answered by SYN-ACK, final ACK not seen.
    pub const TCP_SYN_RECV: u32 = 60;
    /// TCP: FIN seen in one direction.
    pub const TCP_FIN: u32 = 120;
    /// TCP: FIN seen both ways, or RST.
    pub const TCP_CLOSED: u32 = 10;
    /// ICMP/ICMPv6 echo.
    pub const ICMP: u32 = 30;
    /// Any other protocol.
    pub const OTHER: u32 = 600;
    /// Allowed range of `tcp_established`.
    pub const TCP_ESTABLISHED_RANGE: (u32, u32) = (60, 432_000);
    /// Allowed range of `udp_stream`.
    pub const UDP_STREAM_RANGE: (u32, u32) = (60, 180);
    /// Allowed range of `udp`.
    pub const UDP_RANGE: (u32, u32) = (30, 60);
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: 432_000,
            udp_stream: 180,
            udp: 30,
        }
    }
}

/// An interface to protect.
#[derive(Clone, Debug, Serialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Named network namespace (`/run/netns/NAME`), `None` = the current one.
    pub netns: Option<String>,
    /// Which end of the link it is.
    pub side: Side,
    /// Attached group ids, in config order.
    pub groups: Vec<String>,
    /// Declared private addresses; `None` = discover them.
    pub addresses: Option<Vec<IpAddr>>,
    /// Connection-tracking idle timeouts.
    pub conntrack: ConntrackTimeouts,
    /// Where it was written.
    #[serde(skip)]
    pub origin: Origin,
}

impl Interface {
    /// `NAME` or `NAME@NETNS`, the form `--attach` and `sgctl check --iface` use.
    pub fn key(&self) -> String {
        match &self.netns {
            Some(ns) => format!("{}@{ns}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Quotas (DESIGN §1); overridable in the config, enforced by validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quotas {
    /// Security groups in the config (AWS: 2500).
    pub groups: u32,
    /// Rules per group per direction, counted separately for IPv4 and IPv6 (60).
    pub rules_per_group: u32,
    /// Groups per interface (5, at most 16).
    pub groups_per_interface: u32,
    /// Bound on groups_per_interface × rules_per_group (1000).
    pub rules_per_interface: u32,
}

impl Quotas {
    /// Hard upper bound of `groups_per_interface`.
    pub const MAX_GROUPS_PER_INTERFACE: u32 = 16;
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            groups: 2500,
            rules_per_group: 60,
            groups_per_interface: 5,
            rules_per_interface: 1000,
        }
    }
}

/// A rule ready for the compiler and the evaluator: one rule of one group
/// attached to one interface, with its peer expanded to CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedRule {
    /// The rule's stable id.
    pub id: RuleId,
    /// The group it belongs to.
    pub group: String,
    /// Rule direction.
    pub direction: Direction,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports or ICMP type/code.
    pub l4: L4Match,
    /// Peer addresses: the CIDR itself, a prefix list's CIDRs, or one /32 or
    /// /128 per address of the referenced group (attached interfaces' declared
    /// or discovered addresses, plus members). Sorted, deduplicated; may be
    /// empty (matches nothing). Shared by every rule that references the
    /// same group (one list of ten thousand members, not sixteen).
    #[serde(serialize_with = "serialize_slice")]
    pub peers: std::sync::Arc<[IpNet]>,
    /// Flow tracking of the traffic this rule admits (see [`Tracking`]).
    pub tracking: Tracking,
    /// Description.
    pub description: Option<String>,
}

fn serialize_slice<S: serde::Serializer>(
    v: &std::sync::Arc<[IpNet]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&v[..], s)
}

impl ResolvedRule {
    /// Whether a flow of IANA protocol `proto` admitted by this rule is tracked.
    pub fn is_tracked(&self, proto: u8) -> bool {
        self.tracking.is_tracked(proto)
    }

    /// Whether this rule matches a packet (protocol, peer address, port/ICMP).
    pub fn matches(&self, p: &PacketDesc) -> bool {
        self.protocol.matches(p.proto)
            && self.l4.matches(p.port, p.icmp)
            && self.peers.iter().any(|n| n.contains(&p.peer))
    }
}

/// Which flows a rule admits untracked (DESIGN §1): a TCP/UDP flow is
/// untracked when the rule's peer is `0.0.0.0/0` or `::/0` and the opposite
/// direction of the same interface allows that protocol on all ports to the
/// same `/0`. ICMP and other protocols are always tracked. A rule for `all`
/// protocols can be untracked for TCP and tracked for UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tracking {
    /// TCP flows admitted by this rule are untracked.
    pub untracked_tcp: bool,
    /// UDP flows admitted by this rule are untracked.
    pub untracked_udp: bool,
}

impl Tracking {
    /// Whether a flow of IANA protocol `proto` is tracked.
    pub fn is_tracked(self, proto: u8) -> bool {
        match proto {
            proto::TCP => !self.untracked_tcp,
            proto::UDP => !self.untracked_udp,
            _ => true,
        }
    }
}

/// Addresses of group members declared under `members:`, by group id.
pub type Members = BTreeMap<String, Vec<IpAddr>>;

/// What the evaluator needs to know about one packet to judge it by rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PacketDesc {
    /// IANA protocol number (IPv4 protocol / IPv6 next header).
    pub proto: u8,
    /// The remote address: source of an inbound packet, destination of an
    /// outbound one.
    pub peer: IpAddr,
    /// TCP/UDP destination port.
    pub port: Option<u16>,
    /// ICMP/ICMPv6 (type, code).
    pub icmp: Option<(u8, u8)>,
}

impl PacketDesc {
    /// A TCP packet to destination port `port`.
    pub fn tcp(peer: IpAddr, port: u16) -> Self {
        Self {
            proto: proto::TCP,
            peer,
            port: Some(port),
            icmp: None,
        }
    }

    /// A UDP packet to destination port `port`.
    pub fn udp(peer: IpAddr, port: u16) -> Self {
        Self {
            proto: proto::UDP,
            ..Self::tcp(peer, port)
        }
    }

    /// An ICMP (IPv4 peer) or ICMPv6 (IPv6 peer) message.
    pub fn icmp(peer: IpAddr, icmp_type: u8, icmp_code: u8) -> Self {
        Self {
            proto: if peer.is_ipv4() {
                proto::ICMP
            } else {
                proto::ICMPV6
            },
            peer,
            port: None,
            icmp: Some((icmp_type, icmp_code)),
        }
    }

    /// A packet of any other protocol.
    pub fn other(peer: IpAddr, protocol: u8) -> Self {
        Self {
            proto: protocol,
            peer,
            port: None,
            icmp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_numbers() {
        for (s, p, n) in [
            ("tcp", Protocol::Tcp, Some(6)),
            ("UDP", Protocol::Udp, Some(17)),
            ("1", Protocol::Icmp, Some(1)),
            ("icmpv6", Protocol::Icmpv6, Some(58)),
            ("-1", Protocol::All, None),
            ("all", Protocol::All, None),
            ("132", Protocol::Other(132), Some(132)),
            ("0", Protocol::Other(0), Some(0)),
        ] {
            assert_eq!(Protocol::parse(s), Some(p), "{s}");
            assert_eq!(p.number(), n, "{s}");
        }
        assert_eq!(Protocol::parse("256"), None);
        assert!(
            Protocol::All.matches(47) && Protocol::Tcp.matches(6) && !Protocol::Tcp.matches(17)
        );
        assert_eq!(Protocol::Other(47).to_string(), "47");
    }

    #[test]
    fn l4_matching_and_cover() {
        let p = L4Match::Ports(PortRange { from: 80, to: 90 });
        assert!(p.matches(Some(80), None) && p.matches(Some(90), None));
        assert!(!p.matches(Some(91), None) && !p.matches(None, None));
        assert!(L4Match::Ports(PortRange::ALL).matches(None, None));
        let echo = L4Match::Icmp {
            icmp_type: Some(8),
            icmp_code: None,
        };
        assert!(echo.matches(None, Some((8, 3))) && !echo.matches(None, Some((0, 0))));
        let frag = L4Match::Icmp {
            icmp_type: Some(3),
            icmp_code: Some(4),
        };
        assert!(frag.matches(None, Some((3, 4))) && !frag.matches(None, Some((3, 1))));
        assert!(echo.covers(&L4Match::Icmp {
            icmp_type: Some(8),
            icmp_code: Some(0)
        }));
        assert!(!frag.covers(&L4Match::Icmp {
            icmp_type: Some(3),
            icmp_code: None
        }));
        assert!(
            p.covers(&L4Match::Ports(PortRange::single(85)))
                && !p.covers(&L4Match::Ports(PortRange::ALL))
        );
        assert!(L4Match::Any.covers(&p) && !p.covers(&L4Match::Any));
        assert_eq!(PortRange::ALL.len(), 65536);
        assert_eq!(PortRange { from: 1, to: 3 }.to_string(), "1-3");
    }

    #[test]
    fn rule_ids_are_content_derived() {
        let peer = Peer::Cidr("198.18.0.0/15".parse().unwrap());
        let id = |p, l| RuleId::derive("sg-a", Direction::Ingress, p, &l, &peer).0;
        assert_eq!(
            id(Protocol::Tcp, L4Match::Ports(PortRange::single(443))),
            "sg-a/in/tcp:443/198.18.0.0/15"
        );
        assert_eq!(
            id(
                Protocol::Icmp,
                L4Match::Icmp {
                    icmp_type: Some(3),
                    icmp_code: Some(4)
                }
            ),
            "sg-a/in/icmp:3.4/198.18.0.0/15"
        );
        assert_eq!(
            id(
                Protocol::Icmp,
                L4Match::Icmp {
                    icmp_type: None,
                    icmp_code: None
                }
            ),
            "sg-a/in/icmp/198.18.0.0/15"
        );
        assert_eq!(
            id(Protocol::Other(50), L4Match::Any),
            "sg-a/in/50/198.18.0.0/15"
        );
        let g = RuleId::derive(
            "sg-db",
            Direction::Egress,
            Protocol::All,
            &L4Match::Any,
            &Peer::Group("sg-web".into()),
        );
        assert_eq!(g.0, "sg-db/out/all/sg:sg-web");
    }

    #[test]
    fn tracking_only_applies_to_tcp_and_udp() {
        let t = Tracking {
            untracked_tcp: true,
            untracked_udp: false,
        };
        assert!(!t.is_tracked(proto::TCP) && t.is_tracked(proto::UDP));
        let all = Tracking {
            untracked_tcp: true,
            untracked_udp: true,
        };
        assert!(all.is_tracked(proto::ICMP) && all.is_tracked(proto::ICMPV6) && all.is_tracked(47));
    }
}
