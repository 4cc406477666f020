//! Names of programs, maps and globals in the eBPF object. User space looks
//! them up by these constants only; the kernel side declares statics with the
//! same identifiers (checked by `sg-user`'s object test).

/// XDP entry point for the ingress hook (physical NICs, or when forced).
pub const PROG_XDP_INGRESS: &str = "sg_xdp_ingress";
/// XDP program that only counts (the benchmark's floor; never attached).
pub const PROG_XDP_FLOOR: &str = "sg_xdp_floor";
/// TC programs that only count, one per hook (the real-traffic floor of the
/// benchmark's program-cost table; never attached by sgctl).
pub const PROG_TC_FLOOR_INGRESS: &str = "sg_tc_floor_in";
pub const PROG_TC_FLOOR_EGRESS: &str = "sg_tc_floor_eg";
/// TC (tcx) entry point for the ingress hook (veth and other virtual devices).
pub const PROG_TC_INGRESS: &str = "sg_tc_ingress";
/// TC (tcx) entry point for the egress hook.
pub const PROG_TC_EGRESS: &str = "sg_tc_egress";

/// Per-CPU array of [`crate::Counter`], indexed by
/// [`crate::endpoint_counter_index`] (a row of slots per endpoint).
pub const MAP_COUNTERS: &str = "SG_COUNTERS";

/// Hash (`crate::endpoint::EndpointKey` → [`crate::IfaceConfig`]): the
/// interfaces the programs are attached to.
pub const MAP_ENDPOINTS: &str = "SG_ENDPOINTS";
/// Array of `crate::endpoint::PolicyState` by policy id: each policy's live generation.
pub const MAP_POLICIES: &str = "SG_POLICIES";
/// Array of u64: tracked connections per endpoint (see `crate::endpoint::CT_COUNT_SLOTS`).
pub const MAP_CT_COUNT: &str = "SG_CT_COUNT";
/// Array of idle timeouts (ns) by endpoint id, for the in-kernel reclaim walk.
pub const MAP_CT_TIMEOUTS: &str = "SG_CT_TIMEOUTS";
/// LPM tries: peer address → class (see [`crate::policy`]).
pub const MAP_ADDR_V4: &str = "SG_ADDR_V4";
pub const MAP_ADDR_V6: &str = "SG_ADDR_V6";
/// LPM trie: (class, protocol, port) → [`crate::policy::PolicyHit`].
pub const MAP_PORTS: &str = "SG_PORTS";
/// Per-CPU hash: `crate::policy::RuleHitKey` (policy id, rule hash) →
/// [`crate::Counter`] of packets that rule admitted.
pub const MAP_RULE_HITS: &str = "SG_RULE_HITS";
/// Connection tables (see [`crate::conntrack`]).
pub const MAP_CT_V4: &str = "SG_CT_V4";
pub const MAP_CT_V6: &str = "SG_CT_V6";
/// Array of [`crate::conntrack::CtReclaim`]: the kernel's own reclaim of
/// expired connection entries (slot 0 IPv4, slot 1 IPv6).
pub const MAP_CT_RECLAIM: &str = "SG_CT_RECLAIM";
/// Ring buffer of [`crate::events::FlowEvent`] for flow logs.
pub const MAP_EVENTS: &str = "SG_EVENTS";
/// Per-CPU token buckets of the event rate limit, by endpoint id.
pub const MAP_EVENTS_RATE: &str = "SG_EVENTS_RATE";
/// Per-CPU count of events not written (rate limit or full buffer), by endpoint id.
pub const MAP_EVENTS_LOST: &str = "SG_EVENTS_LOST";
/// First-fragment verdicts, LRU.
pub const MAP_FRAGS: &str = "SG_FRAGS";
