//! A config at the AWS quota limits for one interface (16 groups × 60+60
//! rules, a group with 10,000 members) compiles, installs and enforces
//! correctly.
//! Its per-packet cost is printed beside a 1-rule config's (never asserted:
//! speed is the benchmark's job, `cargo xtask bench`).

use std::{net::Ipv4Addr, time::Instant};

use sg_common::{Direction, Reason, conntrack::DEFAULT_TIMEOUTS_S};
use sg_user::{
    compile::compile_iface,
    harness::configs::quota_config as generated_quota_config,
    harness::packet::{Frame, L4, TCP_SYN},
    harness::testrun::{Instance, XDP_DROP, XDP_PASS},
    model, require_root,
};

const MEMBERS: u32 = 10_000;

fn member(i: u32) -> Ipv4Addr {
    // As in `harness::configs::quota_config`: 198.18.64.0 onwards.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i)
}

/// 16 groups × (60 inbound + 60 outbound) rules, one a reference to a group
/// of 10,000 members (the benchmark's control-plane config).
fn quota_config() -> String {
    generated_quota_config("unused-offline", "eth0", MEMBERS, 0)
}

fn one_rule_config() -> String {
    "security_groups:\n  - id: sg-one\n    ingress:\n      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }\n\
     interfaces:\n  - { name: eth0, addresses: [198.18.0.10], security_groups: [sg-one] }\n"
        .to_string()
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    Frame::new(src, dst, L4::tcp(sport, dport, TCP_SYN)).build()
}

/// Loads, installs; returns the instance and (model rules, compile ms, install ms, entries).
fn setup(yaml: &str) -> (Instance, String) {
    let model = model::from_str(yaml, &[]).unwrap_or_else(|p| panic!("config invalid: {p:#?}"));
    let iface = &model.interfaces[0];
    let rules = model.rules_for(iface, model::Direction::Ingress).count()
        + model.rules_for(iface, model::Direction::Egress).count();
    let mut inst = Instance::load(false).expect("load");
    let t = Instant::now();
    let policy = compile_iface(&model, iface, inst.policy.next_generation().unwrap());
    let compile_ms = t.elapsed().as_millis();
    let t = Instant::now();
    inst.policy
        .install(&policy, DEFAULT_TIMEOUTS_S)
        .expect("install");
    let install_ms = t.elapsed().as_millis();
    let summary = format!(
        "{rules} rules → {} IPv4 prefixes, {} port blocks; compile {compile_ms} ms, install {install_ms} ms",
        policy.addr_v4.len(),
        policy.ports.len()
    );
    (inst, summary)
}

#[test]
fn quota_limit_config_compiles_applies_and_enforces() {
    require_root!();
    let local = Ipv4Addr::new(198, 18, 0, 10);
    let (big, summary) = setup(&quota_config());
    // Members reach tcp 3306 outbound; a non-member does not.
    let to_member = syn(local, member(9_999), 40000, 3306);
    assert_eq!(
        big.tc(true, &to_member).unwrap(),
        0,
        "outbound to a group member allowed"
    );
    let to_stranger = syn(local, Ipv4Addr::new(198, 18, 250, 1), 40001, 3306);
    assert_eq!(
        big.tc(true, &to_stranger).unwrap(),
        2,
        "outbound to a non-member dropped"
    );
    // The last inbound rule of the 16th group: tcp 2559 from 198.18.3.210/32.
    let peer = Ipv4Addr::new(198, 18, 3, 210);
    let allowed = syn(peer, local, 40002, 2559);
    assert_eq!(
        big.xdp_verdict(&allowed),
        XDP_PASS,
        "rule of the 16th group"
    );
    let denied = syn(peer, local, 40003, 9);
    assert_eq!(big.xdp_verdict(&denied), XDP_DROP);

    let (small, small_summary) = setup(&one_rule_config());
    // A denied SYN takes both LPM lookups and creates no state, so repeated
    // runs measure the policy path every time.
    let probe = syn(Ipv4Addr::new(198, 18, 33, 7), local, 40004, 9);
    let repeat = 200_000;
    let (v, big_ns) = big.xdp(&probe, repeat).unwrap();
    assert_eq!(v, XDP_DROP);
    let (v, small_ns) = small.xdp(&probe, repeat).unwrap();
    assert_eq!(v, XDP_DROP);
    assert!(big.counter(Direction::Inbound, Reason::DropNoRule).packets >= u64::from(repeat));
    eprintln!("quota-limit config: {summary}");
    eprintln!("1-rule config:      {small_summary}");
    eprintln!(
        "denied SYN, BPF_PROG_TEST_RUN x{repeat}: {big_ns} ns/packet at the quota limit vs {small_ns} ns/packet with 1 rule"
    );
}
