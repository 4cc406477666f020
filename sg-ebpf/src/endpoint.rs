//! Which interface a packet is on: the endpoint table (layout and rules in
//! `sg_common::endpoint`). One hash lookup keyed by (netns cookie, ifindex),
//! then the endpoint's policy generation (an array slot).

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, HashMap},
};
use sg_common::{
    IfaceConfig,
    endpoint::{EndpointKey, MAX_ENDPOINTS, MAX_POLICIES, PolicyState, UNIQUE_IFINDEX_COOKIE},
};

// Where the device and its namespace cookie are (see
// `sg_common::endpoint::GLOBAL_OFF_SKB_DEV`); read-only, set at load.
#[unsafe(no_mangle)]
static SG_OFF_SKB_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SG_OFF_XDP_RXQ: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SG_OFF_RXQ_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SG_OFF_DEV_NET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SG_OFF_NET_COOKIE: Global<u32> = Global::new(0);

/// Not preallocated: an update replaces the element under RCU, so a packet
/// that holds the old value never sees it reused half-way; and only the
/// endpoints in use take memory.
#[map]
static SG_ENDPOINTS: HashMap<EndpointKey, IfaceConfig> =
    HashMap::with_max_entries(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);
#[map]
static SG_POLICIES: Array<PolicyState> = Array::with_max_entries(MAX_POLICIES, 0);

/// What the program's context is at run time.
#[derive(Clone, Copy)]
pub enum Netns {
    /// A `struct sk_buff *` (tc).
    Skb,
    /// A `struct xdp_buff *` (XDP).
    Xdp,
}

/// `*(u64 *)(base + off)` in kernel memory; 0 when unreadable.
#[inline(always)]
fn read_u64(base: u64, off: u32) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.unwrap_or(0)
}

/// The namespace cookie of the device the packet is on
/// (`dev->nd_net.net->net_cookie`); 0 when a pointer is unreadable (no
/// endpoint has cookie 0, so the packet then fails closed).
#[inline(always)]
fn device_netns_cookie<C: EbpfContext>(ctx: &C, netns: Netns) -> u64 {
    let base = ctx.as_ptr() as u64;
    let dev = match netns {
        Netns::Skb => read_u64(base, SG_OFF_SKB_DEV.load()),
        Netns::Xdp => {
            let rxq = read_u64(base, SG_OFF_XDP_RXQ.load());
            if rxq == 0 {
                return 0;
            }
            read_u64(rxq, SG_OFF_RXQ_DEV.load())
        }
    };
    if dev == 0 {
        return 0;
    }
    let net = read_u64(dev, SG_OFF_DEV_NET.load());
    if net == 0 {
        return 0;
    }
    read_u64(net, SG_OFF_NET_COOKIE.load())
}

/// The endpoint of the interface `ifindex` in the packet's namespace.
#[inline(always)]
pub fn lookup<C: EbpfContext>(ctx: &C, netns: Netns, ifindex: u32) -> Option<&'static IfaceConfig> {
    // Fast path: an ifindex that only one attached interface has (on this
    // host) is that interface — these programs run only where they are
    // attached. User space keeps this alias (cookie 0) exactly while the
    // index is unique.
    let alias = EndpointKey {
        netns_cookie: UNIQUE_IFINDEX_COOKIE,
        ifindex,
        _pad: 0,
    };
    // SAFETY: the value stays valid for this run (RCU).
    if let Some(cfg) = unsafe { SG_ENDPOINTS.get(alias) } {
        return Some(cfg);
    }
    let cookie = device_netns_cookie(ctx, netns);
    let key = EndpointKey {
        netns_cookie: cookie,
        ifindex,
        _pad: 0,
    };
    // SAFETY: the value stays valid for this run (RCU).
    unsafe { SG_ENDPOINTS.get(key) }
}

/// The live generations of `policy`: (ports, addresses); (0, _): none. One
/// volatile 8-byte read of both: every lookup of the packet uses the same
/// pair, whatever an update does meanwhile. (Even a torn pair fails
/// closed: class ids carry their address generation, see
/// `sg_common::policy::class_base`.)
#[inline(always)]
pub fn generations(policy: u32) -> (u32, u32) {
    match SG_POLICIES.get_ptr(policy) {
        Some(state) => {
            // SAFETY: a valid, 8-byte aligned map value pointer for this
            // run; `generation` and `addr_generation` are its first 8 bytes.
            let both = unsafe { core::ptr::read_volatile(state.cast::<u64>()) };
            PolicyState::split_generations(both)
        }
        None => (0, 0),
    }
}
