//! Which interface a packet is on: the endpoint table (layout and rules in
//! `sg_common::endpoint`). One hash lookup keyed by (netns cookie, ifindex),
//! then the endpoint's policy generation (an array slot).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::bpf_get_netns_cookie,
    macros::map,
    maps::{Array, HashMap},
};
use sg_common::{
    IfaceConfig,
    endpoint::{EndpointKey, MAX_ENDPOINTS, MAX_POLICIES, PolicyState, XDP_ALIAS_COOKIE},
};

/// Not preallocated: an update replaces the element under RCU, so a packet
/// that holds the old value never sees it reused half-way; and only the
/// endpoints in use take memory.
#[map]
static SG_ENDPOINTS: HashMap<EndpointKey, IfaceConfig> =
    HashMap::with_max_entries(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);
#[map]
static SG_POLICIES: Array<PolicyState> = Array::with_max_entries(MAX_POLICIES, 0);

/// How an entry point finds its namespace.
#[derive(Clone, Copy)]
pub enum Netns {
    /// `bpf_get_netns_cookie(ctx)` (tc).
    Cookie,
    /// XDP cannot call it: the endpoint's XDP alias key.
    XdpAlias,
}

/// The endpoint of the interface `ifindex` in the packet's namespace.
#[inline(always)]
pub fn lookup<C: EbpfContext>(ctx: &C, netns: Netns, ifindex: u32) -> Option<&'static IfaceConfig> {
    let cookie = match netns {
        // SAFETY: the helper takes the program's context and returns the
        // cookie of the skb's device's namespace.
        Netns::Cookie => unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        Netns::XdpAlias => XDP_ALIAS_COOKIE,
    };
    let key = EndpointKey {
        netns_cookie: cookie,
        ifindex,
        _pad: 0,
    };
    // SAFETY: the value stays valid for this run (RCU).
    unsafe { SG_ENDPOINTS.get(&key) }
}

/// The live generation of `policy` (0: none). One volatile read: every
/// lookup of the packet uses the same generation, whatever an update does
/// meanwhile.
#[inline(always)]
pub fn generation(policy: u32) -> u32 {
    match SG_POLICIES.get_ptr(policy) {
        // SAFETY: a valid map value pointer for this run.
        Some(state) => unsafe { core::ptr::read_volatile(&(*state).generation) },
        None => 0,
    }
}
