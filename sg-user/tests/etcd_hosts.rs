//! Many hosts through etcd (issue 15): a real etcd on 127.0.0.1 started by
//! the test; two agents (`sgctl run --store`), each with a bpffs and state
//! directory of its own (`--bpffs`, `--state-dir`) as if on hosts of their
//! own, enforcing a lab namespace each: web (a, host A) and db (b, host B).
//! db admits tcp 3306 from sg-web, whose members A publishes under its lease.
//!
//! Needs root and etcd (`cargo xtask setup` installs etcd-server); under CI
//! a missing etcd fails the test instead of skipping it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::Lab;
use sg_user::{
    harness::etcd::{self, Etcd},
    lab::probe::{Reach, TcpServer},
    require_root,
};

const T: Duration = Duration::from_millis(700);
/// Lease TTL of host A's agent: how long its members outlive it.
const TTL_A: u64 = 2;

const GROUPS: &str = "security_groups:
  - id: sg-web
    ingress: []
  - id: sg-db
    ingress:
      - { protocol: tcp, ports: 3306, group: sg-web }
";

/// `etcdctl` against `etcd`.
fn ctl(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url(), "--dial-timeout", "1s"])
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let out = ctl(etcd, &["get", prefix, "--prefix", "--keys-only"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn store_revision(etcd: &Etcd) -> i64 {
    let out = ctl(etcd, &["get", "/", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
    v["header"]["revision"].as_i64().expect("revision")
}

/// One simulated host: its bpffs and state directory, its local config, and
/// its agent when running.
struct Agent {
    host: String,
    bpffs: PathBuf,
    state: PathBuf,
    config: PathBuf,
    ttl: u64,
    child: Option<Child>,
}

impl Agent {
    fn new(dir: &Path, host: &str, ns: &str, group: &str, ttl: u64) -> Agent {
        let root = dir.join(host);
        std::fs::create_dir_all(&root).unwrap();
        let config = root.join("local.yaml");
        std::fs::write(
            &config,
            format!(
                "security_groups: []\ninterfaces:\n  - {{ name: eth0, netns: {ns}, security_groups: [{group}] }}\n"
            ),
        )
        .unwrap();
        Agent {
            host: host.to_owned(),
            bpffs: root.join("bpffs"),
            state: root.join("state"),
            config,
            ttl,
            child: None,
        }
    }

    fn sgctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sgctl"));
        cmd.arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state);
        cmd
    }

    fn start(&mut self, store: &str) {
        let log = std::fs::File::create(self.bpffs.with_extension("log")).unwrap();
        let child = self
            .sgctl()
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(["--store", store, "--host-id", &self.host])
            .args(["--lease-ttl", &self.ttl.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sgctl run");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> String {
        let out = self.sgctl().arg("status").output().expect("sgctl status");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.bpffs.with_extension("log")).unwrap_or_default()
    }

    /// Waits until a line of `status` has every one of `what` (up to 20 s).
    fn wait_status(&self, what: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status();
            if s.lines().any(|l| what.iter().all(|w| l.contains(w))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {}: status never showed {what:?}:\n{s}\nlog:\n{}",
                self.host,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = self.sgctl().args(["detach", "--all"]).output();
        // The bpffs was mounted in the machine's namespace: its pins go with it.
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
    }
}

fn sgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(args)
        .output()
        .expect("run sgctl")
}

/// Polls `lab.tcp(from → b:3306)` until it gives `want` (up to `within`).
fn eventually(lab: &Lab, from: &str, want: Reach, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let got = lab.tcp(from, "b", false, 3306, T);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {from} → b:3306 gave {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

macro_rules! require_etcd {
    () => {
        require_root!();
        if let Some(why) = etcd::unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("the etcd tests must run under CI: {why}");
            }
            eprintln!("skipping {}: {why}", module_path!());
            return;
        }
    };
}

#[test]
fn two_hosts_share_membership_through_etcd_and_survive_it_going_away() {
    require_etcd!();
    let lab = Lab::new("etcd");
    let mut etcd = Etcd::start(&lab.dir).expect("etcd");
    let store = etcd.url();
    let groups = lab.dir.join("groups.yaml");
    std::fs::write(&groups, GROUPS).unwrap();

    // push: one transaction, its revision printed; an invalid file writes nothing.
    let out = sgctl(&["push", "-c", groups.to_str().unwrap(), "--store", &store]);
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let revision = store_revision(&etcd);
    assert!(
        said.contains(&format!("revision {revision}")),
        "push prints the store revision {revision}: {said}"
    );
    assert_eq!(
        keys(&etcd, "/sg/v1/groups/"),
        ["/sg/v1/groups/sg-db", "/sg/v1/groups/sg-web"]
    );
    let bad = lab.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "security_groups:\n  - id: sg-db\n    ingress:\n      - { protocol: tcp, ports: 3306, group: sg-nope }\n",
    )
    .unwrap();
    let out = sgctl(&["push", "-c", bad.to_str().unwrap(), "--store", &store]);
    assert_eq!(out.status.code(), Some(2), "an invalid file is refused");
    assert_eq!(
        store_revision(&etcd),
        revision,
        "an invalid push writes nothing"
    );

    let _db = TcpServer::start(lab.ns("b"), "0.0.0.0:3306".parse().unwrap()).unwrap();
    let mut host_a = Agent::new(&lab.dir, "host-a", lab.ns("a").name(), "sg-web", TTL_A);
    let mut host_b = Agent::new(&lab.dir, "host-b", lab.ns("b").name(), "sg-db", 10);
    host_b.start(&store);
    host_b.wait_status(&["store: ", "connected since"]);
    host_b.wait_status(&["eth0@", " enforce generation"]);
    assert_eq!(
        lab.tcp("a", "b", false, 3306, T),
        Reach::Timeout,
        "web's address is in sg-web only once host A publishes it"
    );

    host_a.start(&store);
    host_a.wait_status(&["eth0@", " enforce generation"]);
    eventually(
        &lab,
        "a",
        Reach::Connected,
        Duration::from_secs(10),
        "host A published web's address",
    );
    assert!(
        keys(&etcd, "/sg/v1/members/sg-web/host-a/")
            .contains(&"/sg/v1/members/sg-web/host-a/198.18.0.1".to_owned()),
        "A's member key: {:?}",
        keys(&etcd, "/sg/v1/members/")
    );
    assert_eq!(
        lab.tcp("c", "b", false, 3306, T),
        Reach::Timeout,
        "c is in no group"
    );

    // kill -9 of A: its lease ends, B drops its members within TTL + 1 s.
    host_a.kill9();
    std::thread::sleep(Duration::from_secs(TTL_A + 1));
    assert_eq!(
        lab.tcp("a", "b", false, 3306, T),
        Reach::Timeout,
        "B dropped A's members within the lease TTL + 1 s"
    );
    host_a.start(&store);
    eventually(
        &lab,
        "a",
        Reach::Connected,
        Duration::from_secs(10),
        "A restarted and published again",
    );

    // etcd stopped: B keeps enforcing the last good state and says so.
    etcd.stop();
    host_b.wait_status(&["store: ", "UNREACHABLE since"]);
    assert_eq!(
        lab.tcp("a", "b", false, 3306, T),
        Reach::Connected,
        "store down: members kept"
    );
    assert_eq!(
        lab.tcp("c", "b", false, 3306, T),
        Reach::Timeout,
        "store down: still enforcing"
    );

    // etcd back; a ghost member written and removed, the history compacted
    // before B can watch it: whatever B saw, nothing stale survives.
    etcd.resume().expect("etcd again");
    let ghost = "/sg/v1/members/sg-web/ghost/198.19.0.3";
    assert!(ctl(&etcd, &["put", ghost, ""]).status.success());
    assert!(ctl(&etcd, &["del", ghost]).status.success());
    let now = store_revision(&etcd).to_string();
    assert!(ctl(&etcd, &["compact", &now]).status.success());
    host_b.wait_status(&["store: ", "connected since"]);
    // A group pushed while B follows: c admitted by CIDR.
    std::fs::write(
        &groups,
        format!("{GROUPS}      - {{ protocol: tcp, ports: 3306, cidr: 198.19.0.3/32 }}\n"),
    )
    .unwrap();
    let out = sgctl(&["push", "-c", groups.to_str().unwrap(), "--store", &store]);
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        &lab,
        "c",
        Reach::Connected,
        Duration::from_secs(10),
        "B follows the pushed group",
    );
    eventually(
        &lab,
        "a",
        Reach::Connected,
        Duration::from_secs(10),
        "A's membership is back after the outage",
    );
    // Removing the CIDR again shows the ghost left nothing behind either.
    std::fs::write(&groups, GROUPS).unwrap();
    assert!(
        sgctl(&["push", "-c", groups.to_str().unwrap(), "--store", &store])
            .status
            .success()
    );
    eventually(
        &lab,
        "c",
        Reach::Timeout,
        Duration::from_secs(10),
        "no stale ghost member and no stale rule",
    );
    let status = host_b.status();
    assert!(
        status.contains("store: ") && status.contains("as host host-b"),
        "{status}"
    );
}

/// `--bpffs DIR` mounts a bpffs at DIR when there is none. Commands started
/// together (a test's `sgctl run` and its `sgctl status`, a daemon and a
/// CNI call) must mount it once: a second bpffs stacked on the first hides
/// the pins and outlives the unmount.
#[test]
fn commands_started_together_mount_one_bpffs() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("sg-test-bpffs-race-{}", std::process::id()));
    let bpffs = dir.join("bpffs");
    let children: Vec<Child> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_sgctl"))
                .arg("--bpffs")
                .arg(&bpffs)
                .arg("--state-dir")
                .arg(dir.join("state"))
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sgctl status")
        })
        .collect();
    for mut c in children {
        let _ = c.wait();
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(bpffs.to_str().unwrap()))
        .count();
    for _ in 0..mounts {
        let _ = Command::new("umount").arg(&bpffs).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(mounts, 1, "one bpffs at {}", bpffs.display());
}
