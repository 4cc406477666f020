//! `sgctl demo`: the seed article's web server, in throwaway namespaces.
//!
//! Hosts on one segment: `web` (the protected machine), `office` (inside the
//! office range 198.18.1.0/24), `outside` (anyone else) and `db` (a member of
//! the database group). Real connections are made; the programs attached to
//! web's interface count every packet.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result};
use sg_common::Reason;

use crate::{
    loader::{self, AttachOptions},
    netns::{Host, Segment},
    pins::IfaceId,
    probe::{self, Reach, TcpServer},
};

/// The seed article's example rules for the web server, as the demo's legend.
pub const RULES: &str = "\
sg-web inbound : tcp 80, 443 from anywhere (0.0.0.0/0, ::/0)
                 tcp 22, 3389 from the office only (198.18.1.0/24)
sg-web outbound: tcp 3306 to the database group (sg-db)";

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
        v6: false,
        what: "RDP from outside",
    },
    Flow {
        from: "web",
        to: "db",
        port: 3306,
        v6: false,
        what: "MySQL to the db group",
    },
    Flow {
        from: "web",
        to: "outside",
        port: 443,
        v6: false,
        what: "web to the internet",
    },
];

fn host_addr(host: &Host, v6: bool) -> IpAddr {
    if v6 {
        host.ipv6.into()
    } else {
        host.ipv4.into()
    }
}

/// Builds the harness, attaches, runs the flows, prints, cleans up (also on error).
pub fn run() -> Result<String> {
    let mut out = String::new();
    let mut seg = Segment::new().context("creating the demo network")?;
    for (role, v4, v6) in [
        ("web", Ipv4Addr::new(198, 18, 0, 10), 0x10),
        ("office", Ipv4Addr::new(198, 18, 1, 10), 0x1_0010),
        ("outside", Ipv4Addr::new(198, 19, 0, 10), 0x2_0010),
        ("db", Ipv4Addr::new(198, 18, 2, 10), 0x3_0010),
    ] {
        let v6 = Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | v6);
        seg.add_host(role, v4, v6)?;
    }
    writeln!(
        out,
        "network (one bridge, namespaces created for this run):"
    )?;
    for h in &seg.hosts {
        writeln!(
            out,
            "  {:<8} {:<14} {:<20} ns {}",
            h.role,
            h.ipv4,
            h.ipv6,
            h.netns.name()
        )?;
    }
    writeln!(out, "\nrules:\n{RULES}\n")?;

    // Listeners on every port a flow uses, dual-stack.
    let mut servers = Vec::new();
    for flow in FLOWS {
        let host = seg.host(flow.to);
        let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), flow.port);
        if !servers
            .iter()
            .any(|(to, p, _): &(&str, u16, TcpServer)| *to == flow.to && *p == flow.port)
        {
            servers.push((flow.to, flow.port, TcpServer::start(&host.netns, addr)?));
        }
    }

    let web = IfaceId::new(Host::IFACE, Some(seg.host("web").netns.name()));
    let attached =
        loader::attach(&web, &AttachOptions::default(), loader::InitialPolicy::Observe).context("attaching to web's interface")?;
    writeln!(
        out,
        "attached to {} (ingress hook: {}, egress hook: tc)",
        attached.iface,
        attached.ingress_hook.name()
    )?;
    writeln!(
        out,
        "mode: observe — the programs count every packet and pass it \
         (rule enforcement is not built yet)\n"
    )?;

    let result = run_flows(&seg, &mut out);
    let counters = loader::read_counters(&web);
    loader::detach(&web).context("detaching from web's interface")?;
    result?;
    let counters = counters?;
    writeln!(out, "\ncounters on {} (packets / bytes):", web)?;
    for ((direction, reason), c) in counters {
        if c.packets > 0 || reason == Reason::PassUnfiltered {
            writeln!(
                out,
                "  {:<9} {:<11} {:>6} pkts {:>8} bytes",
                direction.name(),
                reason.name(),
                c.packets,
                c.bytes
            )?;
        }
    }
    writeln!(out, "\ndetached; namespaces removed.")?;
    drop(servers);
    Ok(out)
}

fn run_flows(seg: &Segment, out: &mut String) -> Result<()> {
    writeln!(out, "{:<28} {:<8} → {:<26} observed", "flow", "from", "to")?;
    for flow in FLOWS {
        let from = seg.host(flow.from);
        let to = seg.host(flow.to);
        let dst = SocketAddr::new(host_addr(to, flow.v6), flow.port);
        let reach = probe::tcp_connect(&from.netns, dst, Duration::from_secs(1));
        let mark = if reach == Reach::Connected {
            "✓"
        } else {
            "✗"
        };
        writeln!(
            out,
            "{:<28} {:<8} → {:<26} {mark} {}",
            flow.what,
            flow.from,
            format!("{} {}", flow.to, dst),
            reach.name()
        )?;
    }
    Ok(())
}
