//! Config reading and validation: every field, every quota, problems that
//! name file, line, group, direction, rule and the fix; AWS JSON import and
//! the native-YAML round trip; `import:` and `--attach`.

use std::path::{Path, PathBuf};

use sg_user::model::{
    self, Attachment, Direction, L4Match, Model, Peer, PortRange, Problem, Protocol, Severity,
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn errors(text: &str) -> Vec<Problem> {
    match model::from_str(text, &[]) {
        Ok(_) => panic!("expected the config to be invalid:\n{text}"),
        Err(p) => p.into_iter().filter(Problem::is_error).collect(),
    }
}

fn valid(text: &str) -> Model {
    model::from_str(text, &[])
        .unwrap_or_else(|p| panic!("expected a valid config, got {p:#?}\n{text}"))
}

/// One group `g` with these ingress rules (YAML flow mappings).
fn group_with(rules: &[&str]) -> String {
    format!(
        "security_groups:\n  - id: g\n    ingress:\n{}",
        rules
            .iter()
            .map(|r| format!("      - {r}\n"))
            .collect::<String>()
    )
}

/// Asserts exactly one error, whose text contains every needle.
fn one_error(text: &str, needles: &[&str]) -> Problem {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    let msg = e[0].to_string();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} should contain {n:?}");
    }
    e[0].clone()
}

#[test]
fn the_issue_example_shape_loads() {
    let m = valid(
        r#"
security_groups:
  - id: sg-web
    name: web
    description: web tier
    ingress:
      - protocol: tcp
        ports: 443
        cidr: 0.0.0.0/0
        description: https
      - protocol: icmp
        icmp_type: 8
        icmp_code: -1
        cidr: 198.18.0.0/15
    egress:
      - protocol: tcp
        ports: 3306
        group: sg-db
  - id: sg-db
prefix_lists:
  - id: pl-office
    max_entries: 10
    cidrs: [203.0.113.0/24, "2001:db8:1::/48"]
interfaces:
  - name: eth0
    netns: web1
    side: host
    security_groups: [sg-web]
    addresses: [198.18.0.10, "2001:db8::10"]
    conntrack: { tcp_established: 432000, udp_stream: 180, udp: 30 }
members:
  sg-db: [198.18.1.20]
quotas: { groups: 2500, rules_per_group: 60, groups_per_interface: 5, rules_per_interface: 1000 }
"#,
    );
    let web = m.group("sg-web").expect("sg-web");
    assert_eq!(web.name.as_deref(), Some("web"));
    assert_eq!(web.ingress.len(), 2);
    assert_eq!(web.ingress[0].l4, L4Match::Ports(PortRange::single(443)));
    assert_eq!(
        web.ingress[0].origin.line,
        Some(7),
        "rule line (the text starts with a newline)"
    );
    assert_eq!(
        web.ingress[1].l4,
        L4Match::Icmp {
            icmp_type: Some(8),
            icmp_code: None
        }
    );
    assert_eq!(web.egress[0].peer, Peer::Group("sg-db".into()));
    // sg-db omitted egress: the AWS default, all to 0.0.0.0/0 and ::/0.
    let db = m.group("sg-db").expect("sg-db");
    assert!(db.ingress.is_empty());
    let peers: Vec<String> = db.egress.iter().map(|r| r.peer.to_string()).collect();
    assert_eq!(peers, ["0.0.0.0/0", "::/0"]);
    assert!(db.egress.iter().all(|r| r.protocol == Protocol::All));
    let i = m.interface("eth0").expect("unique name finds it");
    assert_eq!(i.key(), "eth0@web1");
    assert_eq!(
        m.members["sg-db"],
        vec!["198.18.1.20".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(m.prefix_list("pl-office").unwrap().quota_weight(), 10);
}

#[test]
fn egress_empty_list_means_nothing_and_null_is_an_error() {
    let m = valid("security_groups:\n  - id: g\n    egress: []\n");
    assert!(m.group("g").unwrap().egress.is_empty());
    one_error(
        "security_groups:\n  - id: g\n    egress:\n",
        &["egress", "[]"],
    );
}

#[test]
fn protocol_forms() {
    let m = valid(&group_with(&[
        "{ protocol: \"6\", ports: 1, cidr: 198.18.0.0/15 }",
        "{ protocol: 17, ports: 2, cidr: 198.18.0.0/15 }",
        "{ protocol: \"-1\", cidr: 198.19.0.0/16 }",
        "{ protocol: -1, cidr: 198.18.0.0/16 }",
        "{ protocol: all, cidr: 198.18.1.0/24 }",
        "{ protocol: \"1\", cidr: 198.18.0.0/15 }",
        "{ protocol: \"58\", cidr: \"2001:db8::/32\" }",
        "{ protocol: 132, cidr: 198.18.0.0/15 }",
    ]));
    let p: Vec<Protocol> = m
        .group("g")
        .unwrap()
        .ingress
        .iter()
        .map(|r| r.protocol)
        .collect();
    use Protocol::*;
    assert_eq!(p, [Tcp, Udp, All, All, All, Icmp, Icmpv6, Other(132)]);
    one_error(
        &group_with(&["{ protocol: 256, cidr: 198.18.0.0/15 }"]),
        &["protocol", "256"],
    );
    one_error(
        &group_with(&["{ protocol: sctp, cidr: 198.18.0.0/15 }"]),
        &["unknown protocol"],
    );
    one_error(&group_with(&["{ cidr: 198.18.0.0/15 }"]), &["no protocol"]);
}

#[test]
fn port_problems() {
    one_error(
        &group_with(&["{ protocol: tcp, ports: 70000, cidr: 198.18.0.0/15 }"]),
        &["ingress rule 0", "70000"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, ports: \"90-80\", cidr: 198.18.0.0/15 }"]),
        &["backwards", "80-90"],
    );
    one_error(
        &group_with(&["{ protocol: icmp, ports: 80, cidr: 198.18.0.0/15 }"]),
        &["has none", "icmp_type"],
    );
    one_error(
        &group_with(&["{ protocol: all, ports: 80, cidr: 198.18.0.0/15 }"]),
        &["ports"],
    );
    one_error(
        &group_with(&["{ protocol: 50, ports: 80, cidr: 198.18.0.0/15 }"]),
        &["ports"],
    );
    one_error(
        &group_with(&["{ protocol: udp, ports: [1, 2], cidr: 198.18.0.0/15 }"]),
        &["YAML"],
    );
    let m = valid(&group_with(&[
        "{ protocol: udp, ports: \"1000-2000\", cidr: 198.18.0.0/15 }",
        "{ protocol: tcp, ports: all, cidr: 198.18.0.0/15 }",
    ]));
    let g = m.group("g").unwrap();
    assert_eq!(
        g.ingress[0].l4,
        L4Match::Ports(PortRange {
            from: 1000,
            to: 2000
        })
    );
    assert_eq!(g.ingress[1].l4, L4Match::Ports(PortRange::ALL));
}

#[test]
fn icmp_problems() {
    one_error(
        &group_with(&["{ protocol: icmp, icmp_code: 4, cidr: 198.18.0.0/15 }"]),
        &["code without a type"],
    );
    one_error(
        &group_with(&["{ protocol: icmp, icmp_type: -1, icmp_code: 4, cidr: 198.18.0.0/15 }"]),
        &["forces code -1"],
    );
    one_error(
        &group_with(&["{ protocol: icmp, icmp_type: 300, cidr: 198.18.0.0/15 }"]),
        &["icmp_type", "300"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, icmp_type: 3, cidr: 198.18.0.0/15 }"]),
        &["icmp_type", "tcp"],
    );
    let m = valid(&group_with(&[
        "{ protocol: icmp, icmp_type: 3, icmp_code: 4, cidr: 198.18.0.0/15 }",
    ]));
    assert_eq!(
        m.group("g").unwrap().ingress[0].l4,
        L4Match::Icmp {
            icmp_type: Some(3),
            icmp_code: Some(4)
        }
    );
    // icmp with an IPv6 peer loads but warns.
    let m = valid(&group_with(&["{ protocol: icmp, cidr: \"::/0\" }"]));
    assert!(
        m.warnings.iter().any(|w| w.to_string().contains("icmpv6")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn peer_problems() {
    let p = one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.1.7/24 }"]),
        &["host bits", "198.18.1.0/24", "198.18.1.7/32"],
    );
    assert_eq!(p.group.as_deref(), Some("g"));
    assert_eq!(p.direction, Some(Direction::Ingress));
    assert_eq!(p.rule, Some(0));
    assert_eq!(p.field, Some("cidr"));
    assert_eq!(p.origin.line, Some(4));
    one_error(
        &group_with(&["{ protocol: tcp, cidr: \"2001:db8::1/32\" }"]),
        &["2001:db8::/32"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.0.1 }"]),
        &["198.18.0.1/32"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.0.0/33 }"]),
        &["not a CIDR"],
    );
    one_error(&group_with(&["{ protocol: tcp }"]), &["no peer"]);
    one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.0.0/15, group: g }"]),
        &["several peers"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, group: sg-nope }"]),
        &["unknown security group", "sg-nope"],
    );
    one_error(
        &group_with(&["{ protocol: tcp, prefix_list: pl-nope }"]),
        &["unknown prefix list", "pl-nope"],
    );
}

#[test]
fn every_problem_is_listed_not_just_the_first() {
    let e = errors(&group_with(&[
        "{ protocol: tcp, ports: 70000, cidr: 198.18.1.7/24 }",
        "{ protocol: bogus, cidr: 198.18.0.0/15 }",
        "{ protocol: icmp, icmp_code: 1, cidr: 198.18.0.0/15 }",
        "{ protocol: tcp, group: nope }",
    ]));
    let rules: Vec<Option<usize>> = e.iter().map(|p| p.rule).collect();
    assert_eq!(
        rules,
        [Some(0), Some(0), Some(1), Some(2), Some(3)],
        "{e:#?}"
    );
    let lines: Vec<Option<u64>> = e.iter().map(|p| p.origin.line).collect();
    assert_eq!(lines, [Some(4), Some(4), Some(5), Some(6), Some(7)]);
}

#[test]
fn duplicates_are_rejected() {
    one_error(
        "security_groups:\n  - id: a\n  - id: a\n",
        &["defined twice"],
    );
    one_error(
        &group_with(&[
            "{ protocol: tcp, ports: 22, cidr: 198.18.0.0/15 }",
            "{ protocol: \"6\", ports: \"22-22\", cidr: 198.18.0.0/15, description: x }",
        ]),
        &["duplicate of ingress rule 0"],
    );
    one_error(
        "security_groups:\n  - id: a\nprefix_lists:\n  - { id: p, cidrs: [] }\n  - { id: p, cidrs: [] }\n",
        &["prefix list id p is defined twice"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a] }\n  - { name: e0, security_groups: [a] }\n",
        &["listed twice"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a, a] }\n",
        &["attached twice"],
    );
    one_error(
        &group_with(&[
            "{ id: r1, protocol: tcp, ports: 1, cidr: 198.18.0.0/15 }",
            "{ id: r1, protocol: tcp, ports: 2, cidr: 198.18.0.0/15 }",
        ]),
        &["rule id r1 is used twice"],
    );
}

#[test]
fn rule_ids_are_stable_and_explicit_ids_win() {
    let a = valid(&group_with(&[
        "{ protocol: tcp, ports: 1, cidr: 198.18.0.0/15 }",
        "{ protocol: udp, ports: 2, cidr: 198.18.0.0/15 }",
    ]));
    let b = valid(&group_with(&[
        "{ protocol: udp, ports: 2, cidr: 198.18.0.0/15, description: moved }",
        "{ protocol: tcp, ports: 1, cidr: 198.18.0.0/15 }",
    ]));
    let ids = |m: &Model| {
        let mut v: Vec<String> = m
            .group("g")
            .unwrap()
            .ingress
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&a), ids(&b), "reordering and descriptions keep ids");
    assert_eq!(
        ids(&a),
        ["g/in/tcp:1/198.18.0.0/15", "g/in/udp:2/198.18.0.0/15"]
    );
    let c = valid(&group_with(&[
        "{ id: sgr-0abc, protocol: tcp, ports: 1, cidr: 198.18.0.0/15 }",
    ]));
    assert_eq!(ids(&c), ["sgr-0abc"]);
}

#[test]
fn interface_problems() {
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0 }\n",
        &["no security groups", "default"],
    );
    let m = valid("security_groups:\n  - id: default\ninterfaces:\n  - { name: e0 }\n");
    assert_eq!(m.interfaces[0].groups, ["default"]);
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [b] }\n",
        &["unknown security group", "\"b\""],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: a-very-long-interface, security_groups: [a] }\n",
        &["interface name"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, side: left, security_groups: [a] }\n",
        &["host or peer"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a], addresses: [198.18.0.0/24] }\n",
        &["not an IP address"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, netns: \"a/b\", security_groups: [a] }\n",
        &["namespace"],
    );
    one_error(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a], colour: red }\n",
        &["YAML"],
    );
    let m = valid(
        "security_groups:\n  - id: a\ninterfaces:\n  - { name: veth1, side: peer, security_groups: [a] }\n",
    );
    assert_eq!(m.interfaces[0].side, model::Side::Peer);
}

#[test]
fn conntrack_timeouts_use_aws_ranges() {
    let base = "security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a], conntrack: ";
    for (ct, needle) in [
        ("{ tcp_established: 59 }", "60..=432000"),
        ("{ tcp_established: 432001 }", "60..=432000"),
        ("{ udp_stream: 181 }", "60..=180"),
        ("{ udp_stream: 59 }", "60..=180"),
        ("{ udp: 29 }", "30..=60"),
        ("{ udp: 61 }", "30..=60"),
        ("{ udp: thirty }", "whole number"),
    ] {
        one_error(&format!("{base}{ct} }}\n"), &["conntrack", needle]);
    }
    let m = valid(&format!(
        "{base}{{ tcp_established: 60, udp_stream: 60, udp: 60 }} }}\n"
    ));
    let t = m.interfaces[0].conntrack;
    assert_eq!((t.tcp_established, t.udp_stream, t.udp), (60, 60, 60));
    let m =
        valid("security_groups:\n  - id: a\ninterfaces:\n  - { name: e0, security_groups: [a] }\n");
    assert_eq!(
        m.interfaces[0].conntrack,
        model::ConntrackTimeouts::default()
    );
    assert_eq!(model::ConntrackTimeouts::default().tcp_established, 432_000);
}

fn rules_yaml(n: usize, cidr: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{ protocol: tcp, ports: {}, cidr: \"{}\" }}",
                i + 1,
                cidr(i)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn rules_per_group_counts_ipv4_and_ipv6_separately() {
    let v4 = rules_yaml(60, |_| "198.18.0.0/15".into());
    let v6 = rules_yaml(60, |_| "2001:db8::/32".into());
    // 60 + 60 is fine: separate quotas.
    valid(&format!(
        "security_groups:\n  - id: g\n    ingress: [{v4}, {v6}]\n"
    ));
    let v4_61 = rules_yaml(61, |_| "198.18.0.0/15".into());
    one_error(
        &format!("security_groups:\n  - id: g\n    ingress: [{v4_61}]\n"),
        &["61 IPv4 ingress rules", "60"],
    );
    let v6_61 = rules_yaml(61, |_| "2001:db8::/32".into());
    one_error(
        &format!("security_groups:\n  - id: g\n    egress: [{v6_61}]\n"),
        &["61 IPv6 egress rules"],
    );
    // Raised quota.
    valid(&format!(
        "security_groups:\n  - id: g\n    ingress: [{v4_61}]\nquotas: {{ rules_per_group: 100, groups_per_interface: 10 }}\n"
    ));
}

#[test]
fn prefix_lists_count_as_their_max_size_and_references_as_one() {
    let base = |max: u32, extra: usize| {
        format!(
            "prefix_lists:\n  - {{ id: pl, max_entries: {max}, cidrs: [198.18.0.0/24] }}\nsecurity_groups:\n  - id: g\n    ingress: [{{ protocol: tcp, prefix_list: pl }}{}]\n",
            (0..extra)
                .map(|i| format!(", {{ protocol: tcp, ports: {}, group: g }}", i + 1))
                .collect::<String>()
        )
    };
    valid(&base(50, 10)); // 50 + 10 references = 60
    one_error(&base(50, 11), &["61 IPv4 ingress rules"]);
    one_error(&base(61, 0), &["61 IPv4"]);
    // Without max_entries the list counts its CIDRs.
    let m = valid(
        "prefix_lists:\n  - { id: pl, cidrs: [198.18.0.0/24, 198.18.1.0/24] }\nsecurity_groups:\n  - id: g\n",
    );
    assert_eq!(m.prefix_list("pl").unwrap().quota_weight(), 2);
    one_error(
        "security_groups: []\nprefix_lists:\n  - { id: pl, max_entries: 1, cidrs: [198.18.0.0/24, 198.18.1.0/24] }\n",
        &["more than its max_entries"],
    );
}

#[test]
fn interface_quotas() {
    let groups: String = (0..6).map(|i| format!("  - id: g{i}\n")).collect();
    let six = "[g0, g1, g2, g3, g4, g5]";
    one_error(
        &format!(
            "security_groups:\n{groups}interfaces:\n  - {{ name: e0, security_groups: {six} }}\n"
        ),
        &["6 groups attached", "groups_per_interface is 5"],
    );
    valid(&format!(
        "security_groups:\n{groups}interfaces:\n  - {{ name: e0, security_groups: {six} }}\nquotas: {{ groups_per_interface: 6, rules_per_group: 60 }}\n"
    ));
    one_error(
        "security_groups: []\nquotas: { groups_per_interface: 17 }\n",
        &["groups_per_interface", "1..=16"],
    );
    one_error(
        "security_groups: []\nquotas: { groups_per_interface: 16, rules_per_group: 100 }\n",
        &["1600", "exceeds rules_per_interface 1000"],
    );
    one_error(
        "security_groups:\n  - id: a\n  - id: b\nquotas: { groups: 1 }\n",
        &["2 security groups", "quota groups is 1"],
    );
    // rules_per_interface: the sum over attached groups.
    let g = |name: &str| {
        format!(
            "  - id: {name}\n    ingress: [{}]\n",
            rules_yaml(40, |_| "198.18.0.0/15".into())
        )
    };
    one_error(
        &format!(
            "security_groups:\n{}{}{}interfaces:\n  - {{ name: e0, security_groups: [a, b, c] }}\nquotas: {{ rules_per_interface: 100, rules_per_group: 50, groups_per_interface: 2 }}\n",
            g("a"),
            g("b"),
            g("c")
        ),
        &["3 groups attached"],
    );
    let e = errors(&format!(
        "security_groups:\n{}{}{}interfaces:\n  - {{ name: e0, security_groups: [a, b, c] }}\nquotas: {{ rules_per_interface: 100, rules_per_group: 33, groups_per_interface: 3 }}\n",
        g("a"),
        g("b"),
        g("c")
    ));
    assert!(
        e.iter().any(|p| p
            .to_string()
            .contains("120 IPv4 ingress rules across its groups")),
        "{e:#?}"
    );
}

#[test]
fn members_must_name_groups_and_addresses() {
    one_error(
        "security_groups:\n  - id: a\nmembers:\n  b: [198.18.0.1]\n",
        &["unknown security group \"b\""],
    );
    one_error(
        "security_groups:\n  - id: a\nmembers:\n  a: [nope]\n",
        &["not an IP address"],
    );
}

#[test]
fn parse_errors_carry_the_line() {
    let e = errors("security_groups:\n  - id: a\n    ingress:\n      - { protocol: tcp\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].origin.line.is_some(), "{e:?}");
    let e = errors("security_groups:\n  - id: a\n    ingres: []\n");
    assert!(e[0].to_string().contains("ingres"), "{}", e[0]);
    assert_eq!(e[0].origin.line, Some(3));
}

#[test]
fn attachments_parse_and_attach() {
    let a: Attachment = "eth0@web1=sg-1, sg-2".parse().unwrap();
    assert_eq!(
        a,
        Attachment {
            iface: "eth0".into(),
            netns: Some("web1".into()),
            groups: vec!["sg-1".into(), "sg-2".into()],
            ..Attachment::default()
        }
    );
    assert!("eth0".parse::<Attachment>().is_err());
    assert!("eth0=".parse::<Attachment>().is_err());
    assert!("@ns=sg".parse::<Attachment>().is_err());
    let m = model::from_str("security_groups:\n  - id: sg-1\n", std::slice::from_ref(&a));
    let e = m.expect_err("sg-2 is unknown");
    assert!(
        e.iter()
            .any(|p| p.to_string().contains("sg-2")
                && p.origin.path.as_deref() == Some("--attach eth0")),
        "{e:#?}"
    );
}

// ---- AWS JSON --------------------------------------------------------------

#[test]
fn the_aws_documentation_example_imports_and_validates() {
    let path = examples().join("aws-describe-security-groups.json");
    let m = model::load(&path).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(m.groups.len(), 3);
    let web = m.group("sg-0123456789abcdef1").expect("web");
    assert_eq!(web.name.as_deref(), Some("web"));
    // 80 (v4, v6), 443 (v4, v6), 22 (range, prefix list), icmp 8: one rule per peer.
    assert_eq!(web.ingress.len(), 7);
    assert_eq!(
        web.ingress[6].l4,
        L4Match::Icmp {
            icmp_type: Some(8),
            icmp_code: None
        }
    );
    assert_eq!(web.egress.len(), 1);
    assert_eq!(web.egress[0].protocol, Protocol::Tcp, "\"6\" is tcp");
    assert_eq!(
        web.egress[0].peer,
        Peer::Group("sg-0123456789abcdef2".into())
    );
    let default = m.group("sg-0a1b2c3d4e5f60718").expect("default");
    assert!(default.is_default());
    assert_eq!(
        default.ingress[0].peer,
        Peer::Group(default.id.clone()),
        "self-reference"
    );
    let db = m.group("sg-0123456789abcdef2").unwrap();
    assert_eq!(db.ingress[1].protocol, Protocol::Other(50));
    assert_eq!(db.ingress[1].l4, L4Match::Any);
    // The prefix list is referenced only: a placeholder with a warning.
    assert!(
        m.prefix_list("pl-0123456789abcdef0")
            .unwrap()
            .cidrs
            .is_empty()
    );
    assert!(m.warnings.iter().any(|w| w.severity == Severity::Warning
        && w.to_string().contains("get-managed-prefix-list-entries")));
}

#[test]
fn aws_json_ignores_unknown_fields_and_reports_bad_values() {
    let ok = r#"{"SecurityGroups":[{"GroupId":"sg-1","Future":{"x":[1,2]},"IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"198.18.0.0/15","Unknown":true}],"NewPeerKind":[{}]}]}],"NextToken":null}"#;
    let m = valid(ok);
    assert_eq!(m.group("sg-1").unwrap().ingress.len(), 1);
    let bad = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":21,"IpRanges":[{"CidrIp":"198.18.0.1/15"}]}]}]}"#;
    let e = errors(bad);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter()
            .all(|p| p.origin.path.as_deref()
                == Some("SecurityGroups[0].IpPermissions[0].IpRanges[0]")),
        "{e:#?}"
    );
    let no_id = r#"{"SecurityGroups":[{"GroupName":"x"}]}"#;
    assert!(errors(no_id)[0].to_string().contains("no id"));
    let icmp_any = r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissions":[{"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"198.18.0.0/15"}]}],"IpPermissionsEgress":[]}]}"#;
    let m = valid(icmp_any);
    let g = m.group("sg-1").unwrap();
    assert_eq!(
        g.ingress[0].l4,
        L4Match::Icmp {
            icmp_type: None,
            icmp_code: None
        }
    );
    assert!(g.egress.is_empty(), "IpPermissionsEgress [] = nothing");
}

/// The policy-relevant content of a model, without source locations.
fn policy(m: &Model) -> String {
    let mut s = String::new();
    for g in &m.groups {
        s += &format!("group {} {:?} {:?}\n", g.id, g.name, g.description);
        for r in g.ingress.iter().chain(&g.egress) {
            s += &format!(
                "  {} {} {:?} {} {:?}\n",
                r.id, r.protocol, r.l4, r.peer, r.description
            );
        }
    }
    s += &format!("{:?}\n{:?}\n{:?}\n", m.prefix_lists, m.members, m.quotas);
    for i in &m.interfaces {
        s += &format!(
            "{} {:?} {:?} {:?} {:?}\n",
            i.key(),
            i.side,
            i.groups,
            i.addresses,
            i.conntrack
        );
    }
    s
}

#[test]
fn import_aws_round_trips() {
    let path = examples().join("aws-describe-security-groups.json");
    let attach = [Attachment {
        iface: "eth0".into(),
        netns: Some("web1".into()),
        groups: vec!["sg-0123456789abcdef1".into()],
        ..Attachment::default()
    }];
    let from_json = model::load_with(
        &path,
        &model::LoadOptions {
            attach: &attach,
            ..Default::default()
        },
    )
    .unwrap();
    let yaml = model::aws::to_native_yaml(&from_json).unwrap();
    let from_yaml = valid(&yaml);
    assert_eq!(policy(&from_json), policy(&from_yaml), "YAML:\n{yaml}");
    // And once more: YAML -> YAML is a fixed point.
    assert_eq!(model::aws::to_native_yaml(&from_yaml).unwrap(), yaml);
}

#[test]
fn native_round_trip_of_the_web_tier_example() {
    let m = model::load(&examples().join("web-tier.yaml")).unwrap_or_else(|p| panic!("{p:#?}"));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let yaml = model::aws::to_native_yaml(&m).unwrap();
    assert_eq!(policy(&m), policy(&valid(&yaml)), "YAML:\n{yaml}");
}

#[test]
fn native_config_can_import_aws_json() {
    let dir = std::env::temp_dir().join(format!("sg-model-import-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(
        examples().join("aws-describe-security-groups.json"),
        dir.join("sub/groups.json"),
    )
    .unwrap();
    let cfg = dir.join("main.yaml");
    std::fs::write(
        &cfg,
        "import: sub/groups.json\nprefix_lists:\n  - { id: pl-0123456789abcdef0, cidrs: [198.18.9.0/24] }\ninterfaces:\n  - { name: eth0, security_groups: [sg-0123456789abcdef1], addresses: [198.18.0.10] }\n",
    )
    .unwrap();
    let m = model::load(&cfg).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(m.groups.len(), 3);
    assert_eq!(
        m.prefix_list("pl-0123456789abcdef0").unwrap().cidrs.len(),
        1,
        "the native definition wins over the placeholder"
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    std::fs::write(&cfg, "import: missing.json\n").unwrap();
    let e = model::load(&cfg).unwrap_err();
    assert!(e[0].to_string().contains("missing.json"), "{e:?}");
    std::fs::write(&cfg, "import: main.yaml\n").unwrap();
    let e = model::load(&cfg).unwrap_err();
    assert!(e[0].to_string().contains("not AWS JSON"), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn group_references_without_addresses_warn_offline() {
    let m = valid(
        "security_groups:\n  - id: a\n    ingress: [{ protocol: tcp, group: b }]\n  - id: b\ninterfaces:\n  - { name: nosuch0, security_groups: [a] }\n  - { name: nosuch1, security_groups: [b] }\n",
    );
    let w: Vec<String> = m.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("nosuch1") && w[0].contains("addresses"),
        "{w:?}"
    );
    let a = m.interface("nosuch0").unwrap();
    assert!(
        m.rules_for(a, Direction::Ingress)
            .all(|r| r.peers.is_empty())
    );
    // With discovery, the reference resolves.
    let mut m = m;
    let found: std::collections::BTreeMap<String, Vec<std::net::IpAddr>> =
        [("nosuch1".to_owned(), vec!["198.18.0.5".parse().unwrap()])].into();
    m.rediscover(&found);
    assert!(m.warnings.is_empty());
    let a = m.interface("nosuch0").unwrap().clone();
    let peers: Vec<String> = m
        .rules_for(&a, Direction::Ingress)
        .flat_map(|r| r.peers.iter().map(ToString::to_string))
        .collect();
    assert_eq!(peers, ["198.18.0.5/32"]);
}

/// The second example of the AWS CLI documentation for
/// describe-security-groups, as printed there (with its trailing comma).
#[test]
fn the_aws_cli_documentation_example_imports_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/ok/aws_cli_docs_example_trailing_comma.json");
    let attach: Vec<model::Attachment> = vec!["eth0=sg-903004f8".parse().expect("attachment")];
    let opts = model::LoadOptions {
        attach: &attach,
        ..Default::default()
    };
    let m = model::load_with(&path, &opts).unwrap_or_else(|p| panic!("{p:#?}"));
    let g = m.group("sg-903004f8").expect("the group");
    assert_eq!(
        g.ingress.len(),
        2,
        "self-reference for all traffic, and ssh from 203.0.113.0/24"
    );
    assert_eq!(g.ingress[0].peer, Peer::Group("sg-903004f8".into()));
    assert_eq!(
        g.ingress[1].l4,
        L4Match::Ports(model::PortRange { from: 22, to: 22 })
    );
    assert_eq!(g.egress.len(), 1);
    let iface = m.interface("eth0").expect("attached");
    let d = model::eval::decide(
        &m,
        iface,
        model::Direction::Ingress,
        &model::eval::PacketDesc::tcp("203.0.113.9".parse().unwrap(), 22),
    );
    assert!(d.allowed && d.tracked);
}

#[test]
fn descriptions_are_checked_as_aws_checks_them() {
    // Everything AWS allows loads.
    let m = valid(&group_with(&[
        "{ protocol: tcp, ports: 22, cidr: 198.18.0.0/15, description: \"ssh a-z A-Z 0-9 ._-:/()#,@[]+=&;{}!$*\" }",
    ]));
    assert!(m.groups[0].ingress[0].description.is_some());
    // A character AWS does not allow: named, with line and column.
    let p = one_error(
        "security_groups:\n  - id: g\n    ingress:\n      - protocol: tcp\n        cidr: 198.18.0.0/15\n        description: ab%cd\n",
        &[
            "`description`",
            "character 3",
            "`%`",
            "U+0025",
            "line 6, column 24",
        ],
    );
    assert_eq!(p.origin.line, Some(6), "the description's own line");
    // An escape sequence written with YAML escapes: the value's start.
    one_error(
        &group_with(&[
            "{ protocol: tcp, cidr: 198.18.0.0/15, description: \"x\\e[2Jy\\nforged line\" }",
        ]),
        &["character 2", "\\u{1b}", "starts at line 4"],
    );
    // Non-ASCII, and AWS JSON (no line: the JSON path instead).
    one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.0.0/15, description: 'ssh → office' }"]),
        &["character 5", "`→`", "U+2192"],
    );
    let aws = r#"{"SecurityGroups":[{"GroupId":"sg-1","Description":"tab\there","IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"198.18.0.0/15","Description":"bell\u0007"}]}]}]}"#;
    let e = errors(aws);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter()
            .any(|p| p.to_string().contains("SecurityGroups[0]:")
                && p.field == Some("description")
                && p.message.contains("\\t")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|p| p.to_string().contains("IpRanges[0]") && p.message.contains("\\u{7}")),
        "{e:#?}"
    );
    // Length: 255 characters load, 256 do not; group names too.
    let long = |n: usize| {
        group_with(&[&format!(
            "{{ protocol: tcp, cidr: 198.18.0.0/15, description: {} }}",
            "d".repeat(n)
        )])
    };
    valid(&long(255));
    one_error(&long(256), &["256 characters", "255"]);
    one_error(
        &format!(
            "security_groups:\n  - id: g\n    name: {}\n",
            "n".repeat(100_000)
        ),
        &["`name`", "100000 characters"],
    );
}

#[test]
fn ipv4_octets_with_leading_zeros_are_ambiguous_everywhere() {
    for (text, needle) in [
        (
            group_with(&["{ protocol: tcp, cidr: 198.18.010.0/24 }"]),
            "198.18.010.0/24: octet 010",
        ),
        (
            group_with(&["{ protocol: tcp, cidr: \"::ffff:1.02.3.0/120\" }"]),
            "octet 02",
        ),
        (
            "prefix_lists: [{ id: pl, cidrs: [010.0.0.0/8] }]\nsecurity_groups: []\n".to_owned(),
            "octet 010",
        ),
        (
            "security_groups: [{ id: g }]\ninterfaces: [{ name: e0, security_groups: [g], addresses: [198.18.0.010] }]\n".to_owned(),
            "octet 010",
        ),
        (
            "security_groups: [{ id: g }]\nmembers: { g: [198.018.0.1] }\n".to_owned(),
            "octet 018",
        ),
        (
            r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissions":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"198.18.010.0/24"}]}]}]}"#.to_owned(),
            "octet 010",
        ),
    ] {
        let p = one_error(&text, &[needle, "octal"]);
        assert!(p.fix.contains("write the octet as"), "{p}");
    }
    let p = one_error(
        &group_with(&["{ protocol: tcp, cidr: 198.18.010.0/24 }"]),
        &[],
    );
    assert!(p.fix.contains("10, or 8"), "{p}");
    // Zero itself is fine.
    valid(&group_with(&[
        "{ protocol: tcp, cidr: 0.0.0.0/0 }",
        "{ protocol: udp, cidr: 10.0.0.0/8 }",
    ]));
}

#[test]
fn ipv4_mapped_ipv6_is_rejected_in_both_formats() {
    let p = one_error(
        &group_with(&["{ protocol: tcp, cidr: \"::ffff:198.18.0.0/112\" }"]),
        &["IPv4-mapped", "198.18.0.0/16"],
    );
    assert_eq!(p.field, Some("cidr"));
    one_error(
        r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissions":[{"IpProtocol":"-1","Ipv6Ranges":[{"CidrIpv6":"::ffff:10.0.0.1/128"}]}]}]}"#,
        &["IPv4-mapped", "10.0.0.1/32"],
    );
    one_error(
        "security_groups: [{ id: g }]\ninterfaces: [{ name: e0, security_groups: [g], addresses: [\"::ffff:198.18.0.1\"] }]\n",
        &["IPv4-mapped", "198.18.0.1"],
    );
    // Ordinary IPv6 networks around it still load.
    valid(&group_with(&[
        "{ protocol: tcp, cidr: \"::/0\" }",
        "{ protocol: udp, cidr: \"::/96\" }",
        "{ protocol: icmpv6, cidr: \"64:ff9b::/96\" }",
    ]));
}

#[test]
fn aws_json_inconsistencies_are_rejected_with_aws_wording() {
    let perm =
        |p: &str| format!(r#"{{"SecurityGroups":[{{"GroupId":"sg-1","IpPermissions":[{p}]}}]}}"#);
    for ports in [
        r#""FromPort": -1, "ToPort": -1"#,
        r#""FromPort": -1, "ToPort": 80"#,
        r#""FromPort": 80"#,
        "",
    ] {
        for proto in ["tcp", "udp", "6"] {
            let text = perm(&format!(
                r#"{{"IpProtocol":"{proto}",{ports}{}"IpRanges":[{{"CidrIp":"198.18.0.0/15"}}]}}"#,
                if ports.is_empty() { "" } else { "," }
            ));
            let p = one_error(
                &text,
                &[
                    "Must specify both from and to ports with TCP/UDP",
                    "portRange",
                    "IpPermissions[0]",
                ],
            );
            assert_eq!(p.group.as_deref(), Some("sg-1"), "{p}");
            assert!(p.fix.contains("0-65535"), "{p}");
        }
    }
    // -1 means "any" for ICMP and is ignored for all protocols: still fine.
    valid(&perm(
        r#"{"IpProtocol":"icmp","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"198.18.0.0/15"}]},{"IpProtocol":"-1","FromPort":-1,"ToPort":-1,"IpRanges":[{"CidrIp":"198.18.0.0/15"}]}"#,
    ));
    // A CIDR under the other family's key.
    one_error(
        &perm(r#"{"IpProtocol":"-1","IpRanges":[{"CidrIp":"2001:db8::/32"}]}"#),
        &[
            "CIDR block 2001:db8::/32 is malformed",
            "CidrIp",
            "IpRanges[0]",
            "Ipv6Ranges",
        ],
    );
    one_error(
        &perm(r#"{"IpProtocol":"-1","Ipv6Ranges":[{"CidrIpv6":"198.18.0.0/15"}]}"#),
        &[
            "CIDR block 198.18.0.0/15 is malformed",
            "CidrIpv6",
            "Ipv6Ranges[0]",
            "IpRanges",
        ],
    );
}

#[test]
fn yaml_errors_speak_the_users_language() {
    for (text, needle, fix) in [
        (
            "security_groups:\n  - id: a\n    id: b\n".to_owned(),
            "the key `id` appears twice",
            "keep one",
        ),
        (
            format!(
                "security_groups:\n  - id: a\n    ingress:\n{}",
                "      - {protocol: tcp, ports: 1, cidr: 198.18.0.0/15}\n".repeat(40_000)
            ),
            "too large or too complex",
            "import:",
        ),
        (
            format!("security_groups: {}{}", "[".repeat(5000), "]".repeat(5000)),
            "nested too deeply",
            "",
        ),
        ("- a\n- b\n".to_owned(), "expected a mapping", ""),
    ] {
        let e = errors(&text);
        let all: String = e.iter().map(|p| format!("{p}\n")).collect();
        assert!(all.contains(needle), "{needle:?} missing: {all}");
        assert!(e.iter().all(|p| p.fix.contains(fix)), "{fix:?}: {all}");
        for internal in [
            "budget",
            "Budget",
            "DuplicateKeyPolicy",
            "Options",
            "Nodes {",
            "mapping start",
        ] {
            assert!(!all.contains(internal), "{internal:?} leaks: {all}");
        }
    }
}
