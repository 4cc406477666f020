//! The decision shared by every hook, in the fixed order:
//! parse (non-IP and neighbour discovery bypass here) → fragments → conntrack (replies and known flows pass here) →
//! policy (new flows only) → conntrack create (after allow) → count.

use aya_ebpf::{EbpfContext, Global, helpers::bpf_ktime_get_coarse_ns};
use aya_log_ebpf::trace;
use sg_common::{
    Direction, Reason,
    policy::{CONFIG_ENFORCE, HIT_UNTRACKED},
};

use crate::{
    conntrack, counters, events, fragments,
    parse::{self, NotJudged},
    policy,
};

/// 1 when attached to the host side of a container's veth (`side: peer`):
/// packets entering that interface leave the protected workload.
#[unsafe(no_mangle)]
static SG_SIDE_PEER: Global<u8> = Global::new(0);

#[derive(Clone, Copy)]
pub enum Hook {
    Ingress,
    Egress,
}

#[inline(always)]
fn direction(hook: Hook) -> Direction {
    let peer = SG_SIDE_PEER.load() != 0;
    match (hook, peer) {
        (Hook::Ingress, false) | (Hook::Egress, true) => Direction::Inbound,
        (Hook::Egress, false) | (Hook::Ingress, true) => Direction::Outbound,
    }
}

/// Decides the packet between `start` and `end` and counts it. True = pass.
#[inline(always)]
pub fn decide<C: EbpfContext>(
    ctx: &C,
    hook: Hook,
    start: usize,
    end: usize,
    frame_len: u64,
) -> bool {
    let direction = direction(hook);
    let reason = judge(start, end, direction, frame_len);
    // Compiled out at load time unless `sgctl --bpf-log trace` (AYA_LOG_LEVEL).
    trace!(
        ctx,
        "dir={} reason={} len={}", direction as u32, reason as u32, frame_len
    );
    counters::record(direction, reason, frame_len);
    !reason.is_drop()
}

#[inline(always)]
fn judge(start: usize, end: usize, direction: Direction, bytes: u64) -> Reason {
    let Some(cfg) = policy::config() else {
        return Reason::DropNoPolicy;
    };
    // One read of the switch per packet: every lookup below uses the same
    // generation, whatever an update does meanwhile (volatile, so this does
    // not rest on what the optimiser chooses to re-load).
    // SAFETY: `cfg` points into a map value that lives for this run.
    let (generation, flags) = unsafe {
        (
            core::ptr::read_volatile(&cfg.generation),
            core::ptr::read_volatile(&cfg.flags),
        )
    };
    if flags & CONFIG_ENFORCE == 0 {
        return Reason::PassUnfiltered;
    }
    if generation == 0 {
        return Reason::DropNoPolicy;
    }
    let pkt = match parse::parse(start, end, direction == Direction::Outbound) {
        Ok(pkt) => pkt,
        Err(NotJudged::Bypass) => return Reason::PassBypass,
        Err(NotJudged::Malformed) => return Reason::DropMalformed,
        Err(NotJudged::ExtHeaderLimit) => return Reason::DropExtHeaderLimit,
        Err(NotJudged::VlanDepth) => return Reason::DropVlanDepth,
        Err(NotJudged::TcpFlags) => return Reason::DropTcpFlags,
    };
    if pkt.fragment.fragmented && !pkt.fragment.first {
        return fragments::follow(&pkt);
    }
    // CLOCK_MONOTONIC_COARSE (jiffy resolution): idle timeouts are seconds
    // long, and this costs a fraction of bpf_ktime_get_ns on a VM clock.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (mut rule, mut tracked) = (0, false);
    let reason = if conntrack::track_existing(&pkt, direction, cfg, now, bytes) {
        Reason::PassConntrack
    } else {
        match policy::lookup(&pkt, direction, generation) {
            None => Reason::DropNoRule,
            Some(hit) => {
                rule = hit.rule;
                let untracked = hit.flags & HIT_UNTRACKED != 0
                    || (conntrack::may_respond(&pkt)
                        && policy::reverse_is_untracked(&pkt, direction, generation));
                tracked = !untracked;
                if !untracked
                    && conntrack::create(&pkt, direction, now, bytes, hit.rule, generation).is_err()
                {
                    Reason::DropConntrackFull
                } else {
                    counters::rule_hit(hit.rule, bytes);
                    Reason::PassRule
                }
            }
        }
    };
    // Flow logs: new/untracked flows and drops only, never known flows.
    if reason != Reason::PassConntrack {
        let judged = events::Judged {
            reason,
            tracked,
            rule,
        };
        events::report(&pkt, direction, judged, bytes, now, cfg.events_per_sec);
    }
    if pkt.fragment.fragmented && !reason.is_drop() {
        // Pass verdicts only: a spoofed, denied first fragment must not
        // overwrite (or flood out) the verdict of a real one.
        fragments::remember(&pkt);
    }
    reason
}
