//! IP fragments: the first fragment (the one with the L4 header) is judged
//! normally and its verdict remembered by (src, dst, proto, id); later
//! fragments follow it. A later fragment with no remembered first fragment
//! (lost, reordered, or crafted) is dropped as `fragment`.

use aya_ebpf::{macros::map, maps::LruHashMap};
use sg_common::{
    Reason,
    conntrack::{FragKey, FragVerdict},
};

use crate::parse::Packet;

#[map]
static SG_FRAGS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    let mut key = FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.fragment.id,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    if !pkt.ipv6 {
        // IPv4-mapped, so both families share one table.
        key.src = mapped([pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]]);
        key.dst = mapped([pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]]);
    }
    key
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Remembers the verdict of a first fragment.
#[inline(always)]
pub fn remember(pkt: &Packet, reason: Reason) {
    let verdict = FragVerdict {
        reason: reason as u32,
        _pad: 0,
    };
    let _ = SG_FRAGS.insert(key(pkt), verdict, 0);
}

/// The reason for a later fragment: its first fragment's, or `DropFragment`.
#[inline(always)]
pub fn follow(pkt: &Packet) -> Reason {
    // SAFETY: the value is copied out at once; a concurrent update at worst
    // gives the other fragment verdict of the same datagram.
    match unsafe { SG_FRAGS.get(key(pkt)) } {
        Some(v) if v.reason < Reason::DropNoRule as u32 => Reason::PassFragment,
        Some(_) => Reason::DropNoRule,
        None => Reason::DropFragment,
    }
}
