//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (IHL honoured, options
//! skipped), IPv6 with a bounded walk of extension headers, then TCP, UDP,
//! ICMP, ICMPv6 or any other protocol. Every access is bounds-checked against
//! the end of the packet; anything short or inconsistent is `Malformed`.

use core::mem::size_of;

use sg_common::proto;

/// Parser outcome that is not a packet to judge.
#[derive(Clone, Copy)]
pub enum NotJudged {
    /// Non-IP frames (ARP, LLDP …) and IPv6 neighbour discovery as RFC 4861
    /// sends it (see [`parse`]): never filtered.
    Bypass,
    /// More VLAN tags than [`MAX_VLAN_TAGS`]: the payload is unknown.
    VlanDepth,
    /// TCP SYN together with FIN or RST: no stack opens a connection so.
    TcpFlags,
    /// Truncated or inconsistent headers.
    Malformed,
    /// More IPv6 extension headers than [`MAX_EXT_HEADERS`].
    ExtHeaderLimit,
}

/// IPv6 extension headers walked before the upper-layer header; a longer
/// chain is dropped and counted (`ext_header_limit`).
pub const MAX_EXT_HEADERS: usize = 5;
const MAX_VLAN_TAGS: usize = 2;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Fragment facts of an IP datagram.
#[derive(Clone, Copy, Default)]
pub struct Fragment {
    /// Part of a fragmented datagram (first or later).
    pub fragmented: bool,
    /// Offset 0 (the fragment that carries the L4 header).
    pub first: bool,
    pub id: u32,
}

impl Fragment {
    /// A datagram that is not fragmented (its first and only part). IPv6
    /// starts so; a Fragment extension header changes it.
    const WHOLE: Fragment = Fragment {
        fragmented: false,
        first: true,
        id: 0,
    };
}

/// The facts of one IP packet that policy and conntrack need.
#[derive(Clone, Copy)]
pub struct Packet {
    pub ipv6: bool,
    /// Source and destination; IPv4 uses the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// Source/destination port (network order) for TCP/UDP; for ICMP echo
    /// both hold the identifier; zero otherwise.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// The 16-bit policy "port": destination port, or ICMP `type << 8 | code`.
    pub policy_port: u16,
    pub icmp_type: u8,
    pub tcp_flags: u8,
    pub fragment: Fragment,
}

impl Packet {
    /// The network layer's facts; the upper layer's are filled in by
    /// [`parse_l4`].
    #[inline(always)]
    fn network(ipv6: bool, src: [u8; 16], dst: [u8; 16], proto: u8, fragment: Fragment) -> Packet {
        Packet {
            ipv6,
            src,
            dst,
            proto,
            sport: [0; 2],
            dport: [0; 2],
            policy_port: 0,
            icmp_type: 0,
            tcp_flags: 0,
            fragment,
        }
    }
}

/// ICMPv6 router solicitation … redirect (RFC 4861).
const ND_TYPES: core::ops::RangeInclusive<u8> = 133..=137;
/// The hop limit every neighbour discovery message carries.
const ND_HOP_LIMIT: u8 = 255;

#[inline(always)]
fn load<T: Copy>(start: usize, end: usize, offset: usize) -> Result<T, NotJudged> {
    if start + offset + size_of::<T>() > end {
        return Err(NotJudged::Malformed);
    }
    // SAFETY: the bytes [offset, offset + size) are inside the packet (checked
    // just above; the verifier checks it again). Unaligned read: headers are
    // not aligned in the frame.
    Ok(unsafe { ((start + offset) as *const T).read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses the frame between `start` and `end` (packet pointers), seen in
/// this direction: `outbound` when it leaves the protected machine.
///
/// IPv6 neighbour discovery is [`NotJudged::Bypass`] only as RFC 4861 sends
/// it — ICMPv6 133–137, code 0, hop limit 255 (so it cannot have crossed a
/// router), not fragmented — and, outbound, only to a destination on the
/// link (see [`on_link`]), so that it cannot carry data off the link.
/// Anything else shaped like it is judged by the rules.
#[inline(always)]
pub fn parse(start: usize, end: usize, outbound: bool) -> Result<Packet, NotJudged> {
    let mut ethertype = be16(load::<[u8; 2]>(start, end, 12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        ethertype = be16(load::<[u8; 2]>(start, end, offset + 2)?);
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(start, end, offset),
        ETH_P_IPV6 => parse_ipv6(start, end, offset, outbound),
        // A third tag could hide IP: never let it pass unjudged.
        t if is_vlan(t) => Err(NotJudged::VlanDepth),
        // ARP, LLDP, …: not IP.
        _ => Err(NotJudged::Bypass),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Fixed {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// An IPv4 address in a 16-byte address field (first 4 bytes, the rest
/// zero), built in registers: zeroing a byte array's tail compiles to a
/// `memset` call, one per address and packet.
#[inline(always)]
fn v4_field(addr: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_le_bytes(addr)).to_le_bytes()
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, offset: usize) -> Result<Packet, NotJudged> {
    let ip: Ipv4Fixed = load(start, end, offset)?;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < 20 {
        return Err(NotJudged::Malformed);
    }
    let frag = be16(ip.frag);
    let frag_offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let pkt = Packet::network(
        false,
        v4_field(ip.src),
        v4_field(ip.dst),
        ip.proto,
        Fragment {
            fragmented: more || frag_offset != 0,
            first: frag_offset == 0,
            id: be16(ip.id) as u32,
        },
    );
    // The options (IHL > 5) must be present in full.
    if start + offset + ihl > end {
        return Err(NotJudged::Malformed);
    }
    if frag_offset != 0 {
        return Ok(pkt);
    }
    parse_l4(start, end, offset + ihl, pkt)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Fixed {
    vtc_flow: [u8; 4],
    payload_len: [u8; 2],
    next: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[inline(always)]
fn parse_ipv6(
    start: usize,
    end: usize,
    offset: usize,
    outbound: bool,
) -> Result<Packet, NotJudged> {
    let ip: Ipv6Fixed = load(start, end, offset)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(NotJudged::Malformed);
    }
    let mut pkt = Packet::network(true, ip.src, ip.dst, ip.next, Fragment::WHOLE);
    let mut offset = offset + 40;
    let mut next = ip.next;
    // One iteration per extension header, plus one for the upper layer.
    for _ in 0..=MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr: [u8; 2] = load(start, end, offset)?;
                next = hdr[0];
                offset += (hdr[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let hdr: [u8; 2] = load(start, end, offset)?;
                next = hdr[0];
                offset += (hdr[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let hdr: [u8; 8] = load(start, end, offset)?;
                next = hdr[0];
                let off_flags = be16([hdr[2], hdr[3]]);
                let frag_offset = off_flags >> 3;
                pkt.fragment = Fragment {
                    fragmented: true,
                    first: frag_offset == 0,
                    id: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                };
                offset += 8;
                if frag_offset != 0 {
                    pkt.proto = next;
                    return Ok(pkt);
                }
            }
            _ => {
                pkt.proto = next;
                let pkt = parse_l4(start, end, offset, pkt)?;
                if pkt.proto == proto::ICMPV6
                    && ND_TYPES.contains(&pkt.icmp_type)
                    && pkt.policy_port & 0xff == 0
                    && ip.hop_limit == ND_HOP_LIMIT
                    && !pkt.fragment.fragmented
                    && (!outbound || on_link(&pkt.src, &pkt.dst))
                {
                    return Err(NotJudged::Bypass);
                }
                return Ok(pkt);
            }
        }
    }
    Err(NotJudged::ExtHeaderLimit)
}

/// A destination neighbour discovery may be sent to from `src`: link-local
/// unicast (`fe80::/10`), link-scope multicast (`ff02::/16`), or an address
/// in the source's /64 (a neighbour on the link: Linux answers a solicitation
/// from a global address, and probes a cached neighbour, at that address).
/// Never a destination off the link, so the bypass carries nothing away.
#[inline(always)]
fn on_link(src: &[u8; 16], dst: &[u8; 16]) -> bool {
    (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80)
        || (dst[0] == 0xff && dst[1] == 0x02)
        || src[..8] == dst[..8]
}

#[inline(always)]
fn parse_l4(start: usize, end: usize, offset: usize, mut pkt: Packet) -> Result<Packet, NotJudged> {
    match pkt.proto {
        proto::TCP => {
            // Ports (4 bytes), sequence and ack (8), offset, flags.
            let hdr: [u8; 14] = load(start, end, offset)?;
            pkt.sport = [hdr[0], hdr[1]];
            pkt.dport = [hdr[2], hdr[3]];
            pkt.tcp_flags = hdr[13];
            if pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                return Err(NotJudged::TcpFlags);
            }
            pkt.policy_port = be16(pkt.dport);
        }
        proto::UDP => {
            let hdr: [u8; 4] = load(start, end, offset)?;
            pkt.sport = [hdr[0], hdr[1]];
            pkt.dport = [hdr[2], hdr[3]];
            pkt.policy_port = be16(pkt.dport);
        }
        proto::ICMP | proto::ICMPV6 => {
            // Type, code, checksum, then identifier (meaningful for echo).
            let hdr: [u8; 6] = load(start, end, offset)?;
            pkt.icmp_type = hdr[0];
            pkt.policy_port = ((hdr[0] as u16) << 8) | hdr[1] as u16;
            pkt.sport = [hdr[4], hdr[5]];
            pkt.dport = [hdr[4], hdr[5]];
        }
        _ => {}
    }
    Ok(pkt)
}
