//! `sgctl demo`: the seed article's web server, enforced in throwaway
//! namespaces, proven with real connections.
//!
//! Hosts on one segment: `web` (group sg-web), `db` (group sg-db), `office`
//! (inside the office range 198.18.1.0/24) and `outside` (anyone else). The
//! groups are applied with the same code as `sgctl apply`; every flow's
//! observed result is compared with the reference evaluator's answer.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    apply::{self, ApplyOptions},
    model::{Direction, Model, eval},
    netns::{Host, Segment},
    pins::IfaceId,
    probe::{self, Reach, TcpServer},
};

/// The demo's groups; `{web}` and `{db}` become the namespaces' names.
pub const CONFIG: &str = r#"# The seed article's web server and its database tier.
security_groups:
  - id: sg-web
    description: web servers
    ingress:
      - { protocol: tcp, ports: 80, cidr: 0.0.0.0/0, description: HTTP from anywhere }
      - { protocol: tcp, ports: 80, cidr: "::/0", description: HTTP from anywhere (IPv6) }
      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0, description: HTTPS from anywhere }
      - { protocol: tcp, ports: 443, cidr: "::/0", description: HTTPS from anywhere (IPv6) }
      - { protocol: tcp, ports: 22, prefix_list: pl-office, description: SSH from the office }
      - { protocol: tcp, ports: 3389, prefix_list: pl-office, description: RDP from the office }
    egress:
      - { protocol: tcp, ports: 3306, group: sg-db, description: MySQL to the database tier }
  - id: sg-db
    description: database servers
    ingress:
      - { protocol: tcp, ports: 3306, group: sg-web, description: MySQL from the web tier }
prefix_lists:
  - id: pl-office
    cidrs: [198.18.1.0/24, "2001:db8:1::/48"]
interfaces:
  - { name: eth0, netns: "{web}", security_groups: [sg-web], addresses: [198.18.0.10, "2001:db8::10"] }
  - { name: eth0, netns: "{db}", security_groups: [sg-db], addresses: [198.18.2.10, "2001:db8:3::10"] }
"#;

struct Flow {
    from: &'static str,
    to: &'static str,
    port: u16,
    v6: bool,
    what: &'static str,
}

const FLOWS: &[Flow] = &[
    Flow {
        from: "outside",
        to: "web",
        port: 443,
        v6: false,
        what: "HTTPS from anywhere",
    },
    Flow {
        from: "outside",
        to: "web",
        port: 80,
        v6: true,
        what: "HTTP from anywhere (IPv6)",
    },
    Flow {
        from: "office",
        to: "web",
        port: 22,
        v6: false,
        what: "SSH from the office",
    },
    Flow {
        from: "outside",
        to: "web",
        port: 22,
        v6: false,
        what: "SSH from outside",
    },
    Flow {
        from: "outside",
        to: "web",
        port: 3389,
        v6: true,
        what: "RDP from outside (IPv6)",
    },
    Flow {
        from: "web",
        to: "db",
        port: 3306,
        v6: false,
        what: "MySQL web → db",
    },
    Flow {
        from: "office",
        to: "db",
        port: 3306,
        v6: false,
        what: "MySQL office → db",
    },
    Flow {
        from: "web",
        to: "outside",
        port: 443,
        v6: false,
        what: "web → the internet",
    },
];

fn host_addr(host: &Host, v6: bool) -> IpAddr {
    if v6 {
        host.ipv6.into()
    } else {
        host.ipv4.into()
    }
}

/// What the reference evaluator says of a new TCP connection `from` → `to`:
/// it must leave `from` (if protected) and enter `to` (if protected).
fn expected(model: &Model, seg: &Segment, flow: &Flow) -> bool {
    let (from, to) = (seg.host(flow.from), seg.host(flow.to));
    let allows = |host: &Host, direction: Direction, peer: IpAddr| {
        let key = format!("{}@{}", Host::IFACE, host.netns.name());
        match model.interface(&key) {
            None => true,
            Some(iface) => {
                eval::decide(
                    model,
                    iface,
                    direction,
                    &eval::PacketDesc::tcp(peer, flow.port),
                )
                .allowed
            }
        }
    };
    allows(from, Direction::Egress, host_addr(to, flow.v6))
        && allows(to, Direction::Ingress, host_addr(from, flow.v6))
}

/// Builds the harness, applies, runs the flows, prints, cleans up (also on error).
pub fn run() -> Result<String> {
    let mut out = String::new();
    let mut seg = Segment::new().context("creating the demo network")?;
    for (role, v4, v6) in [
        ("web", Ipv4Addr::new(198, 18, 0, 10), "2001:db8::10"),
        ("db", Ipv4Addr::new(198, 18, 2, 10), "2001:db8:3::10"),
        ("office", Ipv4Addr::new(198, 18, 1, 10), "2001:db8:1::10"),
        ("outside", Ipv4Addr::new(198, 19, 0, 10), "2001:db8:2::10"),
    ] {
        seg.add_host(role, v4, v6.parse::<Ipv6Addr>()?)?;
    }
    writeln!(
        out,
        "network: one bridge, a namespace per host (removed at the end)"
    )?;
    for h in &seg.hosts {
        writeln!(out, "  {:<8} {:<13} {}", h.role, h.ipv4, h.ipv6)?;
    }

    let dir = std::env::temp_dir().join(format!("sgctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.yaml");
    let text = CONFIG
        .replace("{web}", seg.host("web").netns.name())
        .replace("{db}", seg.host("db").netns.name());
    std::fs::write(&path, &text)?;
    let model = apply::load(&path, &[])
        .map_err(|p| anyhow::anyhow!("the demo config is invalid: {p:?}"))?;

    let mut servers = Vec::new();
    for flow in FLOWS {
        if !servers
            .iter()
            .any(|(to, p, _): &(&str, u16, TcpServer)| *to == flow.to && *p == flow.port)
        {
            let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), flow.port);
            servers.push((
                flow.to,
                flow.port,
                TcpServer::start(&seg.host(flow.to).netns, addr)?,
            ));
        }
    }

    let changes =
        apply::apply(&model, &ApplyOptions::default()).context("applying the demo groups")?;
    writeln!(
        out,
        "\napplied sg-web to web's eth0 and sg-db to db's eth0 ({} interfaces):",
        changes.len()
    )?;
    writeln!(
        out,
        "  sg-web in : tcp 80, 443 from anywhere; tcp 22, 3389 from the office (pl-office)"
    )?;
    writeln!(
        out,
        "  sg-web out: tcp 3306 to sg-db          sg-db in: tcp 3306 from sg-web\n"
    )?;

    let web = IfaceId::new(Host::IFACE, Some(seg.host("web").netns.name()));
    let db = IfaceId::new(Host::IFACE, Some(seg.host("db").netns.name()));
    let result = run_flows(&model, &seg, &mut out);
    let status = crate::status::iface_status(web.clone());
    for id in [&web, &db] {
        apply::detach(id).with_context(|| format!("detaching {id}"))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let disagreements = result?;
    writeln!(
        out,
        "\n`sgctl status` of web's interface, before detaching:"
    )?;
    out.push_str(&crate::status::render(&status?));
    writeln!(out, "\ndetached; namespaces removed.")?;
    drop(servers);
    if disagreements > 0 {
        print!("{out}");
        bail!("{disagreements} flows disagree with the reference evaluator");
    }
    Ok(out)
}

/// Runs every flow; returns how many disagree with the evaluator.
fn run_flows(model: &Model, seg: &Segment, out: &mut String) -> Result<usize> {
    writeln!(
        out,
        "{:<27} {:<8} {:<8} {:<6} {:<6} observed",
        "flow", "from", "to", "port", "rules"
    )?;
    let mut disagreements = 0;
    for flow in FLOWS {
        let dst = SocketAddr::new(host_addr(seg.host(flow.to), flow.v6), flow.port);
        let reach = probe::tcp_connect(&seg.host(flow.from).netns, dst, Duration::from_secs(1));
        let allowed = expected(model, seg, flow);
        let agrees = allowed == (reach == Reach::Connected);
        disagreements += usize::from(!agrees);
        writeln!(
            out,
            "{:<27} {:<8} {:<8} {:<6} {:<6} {} {}",
            flow.what,
            flow.from,
            flow.to,
            flow.port,
            if allowed { "allow" } else { "deny" },
            if reach == Reach::Connected {
                "connected"
            } else {
                "blocked  "
            },
            if agrees { "✓" } else { "✗ DISAGREES" }
        )?;
    }
    Ok(disagreements)
}
