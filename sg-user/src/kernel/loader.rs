//! Attaches the host's data plane ([`crate::kernel::dataplane`]) to an interface:
//! registers its endpoint (settings and policy) first, then links the shared
//! programs to it and pins the links under [`crate::kernel::pins::IfaceId::dir`];
//! detaches it again. Also moves interfaces attached in the legacy layout
//! (their own programs and maps) to the shared data plane without opening
//! traffic ([`upgrade_legacy`]).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use sg_common::{
    Counter, IfaceConfig,
    conntrack::{CtEntry, CtKeyV4, CtKeyV6, DEFAULT_TIMEOUTS_S},
    endpoint::EndpointKey,
    events::DEFAULT_EVENTS_PER_SEC,
    names,
    policy::{CONFIG_ENFORCE, CONFIG_SIDE_PEER},
};
use thiserror::Error;

pub use crate::kernel::dataplane::CounterTable;
pub use crate::kernel::dataplane::{BpfLog, SG_OBJECT, STATE_MAPS};
pub use crate::model::Side;
use crate::{
    kernel::BoxError,
    kernel::conntrack::ConntrackError,
    kernel::dataplane::{self, DataPlane, DataPlaneError, LoadOptions, Session, padded},
    kernel::pins::{self, IfaceId},
    kernel::policy_maps::{PolicyMapError, timeouts_ns},
    model::Choice,
    sys::ifinfo,
    sys::netns::NetnsError,
};

/// Requested ingress hook (what each means: [`Choice::help`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressHook {
    #[default]
    Auto,
    Xdp,
    XdpGeneric,
    Tc,
}

impl Choice for IngressHook {
    const ALL: &'static [IngressHook] = &[
        IngressHook::Auto,
        IngressHook::Xdp,
        IngressHook::XdpGeneric,
        IngressHook::Tc,
    ];

    fn name(self) -> &'static str {
        match self {
            IngressHook::Auto => "auto",
            IngressHook::Xdp => "xdp",
            IngressHook::XdpGeneric => "xdp-generic",
            IngressHook::Tc => "tc",
        }
    }

    fn help(self) -> Option<&'static str> {
        Some(match self {
            IngressHook::Auto => "Native XDP on physical NICs, TC on virtual devices",
            IngressHook::Xdp => "Native (driver) XDP",
            IngressHook::XdpGeneric => {
                "Generic (skb) XDP: works everywhere, slower than TC on veth"
            }
            IngressHook::Tc => "TC (tcx) ingress",
        })
    }
}

/// The hook actually used for ingress, as recorded in the pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachedHook {
    Xdp,
    XdpGeneric,
    Tc,
}

impl AttachedHook {
    pub fn name(self) -> &'static str {
        match self {
            AttachedHook::Xdp => "xdp",
            AttachedHook::XdpGeneric => "xdp-generic",
            AttachedHook::Tc => "tc",
        }
    }

    /// Every hook, the most common first.
    const ALL: [AttachedHook; 3] = [
        AttachedHook::Tc,
        AttachedHook::Xdp,
        AttachedHook::XdpGeneric,
    ];

    fn from_name(name: &str) -> Option<AttachedHook> {
        AttachedHook::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// Whether `iface` has a link pinned for `direction` ("ingress" or
/// "egress"): a `stat` per possible pin name, most common first (cheaper
/// than listing the directory when a thousand interfaces are checked).
pub fn has_link_pin(iface: &IfaceId, direction: &str) -> bool {
    let dir = iface.dir();
    AttachedHook::ALL
        .into_iter()
        .any(|hook| std::fs::symlink_metadata(dir.join(link_pin_name(direction, hook))).is_ok())
}

#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    pub side: Side,
    pub ingress_hook: IngressHook,
    /// Kernel-side log level; takes effect when the data plane is first
    /// loaded on the host.
    pub bpf_log: BpfLog,
    /// Capacity of each host-wide connection table (IPv4 and IPv6), fixed
    /// when the data plane is first loaded; also the interface's own limit
    /// when that is larger.
    pub conntrack_entries: u32,
    /// Tracked connections this interface may hold (AWS's per-interface
    /// allowance); its new flows beyond it are refused, others unaffected.
    pub conntrack_per_iface: u32,
}

/// Default capacity of each host-wide connection table.
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 262_144;
/// Default connection limit of one interface.
pub const DEFAULT_CONNTRACK_PER_IFACE: u32 = 65_536;

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            side: Side::Host,
            ingress_hook: IngressHook::Auto,
            bpf_log: BpfLog::Off,
            conntrack_entries: DEFAULT_CONNTRACK_ENTRIES,
            conntrack_per_iface: DEFAULT_CONNTRACK_PER_IFACE,
        }
    }
}

impl AttachOptions {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            conntrack_entries: self.conntrack_entries,
            bpf_log: self.bpf_log,
        }
    }
}

/// What an attachment enforces from its first packet.
#[derive(Clone, Copy, Debug)]
pub enum InitialPolicy {
    /// Count everything, pass everything.
    Observe,
    /// Enforce the installed policy `policy` (a policy id of the data
    /// plane) with these idle timeouts (s).
    Enforce {
        policy: u32,
        timeouts_s: [u64; sg_common::conntrack::TIMEOUT_SLOTS],
    },
}

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("{iface} is already attached; run `{}` first, or `sgctl status` to see it", .iface.detach_command())]
    AlreadyAttached { iface: IfaceId },
    #[error("{iface} is not attached; `sgctl status` lists attached interfaces")]
    NotAttached { iface: IfaceId },
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("program `{name}` failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{what} failed for {iface}{hint}")]
    Attach {
        what: String,
        iface: IfaceId,
        hint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A link made through netlink (`what`: XDP, or TC without tcx).
    #[error("{what} attached through netlink, which cannot be pinned under {path}")]
    Unpinnable {
        what: &'static str,
        path: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("reading pinned state under {path}")]
    Pinned {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("opening the kernel log ring buffer of the programs under {path}")]
    KernelLog {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Policy(#[from] PolicyMapError),
    /// An I/O error, with what was done to which path.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// An I/O error whose message already says what and where.
    #[error(transparent)]
    Os(#[from] io::Error),
}

/// What `attach` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attached {
    pub iface: IfaceId,
    pub ingress_hook: AttachedHook,
    pub side: Side,
}

fn link_pin_name(direction: &str, hook: AttachedHook) -> String {
    format!("{}{direction}-{}", pins::LINK_PREFIX, hook.name())
}

/// Runs `f` in the namespace of `iface` (a named one, a process's, or ours).
pub fn in_iface_netns<F, R>(iface: &IfaceId, f: F) -> Result<R, LoaderError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    if let Some(name) = &iface.netns {
        return Ok(crate::sys::netns::in_netns(Some(name), f)?);
    }
    match iface.netns_path()? {
        None => Ok(f()),
        Some(path) => Ok(crate::sys::netns::in_netns_path(&path, f)?),
    }
}

/// What the kernel calls the interface: its namespace's cookie, its index,
/// and whether it is a physical NIC (native XDP on ingress).
struct KernelIface {
    key: EndpointKey,
    physical: bool,
}

impl Prepared {
    /// Creates the links, inside the interface's namespace.
    fn link(&self, iface: &IfaceId, opts: &AttachOptions) -> Result<AttachedHook, LoaderError> {
        let dir = iface.dir();
        in_iface_netns(iface, || attach_here(iface, opts, self.physical, &dir)).and_then(|r| r)
    }

    /// Undoes a failed attachment: links first (removing the pins
    /// detaches), then the endpoint.
    fn abandon(self, session: &mut Session, iface: &IfaceId) {
        let _ = pins::remove_iface_dir(iface);
        let _ = session.dp.maps.remove_endpoint(&self.key);
        session.release_endpoint(self.endpoint);
    }
}

fn kernel_iface(iface: &IfaceId) -> Result<KernelIface, LoaderError> {
    in_iface_netns(iface, || -> Result<KernelIface, LoaderError> {
        let name = std::ffi::CString::new(iface.iface.as_str())
            .map_err(|_| io::Error::other(format!("{iface}: interface name with NUL")))?;
        // SAFETY: a valid C string; if_nametoindex only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{iface}: no such interface (`ip link` lists them)"),
            )
            .into());
        }
        let physical = ifinfo::driver_info(&iface.iface)
            .map_err(|e| io::Error::new(e.kind(), format!("{iface}: {e}")))?
            .is_some_and(|info| info.is_physical());
        Ok(KernelIface {
            key: EndpointKey {
                netns_cookie: dataplane::netns_cookie()?,
                ifindex,
                _pad: 0,
            },
            physical,
        })
    })?
}

/// The settings of a new endpoint.
fn endpoint_config(
    iface: &IfaceId,
    endpoint: u32,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> IfaceConfig {
    let side = if opts.side == Side::Peer {
        CONFIG_SIDE_PEER
    } else {
        0
    };
    let mut cfg = match initial {
        InitialPolicy::Observe => IfaceConfig::new(side, timeouts_ns(DEFAULT_TIMEOUTS_S), 0),
        InitialPolicy::Enforce { policy, timeouts_s } => {
            let mut cfg = IfaceConfig::new(
                side | CONFIG_ENFORCE,
                timeouts_ns(timeouts_s),
                DEFAULT_EVENTS_PER_SEC,
            );
            cfg.policy = policy;
            cfg
        }
    };
    cfg.endpoint = endpoint;
    cfg.ct_limit = opts.conntrack_per_iface.min(opts.conntrack_entries);
    cfg.netns_dev = iface.ns.dev;
    cfg.netns_ino = iface.ns.ino;
    cfg.ifname = padded(&iface.iface);
    if let Some(name) = &iface.netns {
        cfg.netns_name = padded(name);
    }
    cfg
}

/// Attaches the data plane to `iface` (ingress and egress): loads the data
/// plane if this host has none, registers the endpoint with its settings and
/// policy, then links and pins. The policy is in place before the first
/// packet; on any failure nothing stays attached.
pub fn attach(
    iface: &IfaceId,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> Result<Attached, LoaderError> {
    let mut session = Session::open_or_load(&opts.load_options())?;
    attach_in(&mut session, iface, opts, initial)
}

/// [`attach`] within a change session (many interfaces under one lock).
pub fn attach_in(
    session: &mut Session,
    iface: &IfaceId,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> Result<Attached, LoaderError> {
    let prepared = prepare(session, iface, opts, initial)?;
    match prepared.link(iface, opts) {
        Ok(ingress_hook) => Ok(Attached {
            iface: iface.clone(),
            ingress_hook,
            side: opts.side,
        }),
        Err(e) => {
            prepared.abandon(session, iface);
            Err(e)
        }
    }
}

/// One interface of [`attach_many`].
#[derive(Clone, Debug)]
pub struct AttachItem {
    pub iface: IfaceId,
    pub opts: AttachOptions,
    pub initial: InitialPolicy,
}

/// An interface whose endpoint is registered, waiting for its links.
struct Prepared {
    key: EndpointKey,
    endpoint: u32,
    physical: bool,
}

/// [`attach_in`] for many interfaces at once: endpoints are registered one
/// by one, then the links are created by up to 32 threads. Creating a tcx
/// link waits for an RCU grace period (several milliseconds, more on a busy
/// machine); in parallel the waits overlap. Results in `items` order; a
/// failed interface is left with nothing attached.
pub fn attach_many(
    session: &mut Session,
    items: &[AttachItem],
) -> Vec<Result<Attached, LoaderError>> {
    let mut prepared: Vec<Result<Prepared, LoaderError>> = Vec::with_capacity(items.len());
    for item in items {
        prepared.push(prepare(session, &item.iface, &item.opts, item.initial));
    }
    let _expedited = (items.len() >= EXPEDITE_FROM)
        .then(ExpeditedRcu::start)
        .flatten();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let linked: Vec<std::sync::Mutex<Option<Result<AttachedHook, LoaderError>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let workers = items.len().clamp(1, 32);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let Ok(p) = &prepared[i] else { continue };
                    let result = p.link(&item.iface, &item.opts);
                    *linked[i].lock().expect("not poisoned") = Some(result);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for ((item, prepared), linked) in items.iter().zip(prepared).zip(linked) {
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        match linked.into_inner().expect("not poisoned") {
            Some(Ok(ingress_hook)) => out.push(Ok(Attached {
                iface: item.iface.clone(),
                ingress_hook,
                side: item.opts.side,
            })),
            other => {
                detach_links(&item.iface.dir());
                prepared.abandon(session, &item.iface);
                out.push(Err(match other {
                    Some(Err(e)) => e,
                    _ => io::Error::other("linking did not run").into(),
                }));
            }
        }
    }
    out
}

/// From this many new interfaces on, [`attach_many`] expedites RCU (even
/// one: its two links wait two grace periods, tens of milliseconds on a busy
/// machine).
const EXPEDITE_FROM: usize = 1;
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// `/sys/kernel/rcu_expedited` set to 1 while it lives, then put back.
///
/// Every tcx link creation waits for an RCU grace period while holding
/// the RTNL lock (`tcx_entry_sync`), so links are created one grace period
/// at a time whatever the parallelism: measured here, 100 interfaces took
/// 2.1 s with normal grace periods and 0.08 s expedited. Expedited grace
/// periods cost other CPUs an interrupt each; the setting is put back as
/// soon as the links exist.
struct ExpeditedRcu;

impl ExpeditedRcu {
    fn start() -> Option<ExpeditedRcu> {
        let now = std::fs::read_to_string(RCU_EXPEDITED).ok()?;
        if now.trim() != "0" {
            return None;
        }
        std::fs::write(RCU_EXPEDITED, "1").ok()?;
        tracing::debug!("rcu_expedited on while linking interfaces");
        Some(ExpeditedRcu)
    }
}

impl Drop for ExpeditedRcu {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(RCU_EXPEDITED, "0") {
            tracing::warn!("putting {RCU_EXPEDITED} back to 0: {e}");
        }
    }
}

/// Registers an interface's endpoint and makes its link directory.
fn prepare(
    session: &mut Session,
    iface: &IfaceId,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> Result<Prepared, LoaderError> {
    let dir = iface.dir();
    if session.dp.endpoint_of(iface)?.is_some() {
        return Err(LoaderError::AlreadyAttached {
            iface: iface.clone(),
        });
    }
    if dir.exists() {
        // Links without an endpoint: a leftover of an interface that is
        // gone (its namespace deleted and the name given to a new one).
        detach_links(&dir);
        let _ = pins::remove_iface_dir(iface);
    }
    let kernel = kernel_iface(iface)?;
    let endpoint = session.allocate_endpoint()?;
    let cfg = endpoint_config(iface, endpoint, opts, initial);
    let prepared = Prepared {
        key: kernel.key,
        endpoint,
        physical: kernel.physical,
    };
    let result = register(session, iface, kernel.key, &cfg)
        .and_then(|()| Ok(crate::sys::private_dir::create_subdir(&dir).map_err(io::Error::other)?));
    match result {
        Ok(()) => Ok(prepared),
        Err(e) => {
            prepared.abandon(session, iface);
            Err(e)
        }
    }
}

/// Writes a new endpoint: a clean counter row, then its entry.
fn register(
    session: &mut Session,
    iface: &IfaceId,
    key: EndpointKey,
    cfg: &IfaceConfig,
) -> Result<(), LoaderError> {
    // Connections a previous endpoint of this id left (it was removed
    // without its tables being cleaned) must not count for this one; its
    // count says whether there are any (a walk of the tables otherwise).
    if crate::kernel::conntrack::in_use(iface, cfg.endpoint).map_or(true, |n| n != 0) {
        crate::kernel::conntrack::remove_endpoint_flows(iface, cfg.endpoint)?;
    }
    session.dp.reset_endpoint_row(cfg.endpoint)?;
    session.dp.maps.write_endpoint(key, cfg)?;
    Ok(())
}

/// The attach steps proper; runs inside the interface's namespace.
fn attach_here(
    iface: &IfaceId,
    opts: &AttachOptions,
    physical: bool,
    dir: &Path,
) -> Result<AttachedHook, LoaderError> {
    let hook = match opts.ingress_hook {
        IngressHook::Auto if physical => match attach_xdp(iface, XdpMode::Driver, dir) {
            Ok(()) => AttachedHook::Xdp,
            Err(e) => {
                tracing::warn!("{iface}: native XDP failed ({e}); using TC ingress instead");
                attach_tc(iface, TcAttachType::Ingress, dir)?;
                AttachedHook::Tc
            }
        },
        IngressHook::Auto | IngressHook::Tc => {
            attach_tc(iface, TcAttachType::Ingress, dir)?;
            AttachedHook::Tc
        }
        IngressHook::Xdp => {
            attach_xdp(iface, XdpMode::Driver, dir)?;
            AttachedHook::Xdp
        }
        IngressHook::XdpGeneric => {
            attach_xdp(iface, XdpMode::Skb, dir)?;
            AttachedHook::XdpGeneric
        }
    };
    attach_tc(iface, TcAttachType::Egress, dir)?;
    Ok(hook)
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), LoaderError> {
    // The data plane's pin error: one message for every pin sgctl makes.
    link.pin(path).map_err(|source| DataPlaneError::Pin {
        path: path.display().to_string(),
        source,
    })?;
    Ok(())
}

fn attach_xdp(iface: &IfaceId, mode: XdpMode, dir: &Path) -> Result<(), LoaderError> {
    let mut prog = dataplane::xdp_program()?;
    let attach_error = |source| LoaderError::Attach {
        source: Box::new(source),
        what: format!("XDP ({mode:?} mode) attach"),
        iface: iface.clone(),
        hint: " (the driver may not support native XDP; try `--ingress-hook tc` or `--ingress-hook xdp-generic`)",
    };
    let link_id = prog.attach(&iface.iface, mode).map_err(attach_error)?;
    let link = prog.take_link(link_id).map_err(attach_error)?;
    let link: FdLink = link
        .try_into()
        .map_err(|source: LinkError| LoaderError::Unpinnable {
            what: "XDP",
            path: dir.display().to_string(),
            source: Box::new(source),
        })?;
    let hook = if mode == XdpMode::Skb {
        AttachedHook::XdpGeneric
    } else {
        AttachedHook::Xdp
    };
    pin_link(link, &dir.join(link_pin_name("ingress", hook)))
}

fn attach_tc(iface: &IfaceId, attach_type: TcAttachType, dir: &Path) -> Result<(), LoaderError> {
    let (name, direction) = match attach_type {
        TcAttachType::Egress => (names::PROG_TC_EGRESS, "egress"),
        _ => (names::PROG_TC_INGRESS, "ingress"),
    };
    let mut prog = dataplane::tc_program(name)?;
    let attach_error = |source| LoaderError::Attach {
        source: Box::new(source),
        what: format!("TC {direction} attach"),
        iface: iface.clone(),
        hint: " (tcx needs Linux 6.6 or newer; check the interface exists with `ip link`)",
    };
    let link_id = prog
        .attach(&iface.iface, attach_type)
        .map_err(attach_error)?;
    let link = prog.take_link(link_id).map_err(attach_error)?;
    let link: FdLink = link
        .try_into()
        .map_err(|source: LinkError| LoaderError::Unpinnable {
            what: "TC (no tcx)",
            path: dir.display().to_string(),
            source: Box::new(source),
        })?;
    pin_link(link, &dir.join(link_pin_name(direction, AttachedHook::Tc)))
}

/// Detaches `iface`: removing its link pins takes the programs off the
/// interface; then its endpoint and its connections are removed. An
/// attachment in the legacy layout is removed the same way (its own
/// programs and maps go with its directory).
pub fn detach(iface: &IfaceId) -> Result<(), LoaderError> {
    let legacy = iface.legacy_dir();
    let had_legacy = legacy.exists();
    if had_legacy {
        pins::remove_legacy_dir(&legacy)?;
    }
    if !dataplane::is_loaded() {
        return if had_legacy {
            Ok(())
        } else {
            Err(LoaderError::NotAttached {
                iface: iface.clone(),
            })
        };
    }
    let mut session = Session::open_or_load(&AttachOptions::default().load_options())?;
    match detach_in(&mut session, iface) {
        Err(LoaderError::NotAttached { .. }) if had_legacy => Ok(()),
        other => other,
    }
}

/// [`detach`] of the shared data plane, within a change session.
pub fn detach_in(session: &mut Session, iface: &IfaceId) -> Result<(), LoaderError> {
    let ep = session.dp.endpoint_of(iface)?;
    // The links by the namespace the endpoint recorded (a deleted named
    // namespace is found by its name).
    let target = ep.as_ref().map_or(iface, |e| &e.id);
    // Detached now, not when the kernel gets round to releasing the
    // unpinned links (a workqueue): only then may the endpoint go, or the
    // hooks would drop the interface's packets meanwhile (fail closed).
    detach_links(&target.dir());
    let linked = match pins::remove_iface_dir(target) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if let Some(ep) = &ep {
        // Pinned under the name it had, which now names another namespace.
        let recorded = crate::kernel::dataplane::c_str(&ep.cfg.netns_name);
        if !recorded.is_empty() && ep.id.netns.as_deref() != Some(recorded.as_str()) {
            let old = IfaceId {
                netns: Some(recorded),
                ..ep.id.clone()
            };
            detach_links(&old.dir());
            let _ = pins::remove_iface_dir(&old);
        }
    }
    let Some(ep) = ep else {
        return if linked {
            Ok(())
        } else {
            Err(LoaderError::NotAttached {
                iface: iface.clone(),
            })
        };
    };
    session.dp.maps.remove_endpoint(&ep.key)?;
    // Its connections go with it; the walk of the host-wide tables only
    // when its count says it has any (as on register).
    if crate::kernel::conntrack::in_use(iface, ep.cfg.endpoint).map_or(true, |n| n != 0) {
        crate::kernel::conntrack::remove_endpoint_flows(iface, ep.cfg.endpoint)?;
    }
    session.release_endpoint(ep.cfg.endpoint);
    Ok(())
}

/// Detaches every link pinned in `dir` at once (`BPF_LINK_DETACH`); the pins
/// stay. Links that are gone already (their device deleted) are skipped.
pub fn detach_links(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(pins::LINK_PREFIX)
        {
            continue;
        }
        if let Err(e) = link_detach(&entry.path()) {
            tracing::debug!("{}: BPF_LINK_DETACH: {e}", entry.path().display());
        }
    }
}

/// `BPF_OBJ_GET` of the pinned link at `path`, then `BPF_LINK_DETACH` (aya
/// 0.14 has no call for it, nor gives the fd of a pinned link).
fn link_detach(path: &Path) -> io::Result<()> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path with NUL"))?;
    // union bpf_attr, `obj_get`: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u8; 64];
    attr[..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) reads `attr.len()` bytes of a valid buffer; the path
    // pointer stays valid for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // `link_detach`: the link's fd first, the rest zero.
    let mut attr = [0u8; 64];
    attr[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The endpoint of an attached interface.
pub fn endpoint(
    iface: &IfaceId,
) -> Result<(DataPlane, crate::kernel::dataplane::EndpointInfo), LoaderError> {
    let not_attached = || LoaderError::NotAttached {
        iface: iface.clone(),
    };
    let dp = DataPlane::open()?.ok_or_else(not_attached)?;
    let ep = dp.endpoint_of(iface)?.ok_or_else(not_attached)?;
    Ok((dp, ep))
}

/// Reads the counters of an attached interface.
pub fn read_counters(iface: &IfaceId) -> Result<CounterTable, LoaderError> {
    let (dp, ep) = endpoint(iface)?;
    Ok(dp.counters(ep.cfg.endpoint)?)
}

/// Pinned links of an attached interface: (pin name, hook, kernel program id).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinnedHook {
    pub direction: String,
    pub hook: AttachedHook,
    pub program_id: u32,
}

/// The link pins in `dir`, from their names (see [`link_pin_name`]):
/// (path, direction, hook). Other files are passed over.
fn link_pins(dir: &Path) -> io::Result<Vec<(PathBuf, String, AttachedHook)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((direction, hook)) = file
            .strip_prefix(pins::LINK_PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let Some(hook) = AttachedHook::from_name(hook) else {
            continue;
        };
        out.push((entry.path(), direction.to_string(), hook));
    }
    Ok(out)
}

/// A pinned link at `path` that could not be opened or used.
fn pinned_error(path: &Path, source: impl Into<BoxError>) -> LoaderError {
    LoaderError::Pinned {
        path: path.display().to_string(),
        source: source.into(),
    }
}

pub fn pinned_hooks(iface: &IfaceId) -> Result<Vec<PinnedHook>, LoaderError> {
    let mut hooks = Vec::new();
    let found = match link_pins(&iface.dir()) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(hooks),
        Err(e) => return Err(e.into()),
    };
    for (path, direction, hook) in found {
        let link: FdLink = PinnedLink::from_pin(&path)
            .map_err(|e| pinned_error(&path, e))?
            .into();
        let info = link.info().map_err(|e| pinned_error(&path, e))?;
        hooks.push(PinnedHook {
            direction,
            hook,
            program_id: info.program_id(),
        });
    }
    hooks.sort_by(|a, b| a.direction.cmp(&b.direction));
    Ok(hooks)
}

/// Starts forwarding kernel-side aya-log records of the data plane to the
/// `log` crate. The records exist only if it was loaded with `--bpf-log`
/// above `off` (the level is fixed when the data plane is first loaded).
pub fn kernel_logger(
    iface: &IfaceId,
) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, LoaderError> {
    let hooks = pinned_hooks(iface)?;
    let hook = hooks.first().ok_or_else(|| LoaderError::NotAttached {
        iface: iface.clone(),
    })?;
    aya_log::EbpfLogger::init_from_id(hook.program_id).map_err(|e| LoaderError::KernelLog {
        path: iface.dir().display().to_string(),
        source: e.into(),
    })
}

/// Per-rule hit counters (summed over CPUs) of an attached interface's
/// policy (shared by the interfaces with the same rules), by rule hash.
pub fn read_rule_hits(iface: &IfaceId) -> Result<BTreeMap<u32, Counter>, LoaderError> {
    let (mut dp, ep) = endpoint(iface)?;
    if ep.cfg.policy == 0 {
        return Ok(BTreeMap::new());
    }
    dp.maps.select(ep.cfg.policy, Some(ep.key));
    Ok(dp.maps.rule_hits()?)
}

/// Flow-log events the kernel could not report for `iface` (rate limit, full buffer).
pub fn read_events_lost(iface: &IfaceId) -> Result<u64, LoaderError> {
    let (dp, ep) = endpoint(iface)?;
    Ok(dp.events_lost(ep.cfg.endpoint)?)
}

/// Moves an interface attached in the legacy layout (its own programs and
/// maps under `legacy_dir`) onto the shared data plane without a moment
/// unenforced: the endpoint is registered with `initial` (its policy
/// installed by the caller), the legacy connection entries are copied into
/// the host-wide tables (established flows keep passing), then each legacy
/// link is switched to the shared program in place (`BPF_LINK_UPDATE`: the
/// hook never runs without a program) and pinned in the new layout; only
/// then is the legacy directory (its programs and maps) removed.
pub fn upgrade_legacy(
    session: &mut Session,
    iface: &IfaceId,
    legacy_dir: &Path,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> Result<Attached, LoaderError> {
    if session.dp.endpoint_of(iface)?.is_some() {
        return Err(LoaderError::AlreadyAttached {
            iface: iface.clone(),
        });
    }
    let kernel = kernel_iface(iface)?;
    let endpoint = session.allocate_endpoint()?;
    let cfg = endpoint_config(iface, endpoint, opts, initial);
    let dir = iface.dir();
    let result = register(session, iface, kernel.key, &cfg).and_then(|()| {
        copy_legacy_flows(iface, legacy_dir, endpoint)?;
        crate::sys::private_dir::create_subdir(&dir).map_err(io::Error::other)?;
        switch_legacy_links(legacy_dir, &dir)
    });
    match result {
        Ok(hook) => {
            pins::remove_legacy_dir(legacy_dir)?;
            Ok(Attached {
                iface: iface.clone(),
                ingress_hook: hook,
                side: opts.side,
            })
        }
        Err(e) => {
            // The legacy links still hold either program; nothing opened.
            // New pins of switched links are left only when the legacy
            // ones are gone too: keep whichever exists.
            if legacy_dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

/// Copies one legacy connection table `name` (absent: nothing) into the
/// host-wide table of the same name, each key rewritten by `key`; returns how
/// many entries it copied.
fn copy_legacy_table<Old: aya::Pod, New: aya::Pod>(
    legacy_dir: &Path,
    name: &'static str,
    key: impl Fn(Old) -> New,
) -> Result<u64, LoaderError> {
    /// A legacy connection entry (one 64-byte block, both directions'
    /// counters side by side).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct OldEntry {
        last_seen_ns: u64,
        created_ns: u64,
        packets: [u64; 2],
        bytes: [u64; 2],
        rule: u32,
        generation: u32,
        origin: u8,
        state: u8,
        flags: u8,
        _pad: [u8; 5],
    }
    const _: () = assert!(size_of::<OldEntry>() == 64);
    // SAFETY: repr(C) integers without implicit padding (size asserted):
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for OldEntry {}
    /// The same entry in the host-wide layout. The legacy entry kept one
    /// last-seen time; it goes to the direction that opened the flow.
    fn converted(o: OldEntry) -> CtEntry {
        let traffic = |d: usize, seen: bool| sg_common::conntrack::CtTraffic {
            last_seen_ns: if seen { o.last_seen_ns } else { 0 },
            packets: o.packets[d],
            bytes: o.bytes[d],
        };
        CtEntry {
            created_ns: o.created_ns,
            rule: o.rule,
            generation: o.generation,
            origin: o.origin,
            state: o.state,
            flags: o.flags,
            inbound: traffic(0, o.origin == 0),
            outbound: traffic(1, o.origin != 0),
            ..CtEntry::default()
        }
    }
    let pinned = |e: aya::maps::MapError| LoaderError::Pinned {
        path: name.to_string(),
        source: e.into(),
    };
    let Ok(old) = MapData::from_pin(legacy_dir.join(name)) else {
        return Ok(0);
    };
    let old: BpfHashMap<MapData, Old, OldEntry> =
        BpfHashMap::try_from(Map::HashMap(old)).map_err(pinned)?;
    let mut new: BpfHashMap<MapData, New, CtEntry> = BpfHashMap::try_from(Map::HashMap(
        MapData::from_pin(Path::new(pins::MAPS_DIR).join(name)).map_err(pinned)?,
    ))
    .map_err(pinned)?;
    let mut copied = 0;
    for item in old.iter() {
        let (k, v) = item.map_err(pinned)?;
        new.insert(key(k), converted(v), 0).map_err(pinned)?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies the connection entries of a legacy attachment into the host-wide
/// tables under `endpoint`.
fn copy_legacy_flows(iface: &IfaceId, legacy_dir: &Path, endpoint: u32) -> Result<(), LoaderError> {
    /// A legacy connection key: the host-wide one without the endpoint.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct OldKey<const N: usize> {
        local: [u8; N],
        remote: [u8; N],
        local_port: [u8; 2],
        remote_port: [u8; 2],
        proto: u8,
        _pad: [u8; 3],
    }
    const _: () = assert!(size_of::<OldKey<4>>() == 4 + 4 + 2 + 2 + 1 + 3);
    const _: () = assert!(size_of::<OldKey<16>>() == 16 + 16 + 2 + 2 + 1 + 3);
    // SAFETY: repr(C) byte arrays only (alignment 1, so no implicit
    // padding; sizes asserted above): every bit pattern is a valid value.
    unsafe impl<const N: usize> aya::Pod for OldKey<N> {}
    /// The same connection under `endpoint` in the host-wide table.
    macro_rules! rekeyed {
        ($new:ident, $len:literal) => {
            |k: OldKey<$len>| $new {
                endpoint,
                local: k.local,
                remote: k.remote,
                local_port: k.local_port,
                remote_port: k.remote_port,
                proto: k.proto,
                _pad: [0; 3],
            }
        };
    }
    let copied = copy_legacy_table(legacy_dir, names::MAP_CT_V4, rekeyed!(CtKeyV4, 4))?
        + copy_legacy_table(legacy_dir, names::MAP_CT_V6, rekeyed!(CtKeyV6, 16))?;
    crate::kernel::conntrack::add_kernel_count(iface, endpoint, copied)?;
    Ok(())
}

/// Switches every legacy link under `legacy_dir` to the shared program and
/// pins it under `dir` (then the legacy pin can go without detaching it).
fn switch_legacy_links(legacy_dir: &Path, dir: &Path) -> Result<AttachedHook, LoaderError> {
    let mut ingress = AttachedHook::Tc;
    for (path, direction, hook) in link_pins(legacy_dir)? {
        let pinned_err = |e: BoxError| pinned_error(&path, e);
        let link: FdLink = PinnedLink::from_pin(&path)
            .map_err(|e| pinned_err(e.into()))?
            .into();
        let program_error = |name, source| LoaderError::Program {
            name,
            source: Box::new(source),
        };
        let new_link: FdLink = match hook {
            AttachedHook::Xdp | AttachedHook::XdpGeneric => {
                ingress = hook;
                let mut prog: Xdp = dataplane::xdp_program()?;
                let link = XdpLink::try_from(link).map_err(|e| pinned_err(e.into()))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| program_error(names::PROG_XDP_INGRESS, e))?;
                let link = prog
                    .take_link(id)
                    .map_err(|e| program_error(names::PROG_XDP_INGRESS, e))?;
                link.try_into()
                    .map_err(|e: LinkError| pinned_err(e.into()))?
            }
            AttachedHook::Tc => {
                let name = if direction == "egress" {
                    names::PROG_TC_EGRESS
                } else {
                    names::PROG_TC_INGRESS
                };
                let mut prog: SchedClassifier = dataplane::tc_program(name)?;
                let link = SchedClassifierLink::try_from(link).map_err(|e| pinned_err(e.into()))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|e| program_error(name, e))?;
                let link = prog.take_link(id).map_err(|e| program_error(name, e))?;
                link.try_into()
                    .map_err(|e: LinkError| pinned_err(e.into()))?
            }
        };
        pin_link(new_link, &dir.join(link_pin_name(&direction, hook)))?;
    }
    Ok(ingress)
}

/// Opens the pinned map `name` of the data plane as map type `T`.
pub fn open_pinned<T>(name: &str, kind: fn(MapData) -> Map) -> Result<(T, PathBuf), LoaderError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = Path::new(pins::MAPS_DIR).join(name);
    let map = MapData::from_pin(&path)
        .map(kind)
        .and_then(T::try_from)
        .map_err(|e| LoaderError::Pinned {
            path: path.display().to_string(),
            source: e.into(),
        })?;
    Ok((map, path))
}

/// The live settings of an attached interface and the live generation of
/// its policy (0: observe mode or no policy).
pub fn settings(iface: &IfaceId) -> Result<(IfaceConfig, u32), LoaderError> {
    let (dp, ep) = endpoint(iface)?;
    let generation = if ep.cfg.policy == 0 {
        0
    } else {
        dp.maps.policy_state(ep.cfg.policy)?.generation
    };
    Ok((ep.cfg, generation))
}

/// Makes `iface` attached with these settings and policy, whatever its
/// state: attaches it when it has no endpoint; otherwise rewrites its
/// endpoint in place (one update: a new policy, side, mode or timeouts take
/// effect at once; a re-created interface gets its new key), then links
/// the hooks that are missing. Traffic is never let through meanwhile: the
/// endpoint is written before any link, and links that exist stay.
/// Returns what it had to repair (empty: only settings changed).
pub fn ensure_in(
    session: &mut Session,
    iface: &IfaceId,
    opts: &AttachOptions,
    initial: InitialPolicy,
) -> Result<Vec<String>, LoaderError> {
    let Some(ep) = session.dp.endpoint_of(iface)? else {
        attach_in(session, iface, opts, initial)?;
        return Ok(vec!["attached".into()]);
    };
    let mut repaired = Vec::new();
    let kernel = kernel_iface(iface)?;
    let mut cfg = endpoint_config(iface, ep.cfg.endpoint, opts, initial);
    // A flow-log reader's claim stays.
    cfg.event_ring = ep.cfg.event_ring;
    cfg.events_per_sec = if cfg.flags & CONFIG_ENFORCE != 0 {
        ep.cfg.events_per_sec
    } else {
        0
    };
    let dir = iface.dir();
    if ep.key != kernel.key {
        // Re-created (or moved) interface: the old links went with the old
        // device; the new one has none yet.
        session.dp.maps.write_endpoint(kernel.key, &cfg)?;
        detach_links(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        session.dp.maps.remove_endpoint(&ep.key)?;
        repaired.push("endpoint re-keyed".into());
    } else if cfg != ep.cfg {
        session.dp.maps.write_endpoint(kernel.key, &cfg)?;
    }
    crate::sys::private_dir::create_subdir(&dir).map_err(io::Error::other)?;
    if !has_link_pin(iface, "ingress") {
        in_iface_netns(iface, || -> Result<(), LoaderError> {
            match opts.ingress_hook {
                IngressHook::Auto if kernel.physical => attach_xdp(iface, XdpMode::Driver, &dir)
                    .or_else(|_| attach_tc(iface, TcAttachType::Ingress, &dir)),
                IngressHook::Auto | IngressHook::Tc => {
                    attach_tc(iface, TcAttachType::Ingress, &dir)
                }
                IngressHook::Xdp => attach_xdp(iface, XdpMode::Driver, &dir),
                IngressHook::XdpGeneric => attach_xdp(iface, XdpMode::Skb, &dir),
            }
        })??;
        repaired.push("ingress hook linked".into());
    }
    if !has_link_pin(iface, "egress") {
        in_iface_netns(iface, || attach_tc(iface, TcAttachType::Egress, &dir))??;
        repaired.push("egress hook linked".into());
    }
    Ok(repaired)
}

/// The data plane's control maps with `iface`'s endpoint and policy
/// selected (for tests and tools that install by hand).
pub fn policy_maps_of(
    iface: &IfaceId,
) -> Result<crate::kernel::policy_maps::PolicyMaps, LoaderError> {
    let (dp, ep) = endpoint(iface)?;
    let mut maps = dp.maps;
    maps.select(ep.cfg.policy, Some(ep.key));
    Ok(maps)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn an_io_error_names_its_path_and_says_its_cause_once() {
        let e = anyhow::Error::from(LoaderError::Io {
            what: "creating /sys/fs/bpf/sg/host/eth0".into(),
            source: io::Error::from_raw_os_error(libc::EROFS),
        })
        .context("attaching eth0");
        let text = format!("{e:#}");
        assert!(text.contains("/sys/fs/bpf/sg/host/eth0"), "{text}");
        assert_eq!(text.matches("os error 30").count(), 1, "{text}");
        let e = anyhow::Error::from(PolicyMapError::Cpus(io::Error::from_raw_os_error(
            libc::ENOENT,
        )));
        assert_eq!(format!("{e:#}").matches("os error 2").count(), 1, "{e:#}");
        let e = anyhow::Error::from(LoaderError::DataPlane(DataPlaneError::Pin {
            path: "/sys/fs/bpf/sg/maps/SG_X".into(),
            source: aya::pin::PinError::SyscallError(aya::sys::SyscallError {
                call: "BPF_OBJ_PIN",
                io_error: io::Error::from_raw_os_error(libc::EEXIST),
            }),
        }));
        let text = format!("{e:#}");
        assert!(text.contains("/sys/fs/bpf/sg/maps/SG_X"), "{text}");
        assert!(text.contains("is bpffs mounted"), "{text}");
        assert_eq!(text.matches("os error 17").count(), 1, "{text}");
        assert_eq!(text.matches("BPF_OBJ_PIN").count(), 1, "{text}");
    }
}

#[cfg(test)]
mod choice_tests {
    use super::*;

    fn names_round_trip<T: Choice + PartialEq + std::fmt::Debug + Default>() {
        for &v in T::ALL {
            assert_eq!(T::from_name(v.name()), Some(v));
        }
        assert!(T::ALL.contains(&T::default()));
        assert_eq!(T::from_name("no-such-name"), None);
    }

    /// The CLI's flags are built from these lists: each value once, by its own name.
    #[test]
    fn every_choice_round_trips_by_name() {
        names_round_trip::<IngressHook>();
        names_round_trip::<BpfLog>();
        names_round_trip::<Side>();
    }
}
