//! What the kernel itself says a program costs in real traffic: with BPF
//! run-time statistics on (`BPF_ENABLE_STATS`, the switch behind
//! `kernel.bpf_stats_enabled`), every program's `run_time_ns` and `run_cnt`
//! grow with each run; their deltas over a workload give ns per run, caches,
//! skbs and GRO included — what BPF_PROG_TEST_RUN hides.
//!
//! Statistics are on only while this measures (the switch is a file
//! descriptor: closing it turns them off again, whatever happens), and only
//! here: they cost the programs a little themselves, so the throughput rows
//! are measured without them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use sg_common::names;
use sg_user::kernel::loader::{self, AttachOptions, InitialPolicy};
use sg_user::sys::netns::Host;

use super::traffic::{Peer, Testbed};

/// What filters the server's interface while the kernel counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// sg with the benchmark's rules.
    Enforce,
    /// sg attached with no policy (`sgctl attach`): entry point, settings
    /// lookup, counting.
    Observe,
    /// The counting-only tc programs on both hooks, attached as sgctl
    /// attaches its own: what any tc program costs here.
    Floor,
    /// xdp-filter's stateless port filter (skb mode on veth).
    XdpFilter,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Enforce, Mode::Observe, Mode::Floor, Mode::XdpFilter];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "sg enforce",
            Mode::Observe => "sg observe mode",
            Mode::Floor => "floor (count only)",
            Mode::XdpFilter => "xdp-filter",
        }
    }

    /// Whether a loaded program (by its kernel name, 15 characters at most)
    /// is one this mode attached.
    fn owns(self, program: &str) -> bool {
        match self {
            Mode::Enforce | Mode::Observe => {
                program == names::PROG_TC_INGRESS
                    || program == names::PROG_TC_EGRESS
                    || program == names::PROG_XDP_INGRESS
            }
            Mode::Floor => {
                program == names::PROG_TC_FLOOR_INGRESS || program == names::PROG_TC_FLOOR_EGRESS
            }
            Mode::XdpFilter => program.starts_with("xdpfilt"),
        }
    }
}

/// The workloads, as in the traffic section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    BulkTcp,
    SmallUdp,
    ConnPerRequest,
}

impl Workload {
    pub const ALL: [Workload; 3] = [
        Workload::BulkTcp,
        Workload::SmallUdp,
        Workload::ConnPerRequest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::BulkTcp => "bulk TCP (one iperf3 flow)",
            Workload::SmallUdp => "UDP, 64-byte datagrams",
            Workload::ConnPerRequest => "connection per request",
        }
    }

    fn run(self, bed: &Testbed, secs: u64) -> Result<()> {
        match self {
            Workload::BulkTcp => bed.tcp_throughput(secs).map(drop),
            Workload::SmallUdp => bed.udp_pps(secs).map(drop),
            Workload::ConnPerRequest => bed.conn_rate(secs).map(drop),
        }
    }
}

/// One program under one workload: ns per run over the repetitions.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProgCostRow {
    pub mode: String,
    pub workload: String,
    pub program: String,
    /// `ingress` or `egress`: rows of different modes on one hook compare.
    pub hook: String,
    pub ns_min: f64,
    pub ns_max: f64,
    /// Runs counted in the last repetition.
    pub runs: u64,
}

/// The hook a program runs at, from its name (xdp-filter's run at ingress).
fn hook_of(program: &str) -> &'static str {
    if program == names::PROG_TC_EGRESS || program == names::PROG_TC_FLOOR_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

/// (run time ns, run count) of every loaded program by name, summed over
/// programs of the same name.
fn snapshot() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("reading loaded programs")?;
        let name = info.name_as_str().unwrap_or_default().to_string();
        let entry = out.entry(name).or_default();
        entry.0 += info.run_time().as_nanos() as u64;
        entry.1 += info.run_count();
    }
    Ok(out)
}

/// The floor programs on the server's interface; their links (and the
/// programs) go when this is dropped.
struct TcFloor {
    _ebpf: aya::Ebpf,
}

impl TcFloor {
    fn attach(bed: &Testbed) -> Result<TcFloor> {
        let mut ebpf = aya::Ebpf::load(loader::SG_OBJECT).context("loading the sg object")?;
        for (name, hook) in [
            (names::PROG_TC_FLOOR_INGRESS, TcAttachType::Ingress),
            (names::PROG_TC_FLOOR_EGRESS, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the sg object"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
            bed.server()
                .run(|| prog.attach(Host::IFACE, hook))
                .with_context(|| format!("attaching {name}"))?;
        }
        Ok(TcFloor { _ebpf: ebpf })
    }
}

/// Installs what `mode` measures; the floor's programs live as long as the
/// returned value.
fn install(bed: &Testbed, mode: Mode) -> Result<Option<TcFloor>> {
    match mode {
        Mode::Enforce => bed.install(Peer::Sg, 4)?,
        Mode::Observe => {
            bed.remove(Peer::Sg)?;
            loader::attach(
                &bed.iface(),
                &AttachOptions::default(),
                InitialPolicy::Observe,
            )?;
        }
        Mode::Floor => return TcFloor::attach(bed).map(Some),
        Mode::XdpFilter => bed.install(Peer::XdpFilter, 4)?,
    }
    Ok(None)
}

fn remove(bed: &Testbed, mode: Mode) -> Result<()> {
    match mode {
        Mode::Enforce | Mode::Observe => bed.remove(Peer::Sg),
        Mode::XdpFilter => bed.remove(Peer::XdpFilter),
        Mode::Floor => Ok(()),
    }
}

/// Every mode × workload, `reps` repetitions of `secs` seconds each.
pub fn measure(bed: &Testbed, secs: u64, reps: usize) -> Result<Vec<ProgCostRow>> {
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        let floor = install(bed, mode)?;
        let measured = measure_mode(bed, mode, secs, reps);
        drop(floor);
        remove(bed, mode)?;
        rows.extend(measured?);
    }
    Ok(rows)
}

fn measure_mode(bed: &Testbed, mode: Mode, secs: u64, reps: usize) -> Result<Vec<ProgCostRow>> {
    // On while the returned descriptor is open (this function's scope).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning on BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let mut rows = Vec::new();
    for workload in Workload::ALL {
        let mut per_program: BTreeMap<String, ProgCostRow> = BTreeMap::new();
        for _ in 0..reps {
            let before = snapshot()?;
            workload.run(bed, secs)?;
            let after = snapshot()?;
            for (name, &(time, count)) in after.iter().filter(|(n, _)| mode.owns(n)) {
                let (t0, c0) = before.get(name).copied().unwrap_or_default();
                let runs = count.saturating_sub(c0);
                if runs == 0 {
                    continue;
                }
                let ns = time.saturating_sub(t0) as f64 / runs as f64;
                let row = per_program.entry(name.clone()).or_insert(ProgCostRow {
                    mode: mode.name().into(),
                    workload: workload.name().into(),
                    program: name.clone(),
                    hook: hook_of(name).into(),
                    ns_min: f64::MAX,
                    ns_max: 0.0,
                    runs: 0,
                });
                row.ns_min = row.ns_min.min(ns);
                row.ns_max = row.ns_max.max(ns);
                row.runs = runs;
            }
        }
        rows.extend(per_program.into_values());
    }
    Ok(rows)
}
