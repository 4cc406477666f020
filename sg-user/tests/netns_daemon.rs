//! `sgctl run` as operators use it: config rewrites under traffic, restarts
//! (SIGTERM and kill -9), invalid configs, interfaces that appear and
//! disappear, metrics and flow logs. Needs root.
//!
//! The tests of this file take turns: each daemon's reloads hold the state
//! lock, and the rewrite test counts on its reloads not waiting behind others.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::Lab;
use sg_user::{
    agent::daemon_state::{self, DaemonState},
    agent::flowlog::parse_v2,
    agent::status,
    kernel::pins::IfaceId,
    lab::probe::{self, Reach, TcpEcho, TcpServer, TcpSession},
    require_root,
};

static ONE_DAEMON: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_DAEMON
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `cond` (test-side only) until it holds or `secs` pass.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `sgctl run`; killed on drop.
struct Daemon {
    child: Option<Child>,
    config: PathBuf,
}

impl Daemon {
    fn start(config: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with(config, extra, &[], None)
    }

    /// Starts with `env` added to the environment and, if `log` is given,
    /// the daemon's log (stderr) written to that file.
    fn start_with(
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Daemon {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("daemon log file")),
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_sgctl"))
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sgctl run");
        let pid = child.id();
        let d = Daemon {
            child: Some(child),
            config: config.to_path_buf(),
        };
        wait_until(20, "the daemon's first reload", || {
            daemon_state::read_state_for(config)
                .is_some_and(|s| s.pid == pid && s.last_reload_at > 0)
        });
        d
    }

    fn state(&self) -> DaemonState {
        daemon_state::read_state_for(&self.config).expect("daemon state")
    }

    fn signal(&mut self, sig: i32) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().expect("wait");
        if sig == libc::SIGTERM {
            assert!(status.success(), "sgctl run exits 0 on SIGTERM: {status}");
        }
    }
}

impl Drop for Daemon {
    /// SIGTERM first (so `--detach-on-exit` cleans up), SIGKILL if it hangs.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..40 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Datagrams sent from b to a's UDP port at ~1 kHz, counted on both ends.
struct UdpStream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpStream {
    fn start(lab: &Lab, port: u16) -> UdpStream {
        let rx = lab
            .ns("a")
            .run(|| UdpSocket::bind(("0.0.0.0", port)))
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let tx = lab.ns("b").run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
        let dst = lab.addr("a", false, port);
        let (stop, sent, received) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stop1, sent1) = (stop.clone(), sent.clone());
        let sender = std::thread::spawn(move || {
            while !stop1.load(Ordering::Relaxed) {
                if tx.send_to(b"seq", dst).is_ok() {
                    sent1.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let (stop2, received2) = (stop.clone(), received.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut quiet = 0;
            // Keep reading a little after the stop so nothing in flight is missed.
            while quiet < 5 {
                match rx.recv_from(&mut buf) {
                    Ok(_) => {
                        received2.fetch_add(1, Ordering::Relaxed);
                        quiet = 0;
                    }
                    Err(_) if stop2.load(Ordering::Relaxed) => quiet += 1,
                    Err(_) => {}
                }
            }
        });
        UdpStream {
            stop,
            sent,
            received,
            threads: vec![sender, receiver],
        }
    }

    /// Stops and returns (sent, received).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

const T: Duration = Duration::from_millis(400);

/// sg-a: UDP 9000 from anywhere (untracked: judged by the policy of the
/// moment, packet by packet), TCP 8080 from b (tracked), plus `extra` rules.
fn config(lab: &Lab, extra: &str, order: &str) -> String {
    format!(
        "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: udp, ports: 9000, cidr: 0.0.0.0/0 }}
      - {{ protocol: tcp, ports: 8080, cidr: 198.18.0.2/32 }}
{extra}  - id: sg-x
    ingress:
      - {{ protocol: tcp, ports: 7000, cidr: 198.19.0.0/16 }}
interfaces:
  - {{ name: eth0, netns: \"{}\", security_groups: [{order}], addresses: [198.18.0.1] }}
",
        lab.ns("a").name()
    )
}

fn a_iface(lab: &Lab) -> IfaceId {
    IfaceId::new("eth0", Some(lab.ns("a").name()))
}

fn passed_by_rule(lab: &Lab) -> u64 {
    let s = status::iface_status(a_iface(lab)).unwrap();
    s.counters
        .iter()
        .filter(|c| c.verdict == "pass")
        .map(|c| c.packets)
        .sum()
}

/// Writes [`config`] (both groups) to the lab's `config.yaml` and starts
/// a's echo server on 8080: (config path, server).
fn config_and_echo(lab: &Lab) -> (PathBuf, TcpEcho) {
    let path = lab.dir.join("config.yaml");
    write_atomically(&path, &config(lab, "", "sg-a, sg-x"));
    let echo = TcpEcho::start(lab.ns("a"), "[::]:8080".parse().unwrap()).unwrap();
    (path, echo)
}

#[test]
fn config_rewritten_100_times_under_traffic_loses_nothing() {
    require_root!();
    let _turn = one_at_a_time();
    let lab = Lab::new("reload100");
    let (path, _echo) = config_and_echo(&lab);
    let _denied = TcpServer::start(lab.ns("a"), "[::]:23".parse().unwrap()).unwrap();
    let daemon = Daemon::start(&path, &["--detach-on-exit"]);
    let generation0 = daemon.state().generations[&a_iface(&lab).to_string()];
    let stream = UdpStream::start(&lab, 9000);
    let mut session = TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).unwrap();
    for i in 0..100 {
        // Rules added and removed, groups reordered.
        let extra = if i % 3 == 0 {
            String::new()
        } else {
            format!(
                "      - {{ protocol: tcp, ports: {}, cidr: 198.19.0.0/16 }}\n",
                10000 + i
            )
        };
        let order = if i % 2 == 0 {
            "sg-x, sg-a"
        } else {
            "sg-a, sg-x"
        };
        write_atomically(&path, &config(&lab, &extra, order));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            session.roundtrip(),
            "tracked TCP flow keeps working (rewrite {i})"
        );
        if i % 25 == 0 {
            assert_eq!(
                probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 23), T),
                Reach::Timeout,
                "denied stays denied (rewrite {i})"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (sent, received) = stream.finish();
    let state = daemon.state();
    let generation = state.generations[&a_iface(&lab).to_string()];
    assert!(
        state.reloads_ok >= 10 && generation >= generation0 + 10,
        "the policy really changed many times: {state:?}"
    );
    assert!(sent > 1000, "the stream ran ({sent} datagrams)");
    assert_eq!(
        received,
        sent,
        "no allowed datagram lost across {} policy generations",
        generation - generation0
    );
}

#[test]
fn restarts_lose_nothing_and_adopt_the_pinned_state() {
    require_root!();
    let _turn = one_at_a_time();
    let lab = Lab::new("restart");
    let (path, _echo) = config_and_echo(&lab);
    let mut daemon = Daemon::start(&path, &[]);
    let iface = a_iface(&lab);
    let generation = daemon.state().generations[&iface.to_string()];
    let stream = UdpStream::start(&lab, 9000);
    let mut session = TcpSession::connect(lab.ns("b"), lab.addr("a", false, 8080), T).unwrap();
    assert!(session.roundtrip());
    let mut counted = passed_by_rule(&lab);
    for (round, sig) in [libc::SIGTERM, libc::SIGKILL, libc::SIGTERM]
        .into_iter()
        .enumerate()
    {
        daemon.signal(sig);
        assert!(
            iface.dir().exists(),
            "enforcement stays after the daemon stops (round {round})"
        );
        assert!(
            session.roundtrip(),
            "flow works with no daemon running (round {round})"
        );
        std::thread::sleep(Duration::from_millis(200));
        daemon = Daemon::start(&path, &[]);
        assert!(
            session.roundtrip(),
            "flow works after the restart (round {round})"
        );
        let state = daemon.state();
        assert_eq!(
            state.generations[&iface.to_string()],
            generation,
            "adopted, not reinstalled (round {round})"
        );
        let now = passed_by_rule(&lab);
        assert!(
            now > counted,
            "counters continue (round {round}): {counted} → {now}"
        );
        counted = now;
        let cfg = sg_user::kernel::loader::policy_maps_of(&iface)
            .unwrap()
            .config()
            .unwrap();
        let flows = sg_user::kernel::conntrack::list(&iface, &cfg).unwrap();
        assert!(
            flows.iter().any(|f| f.local_port == 8080 && f.age_s < 600),
            "conntrack entry kept (round {round})"
        );
    }
    drop(daemon);
    let (sent, received) = stream.finish();
    assert!(sent > 500, "the stream ran ({sent})");
    assert_eq!(received, sent, "no datagram lost across three restarts");
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn invalid_config_keeps_the_policy_and_shows_the_error_metrics_and_flow_logs() {
    require_root!();
    let _turn = one_at_a_time();
    let lab = Lab::new("invalid");
    let path = lab.dir.join("config.yaml");
    let flow_log = lab.dir.join("flows.log");
    write_atomically(&path, &config(&lab, "", "sg-a"));
    let _srv = TcpServer::start_all(lab.ns("a"), &[8080, 9090, 23]).unwrap();
    let metrics = "127.0.0.1:19977";
    let flow_arg = flow_log.to_str().unwrap();
    let daemon = Daemon::start(
        &path,
        &[
            "--metrics",
            metrics,
            "--flow-log",
            flow_arg,
            "--flow-window",
            "1",
            "--detach-on-exit",
        ],
    );
    let iface = a_iface(&lab).to_string();
    let body = scrape(metrics);
    assert_eq!(metric(&body, "sgctl_reload_success"), Some(1.0), "{body}");

    write_atomically(
        &path,
        "security_groups:\n  - id: sg-a\n    ingress:\n      - { protocol: tcp, ports: 99999, cidr: 0.0.0.0/0 }\n",
    );
    wait_until(10, "the failed reload", || !daemon.state().last_reload_ok);
    let state = daemon.state();
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("99999")),
        "error names the bad value: {state:?}"
    );
    assert_eq!(metric(&scrape(metrics), "sgctl_reload_success"), Some(0.0));
    lab.expect_tcp(
        T,
        &[
            (
                "b",
                "a",
                false,
                8080,
                Reach::Connected,
                "old policy still allows",
            ),
            ("b", "a", false, 23, Reach::Timeout, "and still denies"),
        ],
    );

    let extra = "      - { protocol: tcp, ports: 9090, cidr: 198.18.0.2/32 }\n";
    write_atomically(&path, &config(&lab, extra, "sg-a"));
    wait_until(10, "the good reload", || daemon.state().last_reload_ok);
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 9090), T),
        Reach::Connected,
        "new rule applied"
    );

    let body = scrape(metrics);
    assert_eq!(metric(&body, "sgctl_reload_success"), Some(1.0));
    let drops = format!(
        "sgctl_packets_total{{iface=\"{iface}\",direction=\"inbound\",verdict=\"drop\",reason=\"no_rule\"}}"
    );
    assert!(
        metric(&body, &drops).is_some_and(|v| v >= 1.0),
        "denied SYNs counted: {body}"
    );
    let hits = format!(
        "sgctl_rule_hits_total{{iface=\"{iface}\",group=\"sg-a\",rule=\"sg-a/in/tcp:9090/198.18.0.2/32\"}}"
    );
    assert!(
        metric(&body, &hits).is_some_and(|v| v >= 1.0),
        "rule hit counted: {body}"
    );
    assert!(
        metric(
            &body,
            &format!("sgctl_conntrack_entries{{iface=\"{iface}\"}}")
        )
        .is_some()
    );
    assert!(metric(&body, "sgctl_reloads_total{result=\"error\"}").is_some_and(|v| v >= 1.0));

    wait_until(10, "flow-log records of both flows", || {
        std::fs::read_to_string(&flow_log)
            .is_ok_and(|t| t.contains(" 23 6 ") && t.contains(" 9090 6 "))
    });
    let text = std::fs::read_to_string(&flow_log).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&flow_log).unwrap()) & 0o7777,
        sg_user::sys::private_dir::FLOW_LOG_MODE,
        "flow logs are 0640 whatever the umask"
    );
    for line in text.lines() {
        let f = parse_v2(line).unwrap_or_else(|| panic!("not a VPC Flow Logs v2 record: {line}"));
        assert_eq!(f["interface-id"], iface);
    }
    assert!(
        text.lines()
            .any(|l| l.contains(" 23 6 ") && l.contains("REJECT")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" 9090 6 ") && l.contains("ACCEPT")),
        "{text}"
    );
}

/// A namespace name the harness recognises (and cleans up if we crash),
/// created only later by the test.
fn later_netns(role: &str) -> String {
    format!(
        "{}{}-900-{role}",
        sg_user::sys::netns::HARNESS_PREFIX,
        std::process::id()
    )
}

struct DetachGuard(IfaceId);

impl Drop for DetachGuard {
    fn drop(&mut self) {
        let _ = sg_user::agent::apply::detach(&self.0);
    }
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {args:?}");
}

#[test]
fn interfaces_that_appear_later_are_enforced_and_cleaned_up_when_gone() {
    require_root!();
    let _turn = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("sg-test-later-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ctr, peer) = (later_netns("ctr"), later_netns("peer"));
    let path: PathBuf = dir.join("config.yaml");
    write_atomically(
        &path,
        &format!(
            "security_groups:\n  - id: sg-c\n    ingress:\n      - {{ protocol: tcp, ports: 80, cidr: 198.18.7.0/24 }}\n\
             interfaces:\n  - {{ name: eth0, netns: \"{ctr}\", security_groups: [sg-c] }}\n"
        ),
    );
    let id = IfaceId::new("eth0", Some(&ctr));
    let _cleanup = DetachGuard(id.clone());
    let daemon = Daemon::start(&path, &["--detach-on-exit"]);
    assert!(!id.dir().exists(), "nothing to attach yet");
    assert_eq!(daemon.state().generations.get(&id.to_string()), Some(&0));

    let _g1 = NetnsGuard(ctr.clone());
    let _g2 = NetnsGuard(peer.clone());
    ip(&["netns", "add", &ctr]);
    ip(&["netns", "add", &peer]);
    ip(&[
        "-n", &peer, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &ctr,
    ]);
    ip(&["-n", &ctr, "addr", "add", "198.18.7.1/24", "dev", "eth0"]);
    ip(&["-n", &peer, "addr", "add", "198.18.7.2/24", "dev", "eth0"]);
    ip(&["-n", &ctr, "link", "set", "eth0", "up"]);
    ip(&["-n", &peer, "link", "set", "eth0", "up"]);
    // The daemon publishes the generation once the attachment is complete.
    wait_until(10, "the new interface to be attached", || {
        daemon_state::read_state_for(&path)
            .is_some_and(|s| s.generations.get(&id.to_string()).is_some_and(|g| *g > 0))
    });
    let ns = |name: &str| {
        sg_user::sys::netns::in_netns(Some(name), || ())
            .map(|()| name.to_string())
            .unwrap()
    };
    let (ctr_ns, peer_ns) = (ns(&ctr), ns(&peer));
    let servers: Vec<_> = [80u16, 81]
        .iter()
        .map(|p| {
            let l = sg_user::sys::netns::in_netns(Some(&ctr_ns), || {
                std::net::TcpListener::bind(("0.0.0.0", *p))
            })
            .unwrap()
            .unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let connect = |port| {
        sg_user::sys::netns::in_netns(Some(&peer_ns), || {
            std::net::TcpStream::connect_timeout(&SocketAddr::from(([198, 18, 7, 1], port)), T)
        })
        .unwrap()
        .is_ok()
    };
    assert!(connect(80), "allowed port reachable on the late interface");
    assert!(!connect(81), "other ports dropped");
    drop(servers);

    ip(&["netns", "del", &ctr]);
    // The pins go inside the daemon's apply, its state file after it.
    wait_until(10, "the deleted interface's state to go", || {
        !id.dir().exists()
            && daemon_state::read_state_for(&path)
                .is_some_and(|s| s.generations.get(&id.to_string()) == Some(&0))
    });
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `cond` until it holds (true) or `secs` pass (false).
fn holds_within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ip -n NETNS -batch`: a few veth pairs added, `count` changes to them
/// (MTU, alias: each one a link event), the batch lines `middle` halfway
/// through, and the pairs deleted — a flood of link events, in well under a
/// second, far beyond what a small netlink socket buffer holds.
fn flood(netns: &str, dir: &Path, count: usize, middle: &[String]) {
    const PAIRS: usize = 8;
    let churn = |range: std::ops::Range<usize>| {
        range.flat_map(|i| {
            let link = i % PAIRS;
            [
                format!("link set sgfl{link} mtu {}", 1280 + i % 200),
                format!("link set sgfl{link} alias flood{i}"),
            ]
        })
    };
    let lines: Vec<String> = (0..PAIRS)
        .map(|i| format!("link add sgfl{i} type veth peer name sgfp{i}"))
        .chain(churn(0..count / 2))
        .chain(middle.iter().cloned())
        .chain(churn(count / 2..count))
        .chain((0..PAIRS).map(|i| format!("link del sgfl{i}")))
        .collect();
    let batch = dir.join("flood.batch");
    std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
    ip(&["-n", netns, "-batch", batch.to_str().unwrap()]);
}

/// The daemon's log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The kernel's view of the link watchers' sockets in `netns` (route
/// sockets subscribed to links and addresses, from /proc/net/netlink):
/// (bytes queued, events dropped).
fn watcher_sockets(netns: &sg_user::sys::netns::Netns) -> (u64, u64) {
    // /proc/thread-self: the namespace of this thread, which `run` moved.
    let text = netns.run(|| std::fs::read_to_string("/proc/thread-self/net/netlink").unwrap());
    let mut found = None;
    for line in text.lines().skip(1) {
        // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 9 && f[1] == "0" && f[3] == "00000111" {
            let (rmem, drops) = found.unwrap_or((0, 0));
            found = Some((
                rmem + f[4].parse::<u64>().unwrap(),
                drops + f[8].parse::<u64>().unwrap(),
            ));
        }
    }
    found.expect("the daemon's link watcher socket in the namespace")
}

/// A watcher's netlink socket overflows (the kernel drops events, ENOBUFS):
/// the daemon must answer with a full reconcile and read on, or it would
/// never hear of the namespace again. The buffer is made as small as the
/// kernel allows (a test-only switch) and flooded with link changes; then
/// the interface the config names is created, and later deleted, in the
/// middle of more floods: the daemon must enforce it and clean it up. The
/// kernel's drop counter proves the overflow, the daemon's count and log
/// that it noticed.
#[test]
fn link_events_lost_in_a_flood_still_lead_to_enforcement_and_cleanup() {
    require_root!();
    let _turn = one_at_a_time();
    let lab = Lab::new("nlflood");
    let (a, b) = (lab.ns("a").name(), lab.ns("b").name());
    let path = lab.dir.join("config.yaml");
    let log = lab.dir.join("daemon.log");
    write_atomically(
        &path,
        &format!(
            "security_groups:\n  - id: sg-f\n    ingress:\n      - {{ protocol: tcp, ports: 80, cidr: 198.19.77.0/24 }}\n\
             interfaces:\n  - {{ name: late0, netns: \"{a}\", security_groups: [sg-f] }}\n"
        ),
    );
    let id = IfaceId::new("late0", Some(a));
    let _cleanup = DetachGuard(id.clone());
    let generation = || {
        daemon_state::read_state_for(&path)
            .and_then(|s| s.generations.get(&id.to_string()).copied())
            .unwrap_or(0)
    };
    let overflows = || {
        daemon_state::read_state_for(&path)
            .and_then(|s| s.netlink_overflows.get(a).copied())
            .unwrap_or(0)
    };
    // "1": the kernel's minimum, about one message.
    let daemon = Daemon::start_with(
        &path,
        &["--detach-on-exit"],
        &[(sg_user::agent::linkwatch::TEST_RCVBUF_VAR, "1")],
        Some(&log),
    );
    assert_eq!(generation(), 0, "late0 does not exist yet");

    // Overflow: with a one-message buffer certain, but flood again if the
    // watcher happened to keep up, so the test proves what it says.
    for _ in 0..3 {
        flood(a, &lab.dir, 2000, &[]);
        if watcher_sockets(lab.ns("a")).1 > 0 {
            break;
        }
    }
    let (_, dropped) = watcher_sockets(lab.ns("a"));
    assert!(
        dropped > 0,
        "the kernel dropped link events for the watcher"
    );
    // A watcher that stops reading at ENOBUFS leaves its queue full, and the
    // kernel delivers nothing more to it: deaf for good.
    assert!(
        holds_within(20, || watcher_sockets(lab.ns("a")).0 == 0),
        "the watcher reads on after the overflow (its socket's queue drains); daemon log:\n{}",
        log_tail(&log)
    );
    assert!(
        holds_within(20, || overflows() > 0),
        "the daemon counted the overflow; daemon log:\n{}",
        log_tail(&log)
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("netlink events lost"),
        "the daemon logged the overflow; daemon log:\n{}",
        log_tail(&log)
    );

    // The interface appears, with its address and link up, mid-flood.
    let create = [
        format!("link add late0 type veth peer name late0 netns {b}"),
        "addr add 198.19.77.1/24 dev late0".to_string(),
        "link set late0 up".to_string(),
    ];
    flood(a, &lab.dir, 2000, &create);
    ip(&["-n", b, "addr", "add", "198.19.77.2/24", "dev", "late0"]);
    ip(&["-n", b, "link", "set", "late0", "up"]);
    assert!(
        holds_within(30, || generation() > 0 && id.dir().exists()),
        "late0, created in the middle of a flood of link events, is enforced; daemon log:\n{}",
        log_tail(&log)
    );

    // Traffic on the late interface is judged by the rules.
    let servers: Vec<_> = [80u16, 81]
        .iter()
        .map(|p| {
            let l = lab
                .ns("a")
                .run(|| std::net::TcpListener::bind(("0.0.0.0", *p)))
                .unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let connect = |port| {
        lab.ns("b")
            .run(|| {
                std::net::TcpStream::connect_timeout(&SocketAddr::from(([198, 19, 77, 1], port)), T)
            })
            .is_ok()
    };
    assert!(connect(80), "allowed port reachable on late0");
    assert!(!connect(81), "other ports dropped on late0");
    drop(servers);
    let passed: u64 = status::iface_status(id.clone())
        .unwrap()
        .counters
        .iter()
        .filter(|c| c.verdict == "pass")
        .map(|c| c.packets)
        .sum();
    assert!(passed > 0, "late0's program judged the allowed flow");

    // The interface goes, again mid-flood: its enforcement is removed.
    flood(a, &lab.dir, 2000, &["link del late0".to_string()]);
    assert!(
        holds_within(30, || generation() == 0 && !id.dir().exists()),
        "late0, deleted in the middle of a flood, is cleaned up; daemon log:\n{}",
        log_tail(&log)
    );
    drop(daemon);
}
