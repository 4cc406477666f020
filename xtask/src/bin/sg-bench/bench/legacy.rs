//! The same-run baseline of the one-data-plane-per-host change: the
//! previous release's programs (one instance per interface, settings in a
//! one-slot array; [`sg_user::harness::legacy`]) measured with
//! the same frames as [`super::per_packet`], so the endpoint lookup's cost
//! is a difference within one run, not against another day's numbers.

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use sg_common::conntrack::DEFAULT_TIMEOUTS_S;
use sg_user::{compile::CompiledPolicy, harness::legacy};

/// One legacy instance with an IPv4 policy installed (generation 1).
pub struct Legacy {
    ebpf: Ebpf,
}

impl Legacy {
    /// Loads the legacy object and installs `policy` (compiled for
    /// generation 1; IPv4 only), events at `events_per_sec`.
    pub fn load(
        policy: &CompiledPolicy,
        ct_entries: u32,
        events_per_sec: u32,
    ) -> anyhow::Result<Legacy> {
        let mut ebpf = legacy::open(0, ct_entries)?;
        let xdp: &mut Xdp = ebpf
            .program_mut("sg_xdp_ingress")
            .expect("in the legacy object")
            .try_into()?;
        xdp.load()?;
        legacy::install(&mut ebpf, policy, DEFAULT_TIMEOUTS_S, events_per_sec)?;
        Ok(Legacy { ebpf })
    }

    /// Runs the legacy XDP program; (verdict, mean ns per run).
    pub fn xdp(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u64)> {
        let prog: &Xdp = self
            .ebpf
            .program("sg_xdp_ingress")
            .expect("in the legacy object")
            .try_into()?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// Reads and discards pending flow-log events.
    pub fn drain_events(&mut self) -> anyhow::Result<usize> {
        let mut ring = aya::maps::RingBuf::try_from(self.ebpf.map_mut("SG_EVENTS").expect("map"))?;
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        Ok(n)
    }
}
