//! Real TCP and ICMP traffic between network namespaces through attached
//! programs; counters read back from the pinned map. Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use sg_common::{Direction, Reason};
use sg_user::{
    kernel::loader::{
        self, AttachOptions, AttachedHook, IngressHook, InitialPolicy, LoaderError, Side,
    },
    kernel::pins::IfaceId,
    lab::probe::{self, Reach, TcpServer},
    require_root,
    sys::netns::{Host, Segment},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Two hosts, `a` and `b`, on one bridge.
fn pair() -> Segment {
    let mut seg = Segment::new().expect("creating the segment");
    seg.add_host(
        "a",
        Ipv4Addr::new(198, 18, 0, 1),
        "2001:db8::1".parse().unwrap(),
    )
    .unwrap();
    seg.add_host(
        "b",
        Ipv4Addr::new(198, 18, 0, 2),
        "2001:db8::2".parse().unwrap(),
    )
    .unwrap();
    seg
}

fn iface_of(host: &Host) -> IfaceId {
    IfaceId::new(Host::IFACE, Some(host.netns.name()))
}

fn packets(iface: &IfaceId, direction: Direction) -> u64 {
    loader::read_counters(iface).expect("counters readable")[&(direction, Reason::PassUnfiltered)]
        .packets
}

/// Detaches on drop so a failing test leaves no pins behind.
struct Attachment(IfaceId);

impl Drop for Attachment {
    fn drop(&mut self) {
        let _ = loader::detach(&self.0);
    }
}

#[test]
fn tcp_and_icmp_pass_through_attached_programs_and_are_counted() {
    require_root!();
    let seg = pair();
    let (a, b) = (seg.host("a"), seg.host("b"));
    let _server = TcpServer::start(
        &b.netns,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8080),
    )
    .expect("server in b");
    let iface = iface_of(a);
    let attached = loader::attach(&iface, &AttachOptions::default(), InitialPolicy::Observe)
        .expect("attach to a/eth0");
    let _guard = Attachment(iface.clone());
    assert_eq!(
        attached.ingress_hook,
        AttachedHook::Tc,
        "veth gets TC ingress in auto mode"
    );
    assert!(
        sg_user::kernel::dataplane::attached_ifaces()
            .unwrap()
            .contains(&iface),
        "pinned state is listed"
    );

    for dst in [b.ipv4.into(), std::net::IpAddr::from(b.ipv6)] {
        let before_out = packets(&iface, Direction::Outbound);
        let before_in = packets(&iface, Direction::Inbound);
        let reach = probe::tcp_connect(&a.netns, SocketAddr::new(dst, 8080), TIMEOUT);
        assert_eq!(
            reach,
            Reach::Connected,
            "TCP a → b {dst} through the programs"
        );
        // SYN, ACK (and the FIN exchange): several packets each way.
        assert!(
            packets(&iface, Direction::Outbound) >= before_out + 2,
            "outbound packets of the TCP connection to {dst} counted"
        );
        assert!(
            packets(&iface, Direction::Inbound) >= before_in + 2,
            "inbound packets of the TCP connection to {dst} counted"
        );
    }

    let before_in = packets(&iface, Direction::Inbound);
    assert!(
        probe::ping(&a.netns, b.ipv4.into(), TIMEOUT).unwrap(),
        "ping a → b"
    );
    assert!(
        packets(&iface, Direction::Inbound) > before_in,
        "echo reply counted inbound"
    );
}

#[test]
fn detach_removes_state_and_traffic_still_flows() {
    require_root!();
    let seg = pair();
    let (a, b) = (seg.host("a"), seg.host("b"));
    let _server = TcpServer::start(
        &b.netns,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8081),
    )
    .unwrap();
    let iface = iface_of(a);
    loader::attach(&iface, &AttachOptions::default(), InitialPolicy::Observe).unwrap();
    let _guard = Attachment(iface.clone());

    // A second attach is refused and changes nothing.
    let again = loader::attach(&iface, &AttachOptions::default(), InitialPolicy::Observe);
    assert!(
        matches!(again, Err(LoaderError::AlreadyAttached { .. })),
        "{again:?}"
    );
    assert!(
        loader::read_counters(&iface).is_ok() && iface.dir().exists(),
        "first attachment intact"
    );

    loader::detach(&iface).expect("detach");
    assert!(!iface.dir().exists(), "pins removed");
    assert!(
        !sg_user::kernel::dataplane::attached_ifaces()
            .unwrap()
            .contains(&iface)
    );
    assert!(matches!(
        loader::detach(&iface),
        Err(LoaderError::NotAttached { .. })
    ));
    let reach = probe::tcp_connect(&a.netns, SocketAddr::new(b.ipv4.into(), 8081), TIMEOUT);
    assert_eq!(reach, Reach::Connected, "traffic flows after detach");
}

#[test]
fn peer_side_counts_ingress_as_outbound() {
    require_root!();
    let seg = pair();
    let (a, b) = (seg.host("a"), seg.host("b"));
    let iface = iface_of(a);
    let opts = AttachOptions {
        side: Side::Peer,
        ingress_hook: IngressHook::XdpGeneric,
        ..AttachOptions::default()
    };
    let attached =
        loader::attach(&iface, &opts, InitialPolicy::Observe).expect("attach with generic XDP");
    let _guard = Attachment(iface.clone());
    assert_eq!(attached.ingress_hook, AttachedHook::XdpGeneric);
    let hooks = loader::pinned_hooks(&iface).unwrap();
    assert_eq!(hooks.len(), 2, "ingress and egress links pinned: {hooks:?}");

    // b pings a: the echo request arrives on a's ingress hook. With side
    // peer, traffic arriving here leaves the protected workload: outbound.
    let before = packets(&iface, Direction::Outbound);
    assert!(
        probe::ping(&b.netns, a.ipv4.into(), TIMEOUT).unwrap(),
        "ping b → a"
    );
    assert!(packets(&iface, Direction::Outbound) > before);
}

#[test]
fn unknown_namespace_is_a_clear_error_and_leaves_nothing() {
    require_root!();
    let iface = IfaceId::new("eth0", Some("sg-no-such-namespace"));
    let err =
        loader::attach(&iface, &AttachOptions::default(), InitialPolicy::Observe).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(
        !iface.dir().exists(),
        "nothing pinned after a failed attach"
    );
    assert!(
        !iface.dir().parent().unwrap().exists(),
        "no empty scope directory left"
    );
}
