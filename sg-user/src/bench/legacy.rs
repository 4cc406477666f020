//! The same-run baseline of the one-data-plane-per-host change: the
//! previous release's programs (one instance per interface, settings in a
//! one-slot array; `tests/fixtures/sg-legacy-57b6b46.bpf.o`) measured with
//! the same frames as [`super::per_packet`], so the endpoint lookup's cost
//! is a difference within one run, not against another day's numbers.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{TestRun, TestRunOptions, Xdp},
};
use sg_common::{conntrack::DEFAULT_TIMEOUTS_S, conntrack::TIMEOUT_SLOTS, policy::PolicyHit};

use crate::{compile::CompiledPolicy, policy_maps::timeouts_ns};

/// The previous release's object.
pub static LEGACY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sg-legacy-57b6b46.bpf.o"
));

#[repr(C)]
#[derive(Clone, Copy)]
struct AddrV4 {
    gen_dir: [u8; 4],
    addr: [u8; 4],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct PortKey {
    gen_dir: [u8; 4],
    class: [u8; 4],
    proto: u8,
    port: [u8; 2],
    pad: u8,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct Config {
    generation: u32,
    flags: u32,
    timeouts_ns: [u64; TIMEOUT_SLOTS],
    events_per_sec: u32,
    shortest_timeout_s: u32,
}
// SAFETY: repr(C) integers and byte arrays without implicit padding (the
// legacy layouts).
unsafe impl aya::Pod for AddrV4 {}
// SAFETY: as above.
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}

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
        let zero: u8 = 0;
        let mut ebpf = EbpfLoader::new()
            .override_global("SG_SIDE_PEER", &zero, true)
            .override_global(aya_log::LEVEL, &zero, true)
            .map_max_entries("SG_CT_V4", ct_entries)
            .map_max_entries("SG_CT_V6", ct_entries)
            .load(LEGACY_OBJECT)?;
        let xdp: &mut Xdp = ebpf
            .program_mut("sg_xdp_ingress")
            .expect("in the legacy object")
            .try_into()?;
        xdp.load()?;
        let mut v4: LpmTrie<_, AddrV4, u32> =
            LpmTrie::try_from(ebpf.map_mut("SG_ADDR_V4").expect("map"))?;
        for (len, k, class) in &policy.addr_v4 {
            let key = AddrV4 {
                gen_dir: k.gen_dir,
                addr: k.addr,
            };
            v4.insert(&Key::new(len - 32, key), class, 0)?;
        }
        let mut ports: LpmTrie<_, PortKey, PolicyHit> =
            LpmTrie::try_from(ebpf.map_mut("SG_PORTS").expect("map"))?;
        for (len, k, hit) in &policy.ports {
            let key = PortKey {
                gen_dir: k.gen_dir,
                class: k.class,
                proto: k.proto,
                port: k.port,
                pad: 0,
            };
            ports.insert(&Key::new(len - 32, key), hit, 0)?;
        }
        let mut config: Array<_, Config> =
            Array::try_from(ebpf.map_mut("SG_CONFIG").expect("map"))?;
        config.set(
            0,
            Config {
                generation: 1,
                flags: 1,
                timeouts_ns: timeouts_ns(DEFAULT_TIMEOUTS_S),
                events_per_sec,
                shortest_timeout_s: 10,
            },
            0,
        )?;
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
