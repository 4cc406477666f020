//! Conntrack under pressure: a SYN flood from many sources at a tracked port
//! and at an untracked (0.0.0.0/0) port, through the real program
//! (BPF_PROG_TEST_RUN), with established flows checked afterwards.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use sg_common::{
    Direction, Reason,
    conntrack::{CtState, DEFAULT_TIMEOUTS_S},
};

use sg_user::{
    compile::{Rule, compile},
    harness::packet::{Frame, L4, TCP_ACK, TCP_SYN},
    harness::testrun::{Instance, XDP_PASS},
};

#[derive(Clone, Debug, serde::Serialize)]
pub struct PressureRow {
    pub port: &'static str,
    pub table_capacity: u32,
    pub flood_syns: u32,
    pub admitted: u64,
    pub dropped_conntrack_full: u64,
    pub table_entries: usize,
    pub established_ok: String,
}

fn src(i: u32) -> IpAddr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i % (1 << 17))).into()
}

fn frame(i: u32, sport: u16, flags: u8) -> Vec<u8> {
    let dst = Ipv4Addr::new(198, 19, 255, 1);
    Frame {
        payload: 10,
        ..Frame::new(src(i), dst, L4::tcp(sport, 443, flags))
    }
    .build()
}

/// Floods `flood` SYNs (distinct sources/ports) at port 443 with a table of
/// `capacity`, after opening `established` flows; `untracked` makes the rule
/// 0.0.0.0/0 with all outbound open (AWS: untracked).
pub fn flood(capacity: u32, established: u32, flood: u32, untracked: bool) -> Result<PressureRow> {
    let mut inst = Instance::load_with(false, capacity)?;
    let rule = Rule {
        untracked_tcp: untracked,
        ..Rule::tracked("https", Some(6), (443, 443), vec!["0.0.0.0/0".parse()?])
    };
    let all_out = Rule::tracked("out", None, (0, 0xffff), vec!["0.0.0.0/0".parse()?]);
    let outbound = if untracked { vec![all_out] } else { vec![] };
    inst.policy.install(
        &compile(inst.policy.next_generation()?, &[rule], &outbound),
        DEFAULT_TIMEOUTS_S,
    )?;
    for i in 0..established {
        ensure!(
            inst.xdp(&frame(i, 40000, TCP_SYN), 1)?.0 == XDP_PASS,
            "established flow {i} refused"
        );
    }
    let before = inst.counter(Direction::Inbound, Reason::PassRule).packets;
    for i in 0..flood {
        let _ = inst.xdp(
            &frame(established + i, 1024 + (i % 60000) as u16, TCP_SYN),
            1,
        )?;
    }
    let admitted = inst.counter(Direction::Inbound, Reason::PassRule).packets - before;
    let full = inst
        .counter(Direction::Inbound, Reason::DropConntrackFull)
        .packets;
    let mut ok = 0;
    for i in 0..established {
        ok += u32::from(inst.xdp(&frame(i, 40000, TCP_ACK), 1)?.0 == XDP_PASS);
    }
    let table = aya::maps::HashMap::<
        _,
        sg_common::conntrack::CtKeyV4,
        sg_common::conntrack::CtEntry,
    >::try_from(
        inst.ebpf
            .map(sg_common::names::MAP_CT_V4)
            .expect("in object"),
    )?;
    Ok(PressureRow {
        port: if untracked {
            "443 untracked (0.0.0.0/0, all outbound open)"
        } else {
            "443 tracked"
        },
        table_capacity: capacity,
        flood_syns: flood,
        admitted,
        dropped_conntrack_full: full,
        table_entries: table.keys().count(),
        established_ok: format!("{ok}/{established}"),
    })
}

/// What one new flow costs when it finds the table full: the in-kernel
/// reclaim walk (over every slot of the table) and the refusal after it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReclaimRow {
    pub table_capacity: u32,
    /// One new flow that walks a table of live flows, frees nothing and is
    /// refused (happens at most once per second per table).
    pub walk_nothing_expired_ns: u64,
    /// A refused new flow when the walk is skipped (nothing can have
    /// expired since the last one): the cost of every other flood packet.
    pub refused_no_walk_ns: u64,
    /// One new flow that walks a table whose flows have all expired, frees
    /// them and is admitted.
    pub walk_frees_all_ns: u64,
    /// Entries the kernel freed in that walk.
    pub freed: u64,
}

/// Fills a table of `capacity` with SYNs, then times the flow that finds it
/// full: with every entry live, and (with a 1 s handshake timeout, after
/// waiting it out) with every entry expired.
pub fn reclaim(capacity: u32) -> Result<ReclaimRow> {
    let mut timeouts = DEFAULT_TIMEOUTS_S;
    timeouts[CtState::TcpSynSent as usize] = 1;
    let fill = |timeouts| -> Result<Instance> {
        let mut inst = Instance::load_with(false, capacity)?;
        let rule = Rule::tracked("https", Some(6), (443, 443), vec!["0.0.0.0/0".parse()?]);
        inst.policy.install(
            &compile(inst.policy.next_generation()?, &[rule], &[]),
            timeouts,
        )?;
        for i in 0..capacity {
            // src() repeats every 2^17 flows: the port keeps them apart.
            let sport = 40000 + (i >> 17) as u16;
            ensure!(
                inst.xdp(&frame(i, sport, TCP_SYN), 1)?.0 == XDP_PASS,
                "flow {i} of {capacity} refused while filling"
            );
        }
        Ok(inst)
    };
    let inst = fill(DEFAULT_TIMEOUTS_S)?;
    let (verdict, walk_nothing_expired_ns) = inst.xdp(&frame(capacity, 39999, TCP_SYN), 1)?;
    ensure!(
        verdict != XDP_PASS,
        "a full table of live flows admitted one more"
    );
    let (_, refused_no_walk_ns) = inst.xdp(&frame(capacity + 1, 39999, TCP_SYN), 1000)?;
    ensure!(
        inst.reclaim_state(false).runs == 1,
        "the refused flood walked the table more than once"
    );
    drop(inst);
    let inst = fill(timeouts)?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (verdict, walk_frees_all_ns) = inst.xdp(&frame(capacity, 39999, TCP_SYN), 1)?;
    ensure!(verdict == XDP_PASS, "expired flows were not reclaimed");
    Ok(ReclaimRow {
        table_capacity: capacity,
        walk_nothing_expired_ns,
        refused_no_walk_ns,
        walk_frees_all_ns,
        freed: inst.reclaim_state(false).reclaimed,
    })
}
