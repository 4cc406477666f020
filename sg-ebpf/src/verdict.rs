//! The decision shared by every hook. Until policy enforcement lands, every
//! packet passes and is counted as `PassUnfiltered`.

use aya_ebpf::{EbpfContext, Global};
use aya_log_ebpf::trace;
use sg_common::{Direction, Reason};

use crate::counters;

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

/// Decides one packet and counts it. Returns true to pass.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, hook: Hook, frame_len: usize) -> bool {
    let direction = direction(hook);
    let reason = Reason::PassUnfiltered;
    // Compiled out at load time unless `sgctl --bpf-log trace` (AYA_LOG_LEVEL).
    trace!(
        ctx,
        "dir={} reason={} len={}", direction as u32, reason as u32, frame_len
    );
    counters::record(direction, reason, frame_len);
    !reason.is_drop()
}
