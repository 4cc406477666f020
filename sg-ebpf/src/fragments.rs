//! IP fragments (per endpoint): the first fragment (the one with the L4 header) is judged
//! normally and, when it passes, remembered by the datagram's reassembly key
//! (IPv4: src, dst, proto, id; IPv6: src, dst, id); later fragments follow
//! it. A later fragment with no remembered first fragment (lost, reordered,
//! denied, or crafted) is dropped as `fragment`. Only passes are remembered,
//! so a spoofed denied first fragment can neither overwrite a real verdict
//! nor flood real ones out of the table.

use aya_ebpf::{macros::map, maps::LruHashMap};
use sg_common::{
    Reason,
    conntrack::{FragKey, FragVerdict},
};

use crate::parse::Packet;

#[map]
static SG_FRAGS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn key(pkt: &Packet, endpoint: u32) -> FragKey {
    let mut key = FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.fragment.id,
        // IPv6 fragments of one datagram may name different next headers
        // (AH or destination options after the Fragment header).
        proto: if pkt.ipv6 { 0 } else { pkt.proto },
        _pad: [0; 3],
        endpoint,
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

/// Remembers that the first fragment of `pkt`'s datagram passed.
#[inline(always)]
pub fn remember(pkt: &Packet, endpoint: u32) {
    let verdict = FragVerdict {
        reason: Reason::PassFragment as u32,
        _pad: 0,
    };
    let _ = SG_FRAGS.insert(key(pkt, endpoint), verdict, 0);
}

/// A later fragment passes when its first fragment did; otherwise it drops.
#[inline(always)]
pub fn follow(pkt: &Packet, endpoint: u32) -> Reason {
    match SG_FRAGS.get_ptr(key(pkt, endpoint)) {
        Some(_) => Reason::PassFragment,
        None => Reason::DropFragment,
    }
}
