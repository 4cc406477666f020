//! Policy lookup for new flows: peer address → class (LPM), then (class,
//! protocol, port) → rule (LPM). Two lookups whose cost depends on key bits,
//! not on the number of rules; the layout is documented in
//! `sg_common::policy`.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use sg_common::{
    Direction,
    policy::{
        AddrKeyV4, AddrKeyV6, ClassId, GEN_DIR_BITS, HIT_UNTRACKED, PORT_KEY_EXACT_PORT, PolicyHit,
        PortKey, gen_dir,
    },
};

use crate::parse::Packet;

/// Sized for two generations of many policies at the AWS quota limits with
/// large prefix lists; LPM tries allocate per entry, so unused room is free.
const ADDR_ENTRIES: u32 = 1 << 18;
const PORT_ENTRIES: u32 = 1 << 18;

#[map]
static SG_ADDR_V4: LpmTrie<AddrKeyV4, ClassId> = LpmTrie::with_max_entries(ADDR_ENTRIES, 0);
#[map]
static SG_ADDR_V6: LpmTrie<AddrKeyV6, ClassId> = LpmTrie::with_max_entries(ADDR_ENTRIES, 0);
#[map]
static SG_PORTS: LpmTrie<PortKey, PolicyHit> = LpmTrie::with_max_entries(PORT_ENTRIES, 0);

/// Which policy and generation a packet is judged by.
#[derive(Clone, Copy)]
pub struct Live {
    pub policy: u32,
    /// Generation of the port entries (and of conntrack revalidation).
    pub generation: u32,
    /// Generation of the address entries.
    pub addr_generation: u32,
}

/// The rule that allows `pkt` in `direction` under `generation`, if any.
#[inline(always)]
pub fn lookup(pkt: &Packet, direction: Direction, live: Live) -> Option<PolicyHit> {
    let remote = match direction {
        Direction::Inbound => &pkt.src,
        Direction::Outbound => &pkt.dst,
    };
    lookup_at(pkt, remote, direction, live, pkt.policy_port)
}

/// Whether `pkt` is a response within an untracked flow: its reverse (the
/// peer sending to this packet's source port) is allowed untracked by the
/// opposite direction. Only asked for TCP non-SYN and UDP packets that a
/// tracked rule allows (see the reference evaluator).
#[inline(always)]
pub fn reverse_is_untracked(pkt: &Packet, direction: Direction, live: Live) -> bool {
    let (remote, opposite) = match direction {
        Direction::Inbound => (&pkt.src, Direction::Outbound),
        Direction::Outbound => (&pkt.dst, Direction::Inbound),
    };
    let port = u16::from_be_bytes(pkt.sport);
    lookup_at(pkt, remote, opposite, live, port).is_some_and(|hit| hit.flags & HIT_UNTRACKED != 0)
}

#[inline(always)]
fn lookup_at(
    pkt: &Packet,
    remote: &[u8; 16],
    direction: Direction,
    live: Live,
    port: u16,
) -> Option<PolicyHit> {
    let policy = live.policy.to_be_bytes();
    let addr_gd = gen_dir(live.addr_generation, direction as u32);
    let class = if pkt.ipv6 {
        let key = Key::new(
            GEN_DIR_BITS + 128,
            AddrKeyV6 {
                policy,
                gen_dir: addr_gd,
                addr: *remote,
            },
        );
        *SG_ADDR_V6.get(&key)?
    } else {
        let addr = [remote[0], remote[1], remote[2], remote[3]];
        let key = Key::new(
            GEN_DIR_BITS + 32,
            AddrKeyV4 {
                policy,
                gen_dir: addr_gd,
                addr,
            },
        );
        *SG_ADDR_V4.get(&key)?
    };
    let key = Key::new(
        PORT_KEY_EXACT_PORT,
        PortKey {
            policy,
            gen_dir: gen_dir(live.generation, direction as u32),
            class: class.to_be_bytes(),
            proto: pkt.proto,
            port: port.to_be_bytes(),
            _pad: 0,
        },
    );
    SG_PORTS.get(&key).copied()
}
