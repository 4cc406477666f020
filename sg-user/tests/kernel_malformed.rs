//! Malformed and unusual input through the real XDP program: every
//! truncation offset, bad IHL, IPv4 options, IPv6 extension chains, VLAN
//! tags, fragments in all orders. Each gets a defined verdict and exactly one
//! counted reason.

use sg_common::Reason;
use sg_user::{
    compile::Rule,
    harness::packet::{
        Ext, L4, TCP_SYN, arp_request, frame, ipv4_fragment, ipv4_with_options, ipv6_with_ext,
        with_hop_limit, with_vlan_tags,
    },
    harness::testrun::{Hook, Instance, XDP_DROP, XDP_PASS},
    require_root,
};

fn rule(id: &str, proto: u8, ports: (u16, u16), peer: &str) -> Rule {
    Rule::tracked_parsed(id, Some(proto), ports, &[peer])
}

fn instance() -> Instance {
    let inbound = [
        rule("https4", 6, (443, 443), "0.0.0.0/0"),
        rule("https6", 6, (443, 443), "::/0"),
        rule("dns", 17, (53, 53), "0.0.0.0/0"),
        rule("icmp", 1, (0, 0xffff), "0.0.0.0/0"),
        rule("ping6", 58, (128 << 8, (128 << 8) | 0xff), "::/0"),
    ];
    Instance::with_rules(&inbound, &[]).expect("load")
}

/// Runs one frame through XDP; returns the verdict and the single reason
/// whose counter moved.
fn judge(inst: &Instance, frame: &[u8]) -> (u32, Reason) {
    inst.judge(Hook::Xdp, frame)
}

fn v4(l4: L4) -> Vec<u8> {
    frame("198.18.0.9", "198.18.0.1", l4)
}

fn v6(l4: L4) -> Vec<u8> {
    frame("2001:db8::9", "2001:db8::1", l4)
}

/// A fresh flow's SYN to 443 (its own source port, so no conntrack hit).
fn syn443() -> L4 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(20000);
    L4::tcp(NEXT.fetch_add(1, Ordering::Relaxed), 443, TCP_SYN)
}

#[test]
fn every_truncation_offset_is_malformed_and_counted() {
    require_root!();
    let inst = instance();
    // (frame, bytes the parser needs: L4 offset + the L4 bytes it reads)
    let cases = [
        (v4(syn443()), 34 + 14),
        (v4(L4::Udp { src: 1, dst: 53 }), 34 + 4),
        (
            v4(L4::Icmp {
                kind: 8,
                code: 0,
                ident: 1,
            }),
            34 + 6,
        ),
        (v6(syn443()), 54 + 14),
        (
            v6(L4::Icmp {
                kind: 128,
                code: 0,
                ident: 1,
            }),
            54 + 6,
        ),
        (
            ipv6_with_ext(&v6(syn443()), &[Ext::HopByHop, Ext::DestOpts]),
            54 + 16 + 14,
        ),
        (ipv4_with_options(&v4(syn443()), 2), 42 + 14),
    ];
    for (frame, needed) in cases {
        let (verdict, reason) = judge(&inst, &frame);
        assert_eq!(
            (verdict, reason),
            (XDP_PASS, Reason::PassRule),
            "the whole frame is allowed"
        );
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (and no driver delivers one), so cuts start at 14 bytes.
        for len in 14..needed {
            let (verdict, reason) = judge(&inst, &frame[..len]);
            assert_eq!(
                (verdict, reason),
                (XDP_DROP, Reason::DropMalformed),
                "cut at {len} of {} bytes",
                frame.len()
            );
        }
    }
}

#[test]
fn bad_ihl_and_version_are_malformed_options_are_skipped() {
    require_root!();
    let inst = instance();
    for ihl in 0..5u8 {
        let mut f = v4(syn443());
        f[14] = 0x40 | ihl;
        assert_eq!(judge(&inst, &f).1, Reason::DropMalformed, "IHL {ihl}");
    }
    let mut f = v4(syn443());
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    assert_eq!(judge(&inst, &f).1, Reason::DropMalformed);
    // IHL beyond the frame.
    let mut f = v4(syn443());
    f[14] = 0x4f;
    f.truncate(14 + 40);
    assert_eq!(judge(&inst, &f).1, Reason::DropMalformed);
    // Options: the TCP header is found after them (443 allowed, 22 not).
    assert_eq!(
        judge(&inst, &ipv4_with_options(&v4(syn443()), 10)),
        (XDP_PASS, Reason::PassRule)
    );
    let ssh = L4::tcp(1, 22, TCP_SYN);
    assert_eq!(
        judge(&inst, &ipv4_with_options(&v4(ssh), 10)),
        (XDP_DROP, Reason::DropNoRule)
    );
}

#[test]
fn ipv6_extension_chains_are_walked_up_to_the_limit() {
    require_root!();
    let inst = instance();
    let chain = [Ext::HopByHop, Ext::Routing, Ext::Auth, Ext::DestOpts];
    assert_eq!(
        judge(&inst, &ipv6_with_ext(&v6(syn443()), &chain)),
        (XDP_PASS, Reason::PassRule)
    );
    let ssh = L4::tcp(1, 22, TCP_SYN);
    assert_eq!(
        judge(&inst, &ipv6_with_ext(&v6(ssh), &chain)),
        (XDP_DROP, Reason::DropNoRule)
    );
    let six = [
        Ext::HopByHop,
        Ext::DestOpts,
        Ext::Routing,
        Ext::DestOpts,
        Ext::Auth,
        Ext::DestOpts,
    ];
    assert_eq!(
        judge(&inst, &ipv6_with_ext(&v6(syn443()), &six[..5])).1,
        Reason::PassRule,
        "five headers"
    );
    assert_eq!(
        judge(&inst, &ipv6_with_ext(&v6(syn443()), &six)).1,
        Reason::DropExtHeaderLimit,
        "six headers"
    );
    // A chain that loops (every header says "hop-by-hop next") hits the limit.
    let mut looping = ipv6_with_ext(&v6(syn443()), &[Ext::HopByHop; 8]);
    looping[20] = 0;
    assert_eq!(judge(&inst, &looping).1, Reason::DropExtHeaderLimit);
}

#[test]
fn vlan_tags_are_parsed_and_non_ip_bypasses() {
    require_root!();
    let inst = instance();
    for tags in [&[0x8100u16][..], &[0x88a8, 0x8100]] {
        assert_eq!(
            judge(&inst, &with_vlan_tags(&v4(syn443()), tags)).1,
            Reason::PassRule,
            "{tags:x?}"
        );
        let ssh = L4::tcp(1, 22, TCP_SYN);
        assert_eq!(
            judge(&inst, &with_vlan_tags(&v6(ssh), tags)).1,
            Reason::DropNoRule,
            "{tags:x?}"
        );
    }
    // A third tag is beyond the parser: what it carries is unknown, so it
    // is dropped under its own reason (it used to pass as "bypass").
    let three = with_vlan_tags(&v4(syn443()), &[0x88a8, 0x8100, 0x8100]);
    assert_eq!(judge(&inst, &three), (XDP_DROP, Reason::DropVlanDepth));
    assert_eq!(judge(&inst, &arp_request()), (XDP_PASS, Reason::PassBypass));
    // Neighbour solicitation as RFC 4861 sends it (hop limit 255) bypasses;
    // an MLD report is judged (no rule).
    let ns = with_hop_limit(
        &v6(L4::Icmp {
            kind: 135,
            code: 0,
            ident: 0,
        }),
        255,
    );
    assert_eq!(judge(&inst, &ns).1, Reason::PassBypass);
    let mld = v6(L4::Icmp {
        kind: 143,
        code: 0,
        ident: 0,
    });
    assert_eq!(judge(&inst, &mld).1, Reason::DropNoRule);
}

#[test]
fn fragments_follow_their_first_fragment() {
    require_root!();
    let inst = instance();
    let frag4 =
        |src, dst, id, offset, more| ipv4_fragment(&v4(L4::Udp { src, dst }), id, offset, more);
    let frag6 =
        |offset, more, id| ipv6_with_ext(&v6(syn443()), &[Ext::Fragment { offset, more, id }]);
    // (what, frame, expected reason), in the order sent.
    let cases = [
        // Allowed datagram: first, then a later fragment, then the last.
        ("first", frag4(5000, 53, 7, 0, true), Reason::PassRule),
        ("later", frag4(5000, 53, 7, 185, true), Reason::PassFragment),
        ("last", frag4(5000, 53, 7, 370, false), Reason::PassFragment),
        // Denied datagram: its first fragment is not remembered, so later
        // fragments find nothing to follow.
        (
            "denied first",
            frag4(5001, 99, 8, 0, true),
            Reason::DropNoRule,
        ),
        (
            "denied later",
            frag4(5001, 99, 8, 185, false),
            Reason::DropFragment,
        ),
        // A later fragment arriving before its first: no verdict known.
        (
            "early later",
            frag4(5002, 53, 9, 185, false),
            Reason::DropFragment,
        ),
        ("late first", frag4(5002, 53, 9, 0, true), Reason::PassRule),
        // IPv6 fragment header.
        ("v6 first", frag6(0, true, 77), Reason::PassRule),
        ("v6 later", frag6(100, false, 77), Reason::PassFragment),
        ("v6 orphan", frag6(100, false, 78), Reason::DropFragment),
    ];
    for (what, frame, reason) in cases {
        let verdict = if reason.is_drop() { XDP_DROP } else { XDP_PASS };
        assert_eq!(judge(&inst, &frame), (verdict, reason), "{what}");
    }
}
