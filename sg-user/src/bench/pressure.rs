//! Conntrack under pressure: a SYN flood from many sources at a tracked port
//! and at an untracked (0.0.0.0/0) port, through the real program
//! (BPF_PROG_TEST_RUN), with established flows checked afterwards.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use sg_common::{Direction, Reason, conntrack::DEFAULT_TIMEOUTS_S};

use crate::{
    compile::{Rule, compile},
    packet::{Frame, L4, TCP_ACK, TCP_SYN},
    testrun::{Instance, XDP_PASS},
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
    Frame {
        src: src(i),
        dst: Ipv4Addr::new(198, 19, 255, 1).into(),
        l4: L4::Tcp {
            src: sport,
            dst: 443,
            flags,
        },
        payload: 10,
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
