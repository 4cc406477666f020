//! Security-group enforcement programs.
//!
//! Per packet, in this order (the order never changes; later issues fill in
//! the stages): endpoint (which interface, by netns cookie and ifindex) →
//! parse → conntrack lookup → policy lookup (new flows only) → conntrack
//! create (after allow) → count. Replies never consult policy.
//!
//! One data plane per host: these programs are loaded once and attached to
//! every protected interface (see `sg_common::endpoint`).
//!
//! The entry points are thin: each measures the frame, runs the shared
//! decision for its hook, counts the outcome in one place and maps the
//! verdict to the hook's return code.
// Built for bpfel-unknown-none by sg-user's build script. Host builds
// (clippy, `cargo check --workspace`) only type-check it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the one atomic add the data path needs (the bpfel
// target has no atomic read-modify-write in `core`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod conntrack;
mod counters;
mod endpoint;
mod events;
mod fragments;
mod parse;
mod policy;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use verdict::{Frame, Hook, decide};

impl Frame for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}

#[xdp]
pub fn sg_xdp_ingress(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: the context pointer is valid for this run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if decide(&ctx, Hook::Ingress, endpoint::Netns::Xdp, ifindex, len) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Passes everything and only bumps a per-CPU counter: the floor the
/// benchmark (`cargo xtask bench`) measures the real programs against.
/// Never attached by sgctl.
#[xdp]
pub fn sg_xdp_floor(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    counters::record(
        0,
        sg_common::Direction::Inbound,
        sg_common::Reason::PassUnfiltered,
        len as u64,
    );
    xdp_action::XDP_PASS
}

/// The floor for real traffic: passes everything and only bumps a per-CPU
/// counter, attached to both tc hooks the way sgctl attaches the real
/// programs (two programs so the kernel's run-time statistics tell the
/// hooks apart). Never attached by sgctl.
#[classifier]
pub fn sg_tc_floor_in(ctx: TcContext) -> i32 {
    tc_floor(&ctx, sg_common::Direction::Inbound)
}

#[classifier]
pub fn sg_tc_floor_eg(ctx: TcContext) -> i32 {
    tc_floor(&ctx, sg_common::Direction::Outbound)
}

#[inline(always)]
fn tc_floor(ctx: &TcContext, direction: sg_common::Direction) -> i32 {
    counters::record(
        0,
        direction,
        sg_common::Reason::PassUnfiltered,
        ctx.len() as u64,
    );
    TC_ACT_OK
}

#[classifier]
pub fn sg_tc_ingress(ctx: TcContext) -> i32 {
    tc(ctx, Hook::Ingress)
}

#[classifier]
pub fn sg_tc_egress(ctx: TcContext) -> i32 {
    tc(ctx, Hook::Egress)
}

/// Headers the parser may read: Ethernet, two VLAN tags, IPv6 with
/// extension headers, L4. Pulled into the linear area when a parse of the
/// linear part alone ran out of bytes.
const TC_PULL_LEN: u32 = 256;

#[inline(always)]
fn tc(ctx: TcContext, hook: Hook) -> i32 {
    let len = ctx.len();
    let want = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < want
        && matches!(
            parse::parse(ctx.data(), ctx.data_end(), false),
            Err(parse::NotJudged::Malformed)
        )
    {
        // A non-linear skb whose linear part ends inside the headers: make
        // them directly readable. Most non-linear skbs (GRO super-packets,
        // locally built segments) carry every header in the linear part;
        // pulling those copied the head on every packet, which was most of
        // the programs' cost in bulk traffic. (Direction does not matter
        // here: it only changes what the parser bypasses, not how far it
        // reads.) On failure the parser sees a short packet: malformed.
        let _ = ctx.pull_data(want);
    }
    // SAFETY: the context pointer is valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if decide(&ctx, hook, endpoint::Netns::Skb, ifindex, len as u64) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
