//! One data plane per host, through the real programs (BPF_PROG_TEST_RUN):
//! a packet finds its interface in the endpoint table; an unknown interface
//! fails closed; connection state and the AWS per-interface connection limit
//! belong to the endpoint (a full interface refuses its own new flows, other
//! interfaces are unaffected); policies are selected per endpoint.

use sg_common::{Direction, Reason};
use sg_user::{
    compile::{Rule, compile},
    harness::packet::{L4, TCP_ACK, TCP_SYN, frame},
    harness::testrun::{Instance, TEST_ENDPOINT, XDP_DROP, XDP_PASS},
    require_root,
};

fn syn(sport: u16, dport: u16) -> Vec<u8> {
    tcp("198.18.0.9", "198.18.0.1", sport, dport, TCP_SYN)
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(src, dst, L4::tcp(sport, dport, flags))
}

/// Inbound https from anywhere; nothing outbound.
fn https_instance() -> Instance {
    let inbound = [Rule::tracked_parsed(
        "https",
        Some(6),
        (443, 443),
        &["0.0.0.0/0"],
    )];
    Instance::with_rules(&inbound, &[]).expect("load")
}

#[test]
fn an_unknown_interface_fails_closed_and_is_counted_in_row_zero() {
    require_root!();
    let mut inst = https_instance();
    let frame = syn(40000, 443);
    assert_eq!(inst.xdp_verdict(&frame), XDP_PASS, "known: allowed");
    inst.remove_endpoint().unwrap();
    let before = inst.counter_of(0, Direction::Inbound, Reason::DropNoPolicy);
    assert_eq!(
        inst.xdp_verdict(&frame),
        XDP_DROP,
        "an interface the endpoint table does not know is not let through"
    );
    assert_eq!(
        inst.tc(false, &frame).unwrap(),
        sg_user::harness::testrun::TC_ACT_SHOT,
        "nor on tc"
    );
    let after = inst.counter_of(0, Direction::Inbound, Reason::DropNoPolicy);
    assert_eq!(after.packets - before.packets, 2, "both counted in row 0");
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::DropNoPolicy)
            .packets,
        0,
        "not in the endpoint's own row"
    );
}

#[test]
fn a_full_interface_refuses_its_new_flows_and_others_are_unaffected() {
    require_root!();
    let mut inst = https_instance();
    inst.set_endpoint(|cfg| cfg.ct_limit = 2).unwrap();
    for port in [40001, 40002] {
        assert_eq!(inst.xdp_verdict(&syn(port, 443)), XDP_PASS);
    }
    let full = inst.counter(Direction::Inbound, Reason::DropConntrackFull);
    assert_eq!(
        inst.xdp_verdict(&syn(40003, 443)),
        XDP_DROP,
        "the third tracked flow of a 2-connection interface is refused"
    );
    assert_eq!(
        inst.counter(Direction::Inbound, Reason::DropConntrackFull)
            .packets
            - full.packets,
        1,
        "and counted as conntrack_full"
    );
    // Its established flows keep passing (replies need no rule).
    let reply = tcp("198.18.0.1", "198.18.0.9", 443, 40001, TCP_SYN | TCP_ACK);
    assert_eq!(
        inst.tc(true, &reply).unwrap(),
        sg_user::harness::testrun::TC_ACT_OK,
        "a reply of a tracked flow passes"
    );

    // Another interface (same namespace and program, another endpoint id):
    // its own count, its own connections.
    inst.set_endpoint(|cfg| cfg.endpoint = TEST_ENDPOINT + 1)
        .unwrap();
    let other = TEST_ENDPOINT + 1;
    assert_eq!(
        inst.xdp_verdict(&syn(40003, 443)),
        XDP_PASS,
        "another interface still opens flows"
    );
    assert_eq!(
        inst.counter_of(other, Direction::Inbound, Reason::PassRule)
            .packets,
        1,
        "counted in its own row"
    );
    assert_eq!(
        inst.tc(true, &reply).unwrap(),
        sg_user::harness::testrun::TC_ACT_SHOT,
        "the first interface's connection is not this one's (no outbound rule)"
    );
}

#[test]
fn interfaces_enforce_the_policy_their_endpoint_names() {
    require_root!();
    let mut inst = https_instance();
    let frame = syn(40010, 443);
    assert_eq!(inst.xdp_verdict(&frame), XDP_PASS, "policy 1 allows 443");
    // Policy 2: ssh only, installed beside policy 1.
    let ssh = [Rule::tracked_parsed(
        "ssh",
        Some(6),
        (22, 22),
        &["0.0.0.0/0"],
    )];
    let key = inst.policy.endpoint_key();
    inst.policy.select(2, None);
    let g = inst.policy.next_generation().unwrap();
    inst.policy
        .install_policy(&compile(g, &ssh, &[]), 7)
        .unwrap();
    inst.policy.select(1, key);
    // Moving the interface: one update of its endpoint.
    inst.set_endpoint(|cfg| cfg.policy = 2).unwrap();
    assert_eq!(
        inst.xdp_verdict(&syn(40011, 443)),
        XDP_DROP,
        "policy 2 does not allow 443"
    );
    assert_eq!(inst.xdp_verdict(&syn(40012, 22)), XDP_PASS, "but 22");
    inst.set_endpoint(|cfg| cfg.policy = 1).unwrap();
    assert_eq!(
        inst.xdp_verdict(&syn(40013, 22)),
        XDP_DROP,
        "back on policy 1: 22 is not allowed"
    );
}

#[test]
fn an_ifindex_two_namespaces_share_is_told_apart_by_the_namespace() {
    require_root!();
    let mut inst = https_instance();
    let denied = syn(40020, 9);
    assert_eq!(inst.xdp_verdict(&denied), XDP_DROP, "enforced");
    // Another namespace's interface with the same index, in observe mode:
    // from now on the index alone does not say which interface it is.
    let mine = inst.policy.endpoint_key().unwrap();
    let other_key = sg_common::endpoint::EndpointKey {
        netns_cookie: mine.netns_cookie + 1_000_000,
        ..mine
    };
    let mut other = inst.policy.config().unwrap();
    other.endpoint = TEST_ENDPOINT + 1;
    other.flags = 0;
    inst.policy.write_endpoint(other_key, &other).unwrap();
    for hook in ["xdp", "tc"] {
        let verdict = if hook == "xdp" {
            inst.xdp_verdict(&denied) == XDP_PASS
        } else {
            inst.tc(false, &denied).unwrap() == sg_user::harness::testrun::TC_ACT_OK
        };
        assert!(
            !verdict,
            "{hook}: still this interface's policy, not the other's"
        );
    }
    assert_eq!(
        inst.counter_of(
            TEST_ENDPOINT + 1,
            Direction::Inbound,
            Reason::PassUnfiltered
        )
        .packets,
        0,
        "nothing counted for the other interface"
    );
    // The other goes: the index is unique again.
    inst.policy.remove_endpoint(&other_key).unwrap();
    assert_eq!(inst.xdp_verdict(&denied), XDP_DROP);
    assert_eq!(inst.xdp_verdict(&syn(40021, 443)), XDP_PASS);
}
