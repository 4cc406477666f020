//! Container hosts with a real runtime (issue 14): podman's CNI backend runs
//! `sg-cni` chained after bridge → portmap → firewall → tuning on an
//! `--internal` network; `sgctl run --socket` on the host enforces each
//! container's groups, chosen by container name from the config's
//! `workloads:`. Real connections with busybox `nc` show exactly the
//! allowed flows, through container start and stop, a refused container,
//! the daemon killed with SIGKILL, down, and restarted.
//!
//! Needs root and podman (`cargo xtask setup`); under CI a missing podman
//! fails the test instead of skipping it. The test uses a containers.conf of
//! its own that points podman at a private network-config directory and at
//! a plugin directory holding this build's `sg-cni`, so /etc is untouched.
//! Everything created (containers, network, image, registrations,
//! attachments) is removed on drop, also when an assertion fails.

mod podman;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use podman::{Checks, Podman};
use sg_user::agent::endpoints::Endpoint;
use sg_user::harness::podman::{chain_sg_cni, containers_conf_with_cni_dirs};

/// How long a refused connection attempt waits (drops look like timeouts).
const REFUSED_WAIT_SECS: u32 = 2;

/// Container names end in their role; `workloads:` matches on it. README
/// "Container hosts" shows this config.
const CONFIG: &str = r#"security_groups:
  - id: sg-web
    ingress: [{ protocol: tcp, ports: 80, group: sg-client }]
  - id: sg-db
    ingress: [{ protocol: tcp, ports: 3306, group: sg-web }]
  - { id: sg-client, ingress: [] }
workloads:                       # container name patterns (podman passes the name as K8S_POD_NAME)
  - { name: "*-web", security_groups: [sg-web] }
  - { name: "*-db", security_groups: [sg-db] }
  - { name: "*-client", security_groups: [sg-client] }
"#;

/// A podman network with `sg-cni` chained last, the daemon serving it, and
/// the containers started on it.
struct Lab {
    podman: Podman,
    tag: String,
    dir: PathBuf,
    subnet_prefix: String,
    network: String,
    image: String,
    config: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    containers: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let tag = format!("sgt{pid}-cni");
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let (plugins, net_d) = (dir.join("cni-bin"), dir.join("net.d"));
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&net_d).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sg-cni"), plugins.join("sg-cni")).unwrap();
        // The project's settings, plus this lab's plugin and network-config
        // directories (the distribution's plugins stay where they are).
        let project = std::fs::read_to_string(podman::project_conf()).unwrap();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            containers_conf_with_cni_dirs(&project, &plugins, &net_d),
        )
        .unwrap();
        // 198.18.130.0–198.18.189.0: one /24 per process, inside the test range.
        let subnet_prefix = format!("198.18.{}", 130 + pid % 60);
        let lab = Lab {
            podman: Podman { conf },
            network: format!("{tag}-net"),
            image: format!("localhost/{tag}-busybox:test"),
            config: dir.join("groups.yaml"),
            socket: dir.join("agent.sock"),
            dir,
            subnet_prefix,
            tag,
            daemon: None,
            containers: Vec::new(),
        };
        std::fs::write(&lab.config, CONFIG).unwrap();
        lab
    }

    /// The image and the network, `sg-cni` appended to its conflist.
    fn create(&self) {
        self.podman
            .import_busybox(&self.dir, &self.image, &["sh", "nc", "sleep", "echo"]);
        self.podman.ok(&[
            "network",
            "create",
            "--internal",
            "--disable-dns",
            "--subnet",
            &format!("{}.0/24", self.subnet_prefix),
            &self.network,
        ]);
        chain_sg_cni(&self.dir.join("net.d"), &self.network, &self.socket)
            .expect("podman wrote the conflist");
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet_prefix)
    }

    /// Starts `sgctl run --socket` and waits until it answers on the socket.
    fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sgctl"))
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sgctl run");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!("sgctl run exited ({status}):\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "sgctl run does not answer on {}:\n{}",
                self.socket.display(),
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the daemon has no chance to clean anything up.
    fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops it.
    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `podman run` of `command` as `<tag>-<role>` at `host`: the container
    /// name, or podman's error.
    fn start(&mut self, role: &str, host: u8, command: &[&str]) -> Result<String, String> {
        let name = format!("{}-{role}", self.tag);
        let ip = self.ip(host);
        let mut args = vec![
            "run",
            "--detach",
            "--pull",
            "never",
            "--name",
            &name,
            "--network",
            &self.network,
            "--ip",
            &ip,
            &self.image,
        ];
        args.extend_from_slice(command);
        let out = self.podman.run(&args);
        if out.status.success() {
            self.containers.push(name.clone());
            Ok(name)
        } else {
            // A failed `run` may leave a created container behind.
            let _ = self.podman.run(&["rm", "--force", "--time", "0", &name]);
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A server answering `ok` on `port`.
    fn server(&mut self, role: &str, host: u8, port: u16) -> String {
        let port = port.to_string();
        self.start(role, host, &["nc", "-ll", "-p", &port, "-e", "echo", "ok"])
            .unwrap_or_else(|e| panic!("podman run {role}: {e}"))
    }

    /// A container that idles so that probes can `podman exec` into it.
    fn client(&mut self, role: &str, host: u8) -> String {
        self.start(role, host, &["sleep", "3600"])
            .unwrap_or_else(|e| panic!("podman run {role}: {e}"))
    }

    fn remove(&mut self, name: &str) {
        self.podman.ok(&["rm", "--force", "--time", "0", name]);
        self.containers.retain(|c| c != name);
    }

    fn id_of(&self, name: &str) -> String {
        self.podman.ok(&["inspect", "--format", "{{.Id}}", name])
    }

    /// Whether `from` gets `ok` from `host`:`port`.
    fn reaches(&self, from: &str, host: u8, port: u16) -> bool {
        let (wait, port) = (REFUSED_WAIT_SECS.to_string(), port.to_string());
        let out = self
            .podman
            .run(&["exec", from, "nc", "-w", &wait, &self.ip(host), &port]);
        String::from_utf8_lossy(&out.stdout).contains("ok")
    }

    /// Waits (up to 10 s) until `from` reaches `host`:`port` (it listens).
    fn wait_reachable(&self, from: &str, host: u8, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.reaches(from, host, port) {
            assert!(
                Instant::now() < deadline,
                "{from} never reached {}:{port}",
                self.ip(host)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The daemon's registration of container `id`, wherever its config's
/// registrations are kept.
fn registration(id: &str) -> Option<Endpoint> {
    std::fs::read_dir(sg_user::agent::apply::STATE_DIR)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("endpoints-"))
        .find_map(|dir| {
            let text = std::fs::read(dir.path().join(format!("{id}.json"))).ok()?;
            serde_json::from_slice(&text).ok()
        })
}

/// `sgctl status`'s block for `iface`, if it lists it.
fn status_of(iface: &str) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .arg("status")
        .output()
        .expect("run sgctl status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .lines()
        .position(|l| l.split_whitespace().next() == Some(iface))?;
    let block: Vec<&str> = text
        .lines()
        .skip(start)
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(char::is_whitespace))
        .map(|(_, l)| l)
        .collect();
    Some(block.join("\n"))
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Removing the containers with the daemon up sends their DELs; a
        // daemon that starts afterwards forgets any it missed.
        if self.daemon.is_none() && self.socket.parent().is_some_and(Path::exists) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.start_daemon();
            }));
        }
        for name in self.containers.iter().rev() {
            let _ = self.podman.run(&["rm", "--force", "--time", "0", name]);
        }
        self.stop_daemon();
        let _ = self
            .podman
            .run(&["network", "rm", "--force", &self.network]);
        let _ = self.podman.run(&["image", "rm", "--force", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// README "Container hosts" shows the config this test runs (no root needed).
#[test]
fn readme_container_hosts_config_is_what_this_test_runs() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("\n## Container hosts\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a `## Container hosts` section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README's container-host config block");
    assert_eq!(
        yaml, CONFIG,
        "README's container-host config differs from the test's"
    );
}

/// Issue 14's end-to-end test. Reports every failed check at the end.
#[test]
fn podman_containers_get_their_groups_through_sg_cni() {
    require_podman!(Podman::project().unavailable(None));
    let mut lab = Lab::new();
    lab.create();
    lab.start_daemon();
    let mut checks = Checks::default();

    let web = lab.server("web", 10, 80);
    let db = lab.server("db", 11, 3306);
    let client = lab.client("client", 12);
    let web_id = lab.id_of(&web);
    let web_veth = registration(&web_id).map(|e| e.iface);
    checks.check(
        registration(&web_id).is_some_and(|e| {
            e.name.as_deref() == Some(web.as_str())
                && e.addresses == [lab.ip(10).parse::<std::net::IpAddr>().unwrap()]
        }),
        format!("{web} is registered by its name, with its address"),
    );
    lab.wait_reachable(&client, 10, 80);
    let shown = web_veth.as_deref().and_then(status_of);
    checks.check(
        shown
            .as_deref()
            .is_some_and(|b| b.contains("enforce") && b.contains(&format!("container: {web} ("))),
        format!("`sgctl status` shows web's veth enforcing, with the container's name: {shown:?}"),
    );

    let flows = |lab: &Lab, checks: &mut Checks, when: &str| {
        let cases = [
            (
                &client,
                10,
                80,
                true,
                "client → web:80 (sg-web admits sg-client)",
            ),
            (
                &client,
                11,
                3306,
                false,
                "client → db:3306 (sg-db admits only sg-web)",
            ),
            (
                &web,
                11,
                3306,
                true,
                "web → db:3306 (web is a member of sg-web)",
            ),
            (&db, 10, 80, false, "db → web:80 (db is not in sg-client)"),
        ];
        for (from, host, port, allowed, what) in cases {
            checks.check(
                lab.reaches(from, host, port) == allowed,
                format!(
                    "{when}: {what} {}",
                    if allowed { "connects" } else { "is refused" }
                ),
            );
        }
    };
    flows(&lab, &mut checks, "all three running");

    // A container no workload names, on a network without securityGroups:
    // refused, so it never runs unprotected.
    let refused = lab.start("stranger", 13, &["sleep", "3600"]);
    checks.check(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no security groups")),
        format!("a container no `workloads:` entry names is not started: {refused:?}"),
    );

    // kill -9: enforcement and membership stay in the kernel.
    lab.kill_daemon();
    flows(&lab, &mut checks, "daemon killed with SIGKILL");
    let down = lab.start("late-client", 14, &["sleep", "3600"]);
    checks.check(
        down.as_ref().is_err_and(|e| e.contains("not reachable")),
        format!("with the daemon down a new container is not started: {down:?}"),
    );

    // Restarted: the same enforcement, adopted.
    lab.start_daemon();
    flows(&lab, &mut checks, "daemon restarted");

    // Stopping web removes its endpoint and its address's membership: a
    // client given web's address afterwards is not let into db.
    lab.remove(&web);
    checks.check(
        registration(&web_id).is_none(),
        "web's registration is gone after `podman rm`",
    );
    if let Some(veth) = &web_veth {
        checks.check(
            status_of(veth).is_none(),
            format!("`sgctl status` no longer lists web's veth {veth}"),
        );
    }
    let reused = lab.client("reused-client", 10);
    checks.check(
        !lab.reaches(&reused, 11, 3306),
        "a client given web's old address is refused by db (membership removed)",
    );
    checks.check(
        lab.reaches(&reused, 11, 3306) == lab.reaches(&client, 11, 3306),
        "… exactly like the other client",
    );
    eprintln!("daemon log:\n{}", lab.daemon_log());
    checks.finish();
}
