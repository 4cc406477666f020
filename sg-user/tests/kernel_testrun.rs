//! The real kernel programs run on crafted frames through BPF_PROG_TEST_RUN
//! (aya's `TestRun`); verdicts and counters are checked. Needs root.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use sg_common::{Counter, Direction, Reason, counter_index, names};
use sg_user::{
    loader::SG_OBJECT,
    packet::{Frame, L4, TCP_SYN, arp_request},
    require_root,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

fn load(side_peer: bool) -> Ebpf {
    let peer: u8 = side_peer.into();
    let off: u8 = 0;
    EbpfLoader::new()
        .override_global(names::GLOBAL_SIDE_PEER, &peer, true)
        .override_global(aya_log::LEVEL, &off, true)
        .load(SG_OBJECT)
        .expect("the embedded object loads (verifier accepts it)")
}

fn counter(ebpf: &Ebpf, direction: Direction, reason: Reason) -> Counter {
    let map: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(ebpf.map(names::MAP_COUNTERS).expect("SG_COUNTERS exists"))
            .expect("SG_COUNTERS is a per-CPU array of Counter");
    let values = map
        .get(&counter_index(direction, reason), 0)
        .expect("slot readable");
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

fn syn_v4() -> Vec<u8> {
    Frame {
        src: "198.18.0.1".parse().unwrap(),
        dst: "198.18.0.2".parse().unwrap(),
        l4: L4::Tcp {
            src: 40000,
            dst: 443,
            flags: TCP_SYN,
        },
        payload: 0,
    }
    .build()
}

fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    }
}

fn run_xdp(prog: &Xdp, frame: &[u8], repeat: u32) -> u32 {
    let result = prog.test_run(options(frame, repeat));
    result.expect("BPF_PROG_TEST_RUN succeeds").return_value
}

fn run_tc(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> u32 {
    let result = prog.test_run(options(frame, repeat));
    result.expect("BPF_PROG_TEST_RUN succeeds").return_value
}

#[test]
fn object_has_every_program_and_map_user_space_names() {
    require_root!();
    let ebpf = load(false);
    for prog in [
        names::PROG_XDP_INGRESS,
        names::PROG_TC_INGRESS,
        names::PROG_TC_EGRESS,
    ] {
        assert!(
            ebpf.program(prog).is_some(),
            "program {prog} missing from the object"
        );
    }
    assert!(
        ebpf.map(names::MAP_COUNTERS).is_some(),
        "map {} missing",
        names::MAP_COUNTERS
    );
}

#[test]
fn xdp_ingress_passes_and_counts_inbound() {
    require_root!();
    let mut ebpf = load(false);
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROG_XDP_INGRESS)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("verifier accepts the XDP program");
    let frame = syn_v4();
    assert_eq!(run_xdp(prog, &frame, 3), XDP_PASS, "XDP verdict");
    let c = counter(&ebpf, Direction::Inbound, Reason::PassUnfiltered);
    assert_eq!(c.packets, 3, "three runs counted once each");
    assert_eq!(
        c.bytes,
        3 * frame.len() as u64,
        "bytes = frame length per run"
    );
    let out = counter(&ebpf, Direction::Outbound, Reason::PassUnfiltered);
    assert_eq!(
        out.packets, 0,
        "nothing counted outbound for ingress traffic"
    );
}

#[test]
fn tc_egress_counts_outbound_and_side_peer_swaps_directions() {
    require_root!();
    for peer in [false, true] {
        let mut ebpf = load(peer);
        let prog: &mut SchedClassifier = ebpf
            .program_mut(names::PROG_TC_EGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().expect("verifier accepts the TC program");
        let frame = arp_request();
        assert_eq!(run_tc(prog, &frame, 1), TC_ACT_OK, "TC verdict");
        let (counted, silent) = if peer {
            (Direction::Inbound, Direction::Outbound)
        } else {
            (Direction::Outbound, Direction::Inbound)
        };
        let c = counter(&ebpf, counted, Reason::PassUnfiltered);
        assert_eq!(
            c.packets, 1,
            "side peer={peer}: egress counted as {counted:?}"
        );
        assert_eq!(c.bytes, frame.len() as u64);
        assert_eq!(counter(&ebpf, silent, Reason::PassUnfiltered).packets, 0);
    }
}

#[test]
fn programs_stay_well_inside_the_verifier_limits() {
    require_root!();
    let inst = sg_user::testrun::Instance::load(false).expect("load");
    for name in [
        names::PROG_XDP_INGRESS,
        names::PROG_TC_INGRESS,
        names::PROG_TC_EGRESS,
    ] {
        let info = inst
            .ebpf
            .program(name)
            .unwrap()
            .info()
            .expect("program info");
        let verified = info
            .verified_instruction_count()
            .expect("kernel reports verified instructions");
        let size = info.size_translated().unwrap_or(0) / 8;
        eprintln!("{name}: {size} instructions, {verified} verified (limit 1,000,000)");
        // A fifth of the limit leaves room for the features still to come.
        assert!(
            verified < 200_000,
            "{name}: {verified} verified instructions"
        );
        assert!(size < 4096, "{name}: {size} instructions");
    }
}
