//! Names of programs, maps and globals in the eBPF object. User space looks
//! them up by these constants only; the kernel side declares statics with the
//! same identifiers (checked by `sg-user`'s object test).

/// XDP entry point for the ingress hook (physical NICs, or when forced).
pub const PROG_XDP_INGRESS: &str = "sg_xdp_ingress";
/// TC (tcx) entry point for the ingress hook (veth and other virtual devices).
pub const PROG_TC_INGRESS: &str = "sg_tc_ingress";
/// TC (tcx) entry point for the egress hook.
pub const PROG_TC_EGRESS: &str = "sg_tc_egress";

/// Per-CPU array of [`crate::Counter`], indexed by [`crate::counter_index`].
pub const MAP_COUNTERS: &str = "SG_COUNTERS";

/// Read-only global (set at load time): 1 when the interface is the host side
/// of a container's veth (`side: peer`), which swaps inbound and outbound.
pub const GLOBAL_SIDE_PEER: &str = "SG_SIDE_PEER";
