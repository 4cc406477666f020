//! The endpoint table: one data plane per host.
//!
//! The programs are loaded and verified once per host and attached to any
//! number of interfaces, in any network namespace. A packet finds the
//! interface it belongs to in `SG_ENDPOINTS`, keyed by (its device's
//! namespace cookie, ifindex) — the interface's identity as the kernel sees
//! it, whatever its name or namespace name. The value ([`crate::IfaceConfig`]) holds the
//! endpoint id (the first word of every connection and fragment key, and the
//! row of its counters), the policy it enforces, its side, mode, idle
//! timeouts, flow-log rate and connection limit. A packet on an interface the
//! table does not know is dropped as `no_policy` (fail closed): user space
//! inserts the endpoint before it attaches, and detaches before it removes it.
//!
//! Policies (`SG_POLICIES`, an array indexed by policy id) are shared by the
//! interfaces with the same compiled rules; every policy key starts with the
//! policy id, then the generation. A policy's [`PolicyState`] is its atomic
//! switch; moving an interface to another policy is one update of its endpoint.

/// Key of `SG_ENDPOINTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Cookie of the interface's namespace (`net->net_cookie`; user space:
    /// `getsockopt(SO_NETNS_COOKIE)` on a socket made in that namespace).
    pub netns_cookie: u64,
    /// Interface index in that namespace (XDP: `ingress_ifindex`; tc: `skb->ifindex`).
    pub ifindex: u32,
    pub _pad: u32,
}

/// Names of the read-only globals that tell the programs where, in this
/// kernel's structures, the packet's device and its namespace cookie are
/// (byte offsets from `/sys/kernel/btf/vmlinux`, set by the loader).
///
/// `bpf_get_netns_cookie` cannot give the interface's namespace: XDP may not
/// call it ("program of this type cannot use helper bpf_get_netns_cookie#122"
/// on 6.18, whatever `bpftool feature probe` lists), and for tc it returns
/// the namespace of the packet's *socket* — the initial namespace for every
/// received packet. So the programs read `dev->nd_net.net->net_cookie` (the
/// value `SO_NETNS_COOKIE` reports) with `bpf_probe_read_kernel`.
pub const GLOBAL_OFF_SKB_DEV: &str = "SG_OFF_SKB_DEV";
/// `xdp_buff.rxq`.
pub const GLOBAL_OFF_XDP_RXQ: &str = "SG_OFF_XDP_RXQ";
/// `xdp_rxq_info.dev`.
pub const GLOBAL_OFF_RXQ_DEV: &str = "SG_OFF_RXQ_DEV";
/// `net_device.nd_net` (a `possible_net_t`: the `struct net *` first).
pub const GLOBAL_OFF_DEV_NET: &str = "SG_OFF_DEV_NET";
/// `net.net_cookie`.
pub const GLOBAL_OFF_NET_COOKIE: &str = "SG_OFF_NET_COOKIE";

/// `netns_cookie` of an endpoint's second key (cookie 0, ifindex) while no
/// other attached interface on the host has its ifindex: the programs run
/// only on interfaces they are attached to, so such an index alone says
/// which interface a packet is on, and the lookup skips reading the
/// device's namespace (three kernel reads). Namespace cookies start at 1.
pub const UNIQUE_IFINDEX_COOKIE: u64 = 0;

/// Value of `SG_POLICIES` (indexed by policy id; id 0 is never used, so an
/// endpoint with policy 0 has no policy). Slot 0 keeps user space's
/// bookkeeping instead, with its `generation` always 0: `fingerprint` is the
/// last generation number handed out, `addr_generation` the highest policy
/// id ever installed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// Generation of the port entries the programs look up (the number the
    /// policy version is known by); 0: slot free.
    pub generation: u32,
    /// Generation of the address entries: the same number when this version
    /// wrote them, an earlier one when its addresses were those of the
    /// version before (a change of ports only rewrites port entries). Read
    /// together with `generation` in one 8-byte load.
    pub addr_generation: u32,
    /// Fingerprint of the compiled rules (user space only: interfaces whose
    /// rules have this fingerprint share the policy).
    pub fingerprint: u64,
    /// Fingerprint of the address entries (user space only): a new version
    /// with the same one reuses them.
    pub addr_fingerprint: u64,
}

impl PolicyState {
    /// (generation, addr_generation) from the first 8 bytes read as one
    /// little- or big-endian word, as the target stores them.
    #[inline(always)]
    pub const fn split_generations(both: u64) -> (u32, u32) {
        let bytes = both.to_ne_bytes();
        (
            u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        )
    }
}

/// Endpoints (attached interfaces) per host; endpoint ids are 1..MAX_ENDPOINTS
/// (0 counts packets on interfaces the table does not know).
pub const MAX_ENDPOINTS: u32 = 4096;
/// Policies per host (ids 1..MAX_POLICIES).
pub const MAX_POLICIES: u32 = 4096;

/// Slots of `SG_CT_COUNT` per endpoint: [`CT_COUNT_KERNEL`] is added to by
/// the data path (atomically: +1 per new entry, −1 per entry its reclaim
/// deletes); [`CT_COUNT_USER`] counts entries user space deleted (written only
/// by user space, under its state lock). Entries in use = kernel − user.
pub const CT_COUNT_SLOTS: u32 = 2;
pub const CT_COUNT_KERNEL: u32 = 0;
pub const CT_COUNT_USER: u32 = 1;

/// Index of an endpoint's slot in `SG_CT_COUNT`.
#[inline(always)]
pub const fn ct_count_index(endpoint: u32, slot: u32) -> u32 {
    endpoint * CT_COUNT_SLOTS + slot
}

// Sizes are the sums of the fields: no implicit padding.
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 8 + 4 + 4);
const _: () = assert!(core::mem::size_of::<PolicyState>() == 4 + 4 + 8 + 8);
const _: () = assert!(core::mem::offset_of!(PolicyState, addr_generation) == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers without implicit padding (sizes
    // asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PolicyState {}
}
