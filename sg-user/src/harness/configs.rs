//! Configs the tests and the benchmark generate at scale.

use std::fmt::Write as _;

/// The `i`th member of the generated `sg-members` group (198.18.64.0 onwards).
pub fn member(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0)) + i)
}

/// 16 groups × (60 inbound + 60 outbound) rules, one of them a reference to
/// a group with `members` members, on `iface` in `netns`.
pub fn quota_config(netns: &str, iface: &str, members: u32, variant: u32) -> String {
    let mut y = String::from(
        "quotas: { groups_per_interface: 16, rules_per_group: 60 }\nsecurity_groups:\n",
    );
    for g in 0..16u32 {
        writeln!(y, "  - id: sg-{g}\n    ingress:").unwrap();
        for r in 0..60u32 {
            let port = 1000 + g * 100 + r + if g == 0 && r == 0 { variant } else { 0 };
            writeln!(
                y,
                "      - {{ protocol: tcp, ports: {port}, cidr: 198.18.{}.{}/32 }}",
                (g * 60 + r) / 250,
                (g * 60 + r) % 250 + 1
            )
            .unwrap();
        }
        writeln!(y, "    egress:").unwrap();
        for r in 0..59u32 {
            writeln!(
                y,
                "      - {{ protocol: udp, ports: {}, cidr: 198.19.{g}.{r}/32 }}",
                2000 + r
            )
            .unwrap();
        }
        writeln!(
            y,
            "      - {{ protocol: tcp, ports: 3306, group: sg-members }}"
        )
        .unwrap();
    }
    y.push_str("  - id: sg-members\n    ingress: []\n");
    writeln!(
        y,
        "interfaces:\n  - name: {iface}\n    netns: \"{netns}\"\n    addresses: [198.18.0.10]"
    )
    .unwrap();
    y.push_str("    security_groups: [");
    y.push_str(
        &(0..16)
            .map(|g| format!("sg-{g}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    y.push_str("]\nmembers:\n  sg-members: [");
    y.push_str(
        &(0..members)
            .map(|i| member(i).to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    y.push_str("]\n");
    y
}
