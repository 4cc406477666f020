//! The benchmark's code path, at toy sizes, so it cannot rot. No timing is
//! asserted (speed is measured by `cargo xtask bench`, never by tests); the
//! checks are that every section ran and the report holds its rows.

use sg_user::require_root;

use crate::bench::{self, BenchConfig, report};

/// The `sgctl` that `cargo test --workspace` built beside this test
/// (`target/debug/deps/sg_bench-…` → `target/debug/sgctl`).
fn built_sgctl() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("test executable path");
    let path = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("sgctl");
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo xtask test` (or `cargo test --workspace --features xtask/bench`), which builds it",
        path.display()
    );
    path
}

#[test]
fn every_benchmark_section_runs_and_reports() {
    require_root!();
    let cfg = BenchConfig::smoke();
    let sgctl = built_sgctl();
    let stats_enabled =
        || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").expect("sysctl");
    let stats_before = stats_enabled();
    let r = bench::run(&cfg, &sgctl, &mut |step| eprintln!("bench smoke: {step}"))
        .expect("benchmark run");
    // (sizes + members) × two families.
    assert_eq!(r.per_packet.len(), (cfg.sizes.len() + 1) * 2);
    assert!(
        r.per_packet
            .iter()
            .all(|x| x.floor_ns > 0.0 && x.denied_ns > 0.0 && x.new_flow_ns > 0.0)
    );
    assert_eq!(r.traffic.len(), 5, "every peer measured");
    assert!(
        r.traffic
            .iter()
            .all(|x| x.tcp_gbps > 0.0 && x.conns_per_sec > 0.0),
        "{:?}",
        r.traffic
    );
    assert_eq!(r.conn_rate.len(), cfg.conn_rules.len() * 3);
    // The kernel counted the runs of both sg hooks under bulk TCP, in
    // enforce and observe mode; bpf_stats is off again afterwards.
    for mode in ["sg enforce", "sg observe mode"] {
        for program in ["sg_tc_ingress", "sg_tc_egress"] {
            assert!(
                r.prog_cost.iter().any(|p| p.mode == mode
                    && p.program == program
                    && p.workload.starts_with("bulk TCP")
                    && p.runs > 0
                    && p.ns_max > 0.0),
                "{mode} {program}: {:?}",
                r.prog_cost
            );
        }
    }
    assert_eq!(
        stats_enabled(),
        stats_before,
        "run-time statistics as they were"
    );
    assert!(
        r.control
            .iter()
            .any(|c| c.what.starts_with("apply, whole host"))
    );
    // Containers: every one got an ADD through podman; CI has podman.
    match (&r.containers, &r.containers_skipped) {
        (Some(c), _) => assert!(
            c.containers == cfg.containers && c.add_p50_ms > 0.0 && c.add_p99_ms >= c.add_p50_ms,
            "{c:?}"
        ),
        (None, Some(why)) if std::env::var_os("CI").is_none() => {
            eprintln!("bench smoke: container section skipped: {why}");
        }
        (None, why) => panic!("the container section must run under CI: {why:?}"),
    }
    match (&r.propagation, &r.propagation_skipped) {
        (Some(p), _) => assert!(
            p.agents == cfg.agents && p.p50_ms > 0.0 && p.watches_per_agent >= 1.0,
            "{p:?}"
        ),
        (None, Some(why)) if std::env::var_os("CI").is_none() => {
            eprintln!("bench smoke: many-hosts section skipped: {why}");
        }
        (None, why) => panic!("the many-hosts section must run under CI: {why:?}"),
    }
    let tracked = &r.pressure[0];
    assert!(
        tracked.dropped_conntrack_full > 0,
        "the flood filled the table: {tracked:?}"
    );
    assert!(tracked.established_ok.starts_with(&format!(
        "{0}/{0}",
        tracked.established_ok.split('/').nth(1).unwrap()
    )));
    assert_eq!(
        r.pressure[1].table_entries, 0,
        "untracked flood keeps no state"
    );
    let dir = std::env::temp_dir().join(format!("sg-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let charts = report::charts(&r, &dir).unwrap();
    let md = report::markdown(&r, "bench smoke test", &charts);
    for section in [
        "## Targets",
        "## 1. Per-packet",
        "## 2. Real traffic",
        "Program cost in real traffic",
        "## 3. Control plane",
        "### Container hosts: time to enforced",
        "### Many hosts: membership propagation through etcd",
        "## 4. Conntrack under pressure",
    ] {
        assert!(md.contains(section), "report has {section}");
    }
    for (file, _) in &charts {
        let svg = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(svg.starts_with("<svg"), "{file} is an SVG");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
