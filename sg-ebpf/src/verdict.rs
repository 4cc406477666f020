//! The decision shared by every hook, in the fixed order:
//! endpoint (which interface; unknown → drop) → parse (non-IP and
//! neighbour-discovery bypass here) → fragments → conntrack (replies and known
//! flows pass here) → policy (new flows only) → conntrack create (after
//! allow) → count.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_coarse_ns};
use aya_log_ebpf::trace;
use sg_common::{
    Direction, IfaceConfig, Reason,
    policy::{CONFIG_ENFORCE, CONFIG_SIDE_PEER, HIT_UNTRACKED},
};

use crate::{
    conntrack, counters, endpoint, events, fragments,
    parse::{self, NotJudged},
    policy::{self, Live},
};

/// The frame a hook sees: where its directly readable bytes are.
pub trait Frame: EbpfContext {
    /// (start, end) of the directly readable bytes.
    fn bounds(&self) -> (usize, usize);
}

#[derive(Clone, Copy)]
pub enum Hook {
    Ingress,
    Egress,
}

/// On the host side of a container's veth (`side: peer`) packets entering
/// the interface leave the protected workload.
#[inline(always)]
fn direction(hook: Hook, flags: u32) -> Direction {
    let peer = flags & CONFIG_SIDE_PEER != 0;
    match (hook, peer) {
        (Hook::Ingress, false) | (Hook::Egress, true) => Direction::Inbound,
        (Hook::Egress, false) | (Hook::Ingress, true) => Direction::Outbound,
    }
}

/// Decides the packet between `start` and `end`, seen on interface
/// `ifindex` of the packet's namespace, and counts it. True = pass.
#[inline(always)]
pub fn decide<F: Frame>(
    frame: &F,
    hook: Hook,
    netns: endpoint::Netns,
    ifindex: u32,
    frame_len: u64,
) -> bool {
    let Some(cfg) = endpoint::lookup(frame, netns, ifindex) else {
        // An interface the endpoint table does not know: fail closed
        // (counted in row 0). User space inserts the endpoint before it
        // attaches, so this is a leftover link or a moved interface.
        let direction = direction(hook, 0);
        counters::record(0, direction, Reason::DropNoPolicy, frame_len);
        return false;
    };
    // SAFETY: `cfg` points into a map value that lives for this run.
    let flags = unsafe { core::ptr::read_volatile(&cfg.flags) };
    let direction = direction(hook, flags);
    let reason = judge(frame, cfg, flags, direction, frame_len);
    // Compiled out at load time unless `sgctl --bpf-log trace` (AYA_LOG_LEVEL).
    trace!(
        frame,
        "dir={} reason={} len={}", direction as u32, reason as u32, frame_len
    );
    counters::record(cfg.endpoint, direction, reason, frame_len);
    !reason.is_drop()
}

#[inline(always)]
fn judge<F: Frame>(
    frame: &F,
    cfg: &IfaceConfig,
    flags: u32,
    direction: Direction,
    bytes: u64,
) -> Reason {
    if flags & CONFIG_ENFORCE == 0 {
        return Reason::PassUnfiltered;
    }
    // One read of the policy's switch per packet: every lookup below uses
    // the same generation, whatever an update does meanwhile.
    let (generation, addr_generation) = endpoint::generations(cfg.policy);
    let live = Live {
        policy: cfg.policy,
        generation,
        addr_generation,
    };
    if live.generation == 0 {
        return Reason::DropNoPolicy;
    }
    let (start, end) = frame.bounds();
    let pkt = match parse::parse(start, end, direction == Direction::Outbound) {
        Ok(pkt) => pkt,
        Err(NotJudged::Bypass) => return Reason::PassBypass,
        Err(NotJudged::Malformed) => return Reason::DropMalformed,
        Err(NotJudged::ExtHeaderLimit) => return Reason::DropExtHeaderLimit,
        Err(NotJudged::VlanDepth) => return Reason::DropVlanDepth,
        Err(NotJudged::TcpFlags) => return Reason::DropTcpFlags,
    };
    if pkt.fragment.fragmented && !pkt.fragment.first {
        return fragments::follow(&pkt, cfg.endpoint);
    }
    // CLOCK_MONOTONIC_COARSE (jiffy resolution): idle timeouts are seconds
    // long, and this costs a fraction of bpf_ktime_get_ns on a VM clock.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (mut rule, mut tracked) = (0, false);
    let reason = if conntrack::track_existing(&pkt, direction, cfg, now, bytes) {
        Reason::PassConntrack
    } else {
        match policy::lookup(&pkt, direction, live) {
            None => Reason::DropNoRule,
            Some(hit) => {
                rule = hit.rule;
                let untracked = hit.flags & HIT_UNTRACKED != 0
                    || (conntrack::may_respond(&pkt)
                        && policy::reverse_is_untracked(&pkt, direction, live));
                tracked = !untracked;
                if !untracked
                    && conntrack::create(
                        &pkt,
                        direction,
                        cfg,
                        now,
                        bytes,
                        hit.rule,
                        live.generation,
                    )
                    .is_err()
                {
                    Reason::DropConntrackFull
                } else {
                    counters::rule_hit(live.policy, hit.rule, bytes);
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
            endpoint: cfg.endpoint,
            ring: cfg.event_ring,
        };
        events::report(&pkt, direction, judged, bytes, now, cfg.events_per_sec);
    }
    if pkt.fragment.fragmented && !reason.is_drop() {
        // Pass verdicts only: a spoofed, denied first fragment must not
        // overwrite (or flood out) the verdict of a real one.
        fragments::remember(&pkt, cfg.endpoint);
    }
    reason
}
