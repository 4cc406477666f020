//! Flow-log events: one per new or untracked flow packet and per drop, into
//! a ring buffer, behind a per-CPU token bucket (see `sg_common::events`).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use sg_common::{
    Direction, Reason,
    endpoint::MAX_ENDPOINTS,
    events::{EVENTS_RING_BYTES, FlowEvent, RateLimit},
};

use crate::parse::Packet;

#[map]
static SG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_1: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_2: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_3: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_4: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_5: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_6: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static SG_EVENTS_7: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// The ring buffer a reader claimed for the endpoint (see `sg_common::events::EVENT_RINGS`).
#[inline(always)]
fn ring(index: u32) -> &'static RingBuf {
    match index {
        1 => &SG_EVENTS_1,
        2 => &SG_EVENTS_2,
        3 => &SG_EVENTS_3,
        4 => &SG_EVENTS_4,
        5 => &SG_EVENTS_5,
        6 => &SG_EVENTS_6,
        7 => &SG_EVENTS_7,
        _ => &SG_EVENTS,
    }
}
#[map]
static SG_EVENTS_RATE: PerCpuArray<RateLimit> = PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
static SG_EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn lost(endpoint: u32) {
    if let Some(n) = SG_EVENTS_LOST.get_ptr_mut(endpoint) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// Takes one token; refills `rate` tokens per second up to a burst of `rate`.
#[inline(always)]
fn take_token(endpoint: u32, rate: u32, now: u64) -> bool {
    let Some(state) = SG_EVENTS_RATE.get_ptr_mut(endpoint) else {
        return false;
    };
    // SAFETY: per-CPU slot, no other writer.
    let state = unsafe { &mut *state };
    let rate = rate as u64;
    let elapsed = now.saturating_sub(state.last_ns);
    // Whole tokens earned since the last refill; cap the burst at `rate`.
    let earned = if elapsed >= NS_PER_SEC {
        rate
    } else {
        elapsed * rate / NS_PER_SEC
    };
    if earned > 0 {
        state.tokens = if state.tokens + earned > rate {
            rate
        } else {
            state.tokens + earned
        };
        state.last_ns = now;
    }
    if state.tokens == 0 {
        return false;
    }
    state.tokens -= 1;
    true
}

/// What the data path decided about a packet it reports.
pub struct Judged {
    pub reason: Reason,
    /// It opened a tracked flow.
    pub tracked: bool,
    /// Hash of the admitting rule (0 for drops).
    pub rule: u32,
    /// The interface's endpoint id.
    pub endpoint: u32,
    /// The ring buffer its events go to.
    pub ring: u32,
}

/// Reports a judged packet, if the rate allows; counts it as lost otherwise.
#[inline(always)]
pub fn report(pkt: &Packet, direction: Direction, judged: Judged, bytes: u64, now: u64, rate: u32) {
    let Judged {
        reason,
        tracked,
        rule,
        endpoint,
        ring: ring_index,
    } = judged;
    if rate == 0 {
        return;
    }
    if !take_token(endpoint, rate, now) {
        lost(endpoint);
        return;
    }
    // Zeroed whole, then filled: a `[0; 3]` padding literal compiles to a
    // `memset` call (and the padding goes to user space: it must be zero).
    // SAFETY: integers and byte arrays: all zeros is a valid event.
    let mut event: FlowEvent = unsafe { core::mem::zeroed() };
    event.ts_ns = now;
    event.bytes = bytes as u32;
    event.rule = rule;
    event.src = pkt.src;
    event.dst = pkt.dst;
    event.sport = pkt.sport;
    event.dport = if pkt.proto == sg_common::proto::ICMP || pkt.proto == sg_common::proto::ICMPV6 {
        pkt.policy_port.to_be_bytes()
    } else {
        pkt.dport
    };
    event.reason = reason as u8;
    event.direction = direction as u8;
    event.proto = pkt.proto;
    event.ipv6 = pkt.ipv6 as u8;
    event.tracked = tracked as u8;
    event.endpoint = endpoint;
    if ring(ring_index).output::<FlowEvent>(&event, 0).is_err() {
        lost(endpoint);
    }
}
