//! Crafted Ethernet frames for kernel tests (BPF_PROG_TEST_RUN) and
//! benchmarks: Ethernet → IPv4/IPv6 → TCP/UDP/ICMP/ICMPv6 or any protocol.
//! Checksums are not filled in: the programs under test never verify them.

use std::net::IpAddr;

use sg_common::proto;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// Layer-4 part of a crafted packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// ICMP or ICMPv6 (chosen by the address family), with echo identifier.
    Icmp {
        kind: u8,
        code: u8,
        ident: u16,
    },
    /// Any other protocol number, with a few payload bytes.
    Other {
        proto: u8,
    },
}

impl L4 {
    /// A TCP segment from port `src` to port `dst` with `flags`.
    pub fn tcp(src: u16, dst: u16, flags: u8) -> L4 {
        L4::Tcp { src, dst, flags }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A packet description that [`Frame::build`] turns into bytes.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// Bytes of payload after the L4 header.
    pub payload: usize,
}

/// The bytes of a frame from `src` to `dst` (addresses as text) with no
/// payload after the L4 header.
pub fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
    Frame::new(ip(src), ip(dst), l4).build()
}

impl Frame {
    /// A frame with no payload after the L4 header.
    pub fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, l4: L4) -> Frame {
        Frame {
            src: src.into(),
            dst: dst.into(),
            l4,
            payload: 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                out.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                out.extend_from_slice(&[0x45, 0]);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&[0, 1, 0x40, 0, 64, self.proto()]); // id 1, DF
                out.extend_from_slice(&[0, 0]); // checksum
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                out.extend_from_slice(&[self.proto(), 64]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            _ => panic!("source and destination must be the same address family"),
        }
        out.extend_from_slice(&l4);
        out
    }

    /// The IP protocol number of this frame.
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } if self.src.is_ipv6() => proto::ICMPV6,
            L4::Icmp { .. } => proto::ICMP,
            L4::Other { proto } => proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { src, dst, flags } => {
                l4.extend_from_slice(&src.to_be_bytes());
                l4.extend_from_slice(&dst.to_be_bytes());
                l4.extend_from_slice(&1u32.to_be_bytes()); // seq
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            L4::Udp { src, dst } => {
                l4.extend_from_slice(&src.to_be_bytes());
                l4.extend_from_slice(&dst.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            L4::Icmp { kind, code, ident } => {
                l4.extend_from_slice(&[kind, code, 0, 0]);
                l4.extend_from_slice(&ident.to_be_bytes());
                l4.extend_from_slice(&1u16.to_be_bytes()); // sequence
            }
            L4::Other { .. } => {}
        }
        l4.resize(l4.len() + self.payload, 0xab);
        l4
    }
}

/// An ARP request frame (who-has), for bypass tests.
pub fn arp_request() -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 198, 18, 0, 1]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 2]);
    out
}

/// Inserts 802.1Q/802.1ad tags (outermost first) after the MAC addresses.
pub fn with_vlan_tags(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Adds `words` 32-bit words of IPv4 options (NOPs) to an IPv4 frame,
/// fixing IHL and the total length.
pub fn ipv4_with_options(frame: &[u8], words: u8) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend(std::iter::repeat_n(1u8, words as usize * 4)); // NOP options
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x40 | (5 + words);
    let total = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out
}

/// Marks an IPv4 frame as a fragment: identification, offset (8-byte
/// units), more-fragments flag. A non-first fragment keeps its bytes but
/// they are payload, not an L4 header.
pub fn ipv4_fragment(frame: &[u8], id: u16, offset: u16, more: bool) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[18..20].copy_from_slice(&id.to_be_bytes());
    let flags = offset & 0x1fff | if more { 0x2000 } else { 0 };
    out[20..22].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Sets the IPv6 hop limit (or IPv4 TTL) of an untagged frame.
pub fn with_hop_limit(frame: &[u8], hop_limit: u8) -> Vec<u8> {
    with_ip_byte(frame, (7, 8), hop_limit)
}

/// Rewrites the protocol (IPv4) or next header (IPv6, no extension
/// headers) of an untagged frame, keeping its bytes: e.g. an ICMP-shaped
/// payload under protocol 58 in IPv4.
pub fn with_ip_proto(frame: &[u8], proto: u8) -> Vec<u8> {
    with_ip_byte(frame, (6, 9), proto)
}

/// Sets one byte of the IP header: at `offsets.0` for IPv6, `offsets.1`
/// for IPv4 (from the start of the IP header, after an untagged Ethernet one).
fn with_ip_byte(frame: &[u8], offsets: (usize, usize), value: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    let ipv6 = u16::from_be_bytes([out[12], out[13]]) == ETH_P_IPV6;
    out[14 + if ipv6 { offsets.0 } else { offsets.1 }] = value;
    out
}

/// An IPv6 extension header to insert with [`ipv6_with_ext`].
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header: offset (8-byte units), more flag, identification.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
    Auth,
}

/// Inserts extension headers (in order) between the IPv6 header and the
/// upper layer, fixing next-header fields and the payload length.
pub fn ipv6_with_ext(frame: &[u8], chain: &[Ext]) -> Vec<u8> {
    let upper = frame[20];
    let mut out = frame[..54].to_vec();
    let codes: Vec<u8> = chain
        .iter()
        .map(|e| match e {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth => 51,
        })
        .collect();
    if let Some(first) = codes.first() {
        out[20] = *first;
    }
    for (i, ext) in chain.iter().enumerate() {
        let next = codes.get(i + 1).copied().unwrap_or(upper);
        match *ext {
            // 8 bytes: next, length 0 (= 8 bytes), 6 bytes of padding/options.
            Ext::HopByHop | Ext::Routing | Ext::DestOpts => {
                out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0])
            }
            Ext::Fragment { offset, more, id } => {
                let off = (offset << 3) | u16::from(more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&off.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            // AH length counts 4-byte words minus 2: 1 → 12 bytes.
            Ext::Auth => out.extend_from_slice(&[next, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
        }
    }
    out.extend_from_slice(&frame[54..]);
    let payload = (out.len() - 54) as u16;
    out[18..20].copy_from_slice(&payload.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_tcp_layout() {
        let f = frame("198.18.0.1", "198.18.0.2", L4::tcp(40000, 443, TCP_SYN));
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &ETH_P_IP.to_be_bytes());
        assert_eq!(f[14 + 9], proto::TCP);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 443);
        assert_eq!(f[34 + 13], TCP_SYN);
    }

    #[test]
    fn ipv6_icmp_layout() {
        let icmp = L4::Icmp {
            kind: 128,
            code: 0,
            ident: 7,
        };
        let f = Frame {
            payload: 4,
            ..Frame::new(ip("2001:db8::1"), ip("2001:db8::2"), icmp)
        }
        .build();
        assert_eq!(f.len(), 14 + 40 + 8 + 4);
        assert_eq!(f[14 + 6], proto::ICMPV6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 12);
        assert_eq!(f[54], 128);
    }
}
