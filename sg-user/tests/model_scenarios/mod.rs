//! AWS-documented scenarios, shared by the evaluator tests and the
//! `sgctl check` tests: one config and a table of packets with the verdicts
//! DESIGN.md §1 (AWS behaviour) requires.

#![allow(dead_code)] // each test crate uses a different part of this module

/// The scenario config. Groups:
/// - sg-web: HTTP/HTTPS from anywhere (v4+v6), SSH from 203.0.113.0/24;
///   egress omitted (AWS default: all), so world HTTP(S) flows are untracked.
/// - sg-ping: echo request from 198.18.0.0/15 (icmp type 8) and 2001:db8::/32 (icmpv6 128).
/// - sg-db: MySQL only from members of sg-web (group reference).
/// - default: all traffic from its own members (self-reference), all outbound.
/// - sg-open: SSH and all UDP from 0.0.0.0/0, 5000 from one /32, ICMP from
///   0.0.0.0/0; egress omitted: untracked vs tracked cases.
/// - sg-narrow: SSH from 0.0.0.0/0 but egress only tcp 443: tracked.
pub const CONFIG: &str = r#"
security_groups:
  - id: sg-web
    ingress:
      - { protocol: tcp, ports: 80, cidr: 0.0.0.0/0, description: http }
      - { protocol: tcp, ports: 80, cidr: "::/0", description: http v6 }
      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0, description: https }
      - { protocol: tcp, ports: 443, cidr: "::/0", description: https v6 }
      - { protocol: tcp, ports: 22, cidr: 203.0.113.0/24, description: ssh from the office }
  - id: sg-ping
    ingress:
      - { protocol: icmp, icmp_type: 8, icmp_code: -1, cidr: 198.18.0.0/15 }
      - { protocol: icmpv6, icmp_type: 128, cidr: "2001:db8::/32" }
    egress: []
  - id: sg-db
    ingress:
      - { protocol: "6", ports: 3306, group: sg-web, description: mysql from web }
  - id: default
    ingress:
      - { protocol: "-1", group: default }
  - id: sg-open
    ingress:
      - { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }
      - { protocol: udp, cidr: 0.0.0.0/0 }
      - { protocol: tcp, ports: 5000, cidr: 198.18.0.1/32 }
      - { protocol: icmp, cidr: 0.0.0.0/0 }
  - id: sg-narrow
    ingress:
      - { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }
    egress:
      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }
interfaces:
  - { name: eth0, netns: web1, security_groups: [sg-web, sg-ping], addresses: [198.18.0.10, "2001:db8::10"] }
  - { name: eth0, netns: db1, security_groups: [sg-db], addresses: [198.18.0.20] }
  - { name: eth0, netns: host1, addresses: [198.18.0.31] }
  - { name: eth0, netns: host2, addresses: [198.18.0.32] }
  - { name: eth0, netns: open1, security_groups: [sg-open], addresses: [198.18.0.40] }
  - { name: eth0, netns: narrow1, security_groups: [sg-narrow], addresses: [198.18.0.41] }
members:
  sg-web: [198.18.3.3]
"#;

/// The packet of a scenario.
#[derive(Clone, Copy, Debug)]
pub enum What {
    /// tcp/udp (protocol name) to a port.
    Port(&'static str, u16),
    /// icmp/icmpv6 type and code.
    Icmp(&'static str, u8, u8),
}

/// One row: a packet at an interface and what AWS does with it.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub iface: &'static str,
    pub inbound: bool,
    pub peer: &'static str,
    pub what: What,
    pub allowed: bool,
    /// Only meaningful when allowed.
    pub tracked: bool,
    /// Every rule id that must be reported (exactly this set).
    pub rules: &'static [&'static str],
}

/// A table row, positionally: keeps the table one line per scenario.
#[allow(clippy::too_many_arguments)]
const fn s(
    name: &'static str,
    iface: &'static str,
    inbound: bool,
    peer: &'static str,
    what: What,
    allowed: bool,
    tracked: bool,
    rules: &'static [&'static str],
) -> Scenario {
    Scenario {
        name,
        iface,
        inbound,
        peer,
        what,
        allowed,
        tracked,
        rules,
    }
}

use What::*;

pub const SCENARIOS: &[Scenario] = &[
    s(
        "web: https from anywhere (v4), untracked: egress allows all",
        "eth0@web1",
        true,
        "198.18.77.1",
        Port("tcp", 443),
        true,
        false,
        &["sg-web/in/tcp:443/0.0.0.0/0"],
    ),
    s(
        "web: http from anywhere (v6), untracked",
        "eth0@web1",
        true,
        "2001:db8:77::1",
        Port("tcp", 80),
        true,
        false,
        &["sg-web/in/tcp:80/::/0"],
    ),
    s(
        "web: ssh from the office range, tracked (/24)",
        "eth0@web1",
        true,
        "203.0.113.9",
        Port("tcp", 22),
        true,
        true,
        &["sg-web/in/tcp:22/203.0.113.0/24"],
    ),
    s(
        "web: ssh from elsewhere is denied",
        "eth0@web1",
        true,
        "198.18.77.1",
        Port("tcp", 22),
        false,
        false,
        &[],
    ),
    s(
        "web: other port denied",
        "eth0@web1",
        true,
        "198.18.77.1",
        Port("tcp", 8080),
        false,
        false,
        &[],
    ),
    s(
        "web: udp 443 is not tcp 443",
        "eth0@web1",
        true,
        "198.18.77.1",
        Port("udp", 443),
        false,
        false,
        &[],
    ),
    s(
        "web: outbound to anywhere by default, tracked (ingress not all ports)",
        "eth0@web1",
        false,
        "2001:db8:5::5",
        Port("tcp", 5432),
        true,
        true,
        &["sg-web/out/all/::/0"],
    ),
    s(
        "db: mysql from a web interface address",
        "eth0@db1",
        true,
        "198.18.0.10",
        Port("tcp", 3306),
        true,
        true,
        &["sg-db/in/tcp:3306/sg:sg-web"],
    ),
    s(
        "db: mysql from web's IPv6 address",
        "eth0@db1",
        true,
        "2001:db8::10",
        Port("tcp", 3306),
        true,
        true,
        &["sg-db/in/tcp:3306/sg:sg-web"],
    ),
    s(
        "db: mysql from a declared sg-web member",
        "eth0@db1",
        true,
        "198.18.3.3",
        Port("tcp", 3306),
        true,
        true,
        &["sg-db/in/tcp:3306/sg:sg-web"],
    ),
    s(
        "db: mysql from a non-member denied",
        "eth0@db1",
        true,
        "198.18.0.99",
        Port("tcp", 3306),
        false,
        false,
        &[],
    ),
    s(
        "db: ssh from web denied",
        "eth0@db1",
        true,
        "198.18.0.10",
        Port("tcp", 22),
        false,
        false,
        &[],
    ),
    s(
        "ping: echo request from the range",
        "eth0@web1",
        true,
        "198.18.200.1",
        Icmp("icmp", 8, 0),
        true,
        true,
        &["sg-ping/in/icmp:8/198.18.0.0/15"],
    ),
    s(
        "ping: echo reply is not an echo request",
        "eth0@web1",
        true,
        "198.18.200.1",
        Icmp("icmp", 0, 0),
        false,
        false,
        &[],
    ),
    s(
        "ping: echo request from outside the range",
        "eth0@web1",
        true,
        "203.0.113.1",
        Icmp("icmp", 8, 0),
        false,
        false,
        &[],
    ),
    s(
        "ping: icmpv6 echo request",
        "eth0@web1",
        true,
        "2001:db8:9::9",
        Icmp("icmpv6", 128, 0),
        true,
        true,
        &["sg-ping/in/icmpv6:128/2001:db8::/32"],
    ),
    s(
        "default: self-reference allows another member, any protocol",
        "eth0@host1",
        true,
        "198.18.0.32",
        Port("udp", 53),
        true,
        true,
        &["default/in/all/sg:default"],
    ),
    s(
        "default: self-reference allows tcp too",
        "eth0@host2",
        true,
        "198.18.0.31",
        Port("tcp", 5432),
        true,
        true,
        &["default/in/all/sg:default"],
    ),
    s(
        "default: non-members denied",
        "eth0@host1",
        true,
        "198.18.9.9",
        Port("tcp", 22),
        false,
        false,
        &[],
    ),
    s(
        "default: all outbound",
        "eth0@host1",
        false,
        "203.0.113.50",
        Port("tcp", 443),
        true,
        true,
        &["default/out/all/0.0.0.0/0"],
    ),
    s(
        "untracked: ssh from 0.0.0.0/0 with all outbound",
        "eth0@open1",
        true,
        "203.0.113.7",
        Port("tcp", 22),
        true,
        false,
        &["sg-open/in/tcp:22/0.0.0.0/0"],
    ),
    s(
        "tracked: /32 rule",
        "eth0@open1",
        true,
        "198.18.0.1",
        Port("tcp", 5000),
        true,
        true,
        &["sg-open/in/tcp:5000/198.18.0.1/32"],
    ),
    s(
        "tracked: icmp is always tracked",
        "eth0@open1",
        true,
        "203.0.113.7",
        Icmp("icmp", 8, 0),
        true,
        true,
        &["sg-open/in/icmp/0.0.0.0/0"],
    ),
    s(
        "untracked: outbound udp when inbound allows all udp from 0.0.0.0/0",
        "eth0@open1",
        false,
        "203.0.113.7",
        Port("udp", 53),
        true,
        false,
        &["sg-open/out/all/0.0.0.0/0"],
    ),
    s(
        "tracked: outbound tcp when inbound only allows tcp 22",
        "eth0@open1",
        false,
        "203.0.113.7",
        Port("tcp", 443),
        true,
        true,
        &["sg-open/out/all/0.0.0.0/0"],
    ),
    s(
        "families: an IPv4 /0 rule never matches IPv6",
        "eth0@open1",
        true,
        "2001:db8::7",
        Port("tcp", 22),
        false,
        false,
        &[],
    ),
    s(
        "families: IPv6 egress default still allows IPv6 out",
        "eth0@open1",
        false,
        "2001:db8::7",
        Port("tcp", 22),
        true,
        true,
        &["sg-open/out/all/::/0"],
    ),
    s(
        "tracked: ssh from 0.0.0.0/0 but egress not all ports",
        "eth0@narrow1",
        true,
        "203.0.113.7",
        Port("tcp", 22),
        true,
        true,
        &["sg-narrow/in/tcp:22/0.0.0.0/0"],
    ),
    s(
        "narrow: egress other than 443 denied",
        "eth0@narrow1",
        false,
        "203.0.113.7",
        Port("tcp", 80),
        false,
        false,
        &[],
    ),
    s(
        "union: sg-ping's `egress: []` does not cancel sg-web's default egress",
        "eth0@web1",
        false,
        "198.18.1.1",
        Icmp("icmp", 8, 0),
        true,
        true,
        &["sg-web/out/all/0.0.0.0/0"],
    ),
];
