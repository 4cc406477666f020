//! The data-path holes a review found, each through the real programs
//! (BPF_PROG_TEST_RUN) and, where the reference evaluator has an answer,
//! against it: neighbour-discovery bypass, SYN with FIN/RST, fragment
//! chains and fragment-table poisoning, mid-stream pickup timeouts, in-kernel
//! reclaim of expired connections, installs that stop part-way, and rule-hit
//! counters of rules that are gone. Each test failed before its fix.

use std::{net::IpAddr, thread::sleep, time::Duration};

use sg_common::{
    Reason,
    conntrack::{CtState, DEFAULT_TIMEOUTS_S, TIMEOUT_SLOTS},
    names,
};
use sg_user::{
    compile::{Rule, compile_iface, rule_hash},
    harness::packet::{
        Ext, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, frame, ipv4_fragment, ipv6_with_ext,
        with_hop_limit, with_ip_proto,
    },
    harness::testrun::{Hook, Instance},
    model::{
        self, Direction,
        eval::{self, Conntrack, Fragment, Packet, tcp_flags},
    },
    require_root,
};

const LOCAL4: &str = "198.18.0.1";
const REMOTE4: &str = "198.18.0.9";
const LOCAL6: &str = "2001:db8::1";
const REMOTE6: &str = "2001:db8::9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn icmp(kind: u8, code: u8) -> L4 {
    L4::Icmp {
        kind,
        code,
        ident: 0,
    }
}

/// Inbound: https (v4, v6) and dns (v4); nothing outbound.
fn instance_with(timeouts_s: [u64; TIMEOUT_SLOTS], conntrack_entries: u32) -> Instance {
    let inbound = [
        Rule::tracked_parsed("https4", Some(6), (443, 443), &["0.0.0.0/0"]),
        Rule::tracked_parsed("https6", Some(6), (443, 443), &["::/0"]),
        Rule::tracked_parsed("dns", Some(17), (53, 53), &["0.0.0.0/0"]),
    ];
    let mut inst = Instance::load_with(false, conntrack_entries).expect("load");
    inst.install_rules(&inbound, &[], timeouts_s).unwrap();
    inst
}

fn instance() -> Instance {
    instance_with(DEFAULT_TIMEOUTS_S, 1024)
}

/// An evaluator packet for `bypasses()`, with the fields ND cares about.
fn eval_icmp(direction: Direction, src: &str, dst: &str, t: u8, code: u8, hop: u8) -> Packet {
    Packet {
        hop_limit: hop,
        ..Packet::icmp(0, direction, ip(src), ip(dst), t, code, 0)
    }
}

#[test]
fn neighbour_discovery_bypasses_only_as_rfc_4861_sends_it() {
    require_root!();
    let inst = instance();
    let nd = |src, dst, t, code, hop| with_hop_limit(&frame(src, dst, icmp(t, code)), hop);
    // The same ICMPv6 message as a frame and as an evaluator packet.
    let nd_case = |hook, src, dst, t, code, hop, bypass| {
        let direction = if hook == Hook::Xdp {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let reference = eval_icmp(direction, src, dst, t, code, hop);
        (hook, nd(src, dst, t, code, hop), Some(reference), bypass)
    };
    // (hook, frame, evaluator packet, bypasses?)
    let cases: Vec<(Hook, Vec<u8>, Option<Packet>, bool)> = vec![
        // Inbound, well formed: solicitation to a global address, router
        // advertisement to all-nodes.
        nd_case(Hook::Xdp, "fe80::9", LOCAL6, 135, 0, 255, true),
        nd_case(Hook::Xdp, "fe80::9", "ff02::1", 134, 0, 255, true),
        // A router advertisement that crossed a router (hop limit 64).
        nd_case(Hook::Xdp, REMOTE6, LOCAL6, 134, 0, 64, false),
        // Code other than 0.
        nd_case(Hook::Xdp, "fe80::9", LOCAL6, 135, 1, 255, false),
        // IPv4 with protocol 58 and an ND-shaped first byte.
        (
            Hook::Xdp,
            with_ip_proto(&nd(REMOTE4, LOCAL4, 135, 0, 255), 58),
            Some(Packet {
                proto: 58,
                hop_limit: 255,
                ..Packet::icmp(0, Direction::Ingress, ip(REMOTE4), ip(LOCAL4), 135, 0, 0)
            }),
            false,
        ),
        // A fragmented solicitation (RFC 6980 forbids it).
        (
            Hook::Xdp,
            ipv6_with_ext(
                &nd("fe80::9", LOCAL6, 135, 0, 255),
                &[Ext::Fragment {
                    offset: 0,
                    more: true,
                    id: 5,
                }],
            ),
            Some(Packet {
                fragment: Some(Fragment { id: 5, first: true }),
                ..eval_icmp(Direction::Ingress, "fe80::9", LOCAL6, 135, 0, 255)
            }),
            false,
        ),
        // Outbound: only to link-local, link-scope multicast or the same /64.
        nd_case(Hook::TcEgress, LOCAL6, "fe80::9", 136, 0, 255, true),
        nd_case(Hook::TcEgress, LOCAL6, "ff02::1:ff00:9", 135, 0, 255, true),
        // A neighbour in the same /64 (Linux answers a solicitation from a
        // global address there, and probes cached neighbours there).
        nd_case(Hook::TcEgress, LOCAL6, REMOTE6, 136, 0, 255, true),
        // Off the link: judged.
        nd_case(Hook::TcEgress, LOCAL6, "2001:db8:1::9", 136, 0, 255, false),
        nd_case(Hook::TcEgress, LOCAL6, "ff05::1", 133, 0, 255, false),
    ];
    for (i, (hook, bytes, reference, bypass)) in cases.into_iter().enumerate() {
        let (_, reason) = inst.judge(hook, &bytes);
        let expected = if bypass {
            Reason::PassBypass
        } else {
            Reason::DropNoRule
        };
        assert_eq!(reason, expected, "case {i} ({hook:?})");
        if let Some(p) = reference {
            assert_eq!(p.bypasses(), bypass, "evaluator, case {i}: {p:?}");
        }
    }
}

#[test]
fn syn_with_fin_or_rst_is_dropped_and_opens_nothing() {
    require_root!();
    let inst = instance();
    for flags in [
        TCP_SYN | TCP_FIN,
        TCP_SYN | TCP_RST,
        TCP_SYN | TCP_FIN | TCP_ACK,
    ] {
        let f = frame(REMOTE4, LOCAL4, L4::tcp(4000, 443, flags));
        assert_eq!(
            inst.judge(Hook::Xdp, &f).1,
            Reason::DropTcpFlags,
            "{flags:#x}"
        );
        // No state: the server's answer is judged by the (empty) outbound rules.
        let answer = frame(LOCAL4, REMOTE4, L4::tcp(443, 4000, TCP_SYN | TCP_ACK));
        assert_eq!(inst.judge(Hook::TcEgress, &answer).1, Reason::DropNoRule);
        let p = Packet::tcp(
            0,
            Direction::Ingress,
            ip(REMOTE4),
            4000,
            ip(LOCAL4),
            443,
            flags,
        );
        assert!(p.invalid_tcp_flags(), "evaluator agrees on {flags:#x}");
    }
    let ok = frame(REMOTE4, LOCAL4, L4::tcp(4000, 443, TCP_SYN));
    assert_eq!(inst.judge(Hook::Xdp, &ok).1, Reason::PassRule);
}

#[test]
fn ipv6_later_fragments_follow_through_ah_and_destination_options() {
    require_root!();
    let inst = instance();
    let chains: [&[Ext]; 3] = [&[Ext::DestOpts], &[Ext::Auth], &[Ext::DestOpts, Ext::Auth]];
    for (i, chain) in chains.iter().enumerate() {
        let id = 900 + i as u32;
        let with = |offset, more| {
            let mut exts = vec![Ext::Fragment { offset, more, id }];
            exts.extend_from_slice(chain);
            ipv6_with_ext(
                &frame(REMOTE6, LOCAL6, L4::tcp(5000 + i as u16, 443, TCP_SYN)),
                &exts,
            )
        };
        assert_eq!(inst.judge(Hook::Xdp, &with(0, true)).1, Reason::PassRule);
        assert_eq!(
            inst.judge(Hook::Xdp, &with(100, false)).1,
            Reason::PassFragment,
            "later fragment after {chain:?}"
        );
    }
}

#[test]
fn fragment_verdicts_cannot_be_poisoned_or_flooded_out() {
    require_root!();
    let inst = instance();
    let udp_from = |sport, dport| {
        frame(
            REMOTE4,
            LOCAL4,
            L4::Udp {
                src: sport,
                dst: dport,
            },
        )
    };
    let udp = |dport| udp_from(5000, dport);
    assert_eq!(
        inst.judge(Hook::Xdp, &ipv4_fragment(&udp(53), 40, 0, true))
            .1,
        Reason::PassRule
    );
    // A spoofed first fragment of the same datagram, to a denied port.
    assert_eq!(
        inst.judge(Hook::Xdp, &ipv4_fragment(&udp(99), 40, 0, true))
            .1,
        Reason::DropNoRule
    );
    assert_eq!(
        inst.judge(Hook::Xdp, &ipv4_fragment(&udp(53), 40, 185, false))
            .1,
        Reason::PassFragment,
        "the real datagram still follows its first fragment"
    );
    // More denied first fragments than the table holds do not evict it.
    assert_eq!(
        inst.judge(Hook::Xdp, &ipv4_fragment(&udp_from(5001, 53), 41, 0, true))
            .1,
        Reason::PassRule
    );
    for id in 0..9000u16 {
        let (code, _) = inst
            .xdp(&ipv4_fragment(&udp(99), 1000 + id, 0, true), 1)
            .unwrap();
        assert_eq!(code, sg_user::harness::testrun::XDP_DROP);
    }
    assert_eq!(
        inst.judge(
            Hook::Xdp,
            &ipv4_fragment(&udp_from(5001, 53), 41, 185, false)
        )
        .1,
        Reason::PassFragment
    );
    // And a denied datagram's later fragments find nothing to follow.
    assert_eq!(
        inst.judge(Hook::Xdp, &ipv4_fragment(&udp(99), 42, 185, false))
            .1,
        Reason::DropFragment
    );
}

#[test]
fn unanswered_mid_stream_pickup_idles_out_like_a_syn() {
    require_root!();
    // Handshake timeout 1 s; established stays at its default (days).
    let mut timeouts = DEFAULT_TIMEOUTS_S;
    timeouts[CtState::TcpSynSent as usize] = 1;
    let inst = instance_with(timeouts, 1024);
    let pickup = |sport| frame(REMOTE4, LOCAL4, L4::tcp(sport, 443, TCP_ACK));
    let answer = |dport| frame(LOCAL4, REMOTE4, L4::tcp(443, dport, TCP_ACK));
    assert_eq!(inst.judge(Hook::Xdp, &pickup(1111)).1, Reason::PassRule);
    assert_eq!(inst.judge(Hook::Xdp, &pickup(2222)).1, Reason::PassRule);
    assert_eq!(
        inst.judge(Hook::TcEgress, &answer(2222)).1,
        Reason::PassConntrack
    );
    sleep(Duration::from_millis(1600));
    assert_eq!(
        inst.judge(Hook::TcEgress, &answer(1111)).1,
        Reason::DropNoRule,
        "never answered: gone after the handshake timeout"
    );
    assert_eq!(
        inst.judge(Hook::TcEgress, &answer(2222)).1,
        Reason::PassConntrack,
        "answered: established timeout"
    );
    // The evaluator, with its fixed 120 s handshake timeout.
    let m = one_group_with(
        "      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }\n",
        "    egress: []\n",
    );
    let iface = m.interface("e0").unwrap();
    let mut ct = Conntrack::for_interface(iface);
    let (l, r) = (ip(LOCAL4), ip(REMOTE4));
    let ack = tcp_flags::ACK;
    for (t, dir, src, sp, dst, dp, allowed) in [
        (0, Direction::Ingress, r, 1111, l, 443, true),
        (0, Direction::Ingress, r, 2222, l, 443, true),
        (0, Direction::Egress, l, 443, r, 2222, true),
        (121_000, Direction::Egress, l, 443, r, 1111, false),
        (121_000, Direction::Egress, l, 443, r, 2222, true),
    ] {
        let step = ct.step(&m, iface, &Packet::tcp(t, dir, src, sp, dst, dp, ack));
        assert_eq!(step.outcome.allowed(), allowed, "evaluator at {t} ms");
    }
}

#[test]
fn expired_entries_are_reclaimed_in_the_kernel_when_the_table_is_full() {
    require_root!();
    // A 16-entry table and a 1 s UDP timeout; no user space runs meanwhile.
    let mut timeouts = DEFAULT_TIMEOUTS_S;
    timeouts[CtState::Udp as usize] = 1;
    let inst = instance_with(timeouts, 16);
    let udp = |sport| {
        frame(
            REMOTE4,
            LOCAL4,
            L4::Udp {
                src: sport,
                dst: 53,
            },
        )
    };
    let reply = |dport| {
        frame(
            LOCAL4,
            REMOTE4,
            L4::Udp {
                src: 53,
                dst: dport,
            },
        )
    };
    for port in 3000..3016 {
        assert_eq!(inst.judge(Hook::Xdp, &udp(port)).1, Reason::PassRule);
    }
    assert_eq!(
        inst.judge(Hook::Xdp, &udp(3016)).1,
        Reason::DropConntrackFull,
        "16 live flows: full"
    );
    let walked = inst.reclaim_state(false);
    assert_eq!((walked.runs, walked.reclaimed), (1, 0), "{walked:?}");
    sleep(Duration::from_millis(1600));
    for port in 4000..4008 {
        assert_eq!(
            inst.judge(Hook::Xdp, &udp(port)).1,
            Reason::PassRule,
            "expired entries make room without a sweeper"
        );
    }
    let walked = inst.reclaim_state(false);
    assert_eq!((walked.runs, walked.reclaimed), (2, 16), "{walked:?}");
    // Live entries are never evicted: fill up, then one more is refused
    // and every live flow still gets its replies.
    for port in 4008..4016 {
        assert_eq!(inst.judge(Hook::Xdp, &udp(port)).1, Reason::PassRule);
    }
    assert_eq!(
        inst.judge(Hook::Xdp, &udp(4016)).1,
        Reason::DropConntrackFull
    );
    for port in 4000..4016 {
        assert_eq!(
            inst.judge(Hook::TcEgress, &reply(port)).1,
            Reason::PassConntrack,
            "reply to {port}"
        );
    }
    // The evaluator frees expired entries the same way.
    let m = one_group_with(
        "      - { protocol: udp, ports: 53, cidr: 0.0.0.0/0 }\n",
        "    egress: []\n",
    );
    let iface = m.interface("e0").unwrap();
    let mut ct = Conntrack::for_interface(iface).with_capacity(16);
    let p = |t, sport| Packet::udp(t, Direction::Ingress, ip(REMOTE4), sport, ip(LOCAL4), 53);
    for port in 3000..3016 {
        assert!(ct.step(&m, iface, &p(0, port)).outcome.allowed());
    }
    assert!(!ct.step(&m, iface, &p(0, 3016)).outcome.allowed());
    assert!(ct.step(&m, iface, &p(31_000, 4000)).outcome.allowed());
}

/// A config with one interface `e0` protected by group `a` (`rules` are
/// its inbound rules; outbound is the default "all").
fn one_group(rules: &str) -> model::Model {
    one_group_with(rules, "")
}

/// [`one_group`] with `egress` (YAML lines of the group, or nothing: all open).
fn one_group_with(rules: &str, egress: &str) -> model::Model {
    let yaml = format!(
        "security_groups:\n  - id: a\n    ingress:\n{rules}{egress}interfaces:\n  - {{ name: e0, security_groups: [a], addresses: [{LOCAL4}] }}\n"
    );
    model::from_str(&yaml, &[]).unwrap_or_else(|p| panic!("{p:?}"))
}

/// Every SYN of a grid of peers × ports agrees with the evaluator on `m`.
fn agrees_with(inst: &Instance, m: &model::Model, what: &str) {
    let iface = m.interface("e0").unwrap();
    let mut sport = 20000;
    for peer in ["198.19.3.9", "198.19.4.9", "198.19.1.9", "198.18.0.9"] {
        for port in [22, 80, 443, 1000, 5432, 60000] {
            sport += 1;
            let bytes = frame(peer, LOCAL4, L4::tcp(sport, port, TCP_SYN));
            let kernel = !inst.judge(Hook::Xdp, &bytes).1.is_drop();
            let reference = eval::decide(
                m,
                iface,
                Direction::Ingress,
                &eval::PacketDesc::tcp(ip(peer), port),
            )
            .allowed;
            assert_eq!(kernel, reference, "{what}: SYN from {peer} to {port}");
        }
    }
}

const CONFIG_A: &str = "      - { protocol: tcp, ports: 22, cidr: 198.19.3.0/24 }\n      - { protocol: tcp, ports: 1000-60000, cidr: 198.19.4.0/24 }\n";
const CONFIG_B: &str = "      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }\n      - { protocol: tcp, ports: 5432, cidr: 198.19.1.0/24 }\n";

#[test]
fn an_install_that_stopped_part_way_leaves_nothing_behind() {
    require_root!();
    let base = one_group("      - { protocol: tcp, ports: 80, cidr: 0.0.0.0/0 }\n");
    let (a, b) = (one_group(CONFIG_A), one_group(CONFIG_B));
    let e0 = |m: &model::Model| m.interface("e0").unwrap().clone();

    // A crash after A's entries were written, before the switch.
    let mut inst = Instance::load(false).unwrap();
    let g = inst.policy.next_generation().unwrap();
    inst.policy
        .install(&compile_iface(&base, &e0(&base), g), DEFAULT_TIMEOUTS_S)
        .unwrap();
    let g = inst.policy.next_generation().unwrap();
    inst.policy.stage(&compile_iface(&a, &e0(&a), g)).unwrap();
    agrees_with(&inst, &base, "staged, not switched");
    let g = inst.policy.next_generation().unwrap();
    inst.policy
        .install(&compile_iface(&b, &e0(&b), g), DEFAULT_TIMEOUTS_S)
        .unwrap();
    agrees_with(&inst, &b, "after a crashed install");

    // A real failure part-way: the port map fills while A is written.
    let mut inst = Instance::load_sized(false, &[(names::MAP_PORTS, 8)]).unwrap();
    let g = inst.policy.next_generation().unwrap();
    inst.policy
        .install(&compile_iface(&base, &e0(&base), g), DEFAULT_TIMEOUTS_S)
        .unwrap();
    let g = inst.policy.next_generation().unwrap();
    let failed = inst
        .policy
        .install(&compile_iface(&a, &e0(&a), g), DEFAULT_TIMEOUTS_S);
    assert!(failed.is_err(), "A does not fit in 8 port entries");
    agrees_with(&inst, &base, "a failed install changes nothing");
    let g = inst.policy.next_generation().unwrap();
    inst.policy
        .install(&compile_iface(&b, &e0(&b), g), DEFAULT_TIMEOUTS_S)
        .expect("B fits once A's leftovers are gone");
    agrees_with(&inst, &b, "after a failed install");
}

#[test]
fn hit_counters_of_rules_that_are_gone_are_removed() {
    require_root!();
    // Room for 8 counters; 20 successive policies of 3 rules each.
    let mut inst = Instance::load_sized(false, &[(names::MAP_RULE_HITS, 8)]).unwrap();
    for round in 0..20u16 {
        let rules: Vec<Rule> = (0..3)
            .map(|i| {
                let port = 1000 + round * 3 + i;
                Rule::tracked_parsed(&format!("r{port}"), Some(6), (port, port), &["0.0.0.0/0"])
            })
            .collect();
        inst.install_rules(&rules, &[], DEFAULT_TIMEOUTS_S)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut live = inst.policy.rule_hit_ids();
        live.sort_unstable();
        let mut want: Vec<u32> = rules.iter().map(|r| rule_hash(&r.id)).collect();
        want.sort_unstable();
        assert_eq!(
            live, want,
            "round {round}: only the live rules have counters"
        );
    }
}
