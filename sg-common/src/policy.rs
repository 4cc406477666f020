//! Policy maps: two longest-prefix-match lookups per new flow, each O(key
//! bits) whatever the number of rules.
//!
//! 1. **Who** (`SG_ADDR_V4` / `SG_ADDR_V6`): (policy, generation, direction, peer
//!    address) → [`ClassId`]. The compiler pushes every rule of a shorter
//!    (covering) prefix down into each longer prefix inside it, so the longest
//!    match alone carries the complete union of rules for that address.
//! 2. **What** (`SG_PORTS`): (policy, generation, direction, class, protocol,
//!    port) → [`PolicyHit`]. A rule for all protocols is a /96 key (policy,
//!    generation, direction and class only); a protocol without ports is /104;
//!    a port range becomes ≤ 30 prefix blocks of /105–/120. ICMP/ICMPv6 use
//!    `type << 8 | code` as the 16-bit port, so a type-only rule is one /112 block.
//!
//! The structs below are the key *data*; the LPM key is (prefix length, data)
//! and the prefix length counts data bits. All data is in network byte order
//! so prefix bits are the leading bits.
//! Every key starts with the policy id (policies are shared by the
//! interfaces with the same rules, see `crate::endpoint`) and the generation:
//! a new policy is written beside the old one and becomes live with a single
//! update of the policy's `crate::endpoint::PolicyState`.

/// Bits of (policy id, generation, direction) at the start of every policy key.
pub const GEN_DIR_BITS: u32 = 64;

/// Packs the generation (31 bits) and the direction (1 bit) into the leading
/// key word, in network byte order.
#[inline(always)]
pub const fn gen_dir(generation: u32, direction: u32) -> [u8; 4] {
    ((generation << 1) | (direction & 1)).to_be_bytes()
}

/// Key data of `SG_ADDR_V4` (wrapped in the LPM key, whose prefix length is
/// 64 + the CIDR's prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKeyV4 {
    /// Policy id, network byte order.
    pub policy: [u8; 4],
    pub gen_dir: [u8; 4],
    pub addr: [u8; 4],
}

/// Key data of `SG_ADDR_V6` (LPM prefix length = 64 + the CIDR's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKeyV6 {
    pub policy: [u8; 4],
    pub gen_dir: [u8; 4],
    pub addr: [u8; 16],
}

/// A set of rules (hash-consed: equal sets share one id), value of the
/// address tries. Unique within a (generation, direction). The compiler
/// numbers classes from 1 ("local" ids, below `1 << CLASS_BITS`); the
/// installer adds [`class_base`] of the address generation.
pub type ClassId = u32;

/// Bits of a local class id: more classes than address entries cannot exist
/// (the address tries hold 2^18 entries).
pub const CLASS_BITS: u32 = 18;

/// What the installer adds to every local class id written under address
/// generation `addr_generation`. Port entries name classes of one address
/// generation, so even a torn read of the two generations (ports of one
/// version, addresses of another) finds no port entry: it fails closed.
#[inline(always)]
pub const fn class_base(addr_generation: u32) -> ClassId {
    (addr_generation & ((1 << (32 - CLASS_BITS)) - 1)) << CLASS_BITS
}

/// Key data of `SG_PORTS` (prefix lengths below).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub policy: [u8; 4],
    pub gen_dir: [u8; 4],
    /// [`ClassId`] in network byte order.
    pub class: [u8; 4],
    pub proto: u8,
    /// Destination port, or `type << 8 | code` for ICMP, network byte order.
    pub port: [u8; 2],
    /// Always zero (never covered by a prefix).
    pub _pad: u8,
}

/// Prefix length of a [`PortKey`] matching every protocol of a class.
pub const PORT_KEY_ALL_PROTOCOLS: u32 = 96;
/// Prefix length of a [`PortKey`] matching one protocol, any port.
pub const PORT_KEY_PROTOCOL: u32 = 104;
/// Prefix length of a [`PortKey`] matching one exact port.
pub const PORT_KEY_EXACT_PORT: u32 = 120;

/// Value of `SG_PORTS`: which rule allowed the packet and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyHit {
    /// Stable hash of the rule id; key of `SG_RULE_HITS`.
    pub rule: u32,
    /// `HIT_*` flags.
    pub flags: u32,
}

/// Key of `SG_RULE_HITS`: hit counters are kept per (policy, rule), shared
/// by the interfaces that share the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RuleHitKey {
    pub policy: u32,
    /// Stable hash of the rule id.
    pub rule: u32,
}

/// The flow is untracked (AWS: peer 0.0.0.0/0 or ::/0 and the other direction
/// open to everything of that protocol): pass without a conntrack entry.
pub const HIT_UNTRACKED: u32 = 1;

/// Per-interface settings: the value of `SG_ENDPOINTS` (see
/// `crate::endpoint`). The data path reads the first fields; the identity at
/// the end is for user space (which interface this is, when it is gone).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceConfig {
    /// Endpoint id (1..`MAX_ENDPOINTS`): first word of its connection and
    /// fragment keys, row of its counters.
    pub endpoint: u32,
    /// Policy id (index of `SG_POLICIES`); 0: none.
    pub policy: u32,
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// Flow-log events allowed per second per CPU (0: no events).
    pub events_per_sec: u32,
    /// Idle timeouts in nanoseconds, indexed by `conntrack::Timeout`.
    pub timeouts_ns: [u64; crate::conntrack::TIMEOUT_SLOTS],
    /// The shortest of `timeouts_ns`, in whole seconds (rounded down): no
    /// connection entry can expire sooner than this after it was last
    /// touched, which lets the in-kernel reclaim skip pointless walks. 0
    /// means unknown: never skip.
    pub shortest_timeout_s: u32,
    /// Tracked connections this interface may hold (AWS's per-interface
    /// limit); its new tracked flows beyond it are refused as
    /// `conntrack_full`, other interfaces are unaffected. 0: no limit.
    pub ct_limit: u32,
    /// The ring buffer its flow-log events go to (`crate::events::EVENT_RINGS`).
    pub event_ring: u32,
    pub _pad: u32,
    /// The namespace's device and inode numbers (`stat` of its nsfs file).
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// Interface name, NUL-padded.
    pub ifname: [u8; 16],
    /// The namespace's name under `/run/netns` when attached, NUL-padded
    /// (empty: unnamed, or longer than 31 bytes).
    pub netns_name: [u8; 32],
}

impl IfaceConfig {
    /// Settings with `shortest_timeout_s` derived from the timeouts (the
    /// endpoint, policy, limit and identity fields zero).
    pub const fn new(
        flags: u32,
        timeouts_ns: [u64; crate::conntrack::TIMEOUT_SLOTS],
        events_per_sec: u32,
    ) -> Self {
        let mut shortest = u64::MAX;
        let mut i = 0;
        while i < timeouts_ns.len() {
            if timeouts_ns[i] < shortest {
                shortest = timeouts_ns[i];
            }
            i += 1;
        }
        let secs = shortest / 1_000_000_000;
        IfaceConfig {
            endpoint: 0,
            policy: 0,
            flags,
            events_per_sec,
            timeouts_ns,
            shortest_timeout_s: if secs > u32::MAX as u64 {
                u32::MAX
            } else {
                secs as u32
            },
            ct_limit: 0,
            event_ring: 0,
            _pad: 0,
            netns_dev: 0,
            netns_ino: 0,
            ifname: [0; 16],
            netns_name: [0; 32],
        }
    }
}

/// Rules are enforced. Without it the programs only count (observe mode).
pub const CONFIG_ENFORCE: u32 = 1;
/// The interface is the host side of a container's veth (`side: peer`):
/// packets entering it leave the protected workload (directions swapped).
pub const CONFIG_SIDE_PEER: u32 = 2;

// Sizes are the sums of the fields: no implicit padding (the kernel compares
// and hashes keys bytewise; padding bytes would be uninitialised).
const _: () = assert!(core::mem::size_of::<AddrKeyV4>() == 4 + 4 + 4);
const _: () = assert!(core::mem::size_of::<AddrKeyV6>() == 4 + 4 + 16);
const _: () = assert!(core::mem::size_of::<PortKey>() == 4 + 4 + 4 + 1 + 2 + 1);
const _: () = assert!(core::mem::size_of::<PolicyHit>() == 4 + 4);
const _: () = assert!(
    core::mem::size_of::<IfaceConfig>()
        == 16 + 8 * crate::conntrack::TIMEOUT_SLOTS + 8 + 8 + 16 + 16 + 32
);
const _: () = assert!(core::mem::size_of::<RuleHitKey>() == 4 + 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers and byte arrays without implicit
    // padding (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AddrKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PolicyHit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleHitKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_dir_is_big_endian_with_direction_last() {
        assert_eq!(gen_dir(1, 0), [0, 0, 0, 2]);
        assert_eq!(gen_dir(1, 1), [0, 0, 0, 3]);
        assert_eq!(gen_dir(0x4000_0000, 1), [0x80, 0, 0, 1]);
    }
}
