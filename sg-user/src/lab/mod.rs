//! `sgctl lab`: prove a set of security groups with real packets before
//! deploying it.
//!
//! - `up`: plan hosts for the config ([`plan`]), build them as namespaces
//!   `sgl-<lab>-<role>` on one bridge (namespace `sgl-<lab>-sw`), write the
//!   config rewritten for the lab and enforce it with [`crate::agent::apply`] (the
//!   code path of `sgctl apply`), and start a listener process
//!   (`sgctl lab serve`) that answers TCP and echoes UDP on every planned port
//!   in every host.
//! - `verify` ([`verify`]): real TCP/UDP/ICMP over IPv4 and IPv6 for every
//!   planned flow, each result compared with the reference evaluator.
//! - `down`: stop the listeners, detach, delete the namespaces and state.
//!
//! Everything a lab makes carries its name: namespaces `sgl-<lab>-*`, pins
//! `/sys/fs/bpf/sg/if/netns-sgl-<lab>-*`, state `/run/sgctl/netns-sgl-<lab>-*`
//! and `/run/sgctl/lab/<lab>/`. Cleaning up removes exactly those, so it
//! never touches what the lab did not create, and `up` first removes what a
//! crashed lab of the same name left behind.

pub mod demo;
pub mod plan;
pub mod probe;
pub mod verify;

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use plan::{DEFAULT_NAME, Plan};

use crate::{
    agent::apply::{self, ApplyError, ApplyOptions},
    agent::status::StatusError,
    kernel::pins::{self, IfaceId},
    model::{self, Attachment, Model, Problem},
    sys::PathError,
    sys::netns::{self, Netns, NetnsError},
    sys::private_dir::PrivateDirError,
};

/// Why a lab (or the demo) could not be built, checked or removed; each
/// message says what to do next where there is something to do.
#[derive(Debug, Error)]
pub enum LabError {
    /// A lab name that is not allowed (the message says why).
    #[error("{0}")]
    Name(String),
    #[error(
        "no lab named `{lab}` is up ({} is missing); start one with `sgctl lab up -c FILE{}`",
        .path.display(),
        name_flag(.lab)
    )]
    NotUp { lab: String, path: PathBuf },
    #[error(
        "{} is unreadable; run `sgctl lab down{}` and `up` again",
        .path.display(),
        name_flag(.lab)
    )]
    Unreadable {
        lab: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the lab's state")]
    EncodeState(#[source] serde_json::Error),
    #[error(
        "the lab config {} does not load ({problems}); run `sgctl lab up` again",
        .path.display()
    )]
    LabConfig { path: PathBuf, problems: String },
    #[error(
        "{} is invalid: {problems}; `sgctl validate -c {}` lists every problem",
        .config.display(),
        .config.display()
    )]
    Invalid { config: PathBuf, problems: String },
    #[error(
        "{} needs other lab hosts or ports than lab `{lab}` has; rebuild it with `sgctl lab up -c {}{}`",
        .config.display(),
        .config.display(),
        name_flag(.lab)
    )]
    NeedsRebuild { config: PathBuf, lab: String },
    #[error(transparent)]
    Path(#[from] crate::sys::PathError),
    #[error("writing the lab config as YAML")]
    Yaml(#[source] serde_saphyr::ser::Error),
    #[error("removing what an earlier lab of this name left")]
    Leftover(#[source] Box<LabError>),
    /// `what`: the lab config, or the changed config.
    #[error("{what}")]
    Enforce {
        what: &'static str,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("finding the sgctl executable")]
    Exe(#[source] std::io::Error),
    #[error("starting the lab's listeners ({})", .exe.display())]
    StartServer {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab's listeners did not start ({}): {log}", .exe.display())]
    ServerNotReady { exe: PathBuf, log: String },
    #[error("{role}: listening on {service}")]
    Listen {
        role: String,
        service: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing attached interfaces")]
    ListIfaces(#[source] std::io::Error),
    #[error("detaching {iface}")]
    Detach {
        iface: IfaceId,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("could not delete namespace {name}; try `ip netns del {name}`")]
    DeleteNetns { name: String },
    #[error("removing the demo lab (`sgctl lab down --name demo` retries)")]
    DemoDown(#[source] Box<LabError>),
    #[error("building the demo lab")]
    DemoUp(#[source] Box<LabError>),
    #[error("{0} flows disagree with the reference evaluator (listed above)")]
    Disagreements(usize),
    #[error("the demo has a web host")]
    NoWebHost,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Fmt(#[from] std::fmt::Error),
    /// The error names the file, or it is the lab's own output.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T, E = LabError> = std::result::Result<T, E>;

/// Where a lab keeps its state: `/run/sgctl/lab/<lab>/` (state.json, the
/// rewritten config lab.yaml, the listener's log).
pub fn state_dir(lab: &str) -> PathBuf {
    Path::new(apply::STATE_DIR).join("lab").join(lab)
}

/// What `verify` and `down` need to know about a lab that is up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub plan: Plan,
    /// The config the lab was built from (absolute).
    pub config: PathBuf,
    /// `--attach` arguments it was built with.
    pub attach: Vec<String>,
    /// The rewritten config that is enforced.
    pub lab_config: PathBuf,
    /// The listener process (`sgctl lab serve`).
    pub server_pid: Option<u32>,
}

impl LabState {
    /// Reads the state of lab `lab`.
    ///
    /// # Errors
    /// When the lab is not up (with the command that brings it up).
    pub fn read(lab: &str) -> Result<LabState> {
        let path = state_dir(lab).join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|_| LabError::NotUp {
            lab: lab.to_string(),
            path: path.clone(),
        })?;
        serde_json::from_str(&text).map_err(|source| LabError::Unreadable {
            lab: lab.to_string(),
            path,
            source,
        })
    }

    fn write(&self) -> Result<()> {
        let dir = state_dir(&self.plan.lab);
        crate::agent::lock::ensure_state_dir()?;
        crate::sys::private_dir::create_subdir(&dir)?;
        crate::sys::private_dir::write_state_file(
            &dir.join("state.json"),
            &serde_json::to_vec_pretty(self).map_err(LabError::EncodeState)?,
        )?;
        Ok(())
    }

    /// The enforced lab config, loaded as `sgctl apply` loads it.
    ///
    /// # Errors
    /// When it no longer loads (the lab must be rebuilt).
    pub fn lab_model(&self) -> Result<Model> {
        apply::load(&self.lab_config, &[]).map_err(|p| LabError::LabConfig {
            path: self.lab_config.clone(),
            problems: problems_line(&p),
        })
    }
}

/// ` --name LAB`, or nothing for the default lab (for hints).
pub fn name_flag(lab: &str) -> String {
    if lab == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {lab}")
    }
}

fn problems_line(p: &[Problem]) -> String {
    p.iter()
        .filter(|p| p.severity == model::Severity::Error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the user's config for planning: offline (addresses come from the
/// config or the lab, never from this machine's interfaces).
///
/// # Errors
/// Every problem, when the config is invalid.
pub fn load_config(path: &Path, attach: &[Attachment]) -> Result<Model, Vec<Problem>> {
    model::load_with(
        path,
        &model::LoadOptions {
            attach,
            ..Default::default()
        },
    )
}

/// [`load_config`], its problems in one error that says how to list them.
fn load_valid(config: &Path, attach: &[Attachment]) -> Result<Model> {
    load_config(config, attach).map_err(|p| LabError::Invalid {
        config: config.to_path_buf(),
        problems: problems_line(&p),
    })
}

/// Options of [`up`].
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// The `sgctl` binary that serves the listeners (`sgctl lab serve`);
    /// default: the running executable.
    pub sgctl: Option<PathBuf>,
}

/// What `up` built.
#[derive(Clone, Debug)]
pub struct UpReport {
    pub state: LabState,
    pub applied: Vec<apply::Change>,
}

/// Builds lab `lab` for the config at `config` (see the module docs).
/// Whatever an earlier lab of the same name left is removed first; on
/// failure everything made so far is removed again.
///
/// # Errors
/// An invalid config (`Err` with its problems in the message), or a
/// namespace, attach or listener failure.
pub fn up(
    lab: &str,
    config: &Path,
    attach: &[Attachment],
    attach_args: &[String],
    opts: &UpOptions,
) -> Result<UpReport> {
    plan::check_name(lab).map_err(LabError::Name)?;
    let config =
        std::fs::canonicalize(config).map_err(PathError::on("reading", config.to_path_buf()))?;
    let user = load_valid(&config, attach)?;
    down(lab).map_err(|e| LabError::Leftover(Box::new(e)))?;
    let plan = plan::plan(lab, &[&user]);
    match build(&plan, &user, &config, attach_args, opts) {
        Ok(report) => Ok(report),
        Err(e) => {
            let _ = down(lab);
            Err(e)
        }
    }
}

fn build(
    plan: &Plan,
    user: &Model,
    config: &Path,
    attach_args: &[String],
    opts: &UpOptions,
) -> Result<UpReport> {
    let dir = state_dir(&plan.lab);
    crate::agent::lock::ensure_state_dir()?;
    crate::sys::private_dir::create_subdir(&dir)?;
    let lab_config = dir.join("lab.yaml");
    let mut state = LabState {
        plan: plan.clone(),
        config: config.to_path_buf(),
        attach: attach_args.to_vec(),
        lab_config: lab_config.clone(),
        server_pid: None,
    };
    // State first, so `down` finds everything even if we stop half-way.
    state.write()?;

    let prefix = plan::netns_prefix(&plan.lab);
    let switch = Netns::create_persistent(&format!("{prefix}{}", plan::SWITCH_ROLE))?;
    switch.ip(&["link", "add", "br0", "type", "bridge"])?;
    switch.ip(&["link", "set", "br0", "up"])?;
    let mut namespaces = Vec::with_capacity(plan.hosts.len());
    for (i, host) in plan.hosts.iter().enumerate() {
        let ns = Netns::create_persistent(&host.netns)?;
        let port = format!("p{i}");
        switch.veth_to(&port, &ns, &host.iface)?;
        switch.ip(&["link", "set", &port, "master", "br0"])?;
        if let Some(a) = host.ipv4 {
            ns.add_addr(&host.iface, &format!("{a}/15"))?;
        }
        if let Some(a) = host.ipv6 {
            ns.add_addr(&host.iface, &format!("{a}/32"))?;
        }
        namespaces.push(ns);
    }
    // The segment is one flat 2001:db8::/32 link; see pin_ipv6_neighbours.
    let v6: Vec<(&Netns, &str, std::net::Ipv6Addr)> = plan
        .hosts
        .iter()
        .zip(&namespaces)
        .filter_map(|(h, ns)| h.ipv6.map(|a| (ns, h.iface.as_str(), a)))
        .collect();
    crate::sys::netns::pin_ipv6_neighbours(&v6)?;

    let lab_model = plan.lab_model(user, Some(lab_config.clone()));
    let text = model::aws::to_native_yaml(&lab_model).map_err(LabError::Yaml)?;
    let header = format!(
        "# Written by `sgctl lab up` from {}: interfaces point at the lab's namespaces.\n",
        config.display()
    );
    std::fs::write(&lab_config, header + &text)
        .map_err(PathError::on("writing", lab_config.clone()))?;
    let enforced = state.lab_model()?;
    let applied =
        apply::apply(&enforced, &ApplyOptions::default()).map_err(|e| LabError::Enforce {
            what: "enforcing the lab config (the same code as `sgctl apply`)",
            source: Box::new(e),
        })?;

    state.server_pid = Some(start_server(&plan.lab, opts)?);
    state.write()?;
    Ok(UpReport { state, applied })
}

/// Starts `sgctl lab serve --name LAB` in its own process group and waits
/// until it listens.
fn start_server(lab: &str, opts: &UpOptions) -> Result<u32> {
    let exe = match &opts.sgctl {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(LabError::Exe)?,
    };
    let log_path = state_dir(lab).join("server.log");
    let log =
        std::fs::File::create(&log_path).map_err(PathError::on("creating", log_path.clone()))?;
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(&exe)
            .args(["lab", "serve", "--name", lab])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::StartServer {
                exe: exe.clone(),
                source,
            })?
    };
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.trim() == "ready" => Ok(pid),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(LabError::ServerNotReady {
                exe,
                log: log.trim().to_string(),
            })
        }
    }
}

/// The body of `sgctl lab serve`: listen on every planned port of every host
/// (TCP answers one byte, UDP echoes), say `ready` on stdout, serve until
/// killed by `down`.
///
/// # Errors
/// When the lab is not up or a port cannot be bound.
pub fn serve(lab: &str) -> Result<()> {
    let state = LabState::read(lab)?;
    for host in &state.plan.hosts {
        let ns = Netns::open(&host.netns)?;
        for s in &state.plan.services {
            let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), s.port);
            match s.proto {
                plan::Proto::Tcp => probe::serve_tcp_forever(&ns, addr),
                plan::Proto::Udp => probe::serve_udp_echo_forever(&ns, addr),
                plan::Proto::Ping => continue,
            }
            .map_err(|source| LabError::Listen {
                role: host.role.to_string(),
                service: s.label(),
                source,
            })?;
        }
    }
    println!("ready");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

/// Whether `pid` is the listener process of `lab` and still running.
fn is_our_server(pid: u32, lab: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args
        .windows(4)
        .any(|w| w[0] == b"lab" && w[1] == b"serve" && w[2] == b"--name" && w[3] == lab.as_bytes());
    ours && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Whether the lab's listener process is running.
pub fn server_running(state: &LabState) -> bool {
    state
        .server_pid
        .is_some_and(|pid| is_our_server(pid, &state.plan.lab))
}

/// Stops the listener process, if it is ours and alive.
fn stop_server(pid: u32, lab: &str) -> bool {
    if !is_our_server(pid, lab) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid was checked
    // to be this lab's listener just above.
    unsafe { libc::kill(raw, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while is_our_server(pid, lab) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_our_server(pid, lab) {
        // SAFETY: as above.
        unsafe { libc::kill(raw, libc::SIGKILL) };
    }
    true
}

/// What `down` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DownReport {
    pub server_stopped: bool,
    pub detached: Vec<String>,
    pub namespaces: Vec<String>,
    pub state_removed: bool,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        !self.server_stopped
            && self.detached.is_empty()
            && self.namespaces.is_empty()
            && !self.state_removed
    }
}

/// Removes everything lab `lab` made: listeners, attachments (pins and
/// `/run/sgctl` state), namespaces, the lab's state. Only names carrying the
/// lab's prefix are touched. Safe to run when nothing is left.
///
/// # Errors
/// When something of the lab could not be removed (says what).
pub fn down(lab: &str) -> Result<DownReport> {
    plan::check_name(lab).map_err(LabError::Name)?;
    let prefix = plan::netns_prefix(lab);
    let mut report = DownReport::default();
    if let Ok(state) = LabState::read(lab)
        && let Some(pid) = state.server_pid
    {
        report.server_stopped = stop_server(pid, lab);
    }
    for id in crate::kernel::dataplane::attached_ifaces().map_err(LabError::ListIfaces)? {
        if id
            .netns
            .as_deref()
            .is_some_and(|ns| ns.starts_with(&prefix))
        {
            apply::detach(&id).map_err(|e| LabError::Detach {
                iface: id.clone(),
                source: Box::new(e),
            })?;
            report.detached.push(id.to_string());
        }
    }
    for path in scoped_dirs(&prefix) {
        std::fs::remove_dir_all(&path).map_err(PathError::on("removing", path.clone()))?;
    }
    // Hosts first, the switch last (its veth ends go with the hosts).
    let mut names = netns::namespaces_with_prefix(&prefix);
    names.sort_by_key(|n| n.ends_with(&format!("-{}", plan::SWITCH_ROLE)));
    for name in names {
        if !netns::delete_netns(&name) {
            return Err(LabError::DeleteNetns { name });
        }
        report.namespaces.push(name);
    }
    let dir = state_dir(lab);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(PathError::on("removing", dir.clone()))?;
        report.state_removed = true;
    }
    // The parent of every lab's state; gone once the last lab is.
    let _ = std::fs::remove_dir(Path::new(apply::STATE_DIR).join("lab"));
    Ok(report)
}

/// Pin and state directories of the lab's namespaces (named
/// `netns-{prefix}…`).
fn scoped_dirs(prefix: &str) -> impl Iterator<Item = std::path::PathBuf> {
    let scoped = format!("netns-{prefix}");
    [pins::ROOT, pins::IFACES_DIR, apply::STATE_DIR]
        .into_iter()
        .flat_map(|root| std::fs::read_dir(root).into_iter().flatten().flatten())
        .filter(move |entry| entry.file_name().to_string_lossy().starts_with(&scoped))
        .map(|entry| entry.path())
}

/// What is left of lab `lab` (empty when nothing): for tests and `down`.
pub fn leftovers(lab: &str) -> Vec<String> {
    let prefix = plan::netns_prefix(lab);
    let mut left: Vec<String> = netns::namespaces_with_prefix(&prefix)
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    left.extend(scoped_dirs(&prefix).map(|p| p.display().to_string()));
    if state_dir(lab).exists() {
        left.push(state_dir(lab).display().to_string());
    }
    left
}

/// Re-applies a changed config to a lab that is up, when the change keeps
/// the lab's hosts and services (only rules or groups changed).
///
/// # Errors
/// When the change needs other hosts or ports (rebuild with `up`), or the
/// config is invalid.
pub fn reapply(state: &mut LabState, config: &Path, attach: &[Attachment]) -> Result<()> {
    let lab = state.plan.lab.clone();
    let user = load_valid(config, attach)?;
    let plan = plan::plan(&lab, &[&user]);
    if plan.hosts != state.plan.hosts || plan.services != state.plan.services {
        return Err(LabError::NeedsRebuild {
            config: config.to_path_buf(),
            lab,
        });
    }
    let lab_model = plan.lab_model(&user, Some(state.lab_config.clone()));
    let yaml = model::aws::to_native_yaml(&lab_model).map_err(LabError::Yaml)?;
    std::fs::write(&state.lab_config, yaml)
        .map_err(PathError::on("writing", state.lab_config.clone()))?;
    apply::apply(&state.lab_model()?, &ApplyOptions::default()).map_err(|e| LabError::Enforce {
        what: "enforcing the changed config in the lab",
        source: Box::new(e),
    })?;
    state.plan = plan;
    state.write()
}

/// The interface ids the lab enforces on.
pub fn lab_ifaces(state: &LabState) -> Vec<IfaceId> {
    state
        .plan
        .hosts
        .iter()
        .filter(|h| h.config_iface.is_some())
        .map(|h| IfaceId::new(&h.iface, Some(&h.netns)))
        .collect()
}
