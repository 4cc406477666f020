//! Connection tracking table (`SG_CT_V4` / `SG_CT_V6`, host-wide hash maps,
//! keys starting with the endpoint id: a full table (or a full endpoint)
//! refuses new flows, counted as `conntrack_full`, and never evicts an
//! established one) and the fragment table (`SG_FRAGS`).
//!
//! Keys are normalised to the protected machine: `local` is its address and
//! port, `remote` the peer's, whatever the packet's direction. Both directions
//! of a flow therefore hit the same entry with one lookup; the entry's
//! `origin` says which direction opened it. For ICMP echo, both ports hold
//! the echo identifier. Ports are in network byte order, as on the wire.

/// Key of `SG_CT_V4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKeyV4 {
    /// Endpoint id (`crate::endpoint`): one host-wide table, a zone per interface.
    pub endpoint: u32,
    pub local: [u8; 4],
    pub remote: [u8; 4],
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of `SG_CT_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKeyV6 {
    pub endpoint: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// State of a tracked flow; selects its idle timeout.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// TCP: the opener's SYN seen.
    TcpSynSent = 0,
    /// TCP: the responder's SYN-ACK seen.
    TcpSynRecv = 1,
    /// TCP: handshake complete (or picked up mid-stream).
    TcpEstablished = 2,
    /// TCP: a FIN seen in at least one direction.
    TcpClosing = 3,
    /// TCP: RST seen.
    TcpClosed = 4,
    /// UDP, no reply yet or only one packet back.
    Udp = 5,
    /// UDP seen in both directions more than once.
    UdpStream = 6,
    /// ICMP echo (request/reply by identifier) and other ICMP.
    Icmp = 7,
    /// Any other protocol, tracked by (addresses, protocol).
    Other = 8,
}

impl CtState {
    pub const fn from_u8(v: u8) -> Option<CtState> {
        Some(match v {
            0 => CtState::TcpSynSent,
            1 => CtState::TcpSynRecv,
            2 => CtState::TcpEstablished,
            3 => CtState::TcpClosing,
            4 => CtState::TcpClosed,
            5 => CtState::Udp,
            6 => CtState::UdpStream,
            7 => CtState::Icmp,
            8 => CtState::Other,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            CtState::TcpSynSent => "syn_sent",
            CtState::TcpSynRecv => "syn_recv",
            CtState::TcpEstablished => "established",
            CtState::TcpClosing => "closing",
            CtState::TcpClosed => "closed",
            CtState::Udp => "udp",
            CtState::UdpStream => "udp_stream",
            CtState::Icmp => "icmp",
            CtState::Other => "other",
        }
    }

    /// Index into [`crate::IfaceConfig::timeouts_ns`]: one slot per state.
    pub const fn timeout_slot(self) -> usize {
        self as usize
    }
}

/// Slots of the per-interface timeout table (one per [`CtState`]).
pub const TIMEOUT_SLOTS: usize = 9;

/// Default idle timeouts in seconds, by [`CtState`]. Established TCP, UDP and
/// UDP stream follow AWS (and are configurable per interface); the TCP
/// handshake and closing values follow Linux nf_conntrack; ICMP 30 s.
pub const DEFAULT_TIMEOUTS_S: [u64; TIMEOUT_SLOTS] = [
    120,    // TcpSynSent
    60,     // TcpSynRecv
    432000, // TcpEstablished
    120,    // TcpClosing
    10,     // TcpClosed
    30,     // Udp
    180,    // UdpStream
    30,     // Icmp
    600,    // Other
];

/// One direction's share of a connection entry: written only by packets of
/// that direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtTraffic {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of this
    /// direction's last packet; 0: none yet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Value of the conntrack maps.
///
/// A flow's two directions are usually handled by different CPUs (the
/// sender's softirq one way, the receiving process's CPU the other). Each
/// direction writes only its own [`CtTraffic`] (and its time only when the
/// coarse clock moved); the shared fields are written only when they change.
/// No padding keeps the two directions on separate cache lines: measured
/// with the kernel's run-time statistics (`cargo xtask bench`, one run
/// each), a 200-byte entry with each direction on a line of its own was no
/// faster than this 72-byte one (connection per request, egress: 305–323 vs
/// 212–217 ns per run; bulk TCP ingress 244–283 vs 233–256 ns), which
/// touches fewer lines per packet and costs less than half the memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub created_ns: u64,
    /// Hash of the rule that admitted the flow.
    pub rule: u32,
    /// Policy generation that admitted it.
    pub generation: u32,
    /// `Direction` of the packet that opened the flow.
    pub origin: u8,
    /// [`CtState`]. Written only when it changes.
    pub state: u8,
    /// `CT_*` flags. Written only when they change.
    pub flags: u8,
    pub _pad: [u8; 5],
    /// Packets towards the protected machine.
    pub inbound: CtTraffic,
    /// Packets leaving it.
    pub outbound: CtTraffic,
}

impl CtEntry {
    /// The counters of `direction` ([`crate::Direction`] as u8: 0 inbound).
    #[inline(always)]
    pub fn traffic(&self, direction: u8) -> &CtTraffic {
        if direction == 0 {
            &self.inbound
        } else {
            &self.outbound
        }
    }

    /// When the flow last saw a packet, either way.
    #[inline(always)]
    pub fn last_seen_ns(&self) -> u64 {
        let (i, o) = (self.inbound.last_seen_ns, self.outbound.last_seen_ns);
        if i > o { i } else { o }
    }
}

/// A packet in the reply direction has been seen.
pub const CT_SEEN_REPLY: u8 = 1;

/// The timeout slot that applies to an entry in `state` with `flags`. A TCP
/// flow picked up mid-stream (created as established by a non-SYN packet)
/// has the established timeout (5 days by default) only once its peer has
/// answered; until then it idles out like an unanswered SYN, so a stray or
/// spoofed ACK cannot hold an entry for days. Shared by the data path and
/// user space (listing, reclaim) so both agree on what has expired.
#[inline(always)]
pub const fn timeout_slot(state: u8, flags: u8) -> usize {
    if state == CtState::TcpEstablished as u8 && flags & CT_SEEN_REPLY == 0 {
        CtState::TcpSynSent as usize
    } else {
        state as usize
    }
}
/// The opener has sent a FIN.
pub const CT_FIN_ORIGIN: u8 = 2;
/// The responder has sent a FIN.
pub const CT_FIN_REPLY: u8 = 4;

/// Value of `SG_CT_RECLAIM` (slot 0: IPv4 table, 1: IPv6): the kernel's own
/// reclaim of expired entries, run when a new flow finds its table full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtReclaim {
    /// When the last walk ran (0: never).
    pub last_run_ns: u64,
    /// No entry can expire before this (as of the last walk).
    pub next_expiry_ns: u64,
    /// Walks run.
    pub runs: u64,
    /// Entries deleted by them.
    pub reclaimed: u64,
}

/// At most one reclaim walk per table in this interval: a walk visits every
/// slot of the table (about 100 ns each, measured: 7 ms for 65,536), so a
/// flood of new flows against a table full of live ones must not walk it on
/// every packet. One second bounds that flood's extra cost to under 1% of a
/// CPU at the default size, and expired entries are reclaimed within a
/// second of a new flow needing their room.
pub const RECLAIM_MIN_INTERVAL_NS: u64 = 1_000_000_000;

/// Key of `SG_FRAGS`: one datagram being fragmented. IPv4 addresses are
/// stored IPv4-mapped (::ffff:a.b.c.d).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// IPv4: the protocol (part of the reassembly key, RFC 791). IPv6: 0 —
    /// Linux reassembles by (src, dst, id), and the Fragment header's next
    /// header differs between the first fragment (judged by its upper-layer
    /// protocol, after any AH or destination options) and later ones.
    pub proto: u8,
    pub _pad: [u8; 3],
    /// Endpoint id: a first fragment passed on one interface says nothing
    /// about another.
    pub endpoint: u32,
}

/// Value of `SG_FRAGS`: the first fragment's verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragVerdict {
    /// The `Reason` code the first fragment got; later fragments pass when it
    /// was a pass reason, and drop with it otherwise.
    pub reason: u32,
    pub _pad: u32,
}

// Sizes are the sums of the fields: no implicit padding (keys are hashed
// bytewise; padding bytes would be uninitialised).
const _: () = assert!(core::mem::size_of::<CtKeyV4>() == 4 + 4 + 4 + 2 + 2 + 1 + 3);
const _: () = assert!(core::mem::size_of::<CtKeyV6>() == 4 + 16 + 16 + 2 + 2 + 1 + 3);
const _: () = assert!(core::mem::size_of::<CtTraffic>() == 3 * 8);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 8 + 4 + 4 + 1 + 1 + 1 + 5 + 24 + 24);
const _: () = assert!(core::mem::size_of::<FragKey>() == 16 + 16 + 4 + 1 + 3 + 4);
const _: () = assert!(core::mem::size_of::<FragVerdict>() == 4 + 4);
const _: () = assert!(core::mem::size_of::<CtReclaim>() == 4 * 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers and byte arrays without implicit
    // padding (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CtKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKeyV6 {}
    // SAFETY: as above (`state` is a plain u8, not the `CtState` enum).
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtTraffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtReclaim {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_have_slots() {
        for v in 0..=255u8 {
            if let Some(s) = CtState::from_u8(v) {
                assert_eq!(s as u8, v);
                assert!(s.timeout_slot() < TIMEOUT_SLOTS);
            }
        }
        assert_eq!(CtState::from_u8(TIMEOUT_SLOTS as u8), None);
    }

    #[test]
    fn unanswered_pickup_has_the_syn_timeout() {
        let est = CtState::TcpEstablished as u8;
        assert_eq!(timeout_slot(est, 0), CtState::TcpSynSent as usize);
        assert_eq!(timeout_slot(est, CT_SEEN_REPLY), est as usize);
        assert_eq!(timeout_slot(CtState::Udp as u8, 0), CtState::Udp as usize);
    }
}
