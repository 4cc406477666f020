//! Running the real programs on crafted frames (BPF_PROG_TEST_RUN), for the
//! kernel tests and the per-packet benchmark. Needs root.
//!
//! Each [`Instance`] is a private data plane (its own maps, not pinned) with
//! one endpoint: under BPF_PROG_TEST_RUN the kernel runs XDP and tc programs
//! on the loopback device of the caller's namespace, so the endpoint is
//! registered for (that namespace's cookie, ifindex 1), endpoint id
//! [`TEST_ENDPOINT`], policy id [`TEST_POLICY`].

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use sg_common::{
    Counter, Direction, IfaceConfig, Reason,
    conntrack::{DEFAULT_TIMEOUTS_S, TIMEOUT_SLOTS},
    endpoint::EndpointKey,
    endpoint_counter_index, names,
    policy::CONFIG_SIDE_PEER,
};

use crate::{
    compile::{Rule, compile},
    kernel::loader::SG_OBJECT,
    kernel::policy_maps::{PolicyMapError, PolicyMaps, timeouts_ns},
};

/// Endpoint id of an instance's one interface.
pub const TEST_ENDPOINT: u32 = 1;
/// Policy id an instance installs into.
pub const TEST_POLICY: u32 = 1;
/// The interface BPF_PROG_TEST_RUN runs on: loopback.
pub const TEST_IFINDEX: u32 = 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// Where [`Instance::judge`] runs a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

/// One loaded instance of the programs with its policy maps.
pub struct Instance {
    pub ebpf: Ebpf,
    pub policy: PolicyMaps,
}

impl Instance {
    /// Loads the object (logs off) and loads all three programs.
    pub fn load(side_peer: bool) -> anyhow::Result<Instance> {
        Self::load_with(side_peer, crate::kernel::loader::DEFAULT_CONNTRACK_ENTRIES)
    }

    /// [`Instance::load`] with connection tables of `conntrack_entries`.
    pub fn load_with(side_peer: bool, conntrack_entries: u32) -> anyhow::Result<Instance> {
        Self::load_sized(
            side_peer,
            &[
                (names::MAP_CT_V4, conntrack_entries),
                (names::MAP_CT_V6, conntrack_entries),
            ],
        )
    }

    /// [`Instance::load`] with these maps resized (map name, max entries):
    /// small tables make "full" reachable in a test.
    pub fn load_sized(side_peer: bool, sizes: &[(&str, u32)]) -> anyhow::Result<Instance> {
        let off: u8 = 0;
        let offsets = crate::kernel::offsets::offsets()?;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &off, true);
        for (name, off) in &offsets {
            loader.override_global(name, off, true);
        }
        for &(name, entries) in sizes {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(SG_OBJECT)?;
        for name in [names::PROG_XDP_INGRESS, names::PROG_XDP_FLOOR] {
            let xdp: &mut Xdp = ebpf.program_mut(name).expect("in object").try_into()?;
            xdp.load()?;
        }
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).expect("in object").try_into()?;
            tc.load()?;
        }
        let mut policy = PolicyMaps::take_from(&mut ebpf, None)?;
        // The endpoint test runs are judged as (observe mode until a policy
        // is installed, as a freshly attached interface).
        let key = EndpointKey {
            netns_cookie: crate::kernel::dataplane::netns_cookie()?,
            ifindex: TEST_IFINDEX,
            _pad: 0,
        };
        let flags = if side_peer { CONFIG_SIDE_PEER } else { 0 };
        let mut cfg = IfaceConfig::new(flags, timeouts_ns(DEFAULT_TIMEOUTS_S), 0);
        cfg.endpoint = TEST_ENDPOINT;
        cfg.ifname = crate::kernel::dataplane::padded("lo");
        policy.write_endpoint(key, &cfg)?;
        policy.select(TEST_POLICY, Some(key));
        Ok(Instance { ebpf, policy })
    }

    /// [`Instance::load`] with `inbound` and `outbound` installed (default timeouts).
    pub fn with_rules(inbound: &[Rule], outbound: &[Rule]) -> anyhow::Result<Instance> {
        let mut inst = Self::load(false)?;
        inst.install_rules(inbound, outbound, DEFAULT_TIMEOUTS_S)?;
        Ok(inst)
    }

    /// Compiles `inbound` and `outbound` for the next generation and installs
    /// it with `timeouts_s`.
    pub fn install_rules(
        &mut self,
        inbound: &[Rule],
        outbound: &[Rule],
        timeouts_s: [u64; TIMEOUT_SLOTS],
    ) -> Result<(), PolicyMapError> {
        let generation = self.policy.next_generation()?;
        self.policy
            .install(&compile(generation, inbound, outbound), timeouts_s)
    }

    fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
        TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        }
    }

    /// Runs XDP program `name` `repeat` times; returns (verdict, mean ns per run).
    fn run_xdp(&self, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u64)> {
        let prog: &Xdp = self.ebpf.program(name).expect("in object").try_into()?;
        let r = prog.test_run(Self::options(frame, repeat))?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// Runs the XDP ingress program; returns (verdict, mean ns per run).
    pub fn xdp(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u64)> {
        self.run_xdp(names::PROG_XDP_INGRESS, frame, repeat)
    }

    /// One run of the XDP ingress program: its verdict. Panics when the
    /// test run itself fails.
    pub fn xdp_verdict(&self, frame: &[u8]) -> u32 {
        self.xdp(frame, 1).expect("test run").0
    }

    /// Runs the counting-only XDP program (the floor); returns mean ns per run.
    pub fn floor(&self, frame: &[u8], repeat: u32) -> anyhow::Result<u64> {
        Ok(self.run_xdp(names::PROG_XDP_FLOOR, frame, repeat)?.1)
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

    /// Runs one frame through `hook` and returns the program's return code
    /// and the one reason counted for it. Panics unless exactly one
    /// (direction, reason) counter moved, by one packet, and the return code
    /// agrees with that reason's verdict.
    pub fn judge(&self, hook: Hook, frame: &[u8]) -> (u32, Reason) {
        let slots: Vec<(Direction, Reason)> = Direction::ALL
            .iter()
            .flat_map(|d| Reason::ALL.iter().map(move |r| (*d, *r)))
            .collect();
        let before: Vec<u64> = slots
            .iter()
            .map(|(d, r)| self.counter(*d, *r).packets)
            .collect();
        let (code, pass) = match hook {
            Hook::Xdp => {
                let code = self.xdp(frame, 1).expect("test run").0;
                (code, code == XDP_PASS)
            }
            Hook::TcIngress | Hook::TcEgress => {
                let code = self.tc(hook == Hook::TcEgress, frame).expect("test run");
                (code, code == TC_ACT_OK)
            }
        };
        let moved: Vec<(Direction, Reason, u64)> = slots
            .iter()
            .zip(before)
            .filter_map(|((d, r), b)| {
                let now = self.counter(*d, *r).packets;
                (now != b).then_some((*d, *r, now - b))
            })
            .collect();
        assert!(
            moved.len() == 1 && moved[0].2 == 1,
            "exactly one reason counted once for the test endpoint, got {moved:?} \
             (nothing: the endpoint lookup missed — is the test running in another namespace?)"
        );
        let reason = moved[0].1;
        assert_eq!(pass, !reason.is_drop(), "verdict matches reason {reason:?}");
        (code, reason)
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

    /// The in-kernel reclaim record of the IPv4 (`ipv6` false) or IPv6 table.
    pub fn reclaim_state(&self, ipv6: bool) -> sg_common::conntrack::CtReclaim {
        let map: aya::maps::Array<&MapData, sg_common::conntrack::CtReclaim> =
            aya::maps::Array::try_from(self.ebpf.map(names::MAP_CT_RECLAIM).expect("in object"))
                .expect("array");
        map.get(&u32::from(ipv6), 0).expect("slot readable")
    }

    fn endpoint_key(&self) -> EndpointKey {
        self.policy
            .endpoint_key()
            .expect("an instance has its endpoint")
    }

    /// Rewrites the test endpoint's settings (endpoint id, limit …) in place.
    pub fn set_endpoint(&mut self, f: impl FnOnce(&mut IfaceConfig)) -> anyhow::Result<()> {
        let key = self.endpoint_key();
        let mut cfg = self.policy.config()?;
        f(&mut cfg);
        self.policy.write_endpoint(key, &cfg)?;
        Ok(())
    }

    /// Removes the test endpoint (packets then meet an unknown interface).
    pub fn remove_endpoint(&mut self) -> anyhow::Result<()> {
        let key = self.endpoint_key();
        self.policy.remove_endpoint(&key)?;
        Ok(())
    }

    /// Sum over CPUs of one (direction, reason) counter of endpoint `endpoint`
    /// (0: packets on interfaces the endpoint table does not know).
    pub fn counter_of(&self, endpoint: u32, direction: Direction, reason: Reason) -> Counter {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(names::MAP_COUNTERS).expect("in object"))
                .expect("per-CPU array");
        let values = map
            .get(&endpoint_counter_index(endpoint, direction, reason), 0)
            .expect("slot readable");
        values.iter().sum()
    }

    /// Sum over CPUs of one (direction, reason) counter.
    pub fn counter(&self, direction: Direction, reason: Reason) -> Counter {
        self.counter_of(TEST_ENDPOINT, direction, reason)
    }
}
