//! The three data-path holes that were reproduced with real packets, tested
//! the same way: namespaces, a config applied as `sgctl apply` does, real
//! datagrams. Needs root.
//!
//! - Packets shaped like neighbour discovery (IPv4 protocol 58, a router
//!   advertisement with hop limit 64) are judged by the rules.
//! - Expired connection entries make room for new flows with no user-space
//!   process running.
//! - An install that stopped after writing some entries leaves nothing that
//!   a later install keeps.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    thread::sleep,
    time::Duration,
};

mod common;

use common::{A_ONLY, Lab};
use sg_user::{
    agent::apply::ApplyOptions,
    agent::status,
    compile::compile_iface,
    kernel::loader::{AttachOptions, AttachedHook, IngressHook},
    kernel::pins,
    kernel::policy_maps::PolicyMaps,
    lab::probe::{self, Reach, TcpServer, UdpEcho, UdpPeer},
    model::{self, Choice as _},
    require_root,
    sys::netns::Netns,
};

const T: Duration = Duration::from_millis(700);
const IPPROTO_ICMPV6: i32 = sg_common::proto::ICMPV6 as i32;

/// A raw socket of `family` for `proto`, opened inside `ns`.
fn raw_socket(ns: &Netns, family: i32, proto: i32) -> OwnedFd {
    ns.run(|| {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        };
        // SAFETY: `tv` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO");
        fd
    })
}

/// A socket address for `ip` (port 0), as sendto(2) takes it.
fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = v6.octets();
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

fn send(fd: &OwnedFd, dst: IpAddr, payload: &[u8]) {
    let (ss, len) = sockaddr(dst);
    // SAFETY: the buffer and address are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    assert_eq!(
        n,
        payload.len() as isize,
        "sendto: {}",
        io::Error::last_os_error()
    );
}

/// Datagrams received within the socket's timeout whose byte at `at` is
/// `first` (IPv4 raw sockets read the IP header too; ICMPv6 ones do not).
fn received(fd: &OwnedFd, at: usize, first: u8) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: `buf` is writable for its length.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return n;
        }
        if (got as usize) > at && buf[at] == first {
            n += 1;
        }
    }
}

fn set_hop_limit(fd: &OwnedFd, hops: i32) {
    // SAFETY: an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            (&hops as *const i32).cast(),
            size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "IPV6_UNICAST_HOPS");
}

/// How many of 5 packets of each shape from b reach a: (IPv4 protocol 58
/// with an ND-shaped first byte, router advertisement with hop limit 64,
/// router advertisement with hop limit 255).
fn nd_shaped_arrivals(lab: &Lab) -> (usize, usize, usize) {
    let a4 = lab.addr("a", false, 0).ip();
    let a6 = lab.addr("a", true, 0).ip();
    let rx4 = raw_socket(lab.ns("a"), libc::AF_INET, IPPROTO_ICMPV6);
    let rx6 = raw_socket(lab.ns("a"), libc::AF_INET6, IPPROTO_ICMPV6);
    let tx4 = raw_socket(lab.ns("b"), libc::AF_INET, IPPROTO_ICMPV6);
    let tx6 = raw_socket(lab.ns("b"), libc::AF_INET6, IPPROTO_ICMPV6);
    // Neighbour solicitation bytes (type 135, code 0) under IPv4.
    for _ in 0..5 {
        send(&tx4, a4, &[135, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad]);
    }
    let v4 = received(&rx4, 20, 135);
    // Router advertisement: type 134, code 0, hop limit, flags, lifetime …
    let ra = [134u8, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    set_hop_limit(&tx6, 64);
    for _ in 0..5 {
        send(&tx6, a6, &ra);
    }
    let routed = received(&rx6, 0, 134);
    set_hop_limit(&tx6, 255);
    for _ in 0..5 {
        send(&tx6, a6, &ra);
    }
    let on_link = received(&rx6, 0, 134);
    (v4, routed, on_link)
}

#[test]
fn packets_shaped_like_neighbour_discovery_are_judged_by_the_rules() {
    require_root!();
    let mut lab = Lab::new("nd");
    lab.apply(&format!(
        "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: tcp, ports: 80, cidr: 0.0.0.0/0 }}
{A_ONLY}"
    ));
    assert_eq!(
        nd_shaped_arrivals(&lab),
        (0, 0, 5),
        "(IPv4 protocol 58, RA hop limit 64, RA hop limit 255): only real ND bypasses"
    );
    // The listeners do see what the rules allow: the test can tell.
    lab.apply(&format!(
        "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: all, cidr: 198.18.0.2/32 }}
      - {{ protocol: all, cidr: \"2001:db8::2/128\" }}
{A_ONLY}"
    ));
    assert_eq!(nd_shaped_arrivals(&lab), (5, 5, 5));
}

#[test]
fn expired_connections_make_room_without_a_sweeper() {
    require_root!();
    let mut lab = Lab::new("ctexp");
    let _dns = UdpEcho::start(lab.ns("a"), "[::]:53".parse().unwrap()).unwrap();
    let opts = ApplyOptions {
        attach: AttachOptions {
            conntrack_entries: 16,
            ..AttachOptions::default()
        },
        ..ApplyOptions::default()
    };
    // Tracked (the peer is not 0.0.0.0/0); UDP idles out after 30 s.
    lab.apply_with(
        &format!(
            "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: udp, ports: 53, cidr: 198.18.0.0/15 }}
{A_ONLY}"
        ),
        &opts,
    );
    let dst = lab.addr("a", false, 53);
    let answered = |n: usize| {
        (0..n)
            .filter(|_| {
                UdpPeer::bind(lab.ns("b"), "0.0.0.0:0".parse().unwrap(), T)
                    .unwrap()
                    .roundtrip(dst)
            })
            .count()
    };
    assert_eq!(answered(20), 16, "16 entries: four flows refused");
    // No daemon, no `conntrack gc`: only the kernel can free the entries.
    sleep(Duration::from_secs(32));
    assert_eq!(answered(8), 8, "expired entries reclaimed by the kernel");
}

#[test]
fn a_crashed_install_leaves_nothing_behind() {
    require_root!();
    let mut lab = Lab::new("crash");
    let _servers: Vec<TcpServer> = [22, 443, 5432]
        .iter()
        .map(|p| TcpServer::start(lab.ns("a"), SocketAddr::new("::".parse().unwrap(), *p)).unwrap())
        .collect();
    let group =
        |rules: &str| format!("security_groups:\n  - id: sg-a\n    ingress:\n{rules}{A_ONLY}");
    // A rule set no other test uses, so its policy is this interface's alone.
    lab.apply(&group(
        "      - { protocol: tcp, ports: 8181, cidr: 198.19.0.0/16 }\n",
    ));
    // Config A (c's subnet on 22) gets as far as writing its entries under
    // the next generation, then the process dies before the switch.
    let text = group(
        "      - { protocol: tcp, ports: 22, cidr: 198.19.0.0/24 }\n      - { protocol: tcp, ports: 1000-60000, cidr: 198.19.4.0/24 }\n",
    )
    .replace("{a}", lab.ns("a").name());
    let a = model::from_str(&text, &[]).unwrap();
    let iface = a
        .interface(&format!("eth0@{}", lab.ns("a").name()))
        .unwrap();
    let policy = status::iface_status(lab.applied[0].clone()).unwrap().policy;
    let mut maps = PolicyMaps::from_pins(Path::new(pins::MAPS_DIR)).unwrap();
    maps.select(policy, None);
    let g = maps.next_generation().unwrap();
    maps.stage(&compile_iface(&a, iface, g)).unwrap();
    drop(maps);
    // Config B installs as the next generation.
    lab.apply(&group(
        "      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }\n      - { protocol: tcp, ports: 5432, cidr: 198.18.0.2/32 }\n",
    ));
    let tcp = |from: &str, port| probe::tcp_connect(lab.ns(from), lab.addr("a", false, port), T);
    assert_eq!(tcp("c", 22), Reach::Timeout, "A's rule must not survive");
    assert_eq!(tcp("c", 5432), Reach::Timeout);
    assert_eq!(tcp("b", 5432), Reach::Connected);
    assert_eq!(tcp("c", 443), Reach::Connected);
}

/// A tap device whose frames are built from page fragments, as a VM's tap
/// with `IFF_NAPI_FRAGS` builds them (the first iovec of a write goes to
/// the linear part, the others to fragments). Created inside `ns`; closing
/// the descriptor removes it.
fn frags_tap(ns: &Netns, name: &str) -> OwnedFd {
    ns.run(|| {
        // SAFETY: open(2) of a fixed path; checked below.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "/dev/net/tun: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed ifreq is valid; the name fits (checked by the caller's constant).
        let mut req: libc::ifreq = unsafe { zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        const IFF_NAPI: libc::c_short = 0x0010;
        const IFF_NAPI_FRAGS: libc::c_short = 0x0020;
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short | IFF_NAPI | IFF_NAPI_FRAGS;
        // SAFETY: TUNSETIFF with a valid ifreq.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", io::Error::last_os_error());
        fd
    })
}

/// The tap's address (set by the test), so the frames are for this host.
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An Ethernet + IPv4 + UDP frame from 198.18.7.2:5555 to 198.18.7.1:`port`.
fn udp_frame(port: u16) -> Vec<u8> {
    let payload = [0x5au8; 32];
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0,
        0,
        64,
        17,
        0,
        0,
        198,
        18,
        7,
        2,
        198,
        18,
        7,
        1,
    ];
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = TAP_MAC.to_vec();
    frame.extend([0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    frame.extend(ip);
    frame.extend(5555u16.to_be_bytes());
    frame.extend(port.to_be_bytes());
    frame.extend((udp_len as u16).to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

/// Packets of (direction, reason) counted on `id`.
fn counted(id: &pins::IfaceId, reason: &str) -> u64 {
    status::iface_status(id.clone())
        .expect("status")
        .counters
        .iter()
        .filter(|c| c.direction == "inbound" && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

#[test]
fn frames_built_from_page_fragments_are_judged_at_tc_ingress() {
    frags_case(IngressHook::Tc);
}

/// What `auto` picks for a tap (it has a driver with native XDP).
#[test]
fn frames_built_from_page_fragments_are_judged_at_native_xdp() {
    frags_case(IngressHook::Xdp);
}

fn frags_case(hook: sg_user::kernel::loader::IngressHook) {
    require_root!();
    // The tc programs pull headers into the linear part only when a parse
    // of the linear part runs out of bytes. Frames whose headers are in
    // fragments are judged like any other: allowed, denied, never dropped
    // as short. (On this kernel the stack has made the headers linear by
    // the time tc runs, even with GRO off; the check is that nothing is
    // lost on the way, whichever path a kernel takes.)
    require_root!();
    let mut lab = Lab::new(&format!("frags-{}", hook.name()));
    let tap = frags_tap(lab.ns("a"), "sgtap0");
    for args in [
        &["link", "set", "sgtap0", "address", "02:00:00:00:00:01"][..],
        &["addr", "add", "198.18.7.1/24", "dev", "sgtap0"],
        &["link", "set", "sgtap0", "up"],
    ] {
        lab.ns("a").ip(args).expect("tap set-up");
    }
    // Without GRO nothing pulls the IP and UDP headers in on the way up.
    let gro = lab
        .ns("a")
        .exec("ethtool", &["-K", "sgtap0", "gro", "off"])
        .expect("ethtool");
    assert!(gro.status.success(), "ethtool -K gro off: {gro:?}");
    // Listeners on both ports: what the stack delivers shows the verdicts
    // are real, not just counted.
    let listen = |port: u16| {
        lab.ns("a").run(|| {
            let s = std::net::UdpSocket::bind(("198.18.7.1", port)).expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
    };
    let (open, closed) = (listen(7777), listen(7778));
    let delivered = |s: &std::net::UdpSocket| {
        let mut buf = [0u8; 64];
        std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
    };
    let opts = ApplyOptions {
        attach: AttachOptions {
            ingress_hook: hook,
            ..AttachOptions::default()
        },
        ..ApplyOptions::default()
    };
    lab.apply_with(
        "security_groups:
  - id: sg-t
    ingress:
      - { protocol: udp, ports: 7777, cidr: 198.18.7.2/32 }
interfaces:
  - { name: sgtap0, netns: \"{a}\", security_groups: [sg-t], addresses: [198.18.7.1] }
",
        &opts,
    );
    let id = pins::IfaceId::new("sgtap0", Some(lab.ns("a").name()));
    let expected = match hook {
        IngressHook::Tc => AttachedHook::Tc,
        _ => AttachedHook::Xdp,
    };
    let hooks = status::iface_status(id.clone()).expect("status").hooks;
    assert!(
        hooks
            .iter()
            .any(|h| h.direction == "ingress" && h.hook == expected),
        "ingress attached as {expected:?}: {hooks:?}"
    );
    // The Ethernet header in one iovec, the rest in another: tun puts the
    // first into the linear part and the others into page fragments.
    let write = |frame: &[u8]| {
        let (eth, rest) = frame.split_at(14);
        let iov = [
            libc::iovec {
                iov_base: eth.as_ptr() as *mut libc::c_void,
                iov_len: eth.len(),
            },
            libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            },
        ];
        // SAFETY: two valid buffers of the given lengths.
        let n = unsafe { libc::writev(tap.as_raw_fd(), iov.as_ptr(), 2) };
        assert_eq!(
            n,
            frame.len() as isize,
            "tap write: {}",
            io::Error::last_os_error()
        );
    };
    for _ in 0..3 {
        write(&udp_frame(7777));
        write(&udp_frame(7778));
    }
    sleep(Duration::from_millis(200));
    assert_eq!(
        (
            counted(&id, "rule") + counted(&id, "conntrack"),
            counted(&id, "no_rule"),
            counted(&id, "malformed")
        ),
        (3, 3, 0),
        "(allowed, denied, malformed): frames from page fragments are judged, not dropped as short"
    );
    assert_eq!(
        (delivered(&open), delivered(&closed)),
        (3, 0),
        "(to 7777, to 7778) delivered"
    );
}
