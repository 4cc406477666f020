//! The control plane under concurrency and drift, through the real `sgctl`
//! binary: parallel and alternating applies, config identity, hooks removed
//! out of band, deleted namespaces, a second daemon, untrusted directories,
//! a full state directory. Real kernel, real namespaces, real traffic. Needs root.

mod common;

use std::{
    collections::BTreeSet,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Lab, scratch_config};
use sg_user::{
    agent::apply,
    agent::daemon_state,
    agent::lock,
    kernel::pins::{self, IfaceId},
    lab::probe::{self, Reach, TcpServer},
    require_root,
    sys::netns::Netns,
    sys::private_dir,
};

const T: Duration = Duration::from_millis(500);

fn sgctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sgctl"));
    c.stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running sgctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// sg-a allows TCP `port` from the test range; it protects a's eth0.
fn config_allowing(lab: &Lab, port: u16) -> String {
    format!(
        "security_groups:
  - id: sg-a
    ingress:
      - {{ protocol: tcp, ports: {port}, cidr: 198.18.0.0/15 }}
interfaces:
  - {{ name: eth0, netns: \"{}\", security_groups: [sg-a], addresses: [198.18.0.1, \"2001:db8::1\"] }}
",
        lab.ns("a").name()
    )
}

fn servers(lab: &Lab, ports: &[u16]) -> Vec<TcpServer> {
    TcpServer::start_all(lab.ns("a"), ports).unwrap()
}

fn reach(lab: &Lab, port: u16) -> Reach {
    probe::tcp_connect(lab.ns("b"), lab.addr("a", false, port), T)
}

fn a_iface(lab: &Lab) -> IfaceId {
    IfaceId::new("eth0", Some(lab.ns("a").name()))
}

/// `sgctl status --json`, the entry of `id`.
fn status_of(id: &IfaceId) -> Option<serde_json::Value> {
    let out = run(sgctl().args(["status", "--json"]));
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    doc["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|s| {
            s["iface"]["iface"] == id.iface.as_str()
                && s["iface"]["netns"].as_str() == id.netns.as_deref()
        })
        .cloned()
}

/// Generations that lines like `eth0@ns  updated, generation 7` report as
/// newly installed (not `unchanged`).
fn installed_generations(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter(|l| !l.contains("unchanged"))
        .filter_map(|l| l.rsplit_once("generation ")?.1.trim().parse().ok())
        .collect()
}

/// Writes [`config_allowing`] `port` to `name` in the lab's directory.
fn write_config(lab: &Lab, name: &str, port: u16) -> PathBuf {
    let path = lab.dir.join(name);
    std::fs::write(&path, config_allowing(lab, port)).unwrap();
    path
}

/// Runs `cmd`, which must fail (`what`); returns its standard error.
fn run_failing(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what}: {stderr}");
    stderr
}

#[test]
fn parallel_first_applies_attach_once_and_enforce() {
    require_root!();
    let lab = Lab::new("ctl-parallel");
    let _srv = servers(&lab, &[80, 22]);
    let path = write_config(&lab, "same.yaml", 80);
    assert_eq!(reach(&lab, 22), Reach::Connected, "nothing enforced yet");

    let children: Vec<Child> = (0..6)
        .map(|i| {
            let mut cmd = sgctl();
            cmd.args(["apply", "-c"]).arg(&path);
            if i == 0 {
                // State files are 0600 whatever the umask.
                // SAFETY: umask is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::umask(0);
                        Ok(())
                    });
                }
            }
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut attached = 0;
    for out in &outputs {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "every apply succeeds: {stderr}");
        assert!(!stderr.contains("BPF_OBJ_PIN"), "{stderr}");
        if stdout.contains(" attached, generation") {
            attached += 1;
        } else {
            assert!(stdout.contains("unchanged"), "the others: {stdout}");
        }
    }
    assert_eq!(attached, 1, "exactly one apply attached");
    assert_eq!(reach(&lab, 80), Reach::Connected, "allowed port");
    assert_eq!(reach(&lab, 22), Reach::Timeout, "enforced: 22 dropped");

    let id = a_iface(&lab);
    let state_file = Path::new(apply::STATE_DIR)
        .join(format!("netns-{}", lab.ns("a").name()))
        .join("eth0.json");
    for (path, mode) in [
        (PathBuf::from(apply::STATE_DIR), private_dir::DIR_MODE),
        (PathBuf::from(pins::ROOT), private_dir::DIR_MODE),
        (state_file, private_dir::STATE_FILE_MODE),
    ] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), 0, "{} owned by root", path.display());
        assert_eq!(meta.mode() & 0o7777, mode, "{} mode", path.display());
    }
    assert!(status_of(&id).is_some_and(|s| s["drift"].as_array().unwrap().is_empty()));
}

#[test]
fn alternating_applies_of_two_configs_enforce_what_status_says() {
    require_root!();
    let lab = Lab::new("ctl-alternate");
    let _srv = servers(&lab, &[80, 81]);
    let (dir_a, dir_b) = (lab.dir.join("a"), lab.dir.join("b"));
    for (dir, port) in [(&dir_a, 80), (&dir_b, 81)] {
        std::fs::create_dir_all(dir).unwrap();
        // Rules no other test of this file uses: interfaces with the same
        // rules share one policy (and its generation), and the generations
        // counted below are this config's alone.
        let config = config_allowing(&lab, port).replace("198.18.0.0/15", "198.18.0.0/16");
        std::fs::write(dir.join("cfg.yaml"), config).unwrap();
    }
    let id = a_iface(&lab);
    let mut generations = Vec::new();
    for round in 0..5 {
        let children: Vec<Child> = (0..6)
            .map(|i| {
                let dir = if (i + round) % 2 == 0 { &dir_a } else { &dir_b };
                sgctl()
                    .args(["apply", "-c", "cfg.yaml"])
                    .current_dir(dir)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut reported = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
            generations.extend(installed_generations(&text(&out.stdout)));
            reported.extend(
                text(&out.stdout)
                    .lines()
                    .filter_map(|l| l.rsplit_once("generation ")?.1.trim().parse::<u32>().ok()),
            );
        }
        let status = status_of(&id).expect("attached");
        let config = status["config"].as_str().expect("status names the config");
        let expect_80 = config
            == dir_a
                .canonicalize()
                .unwrap()
                .join("cfg.yaml")
                .to_str()
                .unwrap();
        let expect_81 = config
            == dir_b
                .canonicalize()
                .unwrap()
                .join("cfg.yaml")
                .to_str()
                .unwrap();
        assert!(
            expect_80 != expect_81,
            "round {round}: status names one of the two: {config}"
        );
        let (r80, r81) = (reach(&lab, 80), reach(&lab, 81));
        assert_eq!(
            (r80 == Reach::Connected, r81 == Reach::Connected),
            (expect_80, expect_81),
            "round {round}: status says {config}, the kernel lets 80: {r80:?}, 81: {r81:?}"
        );
        // The applies ran one after another (state lock) and generations
        // only grow: the last one left the highest number any of them
        // reported in force.
        assert_eq!(
            status["generation"].as_u64(),
            reported.iter().max().map(|g| u64::from(*g)),
            "round {round}: the kernel's generation is the last apply's"
        );
    }
    let unique: BTreeSet<u32> = generations.iter().copied().collect();
    assert_eq!(
        unique.len(),
        generations.len(),
        "no generation reported twice: {generations:?}"
    );
    assert!(
        generations.len() >= 5,
        "the policy really changed: {generations:?}"
    );
}

#[test]
fn same_relative_name_in_two_directories_is_two_configs() {
    require_root!();
    let lab = Lab::new("ctl-identity");
    let (one, two) = (lab.dir.join("one"), lab.dir.join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(two.join("sub")).unwrap();
    std::fs::write(one.join("noping.yaml"), config_allowing(&lab, 80)).unwrap();
    let b_only = format!(
        "security_groups:\n  - id: sg-b\n    ingress: []\n\
         interfaces:\n  - {{ name: eth0, netns: \"{}\", security_groups: [sg-b] }}\n",
        lab.ns("b").name()
    );
    std::fs::write(two.join("noping.yaml"), &b_only).unwrap();
    let apply_in = |dir: &Path, file: &str| {
        let out = run(sgctl().args(["apply", "-c", file]).current_dir(dir));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    apply_in(&one, "noping.yaml");
    let second = apply_in(&two, "noping.yaml");
    assert!(
        !second.contains("detached"),
        "another directory's noping.yaml is another config: {second}"
    );
    let a = a_iface(&lab);
    assert!(a.dir().exists(), "a stays attached");
    let shown = status_of(&a).unwrap()["config"].clone();
    assert_eq!(
        shown.as_str(),
        one.canonicalize().unwrap().join("noping.yaml").to_str(),
        "status names the config by its absolute path"
    );
    // The same file spelled differently is the same config: b leaves it → detached.
    std::fs::write(
        two.join("noping.yaml"),
        b_only.replace(lab.ns("b").name(), lab.ns("c").name()),
    )
    .unwrap();
    let out = run(sgctl()
        .args(["apply", "-c", "sub/../noping.yaml"])
        .current_dir(&two));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("detached"),
        "b left the same config: {stdout} {}",
        text(&out.stderr)
    );
    assert!(a.dir().exists(), "a still attached by the other config");
}

#[test]
fn hook_removed_out_of_band_is_reported_and_repaired_by_apply() {
    require_root!();
    let lab = Lab::new("ctl-repair");
    let _srv = servers(&lab, &[80, 22]);
    let path = write_config(&lab, "cfg.yaml", 80);
    let apply_out = || {
        let out = run(sgctl().args(["apply", "-c"]).arg(&path));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    apply_out();
    assert_eq!(reach(&lab, 22), Reach::Timeout, "enforced");
    let id = a_iface(&lab);
    let link = std::fs::read_dir(id.dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("link-ingress-")
        })
        .expect("an ingress link pin");
    std::fs::remove_file(&link).unwrap();
    assert_eq!(
        reach(&lab, 22),
        Reach::Connected,
        "removing the pin really detached ingress"
    );
    let status = status_of(&id).unwrap();
    let drift = status["drift"].to_string();
    assert!(
        drift.contains("hook_missing") && drift.contains("ingress"),
        "{status}"
    );
    let fix = status["fix"].as_str().expect("a fix command");
    assert!(
        fix.starts_with("sgctl apply -c /") && fix.ends_with("cfg.yaml"),
        "{fix}"
    );
    let human = text(&run(sgctl().arg("status")).stdout);
    assert!(
        human.contains("ingress hook is missing") && human.contains(fix),
        "{human}"
    );

    let repaired = apply_out();
    assert!(repaired.contains("repaired"), "{repaired}");
    assert_eq!(reach(&lab, 22), Reach::Timeout, "ingress enforced again");
    assert_eq!(reach(&lab, 80), Reach::Connected, "with the same policy");
    assert!(
        status_of(&id).unwrap()["drift"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A map pin of the host's data plane removed: sgctl could no longer
    // update the policy; apply pins it again from the programs using it.
    std::fs::remove_file(Path::new(pins::MAPS_DIR).join(sg_common::names::MAP_PORTS)).unwrap();
    let repaired = apply_out();
    // The maps are the host's: an sgctl of another test may have pinned it
    // again first; either way it is back and says what it repaired.
    assert!(
        Path::new(pins::MAPS_DIR)
            .join(sg_common::names::MAP_PORTS)
            .exists(),
        "the map is pinned again: {repaired}"
    );
    assert!(
        !repaired.contains("repaired") || repaired.contains("SG_PORTS"),
        "{repaired}"
    );
    assert_eq!(reach(&lab, 22), Reach::Timeout, "still enforced");
    assert!(apply_out().contains("unchanged"), "and then it is intact");
}

#[test]
fn deleted_namespace_is_shown_with_the_command_that_removes_the_leftovers() {
    require_root!();
    let gone = Netns::create("ctl-gone").unwrap();
    let peer = Netns::create("ctl-peer").unwrap();
    gone.veth_to("eth0", &peer, "eth0").unwrap();
    let ns = gone.name().to_string();
    let id = IfaceId::new("eth0", Some(&ns));
    struct Detach(IfaceId);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = apply::detach(&self.0);
        }
    }
    let _cleanup = Detach(id.clone());
    let (dir, path) = scratch_config(
        "ctl-gone",
        &format!(
            "security_groups:\n  - id: sg-a\n    ingress: []\n\
             interfaces:\n  - {{ name: eth0, netns: \"{ns}\", security_groups: [sg-a], addresses: [198.18.9.1] }}\n"
        ),
    );
    let out = run(sgctl().args(["apply", "-c"]).arg(&path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(gone); // ip netns del
    assert!(id.dir().exists(), "the pins are left behind");

    let human = text(&run(sgctl().arg("status")).stdout);
    let fix = format!("sgctl detach --iface eth0 --netns {ns}");
    assert!(
        human.contains(&format!("namespace {ns} was deleted")) && human.contains(&fix),
        "{human}"
    );
    assert!(human.contains("NOT ENFORCED"), "{human}");
    let out = run(sgctl().args(["detach", "--iface", "eth0", "--netns", &ns]));
    assert!(
        out.status.success(),
        "the hint works: {}",
        text(&out.stderr)
    );
    assert!(status_of(&id).is_none(), "gone from status");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apply_fails_when_no_interface_of_the_config_exists() {
    require_root!();
    let ns = Netns::create("ctl-typo").unwrap();
    let missing_ns = format!("{}-nope", ns.name());
    let (dir, path) = scratch_config(
        "ctl-typo",
        &format!(
            "security_groups:\n  - id: sg-a\n    ingress: []\n\
             interfaces:\n  - {{ name: eth9, netns: \"{}\", security_groups: [sg-a], addresses: [198.18.9.1] }}\n  \
             - {{ name: eth0, netns: \"{missing_ns}\", security_groups: [sg-a], addresses: [198.18.9.2] }}\n",
            ns.name()
        ),
    );
    let out = run(sgctl().args(["apply", "-c"]).arg(&path));
    let stderr = text(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "a config whose interfaces are all absent fails"
    );
    assert!(
        stderr.contains(&format!("eth9@{}", ns.name()))
            && stderr.contains(&format!("namespace {missing_ns} does not exist")),
        "names them: {stderr}"
    );
    assert!(!IfaceId::new("eth9", Some(ns.name())).dir().exists());
}

#[test]
fn full_state_directory_leaves_nothing_attached() {
    require_root!();
    let lab = Lab::new("ctl-full");
    let _srv = servers(&lab, &[22]);
    let path = write_config(&lab, "cfg.yaml", 80);
    // A one-page tmpfs over the state directory, in a private mount
    // namespace (nobody else sees it): the lock file fits, the state does not.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs -o size=4k,mode=0700 sgfull {} && exec \"$0\" apply -c \"$1\"",
        apply::STATE_DIR
    );
    let stderr = run_failing(
        Command::new("unshare")
            .args(["--mount", "sh", "-c", &script, env!("CARGO_BIN_EXE_sgctl")])
            .arg(&path)
            .stdin(Stdio::null()),
        "a full state directory fails the apply",
    );
    assert!(
        stderr.contains(&format!(
            "{}/netns-{}/eth0.json",
            apply::STATE_DIR,
            lab.ns("a").name()
        )),
        "the error names the file: {stderr}"
    );
    assert!(!a_iface(&lab).dir().exists(), "nothing attached: {stderr}");
    assert_eq!(reach(&lab, 22), Reach::Connected, "nothing enforced");
}

/// A running `sgctl run`; killed on drop.
struct RunningDaemon(Child);

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_daemon_on_the_same_config_is_refused() {
    require_root!();
    let lab = Lab::new("ctl-daemon");
    let path = write_config(&lab, "cfg.yaml", 80);
    let first = RunningDaemon(
        sgctl()
            .args(["run", "--detach-on-exit", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon_state::read_state_for(&path).is_some_and(|s| s.pid == pid && s.last_reload_at > 0)
    {
        assert!(Instant::now() < deadline, "the first daemon never reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same file by another spelling.
    let same = lab.dir.join(".").join("cfg.yaml");
    let stderr = run_failing(
        sgctl().args(["run", "-c"]).arg(&same),
        "the second daemon refuses",
    );
    assert!(
        stderr.contains("already kept enforced") && stderr.contains(&format!("pid {pid}")),
        "names the first one's pid: {stderr}"
    );
    let state = daemon_state::read_state_for(&path).expect("the first one's state survives");
    assert_eq!(state.pid, pid);
    let holder = lock::holder_of(&lock::daemon_lock_path(
        &sg_user::agent::state::config_identity(&path).unwrap(),
    ))
    .unwrap();
    assert_eq!(holder.pid, Some(pid));
    drop(first); // SIGTERM
    let identity = sg_user::agent::state::config_identity(&path).unwrap();
    assert!(
        !daemon_state::state_path(&identity).exists()
            && !lock::daemon_lock_path(&identity).exists(),
        "a daemon that stops removes its own state and lock files"
    );
}

#[test]
fn untrusted_directories_on_bpffs_and_tmpfs_are_refused() {
    require_root!();
    pins::ensure_bpffs().unwrap();
    for base in [
        pins::BPFFS.to_string(),
        std::env::temp_dir().display().to_string(),
    ] {
        let dir = Path::new(&base).join(format!(
            "{}{}-ctl-untrusted",
            sg_user::sys::netns::HARNESS_PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        // What a non-root user can do in /sys/fs/bpf (mode 1777).
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = private_dir::ensure(&dir).unwrap_err().to_string();
        std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let writable = private_dir::ensure(&dir).unwrap_err().to_string();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let tightened = private_dir::ensure(&dir);
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            err.contains("owned by uid 65534") && err.contains("chown"),
            "{base}: {err}"
        );
        assert!(writable.contains("0777"), "{base}: {writable}");
        assert!(
            tightened.is_ok() && mode == 0o700,
            "{base}: an own 0755 directory is tightened"
        );
    }
}

#[test]
fn a_held_lock_makes_apply_wait_and_say_so_or_fail_with_no_wait() {
    require_root!();
    use std::io::{BufRead, BufReader};
    let lab = Lab::new("ctl-wait");
    let path = write_config(&lab, "cfg.yaml", 80);
    // Wait: other tests of this file may hold it for a moment.
    let held = lock::state_lock("the test holding the lock", lock::Wait::Block, |_| {})
        .expect("the state lock");

    let stderr = run_failing(
        sgctl().args(["apply", "--no-wait", "-c"]).arg(&path),
        "--no-wait fails while the lock is held",
    );
    assert!(
        stderr.contains(&format!(
            "pid {}: the test holding the lock",
            std::process::id()
        )) && stderr.contains("--no-wait"),
        "says who holds it and what to do: {stderr}"
    );
    assert!(!a_iface(&lab).dir().exists(), "nothing changed");

    let mut waiting = sgctl()
        .args(["apply", "-c"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(waiting.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("waiting for another sgctl")
            && first.contains("the test holding the lock"),
        "{first}"
    );
    assert!(!a_iface(&lab).dir().exists(), "it really waits");
    drop(held);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    assert!(!rest.contains("waiting"), "said once: {rest}");
    assert!(text(&out.stdout).contains(" attached, generation"));
}
