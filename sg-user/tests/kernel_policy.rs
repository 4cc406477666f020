//! Enforcement in the real programs (BPF_PROG_TEST_RUN): compiled rules in
//! the maps, crafted frames in, verdicts and reason counters checked.

use std::net::IpAddr;

use sg_common::{Direction, Reason, conntrack::DEFAULT_TIMEOUTS_S};
use sg_user::{
    compile::Rule,
    harness::packet::{Frame, L4, TCP_ACK, TCP_SYN, arp_request, frame},
    harness::testrun::{Instance, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    require_root,
};

const WEB: &str = "198.18.0.10";
const OFFICE: &str = "198.18.1.7";
const OUTSIDE: &str = "198.19.0.9";
const DB: &str = "198.18.2.20";

fn rule(id: &str, proto: Option<u8>, ports: (u16, u16), peers: &[&str]) -> Rule {
    Rule::tracked_parsed(id, proto, ports, peers)
}

/// The seed article's web server's inbound rules, https on `https_port`.
fn web_inbound(https_port: u16) -> [Rule; 3] {
    [
        rule(
            "https",
            Some(6),
            (https_port, https_port),
            &["0.0.0.0/0", "::/0"],
        ),
        rule("ssh-office", Some(6), (22, 22), &["198.18.1.0/24"]),
        rule(
            "ping-office",
            Some(1),
            (8 << 8, (8 << 8) | 255),
            &["198.18.1.0/24"],
        ),
    ]
}

fn web_outbound() -> [Rule; 1] {
    [rule("mysql", Some(6), (3306, 3306), &["198.18.2.0/24"])]
}

/// The seed article's web server.
fn web_server() -> Instance {
    Instance::with_rules(&web_inbound(443), &web_outbound())
        .expect("load programs and install policy")
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    frame(src, dst, L4::tcp(sport, dport, flags))
}

fn icmp(src: &str, dst: &str, kind: u8, ident: u16) -> Vec<u8> {
    Frame {
        src: src.parse::<IpAddr>().unwrap(),
        dst: dst.parse().unwrap(),
        l4: L4::Icmp {
            kind,
            code: 0,
            ident,
        },
        payload: 8,
    }
    .build()
}

fn xdp(inst: &Instance, frame: &[u8]) -> u32 {
    inst.xdp_verdict(frame)
}

#[test]
fn inbound_rules_allow_and_deny_new_flows() {
    require_root!();
    let inst = web_server();
    // (source, source port, destination port, verdict), in the order sent.
    for (src, sport, dport, verdict, what) in [
        (OUTSIDE, 40000, 443, XDP_PASS, "https from anywhere"),
        (OUTSIDE, 40001, 22, XDP_DROP, "ssh from outside"),
        (OFFICE, 40002, 22, XDP_PASS, "ssh from the office"),
        (OUTSIDE, 40003, 3389, XDP_DROP, "rdp: no rule"),
    ] {
        let syn = tcp(src, sport, WEB, dport, TCP_SYN);
        assert_eq!(xdp(&inst, &syn), verdict, "{what}");
    }
    let v6 = tcp("2001:db8::99", 40004, "2001:db8::10", 443, TCP_SYN);
    assert_eq!(xdp(&inst, &v6), XDP_PASS, "https over IPv6 (::/0)");
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::PassRule).packets,
        3
    );
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::DropNoRule).packets,
        2
    );
}

#[test]
fn replies_of_outbound_flows_pass_without_inbound_rules() {
    require_root!();
    let inst = web_server();
    let syn = tcp(WEB, 50000, DB, 3306, TCP_SYN);
    assert_eq!(
        inst.tc(true, &syn).unwrap(),
        TC_ACT_OK,
        "outbound mysql allowed"
    );
    let synack = tcp(DB, 3306, WEB, 50000, TCP_SYN | TCP_ACK);
    assert_eq!(xdp(&inst, &synack), XDP_PASS, "the reply passes by state");
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::PassConntrack)
            .packets,
        1
    );
    let unsolicited = tcp(DB, 3306, WEB, 50001, TCP_SYN | TCP_ACK);
    assert_eq!(
        xdp(&inst, &unsolicited),
        XDP_DROP,
        "no state, no inbound rule"
    );
    let other_dst = tcp(WEB, 50002, OUTSIDE, 443, TCP_SYN);
    assert_eq!(
        inst.tc(true, &other_dst).unwrap(),
        TC_ACT_SHOT,
        "outbound only to the db range"
    );
}

#[test]
fn echo_reply_needs_a_request_in_the_other_direction() {
    require_root!();
    let inst = web_server();
    assert_eq!(
        xdp(&inst, &icmp(OFFICE, WEB, 8, 7)),
        XDP_PASS,
        "ping from the office"
    );
    assert_eq!(
        inst.tc(true, &icmp(WEB, OFFICE, 0, 7)).unwrap(),
        TC_ACT_OK,
        "its echo reply leaves"
    );
    // The same identifier the other way round is a new request: no rule.
    assert_eq!(
        inst.tc(true, &icmp(WEB, OFFICE, 8, 7)).unwrap(),
        TC_ACT_SHOT,
        "request is not a reply"
    );
    assert_eq!(
        xdp(&inst, &icmp(OUTSIDE, WEB, 8, 9)),
        XDP_DROP,
        "ping from outside"
    );
    assert_eq!(
        xdp(&inst, &icmp(OUTSIDE, WEB, 0, 9)),
        XDP_DROP,
        "unsolicited echo reply"
    );
}

#[test]
fn infrastructure_bypasses_and_malformed_drops() {
    require_root!();
    let inst = web_server();
    assert_eq!(
        xdp(&inst, &arp_request()),
        XDP_PASS,
        "ARP is never filtered"
    );
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::PassBypass).packets,
        1
    );
    let mut truncated = tcp(OUTSIDE, 1, WEB, 443, TCP_SYN);
    truncated.truncate(14 + 20 + 4);
    assert_eq!(xdp(&inst, &truncated), XDP_DROP, "TCP header cut short");
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::DropMalformed)
            .packets,
        1
    );
}

#[test]
fn a_new_generation_replaces_the_old_atomically() {
    require_root!();
    let mut inst = web_server();
    assert_eq!(xdp(&inst, &tcp(OUTSIDE, 1, WEB, 443, TCP_SYN)), XDP_PASS);
    let only_ssh = [rule("ssh-all", Some(6), (22, 22), &["0.0.0.0/0"])];
    inst.install_rules(&only_ssh, &[], DEFAULT_TIMEOUTS_S)
        .unwrap();
    for (sport, dport, flags, verdict, what) in [
        (2, 443, TCP_SYN, XDP_DROP, "old rule gone for new flows"),
        (3, 22, TCP_SYN, XDP_PASS, "new rule live"),
        // The tracked flow admitted by the removed rule survives (AWS semantics).
        (1, 443, TCP_ACK, XDP_PASS, "tracked flow survives"),
    ] {
        let frame = tcp(OUTSIDE, sport, WEB, dport, flags);
        assert_eq!(xdp(&inst, &frame), verdict, "{what}");
    }
    let (v4, v6, ports) = inst.policy.sizes();
    assert_eq!((v4, v6), (1, 0), "old generation's prefixes removed");
    assert!(ports >= 1);
}

#[test]
fn a_change_of_ports_keeps_the_address_entries_and_a_torn_switch_fails_closed() {
    require_root!();
    let mut inst = web_server();
    let id = inst.policy.policy_id();
    let first = inst.policy.policy_state(id).unwrap();
    let sizes = inst.policy.sizes();
    assert_eq!(
        first.addr_generation, first.generation,
        "a new policy writes its addresses"
    );
    // The same peers, https moved to 8443: the address classes are the same.
    inst.install_rules(&web_inbound(8443), &web_outbound(), DEFAULT_TIMEOUTS_S)
        .unwrap();
    let second = inst.policy.policy_state(id).unwrap();
    assert!(second.generation > first.generation);
    assert_eq!(
        second.addr_generation, first.generation,
        "the address entries of the first version are kept"
    );
    assert_eq!(inst.policy.sizes(), sizes, "no entry added or left behind");
    for (src, sport, dport, verdict, what) in [
        (OUTSIDE, 10, 443, XDP_DROP, "the old port is gone"),
        (OUTSIDE, 11, 8443, XDP_PASS, "the new port is live"),
        (
            OFFICE,
            12,
            22,
            XDP_PASS,
            "a rule on the kept classes still matches",
        ),
        (OUTSIDE, 13, 22, XDP_DROP, "and still only for its peers"),
    ] {
        assert_eq!(
            xdp(&inst, &tcp(src, sport, WEB, dport, TCP_SYN)),
            verdict,
            "{what}"
        );
    }

    // A third version with other peers (new classes), staged as a crash
    // would leave it: both address generations are in the maps. A read of
    // the pair that tore (ports of one version, addresses of the other)
    // finds no port entry for its class: dropped, never a wrong allow.
    let narrower = [rule("ssh-office", Some(6), (22, 22), &["198.18.1.0/25"])];
    let third = sg_user::compile::compile(second.generation + 1, &narrower, &[]);
    inst.policy.stage(&third).unwrap();
    let office_ssh = tcp(OFFICE, 14, WEB, 22, TCP_SYN);
    for (generation, addr_generation, verdict, what) in [
        (
            third.generation,
            second.addr_generation,
            XDP_DROP,
            "new ports, old addresses",
        ),
        (
            second.generation,
            third.generation,
            XDP_DROP,
            "old ports, new addresses",
        ),
        (
            third.generation,
            third.generation,
            XDP_PASS,
            "the new version whole",
        ),
        (
            second.generation,
            second.addr_generation,
            XDP_PASS,
            "the old version whole",
        ),
    ] {
        inst.policy
            .write_policy_state(sg_common::endpoint::PolicyState {
                generation,
                addr_generation,
                ..second
            })
            .unwrap();
        assert_eq!(xdp(&inst, &office_ssh), verdict, "{what}");
    }
}

#[test]
fn a_full_table_refuses_new_tracked_flows_and_keeps_established_ones() {
    require_root!();
    let inbound = [rule("https", Some(6), (443, 443), &["0.0.0.0/0"])];
    let mut inst = Instance::load_with(false, 4).expect("load with a 4-entry table");
    inst.install_rules(&inbound, &[], DEFAULT_TIMEOUTS_S)
        .unwrap();
    for port in 1..=4 {
        assert_eq!(
            xdp(&inst, &tcp(OUTSIDE, port, WEB, 443, TCP_SYN)),
            XDP_PASS,
            "flow {port} fits"
        );
    }
    assert_eq!(
        xdp(&inst, &tcp(OUTSIDE, 5, WEB, 443, TCP_SYN)),
        XDP_DROP,
        "fifth flow refused"
    );
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::DropConntrackFull)
            .packets,
        1,
        "and counted"
    );
    assert_eq!(
        xdp(&inst, &tcp(OUTSIDE, 2, WEB, 443, TCP_ACK)),
        XDP_PASS,
        "established flows unaffected"
    );
    assert_eq!(
        inst.tc(true, &tcp(WEB, 443, OUTSIDE, 3, TCP_SYN | TCP_ACK))
            .unwrap(),
        TC_ACT_OK,
        "replies too"
    );
}
