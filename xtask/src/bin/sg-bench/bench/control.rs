//! Control plane: `sgctl apply` at the quota limits for one interface and
//! for a whole host, one rule changed on a live interface, kernel map memory.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use sg_user::{
    harness::configs::quota_config,
    kernel::pins::{self, IfaceId},
    sys::netns::{Netns, run_checked},
};

#[derive(Clone, Debug, serde::Serialize)]
pub struct ControlRow {
    pub what: String,
    pub wall_ms: f64,
    pub peak_rss_mib: f64,
    pub detail: String,
    /// For the host-scale rows: what the targets of one data plane per host
    /// are checked against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// Figures of one host-scale apply.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Scale {
    pub ifaces: u32,
    /// Distinct programs the interfaces run.
    pub programs: usize,
    /// Kernel map memory per added interface (none when this apply loaded
    /// the data plane).
    pub per_iface_kib: Option<f64>,
}

/// The `sgctl` binary next to the running one (`cargo build` puts them together).
pub fn sibling_sgctl() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("sgctl");
    if !path.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p sg-user`",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `sgctl apply -c config`; returns wall time and peak RSS of the child.
fn timed_apply(sgctl: &Path, config: &Path) -> Result<(f64, f64)> {
    let t = Instant::now();
    let child = Command::new(sgctl)
        .args(["apply", "-c"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("spawning sgctl apply")?;
    let mut status = 0;
    // SAFETY: rusage is plain integers; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid out-parameters.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64() * 1e3;
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "sgctl apply -c {} failed (status {status})",
            config.display()
        );
    }
    Ok((wall, usage.ru_maxrss as f64 / 1024.0))
}

/// 2,500 groups; `ifaces` interfaces each with 5 of them.
fn host_config(netns: &str, ifaces: u32) -> String {
    let mut y = String::from("security_groups:\n");
    for g in 0..2500u32 {
        writeln!(
            y,
            "  - id: sg-{g}\n    ingress:\n      - {{ protocol: tcp, ports: {}, cidr: 198.18.{}.0/24 }}\n      - {{ protocol: udp, ports: 53, group: sg-{} }}",
            1000 + g % 60000,
            g % 256,
            (g + 1) % 2500
        )
        .unwrap();
    }
    y.push_str("interfaces:\n");
    for i in 0..ifaces {
        let groups: Vec<String> = (0..5)
            .map(|k| format!("sg-{}", (i * 25 + k) % 2500))
            .collect();
        writeln!(
            y,
            "  - {{ name: v{i}, netns: \"{netns}\", security_groups: [{}], addresses: [198.18.{}.{}] }}",
            groups.join(", "),
            200 + i / 250,
            i % 250 + 1
        )
        .unwrap();
    }
    y
}

/// Kernel memory of a pinned map (fdinfo `memlock`), bytes.
fn memlock(path: &Path) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let map = aya::maps::MapData::from_pin(path)?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:").map(|v| v.trim().parse::<u64>()))
        .context("no memlock in fdinfo")?
        .context("memlock value")
}

/// Kernel memory of every map of the host's data plane, bytes (0 before it
/// is loaded).
pub fn dataplane_memlock() -> Result<u64> {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(pins::MAPS_DIR) else {
        return Ok(0);
    };
    for e in entries {
        total += memlock(&e?.path())?;
    }
    Ok(total)
}

/// `n` interfaces (veth pairs, both ends in one namespace) in 3 group sets.
fn scale_config(netns: &str, n: u32) -> String {
    let mut y = String::from("security_groups:\n");
    for g in 0..3 {
        writeln!(
            y,
            "  - id: sg-{g}\n    ingress:\n      - {{ protocol: tcp, ports: {}, cidr: 198.18.0.0/15 }}\n      - {{ protocol: udp, ports: 53, group: sg-{g} }}",
            80 + g
        )
        .unwrap();
    }
    y.push_str("interfaces:\n");
    for i in 0..n {
        writeln!(
            y,
            "  - {{ name: v{i}, netns: \"{netns}\", security_groups: [sg-{}], addresses: [198.18.{}.{}] }}",
            i % 3,
            100 + i / 250,
            i % 250 + 1
        )
        .unwrap();
    }
    y
}

/// Applies `path` in-process with the state lock already taken: the apply's
/// own work, without waiting for other sgctl processes.
fn timed_apply_locked(path: &Path) -> Result<(f64, usize)> {
    let model = sg_user::agent::apply::load(path, &[])
        .map_err(|p| anyhow::anyhow!("scale config invalid: {p:?}"))?;
    let held = sg_user::agent::lock::state_lock(
        "bench: host scale",
        sg_user::agent::lock::Wait::Block,
        |_| {},
    )?;
    let t = Instant::now();
    let changes = sg_user::agent::apply::apply_locked(
        &model,
        &sg_user::agent::apply::ApplyOptions::default(),
        &held,
    )?;
    Ok((t.elapsed().as_secs_f64() * 1e3, changes.len()))
}

fn add_veths(ns: &Netns, range: std::ops::Range<u32>, dir: &Path) -> Result<()> {
    let mut batch = String::new();
    for i in range {
        writeln!(
            batch,
            "link add v{i} type veth peer name p{i}\nlink set v{i} up"
        )
        .unwrap();
    }
    let path = dir.join("scale.batch");
    std::fs::write(&path, batch)?;
    run_checked(
        "ip",
        &["-n", ns.name(), "-batch", path.to_str().expect("utf-8")],
    )?;
    Ok(())
}

/// One data plane per host: apply of `sizes` interfaces (in-process, state
/// lock held, so other sgctl processes' work is not counted), kernel memory
/// per added interface, programs the interfaces run, and one interface added
/// to the largest running set.
pub fn host_scale(dir: &Path, sizes: &[u32]) -> Result<Vec<ControlRow>> {
    let mut rows = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let ns = Netns::create(&format!("hs{n}"))?;
        add_veths(&ns, 0..n, dir)?;
        let path = dir.join(format!("scale{n}.yaml"));
        std::fs::write(&path, scale_config(ns.name(), n))?;
        let cold = !sg_user::kernel::dataplane::is_loaded();
        let before = dataplane_memlock()?;
        let (ms, changes) = timed_apply_locked(&path)?;
        let after = dataplane_memlock()?;
        let mut programs = std::collections::BTreeSet::new();
        let mut policies = std::collections::BTreeSet::new();
        for i in 0..n {
            let id = IfaceId::new(&format!("v{i}"), Some(ns.name()));
            programs.extend(
                sg_user::kernel::loader::pinned_hooks(&id)?
                    .iter()
                    .map(|h| h.program_id),
            );
            policies.insert(sg_user::kernel::loader::settings(&id)?.0.policy);
        }
        let per_iface_kib =
            (!cold).then(|| after.saturating_sub(before) as f64 / 1024.0 / f64::from(n));
        let per_iface = per_iface_kib.map_or_else(
            || "n/a (data plane loaded by this apply)".to_string(),
            |kib| format!("{kib:.1} KiB"),
        );
        rows.push(ControlRow {
            scale: Some(Scale {
                ifaces: n,
                programs: programs.len(),
                per_iface_kib,
            }),
            what: format!("host scale: apply {n} interfaces (3 group sets){}", if cold { ", cold" } else { "" }),
            wall_ms: ms,
            peak_rss_mib: 0.0,
            detail: format!(
                "{changes} changes; maps {:.1} MiB → {:.1} MiB, per interface {per_iface}; {} programs run by the {n} interfaces; {} policies",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                programs.len(),
                policies.len()
            ),
        });
        if k + 1 == sizes.len() {
            // One more interface on the running host.
            add_veths(&ns, n..n + 1, dir)?;
            std::fs::write(&path, scale_config(ns.name(), n + 1))?;
            let before = dataplane_memlock()?;
            let (ms, _) = timed_apply_locked(&path)?;
            let after = dataplane_memlock()?;
            // The interface alone: what attaching it costs the data plane
            // (session, endpoint, links), without re-applying the others.
            add_veths(&ns, n + 1..n + 2, dir)?;
            let id = IfaceId::new(&format!("v{}", n + 1), Some(ns.name()));
            let held = sg_user::agent::lock::state_lock(
                "bench: one attach",
                sg_user::agent::lock::Wait::Block,
                |_| {},
            )?;
            let t = Instant::now();
            let mut session = sg_user::kernel::dataplane::Session::open_or_load(
                &sg_user::kernel::loader::AttachOptions::default().load_options(),
            )?;
            let policy = sg_user::kernel::loader::settings(&IfaceId::new("v0", Some(ns.name())))?
                .0
                .policy;
            sg_user::kernel::loader::attach_many(
                &mut session,
                &[sg_user::kernel::loader::AttachItem {
                    iface: id.clone(),
                    opts: sg_user::kernel::loader::AttachOptions::default(),
                    initial: sg_user::kernel::loader::InitialPolicy::Enforce {
                        policy,
                        timeouts_s: sg_common::conntrack::DEFAULT_TIMEOUTS_S,
                    },
                }],
            )
            .pop()
            .expect("one result")?;
            let attach_ms = t.elapsed().as_secs_f64() * 1e3;
            drop(session);
            drop(held);
            rows.push(ControlRow {
                scale: None,
                what: format!("host scale: one interface attached beside {} (data plane only)", n + 1),
                wall_ms: attach_ms,
                peak_rss_mib: 0.0,
                detail: "open the data plane, register the endpoint (its policy shared), link both hooks".into(),
            });
            rows.push(ControlRow {
                scale: None,
                what: format!("host scale: one interface added to {n} running"),
                wall_ms: ms,
                peak_rss_mib: 0.0,
                detail: format!(
                    "whole apply of the {}-interface config; +{:.1} KiB of maps",
                    n + 1,
                    after.saturating_sub(before) as f64 / 1024.0
                ),
            });
        }
        for id in sg_user::kernel::dataplane::attached_ifaces()? {
            if id.netns.as_deref() == Some(ns.name()) {
                sg_user::agent::apply::detach(&id)?;
            }
        }
    }
    Ok(rows)
}

/// Runs the control-plane measurements with the `sgctl` binary at `sgctl`;
/// `host_ifaces` interfaces for the host case.
pub fn measure(sgctl: &Path, members: u32, host_ifaces: u32) -> Result<Vec<ControlRow>> {
    let dir = std::env::temp_dir().join(format!("sg-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure_in(sgctl, &dir, members, host_ifaces);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_in(sgctl: &Path, dir: &Path, members: u32, host_ifaces: u32) -> Result<Vec<ControlRow>> {
    let mut rows = Vec::new();
    // One interface at the quota limits.
    let ns = Netns::create("ctl")?;
    ns.ip(&["link", "add", "q0", "type", "veth", "peer", "name", "q1"])?;
    ns.ip(&["link", "set", "q0", "up"])?;
    let path = dir.join("quota.yaml");
    std::fs::write(&path, quota_config(ns.name(), "q0", members, 0))?;
    let (wall, rss) = timed_apply(sgctl, &path)?;
    let id = IfaceId::new("q0", Some(ns.name()));
    let state = sg_user::agent::state::read_state(&id).context("quota interface state")?;
    rows.push(ControlRow {
        scale: None,
        what: format!("apply, 1 interface at quota (16 groups × 60+60 rules, {members} members)"),
        wall_ms: wall,
        peak_rss_mib: rss,
        detail: format!("{} rules", state.rules.len()),
    });
    // One rule changed on the live interface.
    std::fs::write(&path, quota_config(ns.name(), "q0", members, 1))?;
    let (wall, rss) = timed_apply(sgctl, &path)?;
    rows.push(ControlRow {
        scale: None,
        what: "one rule changed on that live interface (until enforced)".into(),
        wall_ms: wall,
        peak_rss_mib: rss,
        detail: "whole `sgctl apply` process: load, validate, compile, new generation, switch"
            .into(),
    });
    // The same change applied in-process, as `sgctl run` does on reload
    // (load + validate + compile + new generation + switch; no process start).
    std::fs::write(&path, quota_config(ns.name(), "q0", members, 2))?;
    let t = Instant::now();
    let model = sg_user::agent::apply::load(&path, &[])
        .map_err(|p| anyhow::anyhow!("quota config invalid: {p:?}"))?;
    sg_user::agent::apply::apply(&model, &sg_user::agent::apply::ApplyOptions::default())?;
    rows.push(ControlRow {
        scale: None,
        what: "one rule changed, applied in-process (the daemon's reload path)".into(),
        wall_ms: t.elapsed().as_secs_f64() * 1e3,
        peak_rss_mib: 0.0,
        detail: "load, validate, compile, write the new generation, switch; the daemon adds a 150 ms debounce after the file event".into(),
    });
    // Map memory.
    let maps = Path::new(pins::MAPS_DIR);
    let v4 = memlock(&maps.join(sg_common::names::MAP_ADDR_V4))?;
    let v4_entries =
        aya::maps::lpm_trie::LpmTrie::<_, sg_common::policy::AddrKeyV4, u32>::try_from(
            aya::maps::Map::LpmTrie(aya::maps::MapData::from_pin(
                maps.join(sg_common::names::MAP_ADDR_V4),
            )?),
        )?
        .keys()
        .count();
    let ct = memlock(&maps.join(sg_common::names::MAP_CT_V4))?;
    let ct_entries = sg_user::kernel::loader::DEFAULT_CONNTRACK_ENTRIES as u64;
    rows.push(ControlRow {
        scale: None,
        what: "kernel memory per IPv4 prefix (LPM trie)".into(),
        wall_ms: 0.0,
        peak_rss_mib: 0.0,
        detail: format!(
            "{} bytes ({v4} bytes for {v4_entries} prefixes)",
            v4 / v4_entries.max(1) as u64
        ),
    });
    rows.push(ControlRow {
        scale: None,
        what: "kernel memory per IPv4 conntrack entry (preallocated hash)".into(),
        wall_ms: 0.0,
        peak_rss_mib: 0.0,
        detail: format!(
            "{} bytes ({ct} bytes for {ct_entries} entries)",
            ct / ct_entries
        ),
    });
    sg_user::agent::apply::detach(&id)?;

    // A whole host: many interfaces, 2,500 groups.
    let host = Netns::create("host")?;
    let mut batch = String::new();
    for i in 0..host_ifaces {
        writeln!(
            batch,
            "link add v{i} type veth peer name p{i}\nlink set v{i} up"
        )
        .unwrap();
    }
    let batch_path = dir.join("links.batch");
    std::fs::write(&batch_path, batch)?;
    run_checked(
        "ip",
        &[
            "-n",
            host.name(),
            "-batch",
            batch_path.to_str().expect("utf-8"),
        ],
    )?;
    let path = dir.join("host.yaml");
    std::fs::write(&path, host_config(host.name(), host_ifaces))?;
    let (wall, rss) = timed_apply(sgctl, &path)?;
    rows.push(ControlRow {
        scale: None,
        what: format!("apply, whole host ({host_ifaces} interfaces, 2,500 groups)"),
        wall_ms: wall,
        peak_rss_mib: rss,
        detail: "one data plane per host: programs verified once, interfaces share policies".into(),
    });
    for id in sg_user::kernel::dataplane::attached_ifaces()? {
        if id.netns.as_deref() == Some(host.name()) {
            sg_user::agent::apply::detach(&id)?;
        }
    }
    Ok(rows)
}
