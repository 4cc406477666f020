//! Differential test: random configs × random packet sequences through the
//! real programs (BPF_PROG_TEST_RUN) and through the reference evaluator
//! (`model::eval::Conntrack`); every verdict must be equal.
//!
//! `SG_DIFF_CASES` sets the number of packets (default 100,000);
//! `SG_DIFF_SEED` replays one config. A failure prints the seed, the config
//! and the packet sequence up to the disagreement.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sg_user::{
    compile::compile_iface,
    harness::packet::{
        Ext, Frame, L4, ipv4_fragment, ipv6_with_ext, with_hop_limit, with_ip_proto,
    },
    harness::testrun::{Instance, TC_ACT_OK, XDP_PASS},
    model::{
        self, Direction,
        eval::{Conntrack, Fragment, ND_HOP_LIMIT, Packet, tcp_flags},
    },
    require_root,
};

/// SplitMix64: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

/// Remote addresses: a few clusters so CIDRs overlap and nest.
fn remote_v4(rng: &mut Rng) -> Ipv4Addr {
    let third = *rng.pick(&[1u8, 1, 2, 3, 200]);
    Ipv4Addr::new(
        198,
        *rng.pick(&[18u8, 18, 19]),
        third,
        *rng.pick(&[1u8, 7, 9, 130, 255]),
    )
}

fn remote_v6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        *rng.pick(&[0u16, 1, 1, 2]),
        0,
        0,
        0,
        0,
        *rng.pick(&[1u16, 7, 0x99]),
    )
}

fn cidr(rng: &mut Rng) -> String {
    if rng.chance(30) {
        let a = remote_v6(rng);
        let len = *rng.pick(&[0u8, 32, 48, 64, 128]);
        return ipnet::Ipv6Net::new(a, len).unwrap().trunc().to_string();
    }
    let a = remote_v4(rng);
    let len = *rng.pick(&[0u8, 15, 16, 24, 25, 30, 32]);
    ipnet::Ipv4Net::new(a, len).unwrap().trunc().to_string()
}

const PORTS: [u16; 8] = [22, 53, 80, 443, 3306, 8080, 40000, 65535];

fn rule(rng: &mut Rng, groups: usize) -> String {
    let mut r = String::from("      - { ");
    match rng.below(10) {
        0..=3 => {
            let p = *rng.pick(&["tcp", "udp", "6", "17"]);
            let ports = match rng.below(4) {
                0 => "all".to_string(),
                1 => rng.pick(&PORTS).to_string(),
                _ => {
                    let a = *rng.pick(&PORTS);
                    let b = *rng.pick(&PORTS);
                    format!("\"{}-{}\"", a.min(b), a.max(b))
                }
            };
            write!(r, "protocol: {p}, ports: {ports}, ").unwrap();
        }
        4..=5 => {
            let p = *rng.pick(&["icmp", "icmpv6"]);
            write!(r, "protocol: {p}, ").unwrap();
            match rng.below(3) {
                0 => {}
                1 => write!(r, "icmp_type: {}, ", rng.pick(&[0u8, 3, 8, 128, 129])).unwrap(),
                _ => write!(
                    r,
                    "icmp_type: {}, icmp_code: {}, ",
                    rng.pick(&[3u8, 8, 128]),
                    rng.pick(&[0u8, 4])
                )
                .unwrap(),
            }
        }
        6..=7 => r.push_str("protocol: all, "),
        _ => write!(r, "protocol: {}, ", rng.pick(&[47u8, 132])).unwrap(),
    }
    match rng.below(10) {
        0 if groups > 1 => write!(r, "group: sg-{} }}", rng.below(groups as u64)).unwrap(),
        1 => r.push_str("prefix_list: pl-a }"),
        _ => write!(r, "cidr: \"{}\" }}", cidr(rng)).unwrap(),
    }
    r
}

/// A random valid config with interface eth0 (the one under test).
fn config(rng: &mut Rng) -> String {
    let groups = 1 + rng.below(3) as usize;
    let mut y = String::from("security_groups:\n");
    for g in 0..groups {
        writeln!(y, "  - id: sg-{g}").unwrap();
        let n = rng.below(6);
        y.push_str(if n == 0 {
            "    ingress: []\n"
        } else {
            "    ingress:\n"
        });
        for _ in 0..n {
            y.push_str(&rule(rng, groups));
            y.push('\n');
        }
        if rng.chance(70) {
            let n = rng.below(4);
            if n == 0 {
                y.push_str("    egress: []\n");
            } else {
                y.push_str("    egress:\n");
                for _ in 0..n {
                    y.push_str(&rule(rng, groups));
                    y.push('\n');
                }
            }
        }
    }
    writeln!(
        y,
        "prefix_lists:\n  - id: pl-a\n    cidrs: [\"{}\", \"{}\"]",
        cidr(rng),
        cidr(rng)
    )
    .unwrap();
    let attached: Vec<String> = (0..groups)
        .filter(|_| rng.chance(70))
        .map(|g| format!("sg-{g}"))
        .collect();
    let attached = if attached.is_empty() {
        vec!["sg-0".to_string()]
    } else {
        attached
    };
    writeln!(
        y,
        "interfaces:\n  - name: eth0\n    security_groups: [{}]\n    addresses: [{LOCAL_V4}, \"{LOCAL_V6}\"]",
        attached.join(", ")
    )
    .unwrap();
    writeln!(
        y,
        "members:\n  sg-{}: [\"{}\", \"{}\"]",
        rng.below(groups as u64),
        remote_v4(rng),
        remote_v6(rng)
    )
    .unwrap();
    y
}

/// A flow of the generated sequence, seen from the protected machine.
struct Flow {
    remote: IpAddr,
    local: IpAddr,
    proto: u8,
    lport: u16,
    rport: u16,
    /// ICMP echo identifier; 0 is common and must not meet other ICMP.
    ident: u16,
    opened_inbound: bool,
}

/// Packets of a few flows, interleaved, in both directions, with fragments
/// and packets shaped like neighbour discovery mixed in.
fn sequence(rng: &mut Rng, len: usize) -> Vec<Packet> {
    let new_flows = |rng: &mut Rng| -> Vec<Flow> {
        (0..4)
            .map(|_| {
                let v6 = rng.chance(35);
                let (remote, local) = if v6 {
                    (IpAddr::V6(remote_v6(rng)), IpAddr::V6(LOCAL_V6))
                } else {
                    (IpAddr::V4(remote_v4(rng)), IpAddr::V4(LOCAL_V4))
                };
                let proto = match rng.below(10) {
                    0..=3 => 6,
                    4..=6 => 17,
                    7..=8 => {
                        if v6 {
                            58
                        } else {
                            1
                        }
                    }
                    _ => 47,
                };
                Flow {
                    remote,
                    local,
                    proto,
                    lport: *rng.pick(&PORTS),
                    rport: 30000 + rng.below(4) as u16,
                    ident: *rng.pick(&[0u16, 0, 7, 443]),
                    opened_inbound: rng.chance(50),
                }
            })
            .collect()
    };
    let mut flows = new_flows(rng);
    let mut out = Vec::with_capacity(len);
    let mut next_frag_id = 1u32;
    let mut frag_ids: Vec<(Packet, u32)> = vec![];
    for i in 0..len {
        if rng.chance(3) {
            out.push(nd_shaped(rng));
            continue;
        }
        // Fresh flows now and then, on the same connection table.
        if i % 40 == 39 {
            flows = new_flows(rng);
        }
        let p = flow_packet(rng, &flows);
        match rng.below(100) {
            // A datagram in fragments: the first judged, a later one follows.
            0..=3 => {
                let id = next_frag_id;
                next_frag_id += 1;
                let first = Packet {
                    fragment: Some(Fragment { id, first: true }),
                    ..p
                };
                frag_ids.push((p, id));
                out.push(first);
            }
            // A later fragment: of a datagram seen before, or of none.
            4..=6 => {
                let (base, id) = if rng.chance(70) && !frag_ids.is_empty() {
                    *rng.pick(&frag_ids)
                } else {
                    next_frag_id += 1;
                    (p, next_frag_id)
                };
                out.push(Packet {
                    fragment: Some(Fragment { id, first: false }),
                    ..base
                });
            }
            _ => out.push(p),
        }
    }
    out
}

/// Shaped like neighbour discovery, or nearly: IPv6 ICMPv6 133–137 (or an
/// echo) with code 0 or 1 and hop limit 255 or 64, to a global, link-local
/// or multicast address either way; or IPv4 protocol 58 with type 135.
fn nd_shaped(rng: &mut Rng) -> Packet {
    let inbound = rng.chance(50);
    let direction = if inbound {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let hop_limit = if rng.chance(70) { ND_HOP_LIMIT } else { 64 };
    let code = if rng.chance(80) { 0 } else { 1 };
    if rng.chance(15) {
        let remote = IpAddr::V4(remote_v4(rng));
        let local = IpAddr::V4(LOCAL_V4);
        let (src, dst) = if inbound {
            (remote, local)
        } else {
            (local, remote)
        };
        return Packet {
            proto: 58,
            hop_limit,
            ..Packet::icmp(0, direction, src, dst, 135, code, 0)
        };
    }
    let remote: IpAddr = match rng.below(3) {
        0 => "fe80::9".parse().unwrap(),
        1 => (*rng.pick(&["ff02::1", "ff02::1:ff00:10", "ff05::2"]))
            .parse()
            .unwrap(),
        _ => IpAddr::V6(remote_v6(rng)),
    };
    let local = IpAddr::V6(LOCAL_V6);
    let (src, dst) = if inbound {
        (remote, local)
    } else {
        (local, remote)
    };
    let kind = *rng.pick(&[133u8, 134, 135, 136, 137, 128]);
    Packet {
        hop_limit,
        ..Packet::icmp(0, direction, src, dst, kind, code, 0)
    }
}

/// One packet of one of `flows`.
fn flow_packet(rng: &mut Rng, flows: &[Flow]) -> Packet {
    {
        {
            let f = rng.pick(flows);
            // Mostly the opener's direction first, replies later.
            let forward = rng.chance(60);
            let inbound = f.opened_inbound == forward;
            let (src, dst) = if inbound {
                (f.remote, f.local)
            } else {
                (f.local, f.remote)
            };
            // The "server" port is the local port of inbound-opened flows.
            let (server, client) = if f.opened_inbound {
                (f.lport, f.rport)
            } else {
                (f.rport.wrapping_add(0), f.lport)
            };
            let (sport, dport) = if forward {
                (client, server)
            } else {
                (server, client)
            };
            let direction = if inbound {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            match f.proto {
                6 => {
                    let flags = *rng.pick(&[
                        tcp_flags::SYN,
                        tcp_flags::SYN | tcp_flags::ACK,
                        tcp_flags::ACK,
                        tcp_flags::ACK,
                        tcp_flags::ACK,
                        tcp_flags::FIN | tcp_flags::ACK,
                        tcp_flags::RST,
                        // Never opens a connection: dropped as invalid.
                        tcp_flags::SYN | tcp_flags::FIN,
                        tcp_flags::SYN | tcp_flags::RST,
                    ]);
                    Packet::tcp(0, direction, src, sport, dst, dport, flags)
                }
                17 => Packet::udp(0, direction, src, sport, dst, dport),
                1 | 58 => {
                    let v6 = f.proto == 58;
                    let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
                    let kind = if rng.chance(15) {
                        *rng.pick(&[3u8, 2, 11])
                    } else if forward {
                        req
                    } else {
                        rep
                    };
                    let code = if rng.chance(20) { 4 } else { 0 };
                    Packet::icmp(0, direction, src, dst, kind, code, f.ident)
                }
                p => Packet {
                    proto: p,
                    ..Packet::udp(0, direction, src, 0, dst, 0)
                },
            }
        }
    }
}

fn frame(p: &Packet) -> Vec<u8> {
    let l4 = match p.proto {
        6 => L4::Tcp {
            src: p.sport,
            dst: p.dport,
            flags: p.tcp_flags,
        },
        17 => L4::Udp {
            src: p.sport,
            dst: p.dport,
        },
        1 | 58 => {
            let (kind, code) = p.icmp.expect("icmp packets carry type/code");
            L4::Icmp {
                kind,
                code,
                ident: p.sport,
            }
        }
        proto => L4::Other { proto },
    };
    let mut bytes = Frame {
        src: p.src,
        dst: p.dst,
        l4,
        payload: 4,
    }
    .build();
    if p.proto == 58 && p.src.is_ipv4() {
        // ICMPv6-shaped bytes under IPv4 (the builder picks ICMP by family).
        bytes = with_ip_proto(&bytes, 58);
    }
    bytes = with_hop_limit(&bytes, p.hop_limit);
    match p.fragment {
        None => bytes,
        Some(f) => {
            let (offset, more) = if f.first { (0, true) } else { (185, false) };
            if p.src.is_ipv4() {
                ipv4_fragment(&bytes, f.id as u16, offset, more)
            } else {
                // Headers that may follow the Fragment header, by datagram.
                let after: &[Ext] = match f.id % 3 {
                    0 => &[],
                    1 => &[Ext::DestOpts],
                    _ => &[Ext::Auth, Ext::DestOpts],
                };
                let mut chain = vec![Ext::Fragment {
                    offset,
                    more,
                    id: f.id,
                }];
                chain.extend_from_slice(after);
                ipv6_with_ext(&bytes, &chain)
            }
        }
    }
}

/// Timeouts long enough that nothing expires during the test, in both.
const NO_EXPIRY: [u64; sg_common::conntrack::TIMEOUT_SLOTS] = [86400 * 10; 9];

fn run_case(
    seed: u64,
    packets: usize,
    seen: &mut BTreeMap<String, usize>,
) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let yaml = config(&mut rng);
    let Ok(model) = model::from_str(&yaml, &[]) else {
        // Random rules sometimes duplicate each other, which AWS (and the
        // validator) reject; such a config is skipped, not compared.
        return Ok(0);
    };
    let iface = model
        .interface("eth0")
        .expect("eth0 in every generated config")
        .clone();
    let mut inst = Instance::load(false).map_err(|e| format!("load: {e:#}"))?;
    let generation = inst.policy.next_generation().unwrap();
    inst.policy
        .install(&compile_iface(&model, &iface, generation), NO_EXPIRY)
        .map_err(|e| e.to_string())?;
    let mut reference = Conntrack::for_interface(&iface);
    let seq = sequence(&mut rng, packets);
    for (i, p) in seq.iter().enumerate() {
        let expected = reference.step(&model, &iface, p);
        *seen.entry(format!("{:?}", expected.outcome)).or_default() += 1;
        let bytes = frame(p);
        let kernel_pass = match p.direction {
            Direction::Ingress => inst.xdp_verdict(&bytes) == XDP_PASS,
            Direction::Egress => inst.tc(true, &bytes).unwrap() == TC_ACT_OK,
        };
        if kernel_pass != expected.outcome.allowed() {
            let history: Vec<String> = seq[..=i].iter().map(|p| format!("  {p:?}")).collect();
            return Err(format!(
                "seed {seed}: packet {i} kernel={} reference={:?}\nconfig:\n{yaml}\npackets:\n{}",
                if kernel_pass { "pass" } else { "drop" },
                expected,
                history.join("\n")
            ));
        }
    }
    Ok(seq.len())
}

#[test]
fn kernel_agrees_with_the_reference_evaluator() {
    require_root!();
    let total: usize = std::env::var("SG_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if let Some(seed) = std::env::var("SG_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        run_case(seed, 1000, &mut BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    // Loading the programs dominates a config's cost; packets are cheap.
    let per_config = 2500;
    let (mut done, mut seed, mut skipped) = (0, 1, 0);
    let mut seen = BTreeMap::new();
    while done < total {
        let n = run_case(seed, per_config.min(total - done), &mut seen)
            .unwrap_or_else(|e| panic!("{e}"));
        skipped += usize::from(n == 0);
        done += n;
        seed += 1;
    }
    assert!(done >= total, "ran {done} packet cases");
    assert!(
        skipped * 5 < seed as usize,
        "too many invalid random configs: {skipped} of {}",
        seed - 1
    );
    eprintln!(
        "{done} packet cases over {} configs agreed ({skipped} invalid configs skipped): {seen:?}",
        seed - 1
    );
    // The comparison means something only if every kind of verdict occurred.
    for outcome in [
        "NewFlow",
        "Untracked",
        "Stateless",
        "Established",
        "Reply",
        "Denied",
        "Bypass",
        "Invalid",
        "FragmentFollows",
        "FragmentOrphan",
    ] {
        let n = seen.get(outcome).copied().unwrap_or(0);
        assert!(
            n * 200 >= done.min(20_000),
            "outcome {outcome} too rare ({n} of {done}): {seen:?}"
        );
    }
}
