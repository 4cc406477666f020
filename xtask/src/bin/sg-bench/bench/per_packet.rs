//! Per-packet cost with BPF_PROG_TEST_RUN: the real XDP program against the
//! counting-only floor, for rule sets from 1 rule to 100,000 prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use ipnet::IpNet;
use sg_common::conntrack::DEFAULT_TIMEOUTS_S;

use sg_user::{
    compile::{Rule, compile},
    harness::packet::{Frame, L4, TCP_ACK, TCP_SYN},
    harness::testrun::{Instance, XDP_DROP, XDP_PASS},
};

/// One rule set to measure.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub name: String,
    /// Rules of the set; the allowed flow's source is inside every set.
    pub rules: Vec<Rule>,
    /// Distinct peer prefixes (for the report).
    pub prefixes: usize,
}

/// Measured costs (ns/packet, best of the runs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub set: String,
    pub family: &'static str,
    pub rules: usize,
    pub prefixes: usize,
    pub floor_ns: f64,
    pub ct_hit_ns: f64,
    /// New allowed flow (two lookups + conntrack insert), repeat=1 per flow.
    pub new_flow_ns: f64,
    /// The floor measured the same way (repeat=1 per call).
    pub floor_single_ns: f64,
    pub denied_ns: f64,
    /// New flow with flow-log events off (the event's share of new_flow_ns).
    pub new_flow_no_events_ns: f64,
    /// The same established-flow packet in observe mode (entry, config
    /// lookup and counting only: no parsing, no conntrack).
    pub observe_ns: f64,
    pub compile_ms: f64,
    pub install_ms: f64,
    /// The previous release's programs on the same frames, same run (IPv4
    /// rule sets only; 0 when not measured): established, new flow, denied.
    pub legacy_ct_hit_ns: f64,
    pub legacy_new_flow_ns: f64,
    pub legacy_denied_ns: f64,
}

fn v4_from(i: u32) -> Ipv4Addr {
    // 198.18.0.0/15 has 131,072 addresses; wrap inside it.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i % (1 << 17)))
}

fn v6_from(i: u32) -> Ipv6Addr {
    // 2001:db8::/96 + i: neighbours share a /112, as IPv4 ones share a /26.
    Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | u128::from(i))
}

fn rule(id: String, proto: u8, ports: (u16, u16), peers: Vec<IpNet>) -> Rule {
    Rule::tracked(&id, Some(proto), ports, peers)
}

/// The allowed client, inside every set's prefixes.
pub fn client(v6: bool) -> IpAddr {
    if v6 {
        v6_from(77).into()
    } else {
        v4_from(77).into()
    }
}

fn net(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).expect("valid").trunc()
}

/// The standard sets: 1, 100, 1,000 rules; 10k and 100k prefixes; 10k members.
pub fn rule_sets(v6: bool, sizes: &[usize]) -> Vec<RuleSet> {
    let at = |i: u32| -> IpAddr {
        if v6 {
            v6_from(i).into()
        } else {
            v4_from(i).into()
        }
    };
    let host_len = if v6 { 128 } else { 32 };
    // 198.18.0.0/15 holds 2,048 /26 blocks: room for 1,000 distinct rules.
    let (wide_len, block) = if v6 { (112, 1 << 16) } else { (26, 64) };
    let mut sets = Vec::new();
    for &n in sizes {
        match n {
            // n rules: distinct /26s (/112s), each with its own port range;
            // the client's block allows 443 (so the allowed flow is rule n-1).
            1 | 100 | 1000 => {
                let rules: Vec<Rule> = (0..n as u32)
                    .map(|i| {
                        let base = if i + 1 == n as u32 {
                            77
                        } else {
                            block * (i + 2)
                        };
                        let ports = if i + 1 == n as u32 {
                            (443, 443)
                        } else {
                            (1000 + (i % 50) as u16, 1100 + (i % 50) as u16)
                        };
                        rule(format!("r{i}"), 6, ports, vec![net(at(base), wide_len)])
                    })
                    .collect();
                sets.push(RuleSet {
                    name: format!("{n} rule{}", if n == 1 { "" } else { "s" }),
                    prefixes: n,
                    rules,
                });
            }
            // One rule whose prefix list / group has n entries.
            _ => {
                let peers: Vec<IpNet> = (0..n as u32).map(|i| net(at(77 + i), host_len)).collect();
                sets.push(RuleSet {
                    name: format!("{}k prefixes", n / 1000),
                    prefixes: n,
                    rules: vec![rule("pl".into(), 6, (443, 443), peers)],
                });
                if n >= 100_000 {
                    // Every other address: no two hosts are siblings, so
                    // nothing aggregates (the contiguous set above becomes
                    // a few blocks): the trie's worst case at this size.
                    let peers: Vec<IpNet> = (0..n as u32)
                        .map(|i| net(at(77 + 2 * i), host_len))
                        .collect();
                    sets.push(RuleSet {
                        name: format!("{}k scattered prefixes", n / 1000),
                        prefixes: n,
                        rules: vec![rule("pl".into(), 6, (443, 443), peers)],
                    });
                }
            }
        }
    }
    sets
}

/// A set of `n` group members (a reference: one /32 per member).
pub fn members_set(v6: bool, n: usize) -> RuleSet {
    let at = |i: u32| -> IpAddr {
        if v6 {
            v6_from(i).into()
        } else {
            v4_from(i).into()
        }
    };
    let peers: Vec<IpNet> = (0..n as u32).map(|i| IpNet::from(at(77 + i))).collect();
    RuleSet {
        name: format!("{}k members", n / 1000),
        prefixes: n,
        rules: vec![
            rule("members".into(), 6, (3306, 3306), peers.clone()),
            rule("members-https".into(), 6, (443, 443), peers),
        ],
    }
}

fn syn(src: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let dst: IpAddr = if src.is_ipv6() {
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1).into()
    } else {
        Ipv4Addr::new(198, 19, 255, 1).into()
    };
    // 64-byte frames for IPv4 (14 + 20 + 20 + 10 bytes payload).
    let payload = if src.is_ipv6() { 0 } else { 10 };
    Frame {
        payload,
        ..Frame::new(src, dst, L4::tcp(sport, dport, flags))
    }
    .build()
}

/// Measures one rule set; `repeat` runs per measurement, best of `runs`.
pub fn measure(set: &RuleSet, v6: bool, repeat: u32, new_flows: u32, runs: usize) -> Result<Row> {
    // Room for the established flow and both clients' new flows.
    let mut inst = Instance::load_with(false, new_flows * 2 + 1024)?;
    let t = std::time::Instant::now();
    let policy = compile(inst.policy.next_generation()?, &set.rules, &[]);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    inst.policy.install(&policy, DEFAULT_TIMEOUTS_S)?;
    let install_ms = t.elapsed().as_secs_f64() * 1e3;
    let client = client(v6);
    let best = |f: &mut dyn FnMut() -> Result<f64>| best_of(runs, f);
    // Established flow: open it once, then measure its later packets.
    let open = syn(client, 40000, 443, TCP_SYN);
    anyhow::ensure!(
        inst.xdp(&open, 1)?.0 == XDP_PASS,
        "{}: the allowed flow is not allowed",
        set.name
    );
    let ack = syn(client, 40000, 443, TCP_ACK);
    let ct_hit_ns = best(&mut || Ok(inst.xdp(&ack, repeat)?.1 as f64))?;
    let floor_ns = best(&mut || Ok(inst.floor(&ack, repeat)? as f64))?;
    // Denied: inside the prefixes, a port no rule allows (both lookups run).
    let denied = syn(client, 40001, 9, TCP_SYN);
    anyhow::ensure!(
        inst.xdp(&denied, 1)?.0 == XDP_DROP,
        "{}: the denied packet passes",
        set.name
    );
    let denied_ns = best(&mut || Ok(inst.xdp(&denied, repeat)?.1 as f64))?;
    // New flows: distinct source ports, one run each (the first run of a
    // flow is the only one that misses the table).
    // A twin instance with flow-log events off gets the same flows in the
    // same order, so both tables fill alike and no setting changes between
    // runs (a settings write would evict the cache lines the program reads).
    let mut quiet = Instance::load_with(false, new_flows * 2 + 1024)?;
    quiet.install_rules(&set.rules, &[], DEFAULT_TIMEOUTS_S)?;
    quiet.policy.set_events_per_sec(0)?;
    anyhow::ensure!(
        quiet.xdp(&open, 1)?.0 == XDP_PASS,
        "{}: twin refuses the flow",
        set.name
    );
    // No rate limit on the measured instance: this measures writing the event.
    inst.policy.set_events_per_sec(u32::MAX)?;
    let (mut new_total, mut quiet_total, mut floor_total) = (0u64, 0u64, 0u64);
    let mut reported = 0;
    for i in 0..new_flows {
        if i % 512 == 0 {
            // Keep the ring buffer from filling, so every event is written.
            reported += inst.drain_events()?;
        }
        let frame = syn(client, 1024 + (i % 60000) as u16, 443, TCP_SYN);
        let (verdict, ns) = inst.xdp(&frame, 1)?;
        anyhow::ensure!(verdict == XDP_PASS, "{}: new flow {i} refused", set.name);
        new_total += ns;
        floor_total += inst.floor(&frame, 1)?;
        let (verdict, ns) = quiet.xdp(&frame, 1)?;
        anyhow::ensure!(
            verdict == XDP_PASS,
            "{}: new flow {i} refused by the twin",
            set.name
        );
        quiet_total += ns;
    }
    reported += inst.drain_events()?;
    anyhow::ensure!(
        reported as u32 >= new_flows,
        "{}: only {reported} of {new_flows} events written",
        set.name
    );
    let n = f64::from(new_flows.max(1));
    let (legacy_ct_hit_ns, legacy_new_flow_ns, legacy_denied_ns) = if v6 {
        (0.0, 0.0, 0.0)
    } else {
        legacy_rows(set, repeat, new_flows, runs, client)?
    };
    inst.policy.observe()?;
    let observe_ns = best(&mut || Ok(inst.xdp(&ack, repeat)?.1 as f64))?;
    Ok(Row {
        set: set.name.clone(),
        family: if v6 { "IPv6" } else { "IPv4" },
        rules: set.rules.len(),
        prefixes: set.prefixes,
        floor_ns,
        ct_hit_ns,
        new_flow_ns: new_total as f64 / n,
        floor_single_ns: floor_total as f64 / n,
        denied_ns,
        new_flow_no_events_ns: quiet_total as f64 / n,
        observe_ns,
        compile_ms,
        install_ms,
        legacy_ct_hit_ns,
        legacy_new_flow_ns,
        legacy_denied_ns,
    })
}

/// The smallest of `runs` measurements.
fn best_of(runs: usize, f: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        best = best.min(f()?);
    }
    Ok(best)
}

/// The same three rows through the previous release's programs.
fn legacy_rows(
    set: &RuleSet,
    repeat: u32,
    new_flows: u32,
    runs: usize,
    client: IpAddr,
) -> Result<(f64, f64, f64)> {
    let policy = compile(1, &set.rules, &[]);
    let mut old = super::legacy::Legacy::load(&policy, new_flows * 2 + 1024, u32::MAX)?;
    let best = |f: &mut dyn FnMut() -> Result<f64>| best_of(runs, f);
    let open = syn(client, 40000, 443, TCP_SYN);
    anyhow::ensure!(old.xdp(&open, 1)?.0 == XDP_PASS, "legacy: flow not allowed");
    let ack = syn(client, 40000, 443, TCP_ACK);
    let ct_hit = best(&mut || Ok(old.xdp(&ack, repeat)?.1 as f64))?;
    let denied = syn(client, 40001, 9, TCP_SYN);
    let denied_ns = best(&mut || Ok(old.xdp(&denied, repeat)?.1 as f64))?;
    let mut total = 0u64;
    for i in 0..new_flows {
        if i % 512 == 0 {
            old.drain_events()?;
        }
        let frame = syn(client, 1024 + (i % 60000) as u16, 443, TCP_SYN);
        let (verdict, ns) = old.xdp(&frame, 1)?;
        anyhow::ensure!(verdict == XDP_PASS, "legacy: new flow {i} refused");
        total += ns;
    }
    Ok((
        ct_hit,
        total as f64 / f64::from(new_flows.max(1)),
        denied_ns,
    ))
}
