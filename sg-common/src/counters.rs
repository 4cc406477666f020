//! Packet counters by direction and reason.
//!
//! The kernel keeps one [`Counter`] per (direction, reason) slot in a per-CPU
//! array (`SG_COUNTERS`); user space sums the per-CPU values. Each reason
//! implies its verdict (`Reason::is_drop`), so "allowed" and "dropped" totals
//! are sums over reasons.

/// Direction of traffic relative to the protected machine.
///
/// On `side: host` attachments, the ingress hook sees inbound traffic; on
/// `side: peer` (the host end of a container's veth) it is the reverse.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a packet got its verdict. Append-only: codes are stored in pinned maps
/// and printed by `sgctl`; a retired code keeps its number and is never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Passed without a policy decision: the interface is attached in
    /// observe-only mode (no policy compiled for it).
    PassUnfiltered = 0,
    /// Infrastructure traffic that security groups never filter (ARP and other
    /// non-IP frames, IPv6 neighbour discovery).
    PassBypass = 1,
    /// Part of a tracked connection (a reply, or a later packet of an allowed flow).
    PassConntrack = 2,
    /// Allowed by a rule.
    PassRule = 3,
    /// A later fragment of a datagram whose first fragment was allowed.
    PassFragment = 4,
    /// No rule of the attached groups allows it.
    DropNoRule = 5,
    /// A new tracked flow while the connection table is full.
    DropConntrackFull = 6,
    /// Truncated or inconsistent headers.
    DropMalformed = 7,
    /// A non-first fragment with no known first fragment.
    DropFragment = 8,
    /// More IPv6 extension headers than the parser walks.
    DropExtHeaderLimit = 9,
    /// The interface's policy generation is missing (never opened by accident).
    DropNoPolicy = 10,
    /// More VLAN tags than the parser reads (two): what they carry is unknown,
    /// so it is dropped rather than passed unjudged.
    DropVlanDepth = 11,
    /// TCP flags no real stack opens with (SYN together with FIN or RST):
    /// scanners and firewall-evasion probes, never legitimate traffic.
    DropTcpFlags = 12,
}

/// Slots reserved per direction; reasons stay below this bound forever.
pub const REASON_SLOTS: u32 = 16;
/// Entries of the `SG_COUNTERS` per-CPU array.
pub const COUNTER_SLOTS: u32 = REASON_SLOTS * 2;

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::PassUnfiltered,
        Reason::PassBypass,
        Reason::PassConntrack,
        Reason::PassRule,
        Reason::PassFragment,
        Reason::DropNoRule,
        Reason::DropConntrackFull,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropExtHeaderLimit,
        Reason::DropNoPolicy,
        Reason::DropVlanDepth,
        Reason::DropTcpFlags,
    ];

    pub const fn is_drop(self) -> bool {
        (self as u32) >= (Reason::DropNoRule as u32)
    }

    /// Stable snake_case name, used in `sgctl status` and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassUnfiltered => "unfiltered",
            Reason::PassBypass => "bypass",
            Reason::PassConntrack => "conntrack",
            Reason::PassRule => "rule",
            Reason::PassFragment => "fragment_follow",
            Reason::DropNoRule => "no_rule",
            Reason::DropConntrackFull => "conntrack_full",
            Reason::DropMalformed => "malformed",
            Reason::DropFragment => "fragment",
            Reason::DropExtHeaderLimit => "ext_header_limit",
            Reason::DropNoPolicy => "no_policy",
            Reason::DropVlanDepth => "vlan_depth",
            Reason::DropTcpFlags => "tcp_flags",
        }
    }

    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| *r as u32 == code)
    }
}

/// Index of the (direction, reason) slot in `SG_COUNTERS`.
#[inline(always)]
pub const fn counter_index(direction: Direction, reason: Reason) -> u32 {
    direction as u32 * REASON_SLOTS + reason as u32
}

/// Index of the (direction, reason) slot of `endpoint` in the host-wide
/// `SG_COUNTERS` (a row of [`COUNTER_SLOTS`] per endpoint id; row 0 counts
/// packets on interfaces the endpoint table does not know).
#[inline(always)]
pub const fn endpoint_counter_index(endpoint: u32, direction: Direction, reason: Reason) -> u32 {
    endpoint * COUNTER_SLOTS + counter_index(direction, reason)
}

/// Packets and bytes (bytes = frame length as the hook sees it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Adds per-CPU slots up (user space reads one value per CPU).
impl<'a> core::iter::Sum<&'a Counter> for Counter {
    fn sum<I: Iterator<Item = &'a Counter>>(iter: I) -> Counter {
        iter.fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        })
    }
}

const _: () = assert!(core::mem::size_of::<Counter>() == 8 + 8);
const _: () = assert!(core::mem::align_of::<Counter>() == 8);

// SAFETY: repr(C), two u64 (size asserted above): every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_counters_sum() {
        let slots = [
            Counter {
                packets: 1,
                bytes: 10,
            },
            Counter {
                packets: 2,
                bytes: 5,
            },
        ];
        assert_eq!(
            slots.iter().sum::<Counter>(),
            Counter {
                packets: 3,
                bytes: 15
            }
        );
    }

    #[test]
    fn reasons_fit_their_slots_and_round_trip() {
        for r in Reason::ALL {
            assert!((r as u32) < REASON_SLOTS, "{r:?} outside REASON_SLOTS");
            assert_eq!(Reason::from_code(r as u32), Some(r));
        }
        assert_eq!(Reason::from_code(REASON_SLOTS), None);
        assert!(!Reason::PassFragment.is_drop());
        assert!(Reason::DropNoRule.is_drop());
        assert_eq!(
            counter_index(Direction::Outbound, Reason::DropNoPolicy),
            REASON_SLOTS + 10
        );
        assert!(counter_index(Direction::Outbound, Reason::DropNoPolicy) < COUNTER_SLOTS);
    }
}
