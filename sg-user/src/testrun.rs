//! Running the real programs on crafted frames (BPF_PROG_TEST_RUN), for the
//! kernel tests and the per-packet benchmark. Needs root.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use sg_common::{Counter, Direction, Reason, counter_index, names};

use crate::{loader::SG_OBJECT, policy_maps::PolicyMaps};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// One loaded instance of the programs with its policy maps.
pub struct Instance {
    pub ebpf: Ebpf,
    pub policy: PolicyMaps,
}

impl Instance {
    /// Loads the object (logs off) and loads all three programs.
    pub fn load(side_peer: bool) -> anyhow::Result<Instance> {
        Self::load_with(side_peer, crate::loader::DEFAULT_CONNTRACK_ENTRIES)
    }

    /// [`Instance::load`] with connection tables of `conntrack_entries`.
    pub fn load_with(side_peer: bool, conntrack_entries: u32) -> anyhow::Result<Instance> {
        let peer: u8 = side_peer.into();
        let off: u8 = 0;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_SIDE_PEER, &peer, true)
            .override_global(aya_log::LEVEL, &off, true)
            .map_max_entries(names::MAP_CT_V4, conntrack_entries)
            .map_max_entries(names::MAP_CT_V6, conntrack_entries)
            .load(SG_OBJECT)?;
        for name in [names::PROG_XDP_INGRESS, names::PROG_XDP_FLOOR] {
            let xdp: &mut Xdp = ebpf.program_mut(name).expect("in object").try_into()?;
            xdp.load()?;
        }
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).expect("in object").try_into()?;
            tc.load()?;
        }
        let policy = PolicyMaps::take_from(&mut ebpf, None)?;
        Ok(Instance { ebpf, policy })
    }

    fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
        TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        }
    }

    /// Runs the XDP ingress program; returns (verdict, mean ns per run).
    pub fn xdp(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u64)> {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROG_XDP_INGRESS)
            .expect("in object")
            .try_into()?;
        let r = prog.test_run(Self::options(frame, repeat))?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// Runs the counting-only XDP program (the floor); returns mean ns per run.
    pub fn floor(&self, frame: &[u8], repeat: u32) -> anyhow::Result<u64> {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROG_XDP_FLOOR)
            .expect("in object")
            .try_into()?;
        let r = prog.test_run(Self::options(frame, repeat))?;
        Ok(r.duration.as_nanos() as u64)
    }

    /// Runs a TC program (ingress or egress).
    pub fn tc(&self, egress: bool, frame: &[u8]) -> anyhow::Result<u32> {
        let name = if egress {
            names::PROG_TC_EGRESS
        } else {
            names::PROG_TC_INGRESS
        };
        let prog: &SchedClassifier = self.ebpf.program(name).expect("in object").try_into()?;
        Ok(prog.test_run(Self::options(frame, 1))?.return_value)
    }

    /// Reads and discards pending flow-log events; returns how many.
    pub fn drain_events(&mut self) -> anyhow::Result<usize> {
        let map = self.ebpf.map_mut(names::MAP_EVENTS).expect("in object");
        let mut ring = aya::maps::RingBuf::try_from(map)?;
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Sum over CPUs of one (direction, reason) counter.
    pub fn counter(&self, direction: Direction, reason: Reason) -> Counter {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(names::MAP_COUNTERS).expect("in object"))
                .expect("per-CPU array");
        let values = map
            .get(&counter_index(direction, reason), 0)
            .expect("slot readable");
        values.iter().sum()
    }
}
