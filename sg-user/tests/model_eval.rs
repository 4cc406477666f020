//! The reference evaluator: the AWS scenario table, connection tracking over
//! timed packet sequences, and property tests of the union semantics.

mod model_scenarios;

use std::net::IpAddr;

use model_scenarios::{CONFIG, SCENARIOS, What};
use proptest::prelude::*;
use sg_user::model::{
    self, Direction, Model,
    eval::{self, Conntrack, Outcome, Packet, PacketDesc, RemovalMode, tcp_flags::*},
};

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("test address {s}: {e}"))
}

fn load(text: &str) -> Model {
    model::from_str(text, &[]).unwrap_or_else(|p| panic!("config should be valid: {p:#?}"))
}

fn desc(what: What, peer: IpAddr) -> PacketDesc {
    match what {
        What::Port("tcp", p) => PacketDesc::tcp(peer, p),
        What::Port("udp", p) => PacketDesc::udp(peer, p),
        What::Icmp(_, t, c) => PacketDesc::icmp(peer, t, c),
        other => panic!("unknown scenario packet {other:?}"),
    }
}

#[test]
fn aws_scenarios_through_the_evaluator() {
    let m = load(CONFIG);
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    for sc in SCENARIOS {
        let iface = m
            .interface(sc.iface)
            .unwrap_or_else(|| panic!("{}: no interface {}", sc.name, sc.iface));
        let dir = if sc.inbound {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let d = eval::decide(&m, iface, dir, &desc(sc.what, ip(sc.peer)));
        assert_eq!(
            d.allowed, sc.allowed,
            "{}: verdict (rules {:?})",
            sc.name, d.rules
        );
        if sc.allowed {
            assert_eq!(d.tracked, sc.tracked, "{}: tracked", sc.name);
        }
        let got: Vec<&str> = d.rules.iter().map(|r| r.as_str()).collect();
        assert_eq!(got, sc.rules, "{}: matching rules", sc.name);
    }
}

#[test]
fn rules_for_expands_peers_and_marks_tracking() {
    let m = load(CONFIG);
    let db = m.interface("eth0@db1").expect("db1");
    let r: Vec<_> = m.rules_for(db, Direction::Ingress).collect();
    assert_eq!(r.len(), 1);
    let peers: Vec<String> = r[0].peers.iter().map(ToString::to_string).collect();
    // web1's two addresses plus the declared member, as host prefixes.
    assert_eq!(
        peers,
        ["198.18.0.10/32", "198.18.3.3/32", "2001:db8::10/128"]
    );
    assert_eq!(r[0].group, "sg-db");
    let open = m.interface("eth0@open1").expect("open1");
    let by_id = |id: &str| {
        m.rules_for(open, Direction::Ingress)
            .find(|r| r.id.as_str() == id)
            .unwrap_or_else(|| panic!("rule {id}"))
            .clone()
    };
    assert!(!by_id("sg-open/in/tcp:22/0.0.0.0/0").is_tracked(6));
    assert!(!by_id("sg-open/in/udp:all/0.0.0.0/0").is_tracked(17));
    assert!(by_id("sg-open/in/tcp:5000/198.18.0.1/32").is_tracked(6));
    assert!(by_id("sg-open/in/icmp/0.0.0.0/0").is_tracked(1));
    // The all-protocols default egress: untracked for UDP (inbound allows all UDP
    // from 0.0.0.0/0) but tracked for TCP (inbound allows only port 22).
    let out = m
        .rules_for(open, Direction::Egress)
        .find(|r| r.id.as_str() == "sg-open/out/all/0.0.0.0/0")
        .expect("default egress");
    assert!(!out.is_tracked(17) && out.is_tracked(6) && out.is_tracked(1));
}

#[test]
fn side_maps_hooks_to_policy_directions() {
    use model::Side;
    assert_eq!(Side::Host.policy_direction(true), Direction::Ingress);
    assert_eq!(Side::Host.policy_direction(false), Direction::Egress);
    assert_eq!(Side::Peer.policy_direction(true), Direction::Egress);
    assert_eq!(Side::Peer.policy_direction(false), Direction::Ingress);
}

// ---- connection tracking ---------------------------------------------------

const CT: &str = r#"
security_groups:
  - id: client
    ingress: []
    egress:
      - { protocol: tcp, ports: 443, cidr: 198.18.0.0/15 }
      - { protocol: udp, ports: 53, cidr: 198.18.0.0/15 }
      - { protocol: icmp, icmp_type: 8, cidr: 198.18.0.0/15 }
      - { protocol: 47, cidr: 198.18.0.0/15 }
  - id: server
    ingress:
      - { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }
      - { protocol: tcp, ports: 80, cidr: 198.18.0.0/15 }
interfaces:
  - { name: c0, security_groups: [client], addresses: [198.18.0.1], conntrack: { tcp_established: 60, udp: 30, udp_stream: 120 } }
  - { name: s0, security_groups: [server], addresses: [198.18.0.2] }
"#;

const ME: &str = "198.18.0.1";
const THEM: &str = "198.18.1.1";

fn out_tcp(t: u64, flags: u8) -> Packet {
    Packet::tcp(t, Direction::Egress, ip(ME), 40000, ip(THEM), 443, flags)
}

fn in_tcp(t: u64, flags: u8) -> Packet {
    Packet::tcp(t, Direction::Ingress, ip(THEM), 443, ip(ME), 40000, flags)
}

/// A fresh table of `c0` after our SYN, its SYN-ACK and our ACK at `times`
/// (ms): one established flow.
fn handshake(m: &Model, c0: &model::Interface, times: [u64; 3]) -> Conntrack {
    let mut ct = Conntrack::for_interface(c0);
    ct.step(m, c0, &out_tcp(times[0], SYN));
    ct.step(m, c0, &in_tcp(times[1], SYN | ACK));
    ct.step(m, c0, &out_tcp(times[2], ACK));
    ct
}

#[test]
fn tcp_replies_pass_by_state_and_strangers_do_not() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let mut ct = Conntrack::for_interface(c0);
    assert_eq!(ct.step(&m, c0, &out_tcp(0, SYN)).outcome, Outcome::NewFlow);
    assert_eq!(
        ct.step(&m, c0, &in_tcp(10, SYN | ACK)).outcome,
        Outcome::Reply
    );
    assert_eq!(
        ct.step(&m, c0, &out_tcp(20, ACK)).outcome,
        Outcome::Established
    );
    assert_eq!(
        ct.flows().next().and_then(|f| f.tcp),
        Some(eval::TcpState::Established)
    );
    // Same peer, other port: not part of the flow, and no ingress rule.
    let stranger = Packet::tcp(
        30,
        Direction::Ingress,
        ip(THEM),
        443,
        ip(ME),
        40001,
        SYN | ACK,
    );
    assert_eq!(ct.step(&m, c0, &stranger).outcome, Outcome::Denied);
    assert_eq!(ct.len(), 1);
}

#[test]
fn tcp_established_idles_out_at_the_configured_timeout() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let mut ct = handshake(&m, c0, [0, 100, 200]);
    // tcp_established is 60 s here: 59.9 s of silence keeps it...
    assert_eq!(
        ct.step(&m, c0, &in_tcp(60_100, ACK)).outcome,
        Outcome::Reply
    );
    // ...60 s ends it.
    assert_eq!(
        ct.step(&m, c0, &in_tcp(120_100, ACK)).outcome,
        Outcome::Denied
    );
    assert!(ct.is_empty());
}

#[test]
fn tcp_handshake_and_closing_timeouts() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    // An unanswered SYN lives TCP_SYN seconds.
    let mut ct = Conntrack::for_interface(c0);
    ct.step(&m, c0, &out_tcp(0, SYN));
    let syn = u64::from(model::ConntrackTimeouts::TCP_SYN) * 1000;
    assert_eq!(
        ct.step(&m, c0, &in_tcp(syn - 1, SYN | ACK)).outcome,
        Outcome::Reply
    );
    // Now in SYN_RECV: TCP_SYN_RECV seconds.
    let recv = u64::from(model::ConntrackTimeouts::TCP_SYN_RECV) * 1000;
    assert_eq!(
        ct.step(&m, c0, &in_tcp(syn - 1 + recv, SYN | ACK)).outcome,
        Outcome::Denied
    );

    // RST closes: TCP_CLOSED seconds.
    let mut ct = handshake(&m, c0, [0, 1, 2]);
    ct.step(&m, c0, &in_tcp(3, RST));
    let closed = u64::from(model::ConntrackTimeouts::TCP_CLOSED) * 1000;
    assert_eq!(
        ct.step(&m, c0, &in_tcp(3 + closed - 1, ACK)).outcome,
        Outcome::Reply
    );
    assert_eq!(
        ct.step(&m, c0, &in_tcp(3 + 2 * closed, ACK)).outcome,
        Outcome::Denied
    );

    // One FIN: TCP_FIN seconds, longer than established here (60 s).
    let mut ct = handshake(&m, c0, [0, 1, 2]);
    ct.step(&m, c0, &out_tcp(3, FIN | ACK));
    assert_eq!(
        ct.flows().next().and_then(|f| f.tcp),
        Some(eval::TcpState::FinWait)
    );
    assert_eq!(
        ct.step(&m, c0, &in_tcp(100_000, ACK)).outcome,
        Outcome::Reply
    );
    ct.step(&m, c0, &in_tcp(100_001, FIN | ACK));
    assert_eq!(
        ct.flows().next().and_then(|f| f.tcp),
        Some(eval::TcpState::Closed)
    );
}

#[test]
fn udp_timeouts_single_vs_stream() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let q = |t| Packet::udp(t, Direction::Egress, ip(ME), 5353, ip(THEM), 53);
    let a = |t| Packet::udp(t, Direction::Ingress, ip(THEM), 53, ip(ME), 5353);
    let mut ct = Conntrack::for_interface(c0);
    assert_eq!(ct.step(&m, c0, &q(0)).outcome, Outcome::NewFlow);
    // udp = 30 s: an answer after 30 s is too late.
    assert_eq!(ct.step(&m, c0, &a(30_000)).outcome, Outcome::Denied);

    let mut ct = Conntrack::for_interface(c0);
    ct.step(&m, c0, &q(0));
    assert_eq!(ct.step(&m, c0, &a(1_000)).outcome, Outcome::Reply);
    // Two packets: not a stream yet, still 30 s.
    assert_eq!(ct.step(&m, c0, &a(31_000)).outcome, Outcome::Denied);

    let mut ct = Conntrack::for_interface(c0);
    ct.step(&m, c0, &q(0));
    ct.step(&m, c0, &a(1_000));
    assert_eq!(ct.step(&m, c0, &q(2_000)).outcome, Outcome::Established);
    // A stream now: udp_stream = 120 s.
    assert_eq!(ct.step(&m, c0, &a(100_000)).outcome, Outcome::Reply);
    assert_eq!(ct.step(&m, c0, &a(220_000)).outcome, Outcome::Denied);
}

#[test]
fn icmp_echo_is_tracked_by_identifier() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let mut ct = Conntrack::for_interface(c0);
    let req = Packet::icmp(0, Direction::Egress, ip(ME), ip(THEM), 8, 0, 7);
    assert_eq!(ct.step(&m, c0, &req).outcome, Outcome::NewFlow);
    let reply = Packet::icmp(5, Direction::Ingress, ip(THEM), ip(ME), 0, 0, 7);
    assert_eq!(ct.step(&m, c0, &reply).outcome, Outcome::Reply);
    let other_id = Packet::icmp(6, Direction::Ingress, ip(THEM), ip(ME), 0, 0, 8);
    assert_eq!(ct.step(&m, c0, &other_id).outcome, Outcome::Denied);
    let late = Packet::icmp(5 + 30_000, Direction::Ingress, ip(THEM), ip(ME), 0, 0, 7);
    assert_eq!(ct.step(&m, c0, &late).outcome, Outcome::Denied);
}

#[test]
fn other_protocols_are_tracked_by_addresses() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let mut ct = Conntrack::for_interface(c0);
    let gre = |t, dir, src: &str, dst: &str| Packet {
        proto: 47,
        ..Packet::udp(t, dir, ip(src), 0, ip(dst), 0)
    };
    assert_eq!(
        ct.step(&m, c0, &gre(0, Direction::Egress, ME, THEM))
            .outcome,
        Outcome::NewFlow
    );
    assert_eq!(
        ct.step(&m, c0, &gre(599_000, Direction::Ingress, THEM, ME))
            .outcome,
        Outcome::Reply
    );
    assert_eq!(
        ct.step(&m, c0, &gre(1_199_000, Direction::Ingress, THEM, ME))
            .outcome,
        Outcome::Denied
    );
}

#[test]
fn untracked_flows_keep_no_state_and_stop_when_the_rule_goes() {
    let with = load(CT);
    let s0 = with.interface("s0").expect("s0");
    let ssh = |t| {
        Packet::tcp(
            t,
            Direction::Ingress,
            ip("203.0.113.5"),
            50000,
            ip("198.18.0.2"),
            22,
            ACK,
        )
    };
    let mut ct = Conntrack::for_interface(s0);
    assert_eq!(ct.step(&with, s0, &ssh(0)).outcome, Outcome::Untracked);
    assert!(ct.is_empty(), "untracked flows keep no state");
    let without = load(&CT.replace("- { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }", ""));
    let s0b = without.interface("s0").expect("s0");
    assert_eq!(ct.step(&without, s0b, &ssh(1)).outcome, Outcome::Denied);
}

#[test]
fn tracked_flows_survive_rule_removal_unless_revoke_mode() {
    let with = load(CT);
    let without = load(&CT.replace("- { protocol: tcp, ports: 80, cidr: 198.18.0.0/15 }", ""));
    let web = |t, flags| {
        Packet::tcp(
            t,
            Direction::Ingress,
            ip(THEM),
            50000,
            ip("198.18.0.2"),
            80,
            flags,
        )
    };
    for (mode, expect) in [
        (RemovalMode::KeepTracked, Outcome::Established),
        (RemovalMode::Revoke, Outcome::Denied),
    ] {
        let mut ct = Conntrack::for_interface(with.interface("s0").expect("s0")).with_mode(mode);
        assert_eq!(
            ct.step(&with, with.interface("s0").expect("s0"), &web(0, SYN))
                .outcome,
            Outcome::NewFlow
        );
        let s0b = without.interface("s0").expect("s0");
        assert_eq!(
            ct.step(&without, s0b, &web(1, ACK)).outcome,
            expect,
            "{mode:?}"
        );
    }
}

#[test]
fn a_full_table_drops_new_tracked_flows_and_counts_them() {
    let m = load(CT);
    let c0 = m.interface("c0").expect("c0");
    let mut ct = Conntrack::for_interface(c0).with_capacity(1);
    assert_eq!(ct.step(&m, c0, &out_tcp(0, SYN)).outcome, Outcome::NewFlow);
    let second = Packet::tcp(1, Direction::Egress, ip(ME), 40001, ip(THEM), 443, SYN);
    assert_eq!(ct.step(&m, c0, &second).outcome, Outcome::TableFull);
    assert_eq!(ct.allowance_exceeded, 1);
    // The established flow is not disturbed.
    assert_eq!(
        ct.step(&m, c0, &in_tcp(2, SYN | ACK)).outcome,
        Outcome::Reply
    );
}

// ---- properties ------------------------------------------------------------

#[derive(Clone, Debug)]
struct GenRule {
    proto: &'static str,
    ports: Option<(u16, u16)>,
    icmp: Option<u8>,
    cidr: String,
}

impl GenRule {
    fn yaml(&self) -> String {
        let mut s = format!("{{ protocol: {}, cidr: \"{}\"", self.proto, self.cidr);
        if let Some((a, b)) = self.ports {
            s += &format!(", ports: \"{a}-{b}\"");
        }
        if let Some(t) = self.icmp {
            s += &format!(", icmp_type: {t}");
        }
        s + " }"
    }
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=1, any::<u8>(), 0u8..=32).prop_map(|(a, b, len)| {
            let n: ipnet::Ipv4Net = format!("198.{}.{b}.0/{len}", 18 + a).parse().expect("v4");
            n.trunc().to_string()
        }),
        (any::<u16>(), 0u8..=128).prop_map(|(x, len)| {
            let n: ipnet::Ipv6Net = format!("2001:db8:{x:x}::/{len}").parse().expect("v6");
            n.trunc().to_string()
        }),
    ]
}

fn rule() -> impl Strategy<Value = GenRule> {
    let proto = prop_oneof![
        Just("tcp"),
        Just("udp"),
        Just("icmp"),
        Just("icmpv6"),
        Just("all"),
        Just("47")
    ];
    (
        proto,
        any::<u16>(),
        any::<u16>(),
        prop::option::of(0u8..20),
        cidr(),
    )
        .prop_map(|(proto, a, b, t, cidr)| GenRule {
            proto,
            ports: matches!(proto, "tcp" | "udp").then(|| (a.min(b), a.max(b))),
            icmp: if matches!(proto, "icmp" | "icmpv6") {
                t
            } else {
                None
            },
            cidr,
        })
}

fn packet() -> impl Strategy<Value = PacketDesc> {
    let addr = prop_oneof![
        (0u8..=1, any::<u16>()).prop_map(|(a, x)| IpAddr::from([
            198,
            18 + a,
            (x >> 8) as u8,
            x as u8
        ])),
        any::<u16>().prop_map(|x| format!("2001:db8:{x:x}::1").parse::<IpAddr>().expect("v6")),
        Just(ip("203.0.113.1")),
    ];
    (
        addr,
        prop_oneof![Just(6u8), Just(17), Just(1), Just(58), Just(47)],
        any::<u16>(),
        0u8..20,
    )
        .prop_map(|(peer, proto, port, t)| match proto {
            6 => PacketDesc::tcp(peer, port),
            17 => PacketDesc::udp(peer, port),
            1 | 58 => PacketDesc {
                proto,
                ..PacketDesc::icmp(peer, t, 0)
            },
            p => PacketDesc::other(peer, p),
        })
}

fn config(rules: &[GenRule]) -> String {
    let list: Vec<String> = rules.iter().map(GenRule::yaml).collect();
    format!(
        "security_groups:\n  - id: g\n    ingress: [{}]\n    egress: []\ninterfaces:\n  - {{ name: e0, security_groups: [g], addresses: [198.18.0.1] }}\nquotas: {{ rules_per_group: 200, groups_per_interface: 5 }}\n",
        list.join(", ")
    )
}

/// Loads generated rules; duplicates are rejected by validation like AWS, so
/// dedupe first.
fn gen_model(rules: &[GenRule]) -> Model {
    let mut seen = std::collections::HashSet::new();
    let uniq: Vec<GenRule> = rules
        .iter()
        .filter(|r| seen.insert(r.yaml()))
        .cloned()
        .collect();
    model::from_str(&config(&uniq), &[])
        .unwrap_or_else(|p| panic!("generated config invalid: {p:#?}\n{}", config(&uniq)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Union semantics: adding a rule never turns allow into deny, and the
    /// rules that allowed before still allow.
    #[test]
    fn adding_a_rule_never_denies_more(rules in prop::collection::vec(rule(), 0..8), extra in rule(), p in packet()) {
        let before = gen_model(&rules);
        let mut more = rules.clone();
        more.push(extra);
        let after = gen_model(&more);
        let d1 = eval::decide(&before, before.interface("e0").unwrap(), Direction::Ingress, &p);
        let d2 = eval::decide(&after, after.interface("e0").unwrap(), Direction::Ingress, &p);
        prop_assert!(!d1.allowed || d2.allowed, "allow turned into deny: {:?} -> {:?}", d1, d2);
        for r in &d1.rules {
            prop_assert!(d2.rules.contains(r));
        }
    }

    /// Order does not matter.
    #[test]
    fn rule_order_does_not_matter(rules in prop::collection::vec(rule(), 0..8), p in packet()) {
        let a = gen_model(&rules);
        let mut rev = rules.clone();
        rev.reverse();
        let b = gen_model(&rev);
        let mut d1 = eval::decide(&a, a.interface("e0").unwrap(), Direction::Ingress, &p);
        let mut d2 = eval::decide(&b, b.interface("e0").unwrap(), Direction::Ingress, &p);
        d1.rules.sort();
        d2.rules.sort();
        prop_assert_eq!(d1, d2);
    }

    /// Address families never cross: rules whose peers are all of the other
    /// family never allow a packet, whatever its protocol and port.
    #[test]
    fn families_never_cross(rules in prop::collection::vec(rule(), 0..8), p in packet()) {
        let other_family: Vec<GenRule> = rules.into_iter().filter(|r| r.cidr.contains(':') != p.peer.is_ipv6()).collect();
        let m = gen_model(&other_family);
        let d = eval::decide(&m, m.interface("e0").unwrap(), Direction::Ingress, &p);
        prop_assert!(!d.allowed, "other-family rules allowed {:?}: {:?}", p, d);
    }

    /// An allowed packet is allowed by at least one rule that, alone, allows it;
    /// a denied packet is denied by every single rule alone.
    #[test]
    fn verdict_is_the_or_of_single_rules(rules in prop::collection::vec(rule(), 1..6), p in packet()) {
        let all = gen_model(&rules);
        let d = eval::decide(&all, all.interface("e0").unwrap(), Direction::Ingress, &p);
        let any_single = rules.iter().any(|r| {
            let m = gen_model(std::slice::from_ref(r));
            eval::decide(&m, m.interface("e0").unwrap(), Direction::Ingress, &p).allowed
        });
        prop_assert_eq!(d.allowed, any_single);
    }
}
