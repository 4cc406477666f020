//! Connection tracking: one host-wide table per family, one lookup per
//! packet on a key that starts with the endpoint id and is normalised to the
//! protected machine (see `sg_common::conntrack`), a small TCP state machine,
//! UDP single/stream, ICMP echo by identifier *and* direction, other
//! protocols by (addresses, protocol). Expired entries count as absent, and
//! the kernel reclaims them itself when a new flow finds the table full
//! (see [`reclaim`]): enforcement never depends on a user-space sweeper. A
//! table full of live flows refuses new ones (the caller counts
//! `conntrack_full`); live entries are never evicted. Each endpoint's entries
//! are counted (`SG_CT_COUNT`): an interface at its limit (`ct_limit`, AWS's
//! per-interface allowance) refuses its own new flows, others are unaffected.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_for_each_map_elem, bpf_map_delete_elem},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use sg_common::{
    Direction, IfaceConfig,
    conntrack::{
        CT_FIN_ORIGIN, CT_FIN_REPLY, CT_SEEN_REPLY, CtEntry, CtKeyV4, CtKeyV6, CtReclaim, CtState,
        CtTraffic, RECLAIM_MIN_INTERVAL_NS, TIMEOUT_SLOTS, timeout_slot,
    },
    endpoint::{CT_COUNT_KERNEL, CT_COUNT_SLOTS, CT_COUNT_USER, MAX_ENDPOINTS, ct_count_index},
    proto,
};

use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Default capacity of each host-wide table; the loader overrides it
/// (`--conntrack-entries`).
///
/// Preallocated: measured with TestRun (quick bench, same machine, best of
/// two runs), a new flow cost 444–548 ns preallocated and 500–686 ns with
/// `BPF_F_NO_PREALLOC` (an allocation per insert); the tables are per host
/// now, so their memory (82 MiB for 262,144 entries per family) no longer
/// grows with interfaces, and an insert never fails for want of memory in
/// softirq context.
const CT_ENTRIES: u32 = 262144;

#[map]
static SG_CT_V4: HashMap<CtKeyV4, CtEntry> = HashMap::with_max_entries(CT_ENTRIES, 0);
#[map]
static SG_CT_V6: HashMap<CtKeyV6, CtEntry> = HashMap::with_max_entries(CT_ENTRIES, 0);
/// Entries per endpoint, two slots each (see `sg_common::endpoint`).
#[map]
static SG_CT_COUNT: Array<u64> = Array::with_max_entries(MAX_ENDPOINTS * CT_COUNT_SLOTS, 0);
/// Idle timeouts (ns) by endpoint id, for the reclaim walk, which meets
/// entries of every endpoint; written by user space with the endpoint.
#[map]
static SG_CT_TIMEOUTS: Array<[u64; TIMEOUT_SLOTS]> = Array::with_max_entries(MAX_ENDPOINTS, 0);
/// Slot 0: IPv4 table, slot 1: IPv6 table. When the last in-kernel reclaim
/// ran and when the next entry can expire at the earliest.
#[map]
static SG_CT_RECLAIM: Array<CtReclaim> = Array::with_max_entries(2, 0);
/// Scratch space of one walk (per CPU, so walks on two CPUs do not mix).
/// A map value rather than the caller's stack: the verifier then sees its
/// fields as unknown scalars and checks the callback once, instead of
/// unrolling one state per deleted entry.
#[map]
static SG_CT_WALK: PerCpuArray<ReclaimWalk> = PerCpuArray::with_max_entries(1, 0);

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
        proto::TCP => Kind::Tcp,
        proto::UDP => Kind::Udp,
        proto::ICMP => match pkt.icmp_type {
            8 => Kind::EchoRequest,
            0 => Kind::EchoReply,
            _ => Kind::IcmpOther,
        },
        proto::ICMPV6 => match pkt.icmp_type {
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

// Keys are zeroed whole (word stores: the padding is hashed, so it must be
// zero), then filled: a `[0; 3]` padding literal compiles to a `memset`
// call on every packet.

#[inline(always)]
fn key_v4(pkt: &Packet, direction: Direction, endpoint: u32) -> CtKeyV4 {
    let (l, r, local_port, remote_port) = ends(pkt, direction);
    // SAFETY: integers and byte arrays: all zeros is a valid key.
    let mut key: CtKeyV4 = unsafe { core::mem::zeroed() };
    key.endpoint = endpoint;
    key.local = [l[0], l[1], l[2], l[3]];
    key.remote = [r[0], r[1], r[2], r[3]];
    key.local_port = local_port;
    key.remote_port = remote_port;
    key.proto = pkt.proto;
    key
}

#[inline(always)]
fn key_v6(pkt: &Packet, direction: Direction, endpoint: u32) -> CtKeyV6 {
    let (local, remote, local_port, remote_port) = ends(pkt, direction);
    // SAFETY: as in `key_v4`.
    let mut key: CtKeyV6 = unsafe { core::mem::zeroed() };
    key.endpoint = endpoint;
    key.local = local;
    key.remote = remote;
    key.local_port = local_port;
    key.remote_port = remote_port;
    key.proto = pkt.proto;
    key
}

#[inline(always)]
fn entry_ptr(pkt: &Packet, direction: Direction, endpoint: u32) -> Option<*mut CtEntry> {
    if pkt.ipv6 {
        SG_CT_V6.get_ptr_mut(key_v6(pkt, direction, endpoint))
    } else {
        SG_CT_V4.get_ptr_mut(key_v4(pkt, direction, endpoint))
    }
}

#[inline(always)]
fn timeout_ns(timeouts: &[u64; TIMEOUT_SLOTS], entry: &CtEntry) -> u64 {
    let slot = timeout_slot(entry.state, entry.flags);
    if slot < timeouts.len() {
        timeouts[slot]
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
    let Some(entry) = entry_ptr(pkt, direction, cfg.endpoint) else {
        return false;
    };
    // SAFETY: a valid map value pointer for the rest of this program run.
    let entry = unsafe { &mut *entry };
    let d = direction as u8;
    // Alive while idle < timeout (the reference evaluator's rule), idle
    // counted from the last packet either way. This direction's own time is
    // usually recent enough to decide; only when it is not are the other
    // direction's fields read (another CPU writes them).
    let timeout = timeout_ns(&cfg.timeouts_ns, entry);
    if now.saturating_sub(entry.traffic(d).last_seen_ns) >= timeout
        && now.saturating_sub(entry.last_seen_ns()) >= timeout
    {
        return false;
    }
    let from_origin = entry.origin == d;
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
            let state = next_tcp_state(entry, flags, from_origin);
            if entry.state != state {
                entry.state = state;
            }
        }
        Kind::Udp if entry.state == CtState::Udp as u8 => {
            // A stream once seen both ways and at least three packets long
            // (this one included). Only until then: a stream's packets
            // never read the other direction's counters.
            let other = entry.traffic(d ^ 1).packets;
            let own = entry.traffic(d).packets + 1;
            let reply = if from_origin { other } else { own };
            if reply > 0 && own + other >= 3 {
                entry.state = CtState::UdpStream as u8;
            }
        }
        _ => {}
    }
    // Shared fields are written only when they change; this direction
    // writes only its own counters (see `CtEntry`).
    if !from_origin && entry.flags & CT_SEEN_REPLY == 0 {
        entry.flags |= CT_SEEN_REPLY;
    }
    let own = if d == 0 {
        &mut entry.inbound
    } else {
        &mut entry.outbound
    };
    // The coarse clock moves once per tick: most packets of a busy flow
    // leave the time alone.
    if own.last_seen_ns != now {
        own.last_seen_ns = now;
    }
    add(&mut own.packets, 1);
    add(&mut own.bytes, bytes);
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
    cfg: &IfaceConfig,
    now: u64,
    bytes: u64,
    rule: u32,
    generation: u32,
) -> Result<(), CreateError> {
    let mut flags = 0;
    // The parser has already refused SYN with FIN or RST.
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
    let opened = CtTraffic {
        last_seen_ns: now,
        packets: 1,
        bytes,
    };
    let (inbound, outbound) = match direction {
        Direction::Inbound => (opened, CtTraffic::default()),
        Direction::Outbound => (CtTraffic::default(), opened),
    };
    // SAFETY: integers only: all zeros is a valid entry (see `key_v4`).
    let mut entry: CtEntry = unsafe { core::mem::zeroed() };
    entry.created_ns = now;
    entry.rule = rule;
    entry.generation = generation;
    entry.origin = direction as u8;
    entry.state = state as u8;
    entry.flags = flags;
    entry.inbound = inbound;
    entry.outbound = outbound;
    let entry = &entry;
    let ep = cfg.endpoint;
    // The interface's own allowance first: at its limit, only what has
    // expired can make room.
    if cfg.ct_limit != 0
        && in_use(ep) >= cfg.ct_limit as u64
        && !(reclaim(pkt.ipv6, cfg, now) && in_use(ep) < cfg.ct_limit as u64)
    {
        return Err(CreateError::Full);
    }
    match insert(pkt, direction, ep, entry, BPF_NOEXIST) {
        Ok(()) => {
            count_add(ep, 1);
            return Ok(());
        }
        // An expired entry of the same key (or a closed TCP flow reopened):
        // replaced, the count stays.
        Err(EEXIST) => {
            return insert(pkt, direction, ep, entry, BPF_EXIST).map_err(|_| CreateError::Full);
        }
        Err(_) => {}
    }
    // Full (the only other way an insert fails here): free what has
    // expired, then try once more.
    if reclaim(pkt.ipv6, cfg, now) && insert(pkt, direction, ep, entry, BPF_NOEXIST).is_ok() {
        count_add(ep, 1);
        return Ok(());
    }
    Err(CreateError::Full)
}

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
const EEXIST: i32 = -17;

#[inline(always)]
fn insert(
    pkt: &Packet,
    direction: Direction,
    endpoint: u32,
    entry: &CtEntry,
    flags: u64,
) -> Result<(), i32> {
    if pkt.ipv6 {
        SG_CT_V6.insert(key_v6(pkt, direction, endpoint), entry, flags)
    } else {
        SG_CT_V4.insert(key_v4(pkt, direction, endpoint), entry, flags)
    }
}

/// Entries `endpoint` holds: what the data path added minus what user space removed.
#[inline(always)]
fn in_use(endpoint: u32) -> u64 {
    let kernel = SG_CT_COUNT
        .get(ct_count_index(endpoint, CT_COUNT_KERNEL))
        .copied()
        .unwrap_or(0);
    let user = SG_CT_COUNT
        .get(ct_count_index(endpoint, CT_COUNT_USER))
        .copied()
        .unwrap_or(0);
    kernel.wrapping_sub(user)
}

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to `endpoint`'s kernel count.
#[inline(always)]
fn count_add(endpoint: u32, delta: u64) {
    if let Some(slot) = SG_CT_COUNT.get_ptr_mut(ct_count_index(endpoint, CT_COUNT_KERNEL)) {
        // SAFETY: a map value pointer, valid for this run; u64 values are 8-byte aligned.
        unsafe { atomic_add(slot, delta) };
    }
}

/// `*slot += delta` as one atomic instruction (BPF_ATOMIC | BPF_ADD): CPUs
/// creating and reclaiming flows of one endpoint at once lose no update.
///
/// # Safety
/// `slot` must be valid for reads and writes and 8-byte aligned (a map value
/// pointer). A raw pointer, not `&mut`: other CPUs write the same value.
#[inline(always)]
unsafe fn atomic_add(slot: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's guarantee.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({slot} + 0) += {delta}",
            slot = in(reg) slot,
            delta = in(reg) delta,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above (host builds only type-check this crate).
    unsafe {
        *slot = (*slot).wrapping_add(delta);
    }
}

/// State shared with [`reclaim_entry`] during one walk of a table.
#[repr(C)]
pub struct ReclaimWalk {
    now: u64,
    /// The earliest time a surviving entry can expire.
    next_expiry: u64,
    reclaimed: u64,
}

/// Deletes the expired entries of one table; true when any were freed.
///
/// A full walk costs time proportional to the table's capacity, so it runs
/// only when it can find something: not before the earliest expiry that the
/// previous walk saw (bounded by the shortest timeout, since entries that
/// change state or arrive later expire no sooner than that), and at most once per
/// [`RECLAIM_MIN_INTERVAL_NS`] per table, so a flood of new flows against a
/// table full of live ones cannot turn every packet into a walk. Live
/// entries are never deleted. Races between CPUs are harmless: at worst two
/// walks run, or one is skipped until the next new flow.
#[inline(always)]
fn reclaim(ipv6: bool, cfg: &IfaceConfig, now: u64) -> bool {
    let slot = u32::from(ipv6);
    let Some(state) = SG_CT_RECLAIM.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a valid map value pointer for the rest of this program run;
    // plain loads and stores of u64 fields (see the race note above).
    let state = unsafe { &mut *state };
    if now < state.next_expiry_ns
        || (state.last_run_ns != 0
            && now.saturating_sub(state.last_run_ns) < RECLAIM_MIN_INTERVAL_NS)
    {
        return false;
    }
    state.last_run_ns = now;
    let Some(walk) = SG_CT_WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    let walk = unsafe { &mut *walk };
    walk.now = now;
    walk.next_expiry = u64::MAX;
    walk.reclaimed = 0;
    let map = if ipv6 {
        &SG_CT_V6 as *const HashMap<CtKeyV6, CtEntry> as *mut c_void
    } else {
        &SG_CT_V4 as *const HashMap<CtKeyV4, CtEntry> as *mut c_void
    };
    // SAFETY: `map` is a map definition of this object and the callback
    // has the helper's signature; it takes no context.
    unsafe {
        bpf_for_each_map_elem(map, reclaim_entry as *mut c_void, core::ptr::null_mut(), 0);
    }
    // Entries that change state after the walk (an RST shortens a 5-day
    // timeout to seconds) or arrive after it live at least the shortest
    // timeout from now: with it the bound stays a true lower bound. (The
    // shortest timeout, TCP closed, is not configurable: the same for every
    // endpoint of the table.)
    let floor = now.saturating_add(cfg.shortest_timeout_s as u64 * 1_000_000_000);
    // SAFETY: plain reads of this CPU's slot, written by the callback (volatile:
    // the compiler cannot see the callback write them).
    let (next_expiry, reclaimed) = unsafe {
        (
            core::ptr::read_volatile(&walk.next_expiry),
            core::ptr::read_volatile(&walk.reclaimed),
        )
    };
    state.next_expiry_ns = if next_expiry < floor {
        next_expiry
    } else {
        floor
    };
    state.runs += 1;
    state.reclaimed += reclaimed;
    reclaimed > 0
}

/// `bpf_for_each_map_elem` callback: deletes `value`'s entry when it has
/// expired, otherwise notes when it will. Returns 0 (continue), or 1 (stop)
/// if the scratch slot is missing, which cannot happen.
///
/// # Safety
/// Only for `bpf_for_each_map_elem` over `SG_CT_V4`/`SG_CT_V6`: `key` and
/// `value` point to a live entry of `map`.
#[inline(never)]
unsafe extern "C" fn reclaim_entry(
    map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    _ctx: *mut c_void,
) -> i64 {
    let Some(walk) = SG_CT_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the caller's guarantee (a live entry of a conntrack table, whose
    // key starts with the endpoint id in both families); `walk` is this CPU's
    // scratch slot, filled by `reclaim`.
    let (entry, endpoint, walk) = unsafe {
        (
            &*(value as *const CtEntry),
            *(key as *const u32),
            &mut *walk,
        )
    };
    let Some(timeouts) = SG_CT_TIMEOUTS.get(endpoint) else {
        return 0;
    };
    let expires = entry
        .last_seen_ns()
        .saturating_add(timeout_ns(timeouts, entry));
    if walk.now >= expires {
        // SAFETY: deleting the element being visited is allowed for hash maps.
        if unsafe { bpf_map_delete_elem(map, key) } == 0 {
            walk.reclaimed += 1;
            count_add(endpoint, u64::MAX);
        }
    } else if expires < walk.next_expiry {
        walk.next_expiry = expires;
    }
    0
}
