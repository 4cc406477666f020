//! Flow logs from real traffic: kernel events and conntrack growth become
//! AWS VPC Flow Logs v2 records. Needs root.

mod common;

use std::{sync::Mutex, time::Duration};

/// The tests of this file take turns: a new reader takes the events its
/// interfaces left in the host's shared ring 0 (and drops the rest), so two
/// readers starting at once would take each other's.
static SHARED_RING: Mutex<()> = Mutex::new(());

use common::{A_ONLY, Lab};
use sg_user::{
    agent::flowlog::{Action, Collector, V2_FIELDS, parse_v2},
    kernel::pins::IfaceId,
    lab::probe::{self, Reach, TcpServer},
    require_root,
};

#[test]
fn accepted_and_rejected_flows_become_v2_records() {
    require_root!();
    let _turn = SHARED_RING.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new("flowlog");
    let _srv = TcpServer::start_all(lab.ns("a"), &[80, 22]).unwrap();
    lab.apply(&format!(
        "security_groups:\n  - id: sg-a\n    ingress:\n      - {{ protocol: tcp, ports: 80, cidr: 198.18.0.2/32 }}\n{A_ONLY}"
    ));
    let id = IfaceId::new("eth0", Some(lab.ns("a").name()));
    let mut collector = Collector::open(std::slice::from_ref(&id), "123456789012").unwrap();
    let t = Duration::from_millis(500);
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 80), t),
        Reach::Connected
    );
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 22), t),
        Reach::Timeout
    );
    let records = collector.flush();
    let lines: Vec<String> = records.iter().map(ToString::to_string).collect();
    for line in &lines {
        let fields = parse_v2(line).unwrap_or_else(|| panic!("not a v2 record: {line}"));
        assert_eq!(fields.len(), V2_FIELDS.len());
        assert_eq!(fields["account-id"], "123456789012");
        assert_eq!(fields["interface-id"], id.to_string());
        assert!(fields["start"].parse::<u64>().unwrap() <= fields["end"].parse::<u64>().unwrap());
        assert!(
            ["ACCEPT", "REJECT"].contains(&fields["action"].as_str()),
            "{line}"
        );
        assert_eq!(fields["log-status"], "OK", "{line}");
    }
    let find = |action, dport: u16, inbound: bool| {
        records.iter().find(|r| {
            let k = r.flow.unwrap();
            r.action == Some(action)
                && (if inbound { k.dport } else { k.sport }) == dport
                && k.proto == 6
        })
    };
    let accepted_in =
        find(Action::Accept, 80, true).unwrap_or_else(|| panic!("ACCEPT b→a:80 in {lines:#?}"));
    assert!(
        accepted_in.packets >= 2 && accepted_in.bytes > 0,
        "SYN and ACK at least: {accepted_in:?}"
    );
    assert_eq!(accepted_in.flow.unwrap().src, lab.addr("b", false, 0).ip());
    assert!(
        find(Action::Accept, 80, false).is_some(),
        "the replies a→b: {lines:#?}"
    );
    let rejected =
        find(Action::Reject, 22, true).unwrap_or_else(|| panic!("REJECT b→a:22 in {lines:#?}"));
    assert!(rejected.packets >= 1);
    assert!(
        find(Action::Accept, 22, true).is_none(),
        "nothing accepted on 22"
    );

    // A quiet window: one NODATA record.
    let quiet = collector.flush();
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    let fields = parse_v2(&quiet[0].to_string()).unwrap();
    assert_eq!(
        (fields["action"].as_str(), fields["log-status"].as_str()),
        ("-", "NODATA")
    );
}

#[test]
fn events_from_before_the_reader_started_are_not_dated_into_its_first_window() {
    require_root!();
    let _turn = SHARED_RING.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new("flowlog-stale");
    let _srv = TcpServer::start(lab.ns("a"), "[::]:22".parse().unwrap()).unwrap();
    lab.apply(&format!(
        "security_groups:\n  - id: sg-a\n    ingress: []\n{A_ONLY}"
    ));
    let id = IfaceId::new("eth0", Some(lab.ns("a").name()));
    let t = Duration::from_millis(300);
    // Rejected while nobody reads the ring buffer: the events wait there.
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 22), t),
        Reach::Timeout
    );
    // Later (past the coarse clock's resolution) a reader starts, as `sgctl run` does.
    std::thread::sleep(Duration::from_millis(50));
    let mut collector = Collector::open(std::slice::from_ref(&id), "-").unwrap();
    let first = collector.flush();
    assert!(
        first.iter().all(|r| r.action.is_none()),
        "the first window carries no records of earlier traffic: {first:#?}"
    );
    assert!(
        collector.skipped_stale >= 1,
        "the old events were there and skipped"
    );
    // Traffic after the start is reported as usual.
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 22), t),
        Reach::Timeout
    );
    let next = collector.flush();
    assert!(
        next.iter()
            .any(|r| r.action == Some(Action::Reject) && r.flow.is_some_and(|k| k.dport == 22)),
        "{next:#?}"
    );
}
