//! Verdict events for flow logs: the kernel writes one [`FlowEvent`] to the
//! `SG_EVENTS` ring buffer for each packet that a rule admitted as a new (or
//! untracked) flow and for each dropped packet — never for packets of known
//! flows or infrastructure traffic. A per-CPU token bucket
//! (`IfaceConfig::events_per_sec`, one bucket per endpoint) bounds the rate, so a flood cannot eat a
//! CPU; events not written (rate-limited or buffer full) are counted in
//! `SG_EVENTS_LOST`.

/// One event. Addresses IPv4 in the first 4 bytes; ports in network order
/// (ICMP: type and code in `dport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE).
    pub ts_ns: u64,
    /// Frame length.
    pub bytes: u32,
    /// Rule hash for admitted packets, 0 for drops.
    pub rule: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// `Reason` code.
    pub reason: u8,
    /// `Direction`.
    pub direction: u8,
    pub proto: u8,
    /// 1 for IPv6.
    pub ipv6: u8,
    /// 1 when the admitted packet opened a tracked flow (its later packets
    /// are counted in the connection table, not reported).
    pub tracked: u8,
    pub _pad: [u8; 3],
    /// Endpoint id of the interface (`crate::endpoint`).
    pub endpoint: u32,
}

/// Per-CPU token bucket state of the event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Ring buffer size (bytes, a power of two ≥ page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 18;
/// Ring buffers per host: ring 0 (`SG_EVENTS`) takes the events of
/// interfaces no reader follows; each reader (a daemon's flow log, `sgctl
/// flows`) claims one of the others (`SG_EVENTS_1` …) and points the
/// endpoints it follows at it (`IfaceConfig::event_ring`), so readers do not
/// take each other's events out of a shared ring.
pub const EVENT_RINGS: u32 = 8;

/// Name of event ring `ring` in the object.
pub const fn event_ring_name(ring: u32) -> &'static str {
    match ring {
        1 => "SG_EVENTS_1",
        2 => "SG_EVENTS_2",
        3 => "SG_EVENTS_3",
        4 => "SG_EVENTS_4",
        5 => "SG_EVENTS_5",
        6 => "SG_EVENTS_6",
        7 => "SG_EVENTS_7",
        _ => "SG_EVENTS",
    }
}
/// Default events per second per CPU (and burst).
pub const DEFAULT_EVENTS_PER_SEC: u32 = 2000;

// Sizes are the sums of the fields: no implicit padding (user space reads
// events bytewise from the ring).
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 8 + 4 + 4 + 16 + 16 + 2 + 2 + 5 + 3 + 4);
const _: () = assert!(core::mem::size_of::<RateLimit>() == 8 + 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers and byte arrays without implicit
    // padding (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateLimit {}
}
