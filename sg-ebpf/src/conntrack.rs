//! Connection tracking: one lookup per packet on a key normalised to the
//! protected machine (see `sg_common::conntrack`), a small TCP state machine,
//! UDP single/stream, ICMP echo by identifier *and* direction, other
//! protocols by (addresses, protocol). Expired entries count as absent;
//! user space reclaims them. A full table refuses new flows (the caller
//! counts `conntrack_full`); established entries are never evicted.

use aya_ebpf::{macros::map, maps::HashMap};
use sg_common::{
    Direction, IfaceConfig,
    conntrack::{CT_FIN_ORIGIN, CT_FIN_REPLY, CT_SEEN_REPLY, CtEntry, CtKeyV4, CtKeyV6, CtState},
};

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet};

/// Default capacity; the loader overrides it from the interface's config.
const CT_ENTRIES: u32 = 65536;

#[map]
static SG_CT_V4: HashMap<CtKeyV4, CtEntry> = HashMap::with_max_entries(CT_ENTRIES, 0);
#[map]
static SG_CT_V6: HashMap<CtKeyV6, CtEntry> = HashMap::with_max_entries(CT_ENTRIES, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// How a packet relates to connection state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    EchoRequest,
    EchoReply,
    /// ICMP other than echo: judged by policy each time, no state (errors
    /// are not implicitly related to a flow, as in AWS).
    IcmpOther,
    Other,
}

#[inline(always)]
fn kind(pkt: &Packet) -> Kind {
    match pkt.proto {
        IPPROTO_TCP => Kind::Tcp,
        IPPROTO_UDP => Kind::Udp,
        IPPROTO_ICMP => match pkt.icmp_type {
            8 => Kind::EchoRequest,
            0 => Kind::EchoReply,
            _ => Kind::IcmpOther,
        },
        IPPROTO_ICMPV6 => match pkt.icmp_type {
            128 => Kind::EchoRequest,
            129 => Kind::EchoReply,
            _ => Kind::IcmpOther,
        },
        _ => Kind::Other,
    }
}

/// TCP other than an opening SYN, or UDP: may be a response within an
/// untracked flow (which must not create state).
#[inline(always)]
pub fn may_respond(pkt: &Packet) -> bool {
    match kind(pkt) {
        Kind::Tcp => !(pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0),
        Kind::Udp => true,
        _ => false,
    }
}

/// (local, remote) halves of the packet as seen from the protected machine.
#[inline(always)]
fn ends(pkt: &Packet, direction: Direction) -> ([u8; 16], [u8; 16], [u8; 2], [u8; 2]) {
    let (local, remote, lport, rport) = match direction {
        Direction::Inbound => (pkt.dst, pkt.src, pkt.dport, pkt.sport),
        Direction::Outbound => (pkt.src, pkt.dst, pkt.sport, pkt.dport),
    };
    match kind(pkt) {
        Kind::Tcp | Kind::Udp | Kind::EchoRequest | Kind::EchoReply => {
            (local, remote, lport, rport)
        }
        Kind::IcmpOther | Kind::Other => (local, remote, [0; 2], [0; 2]),
    }
}

#[inline(always)]
fn key_v4(pkt: &Packet, direction: Direction) -> CtKeyV4 {
    let (l, r, local_port, remote_port) = ends(pkt, direction);
    CtKeyV4 {
        local: [l[0], l[1], l[2], l[3]],
        remote: [r[0], r[1], r[2], r[3]],
        local_port,
        remote_port,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn key_v6(pkt: &Packet, direction: Direction) -> CtKeyV6 {
    let (local, remote, local_port, remote_port) = ends(pkt, direction);
    CtKeyV6 {
        local,
        remote,
        local_port,
        remote_port,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn entry_ptr(pkt: &Packet, direction: Direction) -> Option<*mut CtEntry> {
    if pkt.ipv6 {
        SG_CT_V6.get_ptr_mut(key_v6(pkt, direction))
    } else {
        SG_CT_V4.get_ptr_mut(key_v4(pkt, direction))
    }
}

#[inline(always)]
fn timeout_ns(cfg: &IfaceConfig, state: u8) -> u64 {
    let slot = state as usize;
    if slot < cfg.timeouts_ns.len() {
        cfg.timeouts_ns[slot]
    } else {
        0
    }
}

/// Adds to a flow counter. Not atomic (the bpfel target has no atomic RMW
/// in Rust's core yet): a flow's packets are normally handled by one CPU at
/// a time (RSS), and a lost increment only skews the flow-log totals.
#[inline(always)]
fn add(counter: &mut u64, v: u64) {
    *counter += v;
}

/// If `pkt` belongs to a live tracked flow, updates that flow and returns true.
#[inline(always)]
pub fn track_existing(
    pkt: &Packet,
    direction: Direction,
    cfg: &IfaceConfig,
    now: u64,
    bytes: u64,
) -> bool {
    let kind = kind(pkt);
    if kind == Kind::IcmpOther {
        return false;
    }
    let Some(entry) = entry_ptr(pkt, direction) else {
        return false;
    };
    // SAFETY: a valid map value pointer for the rest of this program run.
    let entry = unsafe { &mut *entry };
    // Alive while idle < timeout (the reference evaluator's rule).
    if now.saturating_sub(entry.last_seen_ns) >= timeout_ns(cfg, entry.state) {
        return false;
    }
    let from_origin = entry.origin == direction as u8;
    match kind {
        // A request is never admitted by a reply's state, nor a reply by a
        // request's: the echo identifier is keyed together with direction.
        Kind::EchoRequest if !from_origin => return false,
        Kind::EchoReply if from_origin => return false,
        Kind::Tcp => {
            let flags = pkt.tcp_flags;
            let closing =
                entry.state == CtState::TcpClosing as u8 || entry.state == CtState::TcpClosed as u8;
            if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 && closing {
                // Port reuse after close: a new connection, judged by policy.
                return false;
            }
            entry.state = next_tcp_state(entry, flags, from_origin);
        }
        _ => {}
    }
    if !from_origin {
        entry.flags |= CT_SEEN_REPLY;
    }
    entry.last_seen_ns = now;
    let d = (direction as usize) & 1;
    add(&mut entry.packets[d], 1);
    add(&mut entry.bytes[d], bytes);
    if kind == Kind::Udp {
        // A stream once seen both ways and at least three packets long.
        let reply = entry.packets[(entry.origin as usize ^ 1) & 1];
        if reply > 0 && entry.packets[0] + entry.packets[1] >= 3 {
            entry.state = CtState::UdpStream as u8;
        }
    }
    true
}

#[inline(always)]
fn next_tcp_state(entry: &mut CtEntry, flags: u8, from_origin: bool) -> u8 {
    if flags & TCP_RST != 0 {
        return CtState::TcpClosed as u8;
    }
    if flags & TCP_FIN != 0 {
        entry.flags |= if from_origin {
            CT_FIN_ORIGIN
        } else {
            CT_FIN_REPLY
        };
    }
    let fins = entry.flags & (CT_FIN_ORIGIN | CT_FIN_REPLY);
    if fins == CT_FIN_ORIGIN | CT_FIN_REPLY {
        return CtState::TcpClosed as u8;
    }
    if fins != 0 {
        return CtState::TcpClosing as u8;
    }
    let state = entry.state;
    if state == CtState::TcpSynSent as u8 && !from_origin {
        return CtState::TcpSynRecv as u8;
    }
    if state == CtState::TcpSynRecv as u8
        && from_origin
        && flags & TCP_ACK != 0
        && flags & TCP_SYN == 0
    {
        return CtState::TcpEstablished as u8;
    }
    state
}

/// Why a new flow got no entry.
pub enum CreateError {
    /// The table is full.
    Full,
}

/// Starts tracking the flow `pkt` opens (after policy allowed it). Echo
/// replies and ICMP other than echo create nothing.
#[inline(always)]
pub fn create(
    pkt: &Packet,
    direction: Direction,
    now: u64,
    bytes: u64,
    rule: u32,
    generation: u32,
) -> Result<(), CreateError> {
    let mut flags = 0;
    let state = match kind(pkt) {
        Kind::Tcp if pkt.tcp_flags & TCP_RST != 0 => CtState::TcpClosed,
        Kind::Tcp if pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0 => {
            CtState::TcpSynSent
        }
        Kind::Tcp if pkt.tcp_flags & TCP_FIN != 0 => {
            flags = CT_FIN_ORIGIN;
            CtState::TcpClosing
        }
        // Mid-stream pickup (e.g. flows older than the attachment).
        Kind::Tcp => CtState::TcpEstablished,
        Kind::Udp => CtState::Udp,
        Kind::EchoRequest => CtState::Icmp,
        Kind::EchoReply | Kind::IcmpOther => return Ok(()),
        Kind::Other => CtState::Other,
    };
    let d = (direction as usize) & 1;
    let mut entry = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        packets: [0; 2],
        bytes: [0; 2],
        rule,
        generation,
        origin: direction as u8,
        state: state as u8,
        flags,
        _pad: [0; 5],
    };
    entry.packets[d] = 1;
    entry.bytes[d] = bytes;
    // BPF_ANY: replaces an expired entry of the same key.
    let result = if pkt.ipv6 {
        SG_CT_V6.insert(key_v6(pkt, direction), entry, 0)
    } else {
        SG_CT_V4.insert(key_v4(pkt, direction), entry, 0)
    };
    result.map_err(|_| CreateError::Full)
}
