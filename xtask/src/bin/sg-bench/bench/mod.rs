//! `cargo xtask bench`: every figure measured in one run on this machine,
//! reported as ratios to the peers measured in the same run, written to
//! BENCHMARKS.md with SVG charts. Never used by tests for timings: the test
//! suite runs [`BenchConfig::smoke`] only to keep this code working.

pub mod containers;
pub mod control;
pub mod hosts;
pub mod legacy;
pub mod per_packet;
pub mod pressure;
pub mod prog_cost;
pub mod report;
pub mod traffic;

use std::time::Instant;

use anyhow::Result;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub name: &'static str,
    /// BPF_PROG_TEST_RUN repeats per per-packet measurement.
    pub repeat: u32,
    /// Distinct new flows for the new-flow cost.
    pub new_flows: u32,
    /// Best of this many runs per per-packet figure.
    pub runs: usize,
    /// Rule-set sizes (rules, or prefixes when ≥ 10,000).
    pub sizes: Vec<usize>,
    pub members: usize,
    /// Seconds per traffic measurement; repetitions (median).
    pub traffic_secs: u64,
    pub traffic_reps: usize,
    /// Rule counts for the connection-rate series.
    pub conn_rules: Vec<usize>,
    pub control_members: u32,
    pub host_ifaces: u32,
    /// Interface counts of the one-data-plane-per-host section.
    pub scale_ifaces: Vec<u32>,
    pub flood: u32,
    pub ct_capacity: u32,
    /// Containers started one after another (time to enforced).
    pub containers: usize,
    /// Agents sharing one etcd, and membership changes timed through them.
    pub agents: usize,
    pub membership_changes: usize,
    /// Sections to run (`per-packet`, `traffic`, `prog-cost`, `control`,
    /// `scale`, `containers`, `hosts`, `pressure`); empty: all.
    pub only: Vec<String>,
}

impl BenchConfig {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

impl BenchConfig {
    /// The full run (BENCHMARKS.md): about 10 minutes on 2 cores.
    pub fn full() -> Self {
        BenchConfig {
            name: "full",
            repeat: 1_000_000,
            new_flows: 20_000,
            runs: 3,
            sizes: vec![1, 100, 1000, 10_000, 100_000],
            members: 10_000,
            traffic_secs: 5,
            traffic_reps: 3,
            conn_rules: vec![10, 100, 1000],
            control_members: 10_000,
            host_ifaces: 100,
            scale_ifaces: vec![1, 100, 1000],
            flood: 100_000,
            ct_capacity: 65_536,
            containers: 50,
            agents: 10,
            membership_changes: 20,
            only: Vec::new(),
        }
    }

    /// `--quick`: the same sections, smaller (under 3 minutes).
    pub fn quick() -> Self {
        BenchConfig {
            name: "quick",
            repeat: 200_000,
            new_flows: 5_000,
            runs: 1,
            sizes: vec![1, 1000, 100_000],
            members: 10_000,
            traffic_secs: 2,
            traffic_reps: 1,
            conn_rules: vec![1000],
            control_members: 10_000,
            host_ifaces: 20,
            scale_ifaces: vec![1, 100, 1000],
            flood: 20_000,
            ct_capacity: 8_192,
            containers: 20,
            agents: 10,
            membership_changes: 5,
            only: Vec::new(),
        }
    }

    /// For the test suite: every code path, tiny sizes, no meaning in the numbers.
    #[cfg(test)]
    pub fn smoke() -> Self {
        BenchConfig {
            name: "smoke",
            repeat: 1_000,
            new_flows: 50,
            runs: 1,
            sizes: vec![1, 10_000],
            members: 1_000,
            traffic_secs: 1,
            traffic_reps: 1,
            conn_rules: vec![10],
            control_members: 100,
            host_ifaces: 3,
            scale_ifaces: vec![1, 3],
            flood: 300,
            ct_capacity: 256,
            containers: 3,
            agents: 2,
            membership_changes: 2,
            only: Vec::new(),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    pub config: String,
    pub per_packet: Vec<per_packet::Row>,
    pub traffic: Vec<report::TrafficRow>,
    pub conn_rate: Vec<report::ConnRow>,
    /// Real-traffic ns per program run (BPF run-time statistics).
    pub prog_cost: Vec<prog_cost::ProgCostRow>,
    pub control: Vec<control::ControlRow>,
    /// Time to enforced on a container host (podman + sg-cni).
    pub containers: Option<containers::ContainersRow>,
    /// Why the container section did not run, when it did not.
    pub containers_skipped: Option<String>,
    /// Membership propagation through etcd.
    pub propagation: Option<hosts::PropagationRow>,
    pub propagation_skipped: Option<String>,
    pub pressure: Vec<pressure::PressureRow>,
    pub reclaim: Vec<pressure::ReclaimRow>,
    pub host_ifaces: u32,
    pub seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs every section (`sgctl`: the binary the control-plane figures time);
/// `progress` gets one line per step.
pub fn run(
    cfg: &BenchConfig,
    sgctl: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Results> {
    let t = Instant::now();
    let mut r = Results {
        config: cfg.name.into(),
        ..Results::default()
    };
    for v6 in [false, true] {
        if !cfg.runs("per-packet") {
            break;
        }
        let mut sets = per_packet::rule_sets(v6, &cfg.sizes);
        sets.push(per_packet::members_set(v6, cfg.members));
        for set in &sets {
            progress(&format!(
                "per-packet: {} ({})",
                set.name,
                if v6 { "IPv6" } else { "IPv4" }
            ));
            r.per_packet.push(per_packet::measure(
                set,
                v6,
                cfg.repeat,
                cfg.new_flows,
                cfg.runs,
            )?);
        }
    }
    if cfg.runs("traffic") {
        traffic_sections(cfg, &mut r, progress)?;
    }
    if cfg.runs("prog-cost") {
        progress("program cost in real traffic (bpf_stats)");
        let bed = traffic::Testbed::new()?;
        r.prog_cost = prog_cost::measure(&bed, cfg.traffic_secs, cfg.traffic_reps)?;
    }
    if cfg.runs("control") {
        progress("control plane");
        r.control = control::measure(sgctl, cfg.control_members, cfg.host_ifaces)?;
        r.host_ifaces = cfg.host_ifaces;
    }
    if cfg.runs("scale") {
        progress("host scale (one data plane per host)");
        let dir = std::env::temp_dir().join(format!("sg-bench-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let scale = control::host_scale(&dir, &cfg.scale_ifaces);
        let _ = std::fs::remove_dir_all(&dir);
        r.control.extend(scale?);
    }
    if cfg.runs("containers") {
        progress(&format!(
            "containers: {} started one after another (podman, sg-cni)",
            cfg.containers
        ));
        match containers::podman_unavailable() {
            None => r.containers = Some(containers::measure(sgctl, cfg.containers)?),
            Some(why) => r.containers_skipped = Some(why),
        }
    }
    if cfg.runs("hosts") {
        progress(&format!(
            "many hosts: {} agents on one etcd, {} membership changes",
            cfg.agents, cfg.membership_changes
        ));
        match hosts::etcd_unavailable() {
            None => {
                r.propagation = Some(hosts::measure(sgctl, cfg.agents, cfg.membership_changes)?);
            }
            Some(why) => r.propagation_skipped = Some(why),
        }
    }
    if cfg.runs("pressure") {
        progress("conntrack under pressure");
        for untracked in [false, true] {
            r.pressure.push(pressure::flood(
                cfg.ct_capacity,
                100.min(cfg.ct_capacity / 4),
                cfg.flood,
                untracked,
            )?);
        }
        progress("in-kernel reclaim of expired connections");
        for capacity in [cfg.ct_capacity, cfg.ct_capacity * 4] {
            r.reclaim.push(pressure::reclaim(capacity)?);
        }
    }
    r.seconds = t.elapsed().as_secs_f64();
    Ok(r)
}

fn traffic_sections(
    cfg: &BenchConfig,
    r: &mut Results,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let bed = traffic::Testbed::new()?;
    for peer in traffic::Peer::ALL {
        progress(&format!("traffic: {}", peer.name()));
        bed.install(peer, 1000)?;
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..cfg.traffic_reps {
            tcp.push(bed.tcp_throughput(cfg.traffic_secs)?);
            udp.push(bed.udp_pps(cfg.traffic_secs)?);
            conns.push(bed.conn_rate(cfg.traffic_secs)?);
        }
        bed.remove(peer)?;
        r.traffic.push(report::TrafficRow {
            peer: peer.name().into(),
            tcp_min: tcp.iter().copied().fold(f64::MAX, f64::min),
            tcp_max: tcp.iter().copied().fold(0.0, f64::max),
            tcp_gbps: median(tcp),
            udp_pps: median(udp),
            conns_per_sec: median(conns),
        });
    }
    for &rules in &cfg.conn_rules {
        for peer in [
            traffic::Peer::Sg,
            traffic::Peer::Iptables,
            traffic::Peer::Nftables,
        ] {
            progress(&format!(
                "connection rate: {} with {rules} rules",
                peer.name()
            ));
            bed.install(peer, rules)?;
            let mut conns = Vec::new();
            for _ in 0..cfg.traffic_reps {
                conns.push(bed.conn_rate(cfg.traffic_secs)?);
            }
            bed.remove(peer)?;
            r.conn_rate.push(report::ConnRow {
                peer: peer.name().into(),
                rules,
                conns_per_sec: median(conns),
            });
        }
    }
    drop(bed);
    Ok(())
}
