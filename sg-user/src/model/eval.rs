//! The reference evaluator: the executable spec of DESIGN.md §1 that kernel
//! tests compare against. Deliberately simple: every decision iterates over
//! every rule; nothing is indexed or cached.
//!
//! - [`decide`]: one packet, no state: allow/deny, the rules that allow it,
//!   tracked or untracked.
//! - [`Conntrack`]: a timed packet sequence through connection tracking:
//!   replies allowed by state, idle timeouts, untracked flows keep no state.
//!
//! Flow tracking decisions:
//! - A packet allowed by several rules is tracked if *any* of them tracks it
//!   (untracked only when every matching rule is untracked). Tracking is the
//!   safe side: the flow's replies keep working even if the untracked rule
//!   goes away.
//! - ICMP/ICMPv6 echo is tracked by (addresses, identifier) *and*
//!   direction: only a request opens state; later requests pass from the
//!   originator and replies from the other side. Echo replies and other ICMP
//!   messages allowed by rules pass without creating state; ICMP errors are
//!   not "related" to a flow (DESIGN §1).
//! - A response within an untracked flow (TCP other than an opening SYN, or
//!   UDP, whose reverse the opposite direction allows untracked) creates no
//!   state either, even when the rule that lets it out is tracked.
//! - Other protocols are tracked by (addresses, protocol), idle 600 s.
//! - TCP: a SYN without ACK opens a flow in the handshake state; any other
//!   allowed TCP packet picks the flow up as established (like Linux with
//!   loose pickup). A SYN on a closing or closed connection is a new
//!   connection, judged by the rules. Timeouts per state are in
//!   [`ConntrackTimeouts`].
//! - UDP is a "stream" (longer timeout) once it was seen in both directions
//!   and has carried at least three packets.
//! - An entry is alive while `now - last_seen < timeout`. A TCP flow
//!   picked up mid-stream has the established timeout only once the other
//!   side has answered; until then it has the handshake timeout.
//!
//! Packets no rule judges, decided before anything else (as the kernel does):
//! - IPv6 neighbour discovery as RFC 4861 sends it (ICMPv6 133–137, code 0,
//!   hop limit 255, not fragmented) passes ([`Outcome::Bypass`]) inbound, and
//!   outbound when sent to a link-local or `ff02::/16` address or one in the
//!   source's /64. Anything else shaped like it — IPv4 protocol 58, another
//!   hop limit or code, a destination off the link outbound — is judged by
//!   the rules.
//! - TCP with SYN together with FIN or RST is dropped ([`Outcome::Invalid`]).
//!
//! Fragments: the first fragment is judged like any packet; a later fragment
//! passes only if a first fragment of its datagram passed (IPv4 key: src, dst,
//! protocol, id; IPv6: src, dst, id).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use super::{
    Model,
    types::{ConntrackTimeouts, Direction, Interface, RuleId, proto},
};

pub use super::types::PacketDesc;

/// The verdict of the rules on one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether any rule allows the packet.
    pub allowed: bool,
    /// The ids of every rule that allows it (empty when denied).
    pub rules: Vec<RuleId>,
    /// Whether the flow it starts is tracked (false when denied).
    pub tracked: bool,
}

/// Judges one packet by the rules of `iface` for `direction` (no state).
pub fn decide(
    model: &Model,
    iface: &Interface,
    direction: Direction,
    pkt: &PacketDesc,
) -> Decision {
    let mut rules = vec![];
    let mut tracked = false;
    for r in model.rules_for(iface, direction) {
        if r.matches(pkt) {
            rules.push(r.id.clone());
            tracked |= r.is_tracked(pkt.proto);
        }
    }
    Decision {
        allowed: !rules.is_empty(),
        rules,
        tracked,
    }
}

/// TCP flag bits, as in the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One packet of a timed sequence, as seen at the protected interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Packet {
    /// Milliseconds since the start of the sequence.
    pub time_ms: u64,
    /// Ingress = arriving at the protected machine, Egress = leaving it
    /// (policy direction; [`super::Side::policy_direction`] maps hooks).
    pub direction: Direction,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IANA protocol.
    pub proto: u8,
    /// TCP/UDP source port, or ICMP echo identifier.
    pub sport: u16,
    /// TCP/UDP destination port, or ICMP echo identifier.
    pub dport: u16,
    /// ICMP (type, code).
    pub icmp: Option<(u8, u8)>,
    /// TCP flags ([`tcp_flags`]).
    pub tcp_flags: u8,
    /// IPv4 TTL / IPv6 hop limit (64 unless set).
    pub hop_limit: u8,
    /// Part of a fragmented datagram.
    pub fragment: Option<Fragment>,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Fragment {
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// Offset 0: the fragment with the transport header.
    pub first: bool,
}

/// The hop limit RFC 4861 requires of every neighbour discovery message.
pub const ND_HOP_LIMIT: u8 = 255;

/// Whether a packet is IPv6 neighbour discovery that bypasses the rules:
/// ICMPv6 (protocol 58 over IPv6) type 133–137, code 0, hop limit 255, not
/// fragmented; outbound only to a destination on the link: link-local,
/// `ff02::/16`, or in the source's /64 (never off the link, so the bypass
/// cannot carry data away).
pub fn neighbour_discovery_bypasses(
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    icmp: Option<(u8, u8)>,
    hop_limit: u8,
    fragmented: bool,
) -> bool {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (src, dst) else {
        return false;
    };
    let well_formed = proto == proto::ICMPV6
        && matches!(icmp, Some((133..=137, 0)))
        && hop_limit == ND_HOP_LIMIT
        && !fragmented;
    let on_link = || {
        let (s, d) = (src.octets(), dst.octets());
        (d[0] == 0xfe && d[1] & 0xc0 == 0x80) || (d[0] == 0xff && d[1] == 0x02) || s[..8] == d[..8]
    };
    well_formed && (direction == Direction::Ingress || on_link())
}

impl Packet {
    /// A TCP packet.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        time_ms: u64,
        direction: Direction,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flags: u8,
    ) -> Self {
        Self {
            time_ms,
            direction,
            src,
            dst,
            proto: proto::TCP,
            sport,
            dport,
            icmp: None,
            tcp_flags: flags,
            hop_limit: 64,
            fragment: None,
        }
    }

    /// A UDP packet.
    pub fn udp(
        time_ms: u64,
        direction: Direction,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
    ) -> Self {
        Self {
            proto: proto::UDP,
            ..Self::tcp(time_ms, direction, src, sport, dst, dport, 0)
        }
    }

    /// An ICMP/ICMPv6 message (protocol chosen by address family); `id` is
    /// the echo identifier (ignored for other types).
    pub fn icmp(
        time_ms: u64,
        direction: Direction,
        src: IpAddr,
        dst: IpAddr,
        icmp_type: u8,
        icmp_code: u8,
        id: u16,
    ) -> Self {
        Self {
            proto: if src.is_ipv4() {
                proto::ICMP
            } else {
                proto::ICMPV6
            },
            icmp: Some((icmp_type, icmp_code)),
            ..Self::tcp(time_ms, direction, src, id, dst, id, 0)
        }
    }

    /// What the rules see of this packet.
    pub fn desc(&self) -> PacketDesc {
        let peer = match self.direction {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        };
        let port = matches!(self.proto, proto::TCP | proto::UDP).then_some(self.dport);
        PacketDesc {
            proto: self.proto,
            peer,
            port,
            icmp: if matches!(self.proto, proto::ICMP | proto::ICMPV6) {
                self.icmp
            } else {
                None
            },
        }
    }

    fn is_echo(&self) -> bool {
        self.echo_kind().is_some()
    }

    /// Infrastructure that no rule judges (see the module docs).
    pub fn bypasses(&self) -> bool {
        neighbour_discovery_bypasses(
            self.direction,
            self.src,
            self.dst,
            self.proto,
            self.icmp,
            self.hop_limit,
            self.fragment.is_some(),
        )
    }

    /// TCP flags that no stack opens a connection with: SYN with FIN or RST.
    pub fn invalid_tcp_flags(&self) -> bool {
        use tcp_flags::*;
        self.proto == proto::TCP && self.tcp_flags & SYN != 0 && self.tcp_flags & (FIN | RST) != 0
    }

    /// A fragment other than the first: it has no transport header.
    fn later_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| !f.first)
    }

    fn echo_kind(&self) -> Option<EchoKind> {
        match (self.proto, self.icmp) {
            (proto::ICMP, Some((8, _))) | (proto::ICMPV6, Some((128, _))) => {
                Some(EchoKind::Request)
            }
            (proto::ICMP, Some((0, _))) | (proto::ICMPV6, Some((129, _))) => Some(EchoKind::Reply),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoKind {
    Request,
    Reply,
}

/// TCP connection states the model distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    /// SYN seen from the originator, nothing back yet.
    SynSent,
    /// The responder answered; waiting for the originator's ACK.
    SynRecv,
    /// Established.
    Established,
    /// A FIN seen from one side.
    FinWait,
    /// FINs seen from both sides, or an RST.
    Closed,
}

/// The state of one tracked flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// The packet that opened it.
    pub first: Packet,
    /// When it was last seen (ms).
    pub last_seen_ms: u64,
    /// TCP state (TCP flows only).
    pub tcp: Option<TcpState>,
    /// Which side sent a FIN: (originator, responder).
    pub fin: (bool, bool),
    /// Packets seen from the originator.
    pub forward_packets: u64,
    /// Packets seen from the responder.
    pub reply_packets: u64,
    /// The rules that admitted it (for a later revoke mode).
    pub admitted_by: Vec<RuleId>,
}

impl Flow {
    /// The idle timeout of this flow in its current state, seconds.
    pub fn timeout_secs(&self, t: &ConntrackTimeouts) -> u32 {
        match (self.first.proto, self.tcp) {
            (proto::TCP, Some(TcpState::SynSent)) => ConntrackTimeouts::TCP_SYN,
            (proto::TCP, Some(TcpState::SynRecv)) => ConntrackTimeouts::TCP_SYN_RECV,
            (proto::TCP, Some(TcpState::FinWait)) => ConntrackTimeouts::TCP_FIN,
            (proto::TCP, Some(TcpState::Closed)) => ConntrackTimeouts::TCP_CLOSED,
            // Picked up mid-stream and never answered: as an unanswered SYN.
            (proto::TCP, _) if self.reply_packets == 0 => ConntrackTimeouts::TCP_SYN,
            (proto::TCP, _) => t.tcp_established,
            (proto::UDP, _)
                if self.reply_packets > 0 && self.forward_packets + self.reply_packets >= 3 =>
            {
                t.udp_stream
            }
            (proto::UDP, _) => t.udp,
            (proto::ICMP | proto::ICMPV6, _) => ConntrackTimeouts::ICMP,
            _ => ConntrackTimeouts::OTHER,
        }
    }
}

/// Why a packet got its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed by rules; a tracked flow was created.
    NewFlow,
    /// Allowed by rules; untracked, no state kept.
    Untracked,
    /// Allowed by rules; tracked but this kind of packet keeps no state
    /// (ICMP other than echo).
    Stateless,
    /// Allowed by state: a later packet from the flow's originator.
    Established,
    /// Allowed by state: a reply.
    Reply,
    /// Denied: no rule allows it and no state covers it.
    Denied,
    /// Denied: rules allow it but the table is full (AWS drops new tracked
    /// flows; counted in [`Conntrack::allowance_exceeded`]).
    TableFull,
    /// Allowed without rules: infrastructure (IPv6 neighbour discovery).
    Bypass,
    /// Denied: TCP flags no connection opens with (SYN with FIN or RST).
    Invalid,
    /// Allowed: a later fragment of a datagram whose first fragment passed.
    FragmentFollows,
    /// Denied: a later fragment with no first fragment that passed.
    FragmentOrphan,
}

impl Outcome {
    /// Whether the packet passes.
    pub fn allowed(self) -> bool {
        !matches!(
            self,
            Self::Denied | Self::TableFull | Self::Invalid | Self::FragmentOrphan
        )
    }
}

/// The verdict on one packet of a sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What happened.
    pub outcome: Outcome,
    /// Rules that allow the packet (empty when allowed by state or denied).
    pub rules: Vec<RuleId>,
}

/// What happens to tracked flows whose admitting rule is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalMode {
    /// AWS: tracked flows live until they idle out.
    #[default]
    KeepTracked,
    /// OpenStack Neutron: a flow the current rules would no longer admit
    /// is cut at its next packet.
    Revoke,
}

/// Connection tracking of one interface over a timed packet sequence.
///
/// The model is passed to every [`Conntrack::step`], so a test can change
/// the rules mid-sequence (rule removal): untracked flows stop at once, since
/// they have no state; tracked flows follow [`RemovalMode`].
#[derive(Clone, Debug)]
pub struct Conntrack {
    timeouts: ConntrackTimeouts,
    mode: RemovalMode,
    capacity: Option<usize>,
    flows: HashMap<FlowKey, Flow>,
    /// Datagrams whose first fragment passed.
    fragments: HashSet<FragmentKey>,
    /// New tracked flows dropped because the table was full.
    pub allowance_exceeded: u64,
}

/// A datagram, as the kernel reassembles it: IPv4 by (src, dst, protocol,
/// id), IPv6 by (src, dst, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragmentKey {
    src: IpAddr,
    dst: IpAddr,
    proto: Option<u8>,
    id: u32,
}

impl FragmentKey {
    fn of(p: &Packet, f: Fragment) -> Self {
        Self {
            src: p.src,
            dst: p.dst,
            proto: p.src.is_ipv4().then_some(p.proto),
            id: f.id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

impl FlowKey {
    fn of(p: &Packet) -> Self {
        let ported = matches!(p.proto, proto::TCP | proto::UDP) || p.is_echo();
        Self {
            proto: p.proto,
            src: p.src,
            sport: if ported { p.sport } else { 0 },
            dst: p.dst,
            dport: if ported { p.dport } else { 0 },
        }
    }

    fn reversed(self) -> Self {
        Self {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            ..self
        }
    }
}

impl Conntrack {
    /// An empty table with these timeouts, AWS removal semantics, no size limit.
    pub fn new(timeouts: ConntrackTimeouts) -> Self {
        Self {
            timeouts,
            mode: RemovalMode::default(),
            capacity: None,
            flows: HashMap::new(),
            fragments: HashSet::new(),
            allowance_exceeded: 0,
        }
    }

    /// An empty table with the interface's configured timeouts.
    pub fn for_interface(iface: &Interface) -> Self {
        Self::new(iface.conntrack)
    }

    /// Sets the rule-removal mode.
    pub fn with_mode(mut self, mode: RemovalMode) -> Self {
        self.mode = mode;
        self
    }

    /// Limits the table to `n` flows; new tracked flows beyond it are dropped.
    pub fn with_capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }

    /// Live flows (including ones that idled out but were not looked at since).
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Judges the next packet. Times must not go backwards.
    pub fn step(&mut self, model: &Model, iface: &Interface, pkt: &Packet) -> Step {
        let no_rules = |outcome| Step {
            outcome,
            rules: vec![],
        };
        if pkt.bypasses() {
            return no_rules(Outcome::Bypass);
        }
        if let Some(f) = pkt.fragment.filter(|f| !f.first) {
            return no_rules(if self.fragments.contains(&FragmentKey::of(pkt, f)) {
                Outcome::FragmentFollows
            } else {
                Outcome::FragmentOrphan
            });
        }
        if pkt.invalid_tcp_flags() {
            return no_rules(Outcome::Invalid);
        }
        let step = self.step_flow(model, iface, pkt);
        if let Some(f) = pkt.fragment
            && step.outcome.allowed()
        {
            self.fragments.insert(FragmentKey::of(pkt, f));
        }
        step
    }

    /// [`Conntrack::step`] for a packet with a transport header.
    fn step_flow(&mut self, model: &Model, iface: &Interface, pkt: &Packet) -> Step {
        debug_assert!(!pkt.later_fragment());
        let now = pkt.time_ms;
        let timeouts = self.timeouts;
        self.flows.retain(|_, f| {
            now.saturating_sub(f.last_seen_ms) < u64::from(f.timeout_secs(&timeouts)) * 1000
        });
        let key = FlowKey::of(pkt);
        // ICMP other than echo is never part of a flow (errors are not
        // "related", DESIGN §1): its key (ports 0) must not meet an echo
        // flow whose identifier happens to be 0.
        let icmp_other = matches!(pkt.proto, proto::ICMP | proto::ICMPV6) && !pkt.is_echo();
        let (hit, reply) = if icmp_other {
            (None, false)
        } else if self.flows.contains_key(&key) {
            (Some(key), false)
        } else if self.flows.contains_key(&key.reversed()) {
            (Some(key.reversed()), true)
        } else {
            (None, false)
        };
        // State admits only what belongs to the flow: an echo request only
        // from the flow's originator and an echo reply only from the other
        // side (identifier *and* direction), and a fresh SYN on a closing or
        // closed connection is a new connection, judged by the rules.
        let hit = hit.filter(|k| {
            let flow = &self.flows[k];
            let echo_ok = match pkt.echo_kind() {
                Some(EchoKind::Request) => !reply,
                Some(EchoKind::Reply) => reply,
                None => true,
            };
            let reopen = pkt.proto == proto::TCP
                && pkt.tcp_flags & tcp_flags::SYN != 0
                && pkt.tcp_flags & tcp_flags::ACK == 0
                && matches!(flow.tcp, Some(TcpState::FinWait | TcpState::Closed));
            echo_ok && !reopen
        });
        if let Some(k) = hit {
            let flow = self.flows.get(&k).expect("just found");
            if self.mode == RemovalMode::Revoke
                && !decide(model, iface, flow.first.direction, &flow.first.desc()).allowed
            {
                self.flows.remove(&k);
            } else {
                let flow = self.flows.get_mut(&k).expect("just found");
                flow.last_seen_ms = now;
                if reply {
                    flow.reply_packets += 1;
                } else {
                    flow.forward_packets += 1;
                }
                if pkt.proto == proto::TCP {
                    advance_tcp(flow, pkt.tcp_flags, reply);
                }
                return Step {
                    outcome: if reply {
                        Outcome::Reply
                    } else {
                        Outcome::Established
                    },
                    rules: vec![],
                };
            }
        }
        let d = decide(model, iface, pkt.direction, &pkt.desc());
        let outcome = if !d.allowed {
            Outcome::Denied
        } else if !d.tracked || responds_to_untracked(model, iface, pkt) {
            Outcome::Untracked
        } else if matches!(pkt.proto, proto::ICMP | proto::ICMPV6)
            && pkt.echo_kind() != Some(EchoKind::Request)
        {
            // Only an echo request opens ICMP state; a reply or an error
            // allowed by a rule passes and opens nothing.
            Outcome::Stateless
        } else if self.capacity.is_some_and(|c| self.flows.len() >= c) {
            self.allowance_exceeded += 1;
            Outcome::TableFull
        } else {
            let tcp = (pkt.proto == proto::TCP).then(|| {
                let f = pkt.tcp_flags;
                if f & tcp_flags::RST != 0 {
                    TcpState::Closed
                } else if f & tcp_flags::SYN != 0 && f & tcp_flags::ACK == 0 {
                    TcpState::SynSent
                } else if f & tcp_flags::FIN != 0 {
                    TcpState::FinWait
                } else {
                    TcpState::Established
                }
            });
            // One flow per pair of endpoints, whichever side opened it.
            self.flows.remove(&key.reversed());
            self.flows.insert(
                key,
                Flow {
                    first: *pkt,
                    last_seen_ms: now,
                    tcp,
                    fin: (pkt.tcp_flags & tcp_flags::FIN != 0, false),
                    forward_packets: 1,
                    reply_packets: 0,
                    admitted_by: d.rules.clone(),
                },
            );
            Outcome::NewFlow
        };
        Step {
            outcome,
            rules: d.rules,
        }
    }
}

/// Whether `pkt` is a response within an untracked flow: a TCP packet that
/// is not a connection-opening SYN, or a UDP datagram, whose reverse (the
/// peer sending to this packet's source port) the opposite direction allows
/// untracked. Such a packet passes without creating state, so the untracked
/// flow stays untracked and stops at once when its rule goes.
pub fn responds_to_untracked(model: &Model, iface: &Interface, pkt: &Packet) -> bool {
    let opening_syn = pkt.tcp_flags & tcp_flags::SYN != 0 && pkt.tcp_flags & tcp_flags::ACK == 0;
    let candidate = match pkt.proto {
        proto::TCP => !opening_syn,
        proto::UDP => true,
        _ => false,
    };
    if !candidate {
        return false;
    }
    let mut reverse = pkt.desc();
    reverse.port = Some(pkt.sport);
    let r = decide(model, iface, pkt.direction.opposite(), &reverse);
    r.allowed && !r.tracked
}

fn advance_tcp(flow: &mut Flow, flags: u8, reply: bool) {
    use tcp_flags::*;
    let Some(state) = flow.tcp else { return };
    if flags & RST != 0 {
        flow.tcp = Some(TcpState::Closed);
        return;
    }
    if flags & FIN != 0 {
        if reply {
            flow.fin.1 = true;
        } else {
            flow.fin.0 = true;
        }
    }
    flow.tcp = Some(match state {
        _ if flow.fin.0 && flow.fin.1 => TcpState::Closed,
        _ if flow.fin.0 || flow.fin.1 => TcpState::FinWait,
        TcpState::SynSent if reply => TcpState::SynRecv,
        TcpState::SynRecv if !reply && flags & ACK != 0 && flags & SYN == 0 => {
            TcpState::Established
        }
        s => s,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "security_groups:\n  - id: a\n    ingress:\n      - { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }\n      - { protocol: tcp, ports: 22, cidr: 198.18.0.7/32 }\n      - { protocol: 47, cidr: 198.18.0.0/15 }\ninterfaces:\n  - { name: e0, security_groups: [a] }\n";

    #[test]
    fn a_packet_matched_by_a_tracked_rule_is_tracked() {
        let m = crate::model::from_str(CFG, &[]).unwrap();
        let i = m.interface("e0").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let inbound = |p: PacketDesc| decide(&m, i, Direction::Ingress, &p);
        let world = inbound(PacketDesc::tcp(ip("203.0.113.1"), 22));
        assert!(world.allowed && !world.tracked, "{world:?}");
        let both = inbound(PacketDesc::tcp(ip("198.18.0.7"), 22));
        assert!(
            both.allowed && both.tracked && both.rules.len() == 2,
            "{both:?}"
        );
        let gre = inbound(PacketDesc::other(ip("198.18.1.1"), 47));
        assert!(
            gre.allowed && gre.tracked,
            "other protocols are tracked: {gre:?}"
        );
        let denied = inbound(PacketDesc::tcp(ip("198.18.0.7"), 23));
        assert!(
            !denied.allowed && !denied.tracked && denied.rules.is_empty(),
            "no rule for port 23: {denied:?}"
        );
    }

    #[test]
    fn packet_desc_takes_the_peer_by_direction() {
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let p = Packet::tcp(0, Direction::Ingress, a, 1000, b, 22, tcp_flags::SYN);
        assert_eq!(p.desc(), PacketDesc::tcp(a, 22));
        let p = Packet {
            direction: Direction::Egress,
            ..p
        };
        assert_eq!(p.desc(), PacketDesc::tcp(b, 22));
        let e = Packet::icmp(0, Direction::Ingress, a, b, 8, 0, 99);
        assert_eq!(e.desc(), PacketDesc::icmp(a, 8, 0));
        assert!(e.is_echo());
        assert!(!Packet::icmp(0, Direction::Ingress, a, b, 3, 4, 0).is_echo());
    }

    #[test]
    fn an_echo_with_identifier_0_does_not_admit_other_icmp() {
        let m = crate::model::from_str(
            "security_groups:\n  - id: a\n    ingress: []\ninterfaces:\n  - { name: e0, security_groups: [a] }\n",
            &[],
        )
        .unwrap();
        let i = m.interface("e0").unwrap();
        let (local, remote): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.9".parse().unwrap());
        let mut ct = Conntrack::for_interface(i);
        let ping = Packet::icmp(0, Direction::Egress, local, remote, 8, 0, 0);
        assert_eq!(ct.step(&m, i, &ping).outcome, Outcome::NewFlow);
        let unreachable = Packet::icmp(1, Direction::Ingress, remote, local, 3, 1, 0);
        assert_eq!(ct.step(&m, i, &unreachable).outcome, Outcome::Denied);
        let pong = Packet::icmp(2, Direction::Ingress, remote, local, 0, 0, 0);
        assert_eq!(ct.step(&m, i, &pong).outcome, Outcome::Reply);
    }
}
