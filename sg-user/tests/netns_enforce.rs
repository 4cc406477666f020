//! Enforcement with real traffic between namespaces: configs applied with
//! the same code as `sgctl apply`, TCP/UDP/ICMP over IPv4 and IPv6. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

mod common;

use common::{A_ONLY, Lab, scratch_config};
use sg_user::{
    agent::apply::{self, ApplyOptions},
    compile,
    kernel::pins::IfaceId,
    lab::probe::{self, Reach, TcpEcho, TcpServer, TcpSession, UdpEcho, UdpPeer},
    model, require_root,
    sys::netns::Netns,
};

const T: Duration = Duration::from_millis(700);

fn servers(lab: &Lab, role: &str, ports: &[u16]) -> Vec<TcpServer> {
    TcpServer::start_all(lab.ns(role), ports).unwrap()
}

#[test]
fn tcp_udp_icmp_allowed_and_denied_by_rules_v4_and_v6() {
    require_root!();
    let mut lab = Lab::new("rules");
    let _tcp = servers(&lab, "a", &[80, 22]);
    let _udp = UdpEcho::start(lab.ns("a"), "[::]:53".parse().unwrap()).unwrap();
    lab.apply(&format!(
        "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: tcp, ports: 80, cidr: 0.0.0.0/0 }}
      - {{ protocol: tcp, ports: 80, cidr: \"::/0\" }}
      - {{ protocol: tcp, ports: 22, cidr: 198.18.0.2/32 }}
      - {{ protocol: udp, ports: 53, prefix_list: pl-b }}
      - {{ protocol: icmp, icmp_type: 8, cidr: 198.18.0.0/16 }}
      - {{ protocol: icmpv6, icmp_type: 128, cidr: \"2001:db8:c::/48\" }}
prefix_lists:
  - {{ id: pl-b, cidrs: [198.18.0.2/32, \"2001:db8::2/128\"] }}
{A_ONLY}"
    ));
    for v6 in [false, true] {
        lab.expect_tcp(
            T,
            &[
                ("b", "a", v6, 80, Reach::Connected, "tcp 80 from b"),
                ("c", "a", v6, 80, Reach::Connected, "tcp 80 from c"),
                ("c", "a", v6, 22, Reach::Timeout, "ssh from c dropped"),
            ],
        );
        for (from, answered, what) in [
            ("b", true, "udp 53 from the prefix list"),
            ("c", false, "udp 53 from c dropped"),
        ] {
            let udp = UdpPeer::bind_any(lab.ns(from), v6, T).unwrap();
            assert_eq!(
                udp.roundtrip(lab.addr("a", v6, 53)),
                answered,
                "{what} (v6={v6})"
            );
        }
    }
    lab.expect_tcp(
        T,
        &[
            ("b", "a", false, 22, Reach::Connected, "ssh from b's /32"),
            (
                "b",
                "a",
                true,
                22,
                Reach::Timeout,
                "the /32 rule is IPv4 only",
            ),
        ],
    );
    let ping =
        |from: &str, v6: bool| probe::ping(lab.ns(from), lab.addr("a", v6, 0).ip(), T).unwrap();
    assert!(ping("b", false), "ping from 198.18.0.0/16");
    assert!(!ping("c", false), "ping from 198.19.0.3 dropped");
    assert!(ping("c", true), "ping6 from 2001:db8:c::/48");
    assert!(!ping("b", true), "ping6 from b dropped");
}

#[test]
fn replies_to_outbound_connections_need_no_inbound_rule() {
    require_root!();
    let mut lab = Lab::new("replies");
    let _tcp = servers(&lab, "b", &[443]);
    let _udp = UdpEcho::start(lab.ns("b"), "[::]:5353".parse().unwrap()).unwrap();
    let _a_tcp = servers(&lab, "a", &[443]);
    // No inbound rules; outbound omitted = everything (AWS default).
    lab.apply(&format!(
        "security_groups:\n  - id: sg-a\n    ingress: []\n{A_ONLY}"
    ));
    for v6 in [false, true] {
        lab.expect_tcp(
            T,
            &[
                ("a", "b", v6, 443, Reach::Connected, "a → b tcp"),
                ("b", "a", v6, 443, Reach::Timeout, "b → a tcp denied"),
            ],
        );
        let udp = UdpPeer::bind_any(lab.ns("a"), v6, T).unwrap();
        assert!(
            udp.roundtrip(lab.addr("b", v6, 5353)),
            "a → b udp and its reply (v6={v6})"
        );
        assert!(
            probe::ping(lab.ns("a"), lab.addr("b", v6, 0).ip(), T).unwrap(),
            "ping a → b (v6={v6})"
        );
        assert!(
            !probe::ping(lab.ns("b"), lab.addr("a", v6, 0).ip(), T).unwrap(),
            "ping b → a (v6={v6})"
        );
    }
}

const TRACKED_8080: &str = "security_groups:\n  - id: sg-a\n    ingress:\n      - { protocol: tcp, ports: 8080, cidr: 198.18.0.2/32 }\n      - { protocol: tcp, ports: 9090, cidr: 198.18.0.2/32 }\n";
const WITHOUT_8080: &str = "security_groups:\n  - id: sg-a\n    ingress:\n      - { protocol: tcp, ports: 9090, cidr: 198.18.0.2/32 }\n";

#[test]
fn tracked_flow_survives_rule_removal_but_new_ones_are_refused() {
    require_root!();
    let mut lab = Lab::new("tracked");
    let _echo = TcpEcho::start(lab.ns("a"), "[::]:8080".parse().unwrap()).unwrap();
    lab.apply(&format!("{TRACKED_8080}{A_ONLY}"));
    let mut session =
        TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).expect("connect");
    assert!(session.roundtrip(), "session works");
    lab.apply(&format!("{WITHOUT_8080}{A_ONLY}"));
    assert!(
        session.roundtrip(),
        "tracked flow survives removal of its rule (AWS)"
    );
    assert!(
        TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).is_err(),
        "new flow refused"
    );
}

#[test]
fn revoke_cuts_tracked_flows_the_new_rules_do_not_allow() {
    require_root!();
    let mut lab = Lab::new("revoke");
    let _echo = TcpEcho::start(lab.ns("a"), "[::]:8080".parse().unwrap()).unwrap();
    let _echo2 = TcpEcho::start(lab.ns("a"), "[::]:9090".parse().unwrap()).unwrap();
    lab.apply(&format!("{TRACKED_8080}{A_ONLY}"));
    let mut cut = TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).unwrap();
    let mut kept = TcpSession::connect(lab.ns("b"), lab.addr("a", false, 9090), T).unwrap();
    assert!(cut.roundtrip() && kept.roundtrip());
    let revoke = ApplyOptions {
        revoke: true,
        ..ApplyOptions::default()
    };
    lab.apply_with(&format!("{WITHOUT_8080}{A_ONLY}"), &revoke);
    assert!(
        !cut.roundtrip(),
        "--revoke cuts the flow its removed rule admitted"
    );
    assert!(kept.roundtrip(), "flows still allowed are kept");
}

#[test]
fn untracked_flow_stops_at_once_when_its_rule_goes() {
    require_root!();
    let mut lab = Lab::new("untracked");
    let _echo = TcpEcho::start(lab.ns("a"), "[::]:8080".parse().unwrap()).unwrap();
    // 0.0.0.0/0 inbound with all outbound open (egress omitted): untracked.
    let open = format!(
        "security_groups:\n  - id: sg-a\n    ingress:\n      - {{ protocol: tcp, ports: 8080, cidr: 0.0.0.0/0 }}\n{A_ONLY}"
    );
    let model = lab.apply(&open);
    let iface = model.interfaces[0].clone();
    assert!(
        !model
            .rules_for(&iface, model::Direction::Ingress)
            .next()
            .unwrap()
            .is_tracked(6),
        "rule is untracked"
    );
    let mut session = TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).unwrap();
    assert!(session.roundtrip());
    let id = IfaceId::new("eth0", Some(lab.ns("a").name()));
    let cfg = sg_user::kernel::loader::policy_maps_of(&id)
        .unwrap()
        .config()
        .unwrap();
    assert!(
        sg_user::kernel::conntrack::list(&id, &cfg)
            .unwrap()
            .iter()
            .all(|f| f.local_port != 8080),
        "no state kept"
    );
    lab.apply(&format!(
        "security_groups:\n  - id: sg-a\n    ingress: []\n{A_ONLY}"
    ));
    assert!(!session.roundtrip(), "untracked flow stops at once");
}

#[test]
fn idle_udp_flow_times_out() {
    require_root!();
    let mut lab = Lab::new("udp-timeout");
    let model = lab.apply(&format!(
        "security_groups:\n  - id: sg-a\n    ingress: []\n{A_ONLY}"
    ));
    // Test-only: a 1 s UDP timeout written straight into the maps (configs
    // only accept AWS's 30–60 s).
    let id = IfaceId::new("eth0", Some(lab.ns("a").name()));
    let mut maps = sg_user::kernel::loader::policy_maps_of(&id).unwrap();
    let generation = maps.next_generation().unwrap();
    let mut timeouts = compile::timeouts_s(&model.interfaces[0].conntrack);
    timeouts[sg_common::conntrack::CtState::Udp as usize] = 1;
    maps.install(
        &compile::compile_iface(&model, &model.interfaces[0], generation),
        timeouts,
    )
    .unwrap();

    let a = UdpPeer::bind(lab.ns("a"), "198.18.0.1:4000".parse().unwrap(), T).unwrap();
    let b = UdpPeer::bind(lab.ns("b"), "198.18.0.2:5000".parse().unwrap(), T).unwrap();
    a.socket.send_to(b"out", "198.18.0.2:5000").unwrap();
    assert!(b.receive().is_some(), "a → b leaves (egress open)");
    b.socket.send_to(b"reply", "198.18.0.1:4000").unwrap();
    assert!(a.receive().is_some(), "b's reply passes by state");
    std::thread::sleep(Duration::from_millis(1600));
    b.socket.send_to(b"late", "198.18.0.1:4000").unwrap();
    assert!(
        a.receive().is_none(),
        "after the idle timeout the flow is gone"
    );
}

#[test]
fn group_reference_across_namespaces() {
    require_root!();
    let mut lab = Lab::new("groups");
    let _db = servers(&lab, "b", &[3306]);
    lab.apply(
        "security_groups:
  - id: sg-a
    ingress: []
    egress:
      - { protocol: tcp, ports: 3306, group: sg-db }
  - id: sg-db
    ingress:
      - { protocol: tcp, ports: 3306, group: sg-a }
interfaces:
  - { name: eth0, netns: \"{a}\", security_groups: [sg-a] }
  - { name: eth0, netns: \"{b}\", security_groups: [sg-db] }
",
    );
    // Addresses were discovered from the interfaces (none declared).
    lab.expect_tcp(
        T,
        &[
            ("a", "b", false, 3306, Reach::Connected, "web → db by group"),
            ("a", "b", true, 3306, Reach::Connected, "web → db by group"),
            (
                "c",
                "b",
                false,
                3306,
                Reach::Timeout,
                "non-member → db dropped",
            ),
        ],
    );
}

#[test]
fn side_peer_protects_a_container_from_its_host_side_veth() {
    require_root!();
    let container = Netns::create("ctr").unwrap();
    let host = Netns::create("hst").unwrap();
    host.veth_to("vc0", &container, "eth0").unwrap();
    host.add_addr("vc0", "198.18.5.1/24").unwrap();
    container.add_addr("eth0", "198.18.5.2/24").unwrap();
    let _srv = [80u16, 81].map(|p| {
        TcpServer::start(&container, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p)).unwrap()
    });
    let _hsrv = TcpServer::start(&host, "198.18.5.1:7000".parse().unwrap()).unwrap();
    let (dir, path) = scratch_config(
        "peer",
        &format!(
            "security_groups:
  - id: sg-ctr
    ingress:
      - {{ protocol: tcp, ports: 80, cidr: 198.18.5.0/24 }}
interfaces:
  - {{ name: vc0, netns: \"{}\", side: peer, security_groups: [sg-ctr], addresses: [198.18.5.2] }}
",
            host.name()
        ),
    );
    let model = apply::load(&path, &[]).unwrap();
    apply::apply(&model, &ApplyOptions::default()).unwrap();
    let id = IfaceId::new("vc0", Some(host.name()));
    let into = |port| probe::tcp_connect(&host, SocketAddr::new([198, 18, 5, 2].into(), port), T);
    let r80 = into(80);
    let r81 = into(81);
    let out = probe::tcp_connect(&container, "198.18.5.1:7000".parse().unwrap(), T);
    apply::detach(&id).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        r80,
        Reach::Connected,
        "inbound to the container on 80 allowed"
    );
    assert_eq!(
        r81,
        Reach::Timeout,
        "inbound to the container on 81 dropped"
    );
    assert_eq!(
        out,
        Reach::Connected,
        "the container's outbound (default egress) allowed"
    );
    assert_eq!(into(81), Reach::Connected, "detach restores connectivity");
}
