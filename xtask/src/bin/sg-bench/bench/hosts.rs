//! Many hosts through etcd: `agents` agents on this machine (each with its
//! own bpffs and state directory, as the tests run hosts), one etcd on
//! loopback. A membership change (another host publishing an address in a
//! group every agent's policy references) is written to the store; the time
//! until each agent's kernel maps hold it is the time from the write to the
//! agent's log line reporting that apply. Also the store load per agent:
//! requests per second and watches, from etcd's own metrics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use sg_user::{harness::etcd::Etcd, sys::netns::Netns};

use crate::bench::containers::percentile;

#[derive(Clone, Debug, serde::Serialize)]
pub struct PropagationRow {
    pub agents: usize,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// gRPC requests etcd served per second per agent while changes flowed.
    pub requests_per_sec_per_agent: f64,
    pub watches_per_agent: f64,
}

/// Why etcd cannot run here, if it cannot.
pub use sg_user::harness::etcd::unavailable as etcd_unavailable;

fn unix_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` → Unix nanoseconds.
pub fn rfc3339_ns(t: &str) -> Option<i128> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    let frac_ns: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

/// etcd, the agents and their namespace; all stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    url: String,
    etcd: Etcd,
    agents: Vec<(Child, PathBuf, PathBuf)>,
    ns: Option<Netns>,
}

/// Sum of a Prometheus metric's samples (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (mut child, bpffs, state) in self.agents.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new(crate::bench::control::sibling_sgctl().unwrap_or_default())
                .arg("--bpffs")
                .arg(&bpffs)
                .arg("--state-dir")
                .arg(&state)
                .args(["detach", "--all"])
                .output();
            let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
        }
        self.etcd.stop();
        self.ns.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sgctl_in(sgctl: &Path, bpffs: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(sgctl);
    cmd.arg("--bpffs").arg(bpffs).arg("--state-dir").arg(state);
    cmd
}

/// Starts `agents` agents, then writes `changes` membership changes.
pub fn measure(sgctl: &Path, agents: usize, changes: usize) -> Result<PropagationRow> {
    let dir = std::env::temp_dir().join(format!("sg-bench-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let etcd = Etcd::start(&dir)?;
    let mut cluster = Cluster {
        dir: dir.clone(),
        url: etcd.url(),
        etcd,
        agents: Vec::new(),
        ns: None,
    };
    let groups = dir.join("groups.yaml");
    std::fs::write(
        &groups,
        "security_groups:\n  - id: sg-app\n    ingress:\n      - { protocol: tcp, ports: 80, group: sg-peers }\n  - { id: sg-peers, ingress: [] }\n",
    )?;
    let out = Command::new(sgctl)
        .args(["push", "-c"])
        .arg(&groups)
        .args(["--store", &cluster.url])
        .output()?;
    ensure!(
        out.status.success(),
        "sgctl push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = Netns::create("hosts")?;
    for i in 0..agents {
        ns.ip(&[
            "link",
            "add",
            &format!("h{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("g{i}"),
        ])?;
        ns.ip(&["link", "set", &format!("h{i}"), "up"])?;
        let root = dir.join(format!("host{i}"));
        std::fs::create_dir_all(&root)?;
        let local = root.join("local.yaml");
        std::fs::write(
            &local,
            format!(
                "security_groups: []\ninterfaces:\n  - {{ name: h{i}, netns: {}, security_groups: [sg-app], addresses: [198.18.211.{}] }}\n",
                ns.name(),
                i + 1
            ),
        )?;
        let (bpffs, state) = (root.join("bpffs"), root.join("state"));
        let log = std::fs::File::create(root.join("agent.log"))?;
        let child = sgctl_in(sgctl, &bpffs, &state)
            .args(["run", "--log-format", "json", "-c"])
            .arg(&local)
            .args(["--store", &cluster.url, "--host-id", &format!("host{i}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sgctl run --store")?;
        cluster.agents.push((child, bpffs, state));
    }
    cluster.ns = Some(ns);
    // Every agent enforcing (its first list applied).
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, (_, bpffs, state)) in cluster.agents.iter().enumerate() {
        loop {
            let out = sgctl_in(sgctl, bpffs, state).arg("status").output()?;
            if String::from_utf8_lossy(&out.stdout).contains(" enforce generation") {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {i} never enforced: {}",
                    std::fs::read_to_string(dir.join(format!("host{i}/agent.log")))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let before = cluster.etcd.get("/metrics")?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client =
        runtime.block_on(etcd_client::Client::connect([cluster.url.as_str()], None))?;
    let mut writes = Vec::new();
    for k in 0..changes {
        let key = format!("/sg/v1/members/sg-peers/bench/198.18.212.{}", k + 1);
        let t0 = unix_ns();
        runtime.block_on(client.put(key, "", None))?;
        writes.push(t0);
        // Apart enough that each change is its own apply on every agent.
        std::thread::sleep(Duration::from_millis(300));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = cluster.etcd.get("/metrics")?;
    let mut delays = Vec::new();
    for i in 0..agents {
        let log = std::fs::read_to_string(dir.join(format!("host{i}/agent.log")))?;
        let applied: Vec<i128> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["fields"]["message"] == "applied" && v["fields"]["trigger"] == "store changed"
            })
            .filter_map(|v| rfc3339_ns(v["timestamp"].as_str()?))
            .collect();
        for (k, &t0) in writes.iter().enumerate() {
            let next = writes.get(k + 1).copied().unwrap_or(i128::MAX);
            let Some(t) = applied.iter().copied().find(|t| *t >= t0 && *t < next) else {
                bail!("agent {i} never applied membership change {k}; its log:\n{log}");
            };
            delays.push((t - t0) as f64 / 1e6);
        }
    }
    let requests = metric_sum(&after, "grpc_server_handled_total")
        - metric_sum(&before, "grpc_server_handled_total");
    let watches = metric_sum(&after, "etcd_debugging_mvcc_watcher_total");
    Ok(PropagationRow {
        agents,
        changes,
        p50_ms: percentile(&delays, 50.0),
        p99_ms: percentile(&delays, 99.0),
        requests_per_sec_per_agent: requests / elapsed / agents as f64,
        watches_per_agent: watches / agents as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ns;

    #[test]
    fn log_timestamps_parse_to_unix_nanoseconds() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ns("2026-12-01T05:19:04.123456Z"),
            Some(1_796_102_344_123_456_000)
        );
        assert_eq!(
            rfc3339_ns("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(rfc3339_ns("nonsense"), None);
    }
}
