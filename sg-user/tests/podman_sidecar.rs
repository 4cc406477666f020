//! The README's sidecar recipe, run with podman (issue 17): app containers on
//! an `--internal` network in 198.18.0.0/15, each with an `sgctl run` sidecar
//! sharing its network namespace and the host's `/sys/fs/bpf`; a member of the
//! referenced group gets through, a non-member does not.
//!
//! Needs root, podman (`cargo xtask setup`) and the sidecar image
//! (`cargo xtask image`; `cargo xtask test` builds it first). Under CI a
//! missing podman or image fails the test instead of skipping it.
//! Everything created (containers, network, app image, pins) is removed on
//! drop, also when an assertion fails.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

mod podman;

use podman::{Checks, Podman};

/// The sidecar image (`cargo xtask image` builds this tag).
const DEFAULT_IMAGE: &str = "localhost/sgctl:dev";
/// The app and clients answer/speak on this port (busybox `nc`).
const PORT: u16 = 80;
/// How long a refused connection attempt waits (drops look like timeouts).
const REFUSED_WAIT_SECS: u32 = 2;

/// The sidecar's podman arguments: exactly what README "Sidecar" says.
/// - `--network container:APP`: the app's namespace, where its interface is `eth0`;
/// - `--cap-drop ALL --cap-add BPF,NET_ADMIN,PERFMON`: load programs and
///   maps (BPF), attach them to the interface (NET_ADMIN), and the verifier
///   needs PERFMON for the programs' pointer arithmetic;
/// - `--security-opt seccomp=unconfined`: podman 4.3's default seccomp
///   profile allows bpf(2) only with CAP_SYS_ADMIN;
/// - `-v /sys/fs/bpf:/sys/fs/bpf`: pins outlive the sidecar and the host's
///   `sgctl status` sees them (without it sgctl mounts a private bpffs);
/// - `--read-only --tmpfs /run`: sgctl keeps locks and state in /run/sgctl.
const SIDECAR_ARGS: &[&str] = &[
    "--read-only",
    "--tmpfs",
    "/run",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "BPF,NET_ADMIN,PERFMON",
    "--security-opt",
    "seccomp=unconfined",
    "-v",
    "/sys/fs/bpf:/sys/fs/bpf",
];

/// One podman lab at a time: on a data plane without namespace identity the
/// sidecars of two labs would share pins.
static SERIAL: Mutex<()> = Mutex::new(());

fn image() -> String {
    std::env::var("SG_SIDECAR_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string())
}

fn podman(args: &[&str]) -> Output {
    Podman::project().run(args)
}

/// Runs podman and returns its stdout; panics with its stderr on failure.
fn podman_ok(args: &[&str]) -> String {
    Podman::project().ok(args)
}

/// Skips visibly, or fails under CI, when root, podman or the image is missing.
macro_rules! require_sidecar_podman {
    () => {
        require_podman!(Podman::project().unavailable(Some(&image())));
    };
}

/// The host's own `sgctl`.
fn sgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sgctl")
}

fn host_status() -> String {
    let out = sgctl(&["status"]);
    assert!(
        out.status.success(),
        "host `sgctl status` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sgctl status` text split per interface: (the interface as status names
/// it, the whole block).
fn status_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let indented = line.starts_with(char::is_whitespace);
        if !indented && !line.starts_with("daemon:") && !line.starts_with("no interface") {
            let id = line.split_whitespace().next().unwrap_or("").to_string();
            blocks.push((id, format!("{line}\n")));
        } else if indented && let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

/// The sidecars' config (README "Sidecar" shows it with member 198.19.100.20).
fn config_text(member_ip: &str) -> String {
    format!(
        "security_groups:\n\
         \x20 - id: sg-app\n\
         \x20   description: apps behind an sgctl sidecar\n\
         \x20   ingress:\n\
         \x20     - {{ protocol: tcp, ports: {PORT}, group: sg-client, description: app from its clients }}\n\
         \x20 - id: sg-client\n\
         \x20   ingress: []\n\
         interfaces:\n\
         \x20 - {{ name: eth0, security_groups: [sg-app] }}\n\
         members:\n\
         \x20 sg-client: [{member_ip}]\n"
    )
}

/// A network namespace as the host knows it: the name podman's CNI backend
/// gave it under /run/netns and its inode.
#[derive(Clone, Debug)]
struct NsIdentity {
    name: String,
    inode: u64,
}

impl NsIdentity {
    /// Whether `sgctl status` names this namespace in `id` (`eth0@NAME`, or
    /// `eth0@netns:INODE` for an unnamed one).
    fn named_by(&self, id: &str) -> bool {
        id.split_once('@').is_some_and(|(_, ns)| {
            ns == self.name
                || ns
                    .trim_start_matches("netns:")
                    .starts_with(&self.inode.to_string())
        })
    }
}

impl std::fmt::Display for NsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (inode {})", self.name, self.inode)
    }
}

/// The first `sgctl detach …` command in a status block.
fn detach_command(block: &str) -> Option<Vec<String>> {
    let at = block.find("sgctl detach")?;
    let line = block[at..].lines().next()?;
    Some(
        line.trim_end_matches(['`', '.', ')', ' '])
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect(),
    )
}

/// Containers on one `--internal` podman network, and a config; all of it
/// (and the sidecars' pins) removed on drop.
struct Lab {
    tag: String,
    subnet_prefix: String,
    network: String,
    app_image: String,
    dir: PathBuf,
    config: PathBuf,
    /// Containers in creation order (sidecars after their apps).
    containers: Vec<String>,
    /// App containers and their namespaces, for the cleanup's detach.
    apps: Vec<(String, NsIdentity)>,
}

impl Lab {
    /// `index` keeps the labs of this file on different subnets.
    fn new(index: u8) -> Lab {
        let pid = std::process::id();
        let tag = format!("sgt{pid}-pod{index}");
        // 198.19.100.0–198.19.199.0: /24s inside the test range, one per
        // (process, lab), away from the netns tests' 198.18.0.0/24 and 198.19.0.0/24.
        let third = 100 + (pid % 50) * 2 + u32::from(index % 2);
        let subnet_prefix = format!("198.19.{third}");
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            network: format!("{tag}-net"),
            app_image: format!("localhost/{tag}-busybox:test"),
            config: dir.join("groups.yaml"),
            dir,
            subnet_prefix,
            tag,
            containers: Vec::new(),
            apps: Vec::new(),
        };
        lab.import_app_image();
        podman_ok(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            &format!("{}.0/24", lab.subnet_prefix),
            &lab.network,
        ]);
        lab
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet_prefix)
    }

    /// The app image: busybox-static's binary and its applets, `podman import`ed.
    fn import_app_image(&self) {
        Podman::project().import_busybox(
            &self.dir,
            &self.app_image,
            &["sh", "nc", "sleep", "echo", "ip", "cat", "ls"],
        );
    }

    /// Lab `index` with two clients, a member (host 20, the one the config
    /// admits) and a stranger (host 30): (lab, member, stranger).
    fn with_clients(index: u8) -> (Lab, String, String) {
        let mut lab = Lab::new(index);
        let member = lab.client("member", 20);
        let stranger = lab.client("stranger", 30);
        lab.write_config(&lab.ip(20));
        (lab, member, stranger)
    }

    fn write_config(&self, member_ip: &str) {
        std::fs::write(&self.config, config_text(member_ip)).unwrap();
    }

    /// An app answering `ok` on [`PORT`] to every connection.
    fn app(&mut self, name: &str, host: u8) -> String {
        let port = PORT.to_string();
        let name = self.on_network(name, host, &["nc", "-ll", "-p", &port, "-e", "echo", "ok"]);
        let key = podman_ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            &name,
        ]);
        let inode = std::fs::metadata(&key)
            .unwrap_or_else(|e| panic!("{name}'s network namespace {key}: {e}"))
            .ino();
        let ns = NsIdentity {
            name: Path::new(&key)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            inode,
        };
        self.apps.push((name.clone(), ns));
        name
    }

    /// A client that idles so that probes can `podman exec` into it.
    fn client(&mut self, name: &str, host: u8) -> String {
        self.on_network(name, host, &["sleep", "3600"])
    }

    /// Runs `command` in a container of the app image named `name` (with
    /// the lab's tag) at `host` on the lab's network; returns its name.
    fn on_network(&mut self, name: &str, host: u8, command: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let (network, ip, image) = (self.network.clone(), self.ip(host), self.app_image.clone());
        let mut args = vec!["--name", &name, "--network", &network, "--ip", &ip, &image];
        args.extend_from_slice(command);
        self.run(&args);
        name
    }

    /// The README recipe: an `sgctl run` sidecar in `app`'s namespace; waits
    /// until it has attached.
    fn sidecar(&mut self, app: &str) -> String {
        let name = format!("{app}-sg");
        let network = format!("container:{app}");
        let volume = format!("{}:/etc/sg/groups.yaml:ro", self.config.display());
        let mut args = vec!["--name", &name, "--network", &network];
        args.extend_from_slice(SIDECAR_ARGS);
        let image = image();
        args.extend(["-v", &volume, &image]);
        self.run(&args);
        wait_for_attach(&name);
        name
    }

    fn run(&mut self, args: &[&str]) {
        let mut all = vec!["run", "--detach", "--pull", "never"];
        all.extend_from_slice(args);
        podman_ok(&all);
        let name_at = args.iter().position(|a| *a == "--name").unwrap() + 1;
        self.containers.push(args[name_at].to_string());
    }

    fn ns_of(&self, app: &str) -> NsIdentity {
        self.apps
            .iter()
            .find(|(a, _)| a == app)
            .map(|(_, ns)| ns.clone())
            .expect("an app of this lab")
    }

    /// Removes a sidecar and then its app (podman refuses the other order).
    fn remove_app(&mut self, app: &str) {
        for name in [format!("{app}-sg"), app.to_string()] {
            podman_ok(&["rm", "--force", "--time", "0", &name]);
            self.containers.retain(|c| *c != name);
        }
    }

    /// Whether `client` gets `ok` from `app`'s port.
    fn reaches(&self, client: &str, app_host: u8) -> bool {
        let wait = REFUSED_WAIT_SECS.to_string();
        let port = PORT.to_string();
        let out = podman(&["exec", client, "nc", "-w", &wait, &self.ip(app_host), &port]);
        String::from_utf8_lossy(&out.stdout).contains("ok")
    }

    /// Waits (up to 10 s) until `client` reaches the app: it has started listening.
    fn wait_reachable(&self, client: &str, app_host: u8) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.reaches(client, app_host) {
            assert!(
                Instant::now() < deadline,
                "{client} never reached {} before any sidecar started",
                self.ip(app_host)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the sidecar's log says it attached (or fails with the log).
fn wait_for_attach(sidecar: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = podman(&["logs", sidecar]);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if log.contains("applied iface=eth0") {
            return;
        }
        let running = podman_ok(&["inspect", "--format", "{{.State.Running}}", sidecar]);
        assert!(
            running == "true" && !log.contains("applying failed") && Instant::now() < deadline,
            "sidecar {sidecar} did not attach (running: {running}); its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Sidecars first: a running one would attach again.
        for name in self.containers.iter().rev().filter(|c| c.ends_with("-sg")) {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
        // Detach inside each app's namespace that still exists, with the
        // sidecar image (sgctl there names the namespace as its own).
        for (app, _) in &self.apps {
            if self.containers.contains(app) {
                let network = format!("container:{app}");
                let mut args = vec!["run", "--rm", "--pull", "never", "--network", &network];
                args.extend_from_slice(SIDECAR_ARGS);
                let image = image();
                args.extend([image.as_str(), "detach", "--iface", "eth0"]);
                let _ = podman(&args);
            }
        }
        // Whatever is left of removed apps' namespaces: the command the host's
        // status gives for it.
        if let Ok(out) = Command::new(env!("CARGO_BIN_EXE_sgctl"))
            .arg("status")
            .output()
        {
            for (id, block) in status_blocks(&String::from_utf8_lossy(&out.stdout)) {
                if self.apps.iter().any(|(_, ns)| ns.named_by(&id))
                    && let Some(cmd) = detach_command(&block)
                {
                    let _ = sgctl(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
        }
        for name in self.containers.iter().rev() {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
        let _ = podman(&["network", "rm", "--force", &self.network]);
        let _ = podman(&["image", "rm", "--force", &self.app_image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// README "Sidecar" is the recipe this file runs: the sidecar's options and
/// the config are the same (no root needed).
#[test]
fn readme_sidecar_recipe_is_what_this_test_runs() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("\n## Sidecar\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a `## Sidecar` section");
    // The `podman run … localhost/sgctl:dev` command, continuation lines joined.
    let joined = section.replace("\\\n", " ");
    let command = joined
        .lines()
        .find(|l| l.contains("--network container:app"))
        .expect("README's sidecar `podman run` command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut expected = vec![
        "podman",
        "run",
        "--detach",
        "--pull",
        "never",
        "--name",
        "app-sg",
        "--network",
        "container:app",
    ];
    expected.extend_from_slice(SIDECAR_ARGS);
    expected.extend(["-v", "./groups.yaml:/etc/sg/groups.yaml:ro", DEFAULT_IMAGE]);
    assert_eq!(
        words, expected,
        "README's sidecar command differs from the test's"
    );
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README's sidecar config block");
    assert_eq!(
        yaml,
        config_text("198.19.100.20"),
        "README's sidecar config differs from the test's"
    );
}

/// One app with a sidecar: what works without namespace identity.
#[test]
fn one_sidecar_admits_a_member_and_refuses_a_non_member() {
    require_sidecar_podman!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, member, stranger) = Lab::with_clients(0);
    lab.app("app1", 10);
    lab.wait_reachable(&member, 10);
    assert!(
        lab.reaches(&stranger, 10),
        "without a sidecar the non-member should reach the app (the network itself is open)"
    );
    let started = Instant::now();
    let app = lab.apps[0].0.clone();
    let sidecar = lab.sidecar(&app);
    eprintln!("sidecar attached in {:.1?}", started.elapsed());
    assert!(
        lab.reaches(&member, 10),
        "the member {} should reach the app through its sidecar",
        lab.ip(20)
    );
    assert!(
        !lab.reaches(&stranger, 10),
        "the non-member {} should be refused by the app's sidecar",
        lab.ip(30)
    );
    // The pins outlive the sidecar (README: stopping it leaves the app enforced).
    podman_ok(&["stop", "--time", "5", &sidecar]);
    assert!(
        lab.reaches(&member, 10) && !lab.reaches(&stranger, 10),
        "with its sidecar stopped the app should stay enforced (pinned programs)"
    );
}

/// Issue 17: two sidecars on one host stay apart from each other and from
/// the host's own interfaces. Reports every failed check at the end.
#[test]
fn two_sidecars_stay_apart_from_each_other_and_from_the_host() {
    require_sidecar_podman!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, member, stranger) = Lab::with_clients(1);
    let mut checks = Checks::default();
    let app1 = lab.app("app1", 10);
    let app2 = lab.app("app2", 11);
    lab.wait_reachable(&member, 10);
    lab.wait_reachable(&member, 11);
    let plain_eth0_before = status_blocks(&host_status())
        .iter()
        .any(|(id, _)| id == "eth0");
    lab.sidecar(&app1);
    lab.sidecar(&app2);

    let enforced = |lab: &Lab, checks: &mut Checks, when: &str, app_host: u8| {
        checks.check(
            lab.reaches(&member, app_host),
            format!("{when}: the member reaches {}", lab.ip(app_host)),
        );
        checks.check(
            !lab.reaches(&stranger, app_host),
            format!("{when}: the non-member is refused by {}", lab.ip(app_host)),
        );
    };
    enforced(&lab, &mut checks, "both sidecars running", 10);
    enforced(&lab, &mut checks, "both sidecars running", 11);

    // The host's status lists both attachments by their namespaces.
    let status = host_status();
    eprintln!("host `sgctl status`:\n{status}");
    let blocks = status_blocks(&status);
    let ns1 = lab.ns_of(&app1);
    let ns2 = lab.ns_of(&app2);
    for (app, ns) in [(&app1, &ns1), (&app2, &ns2)] {
        let found = blocks
            .iter()
            .find(|(id, _)| id.starts_with("eth0@") && ns.named_by(id));
        checks.check(
            found.is_some_and(|(_, b)| b.contains("enforce")),
            format!("host status lists {app}'s eth0 by its namespace {ns}, enforcing"),
        );
    }
    checks.check(
        plain_eth0_before || !blocks.iter().any(|(id, _)| id == "eth0"),
        "host status shows no sidecar attachment as the host's own `eth0`",
    );

    // The host's eth0 is not the apps' eth0.
    let out = sgctl(&["detach", "--iface", "eth0"]);
    eprintln!(
        "host `sgctl detach --iface eth0`: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    enforced(
        &lab,
        &mut checks,
        "after the host's `detach --iface eth0`",
        10,
    );
    enforced(
        &lab,
        &mut checks,
        "after the host's `detach --iface eth0`",
        11,
    );

    // A stopped sidecar leaves the other app as it was.
    podman_ok(&["stop", "--time", "5", &format!("{app2}-sg")]);
    enforced(&lab, &mut checks, "app2's sidecar stopped", 10);

    // A removed app leaves an orphan that the host's status names, with the
    // one command that removes it.
    lab.remove_app(&app2);
    let status = host_status();
    eprintln!("host `sgctl status` after removing {app2}:\n{status}");
    let orphan = status_blocks(&status)
        .into_iter()
        .find(|(id, _)| ns2.named_by(id));
    checks.check(
        orphan.is_some(),
        format!("host status names the removed app's namespace {ns2}"),
    );
    if let Some((id, block)) = orphan {
        let cmd = detach_command(&block);
        checks.check(
            cmd.is_some()
                && (block.to_lowercase().contains("orphan") || block.contains("NOT ENFORCED")),
            format!("host status marks {id} as orphaned and gives the command that removes it"),
        );
        if let Some(cmd) = cmd {
            let out = sgctl(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
            checks.check(
                out.status.success(),
                format!(
                    "`sgctl {}` succeeds: {}",
                    cmd.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            checks.check(
                !status_blocks(&host_status())
                    .iter()
                    .any(|(id, _)| ns2.named_by(id)),
                format!("after `sgctl {}` the orphan is gone", cmd.join(" ")),
            );
        }
    }
    enforced(&lab, &mut checks, "after removing app2 and its orphan", 10);
    checks.finish();
}
