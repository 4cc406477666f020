//! Loads the kernel programs, attaches them to an interface, pins links and
//! maps under [`crate::pins::ROOT`], and detaches them again.
//!
//! Every interface gets its own instance of the programs and maps: counters,
//! (later) policy and connection table are per interface by construction,
//! and one interface's update never touches another's.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use sg_common::{Counter, Direction, Reason, counter_index, names};
use thiserror::Error;

pub use crate::model::Side;
use crate::{
    compile::CompiledPolicy,
    ifinfo,
    netns::{NetnsError, in_netns},
    pins::{self, IfaceId},
    policy_maps::{PolicyMapError, PolicyMaps},
};

/// The compiled kernel programs, embedded at build time.
pub static SG_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg"));

/// Requested ingress hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// Native XDP on physical NICs, TC on virtual devices.
    #[default]
    Auto,
    /// Native (driver) XDP.
    Xdp,
    /// Generic (skb) XDP: works everywhere, slower than TC on veth.
    XdpGeneric,
    /// TC (tcx) ingress.
    Tc,
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

    fn from_name(name: &str) -> Option<AttachedHook> {
        [
            AttachedHook::Xdp,
            AttachedHook::XdpGeneric,
            AttachedHook::Tc,
        ]
        .into_iter()
        .find(|h| h.name() == name)
    }
}

/// Kernel-side log level (aya-log). Statements above it are removed by the
/// verifier as dead code, so `off` costs nothing on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl BpfLog {
    /// The value of aya-log's `AYA_LOG_LEVEL` global (0 disables everything).
    fn level(self) -> u8 {
        self as u8
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    pub side: Side,
    pub ingress_hook: IngressHook,
    pub bpf_log: BpfLog,
    /// Capacity of each connection table (IPv4 and IPv6).
    pub conntrack_entries: u32,
}

/// Default capacity of each connection table.
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 65536;

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            side: Side::Host,
            ingress_hook: IngressHook::Auto,
            bpf_log: BpfLog::Off,
            conntrack_entries: DEFAULT_CONNTRACK_ENTRIES,
        }
    }
}

/// What an attachment enforces from its first packet.
pub enum InitialPolicy<'a> {
    /// Count everything, pass everything.
    Observe,
    /// Enforce this compiled policy (generation 1) with these idle timeouts (s).
    Enforce {
        policy: &'a CompiledPolicy,
        timeouts_s: [u64; sg_common::conntrack::TIMEOUT_SLOTS],
    },
}

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("{iface} is already attached; run `{}` first, or `sgctl status` to see it", .iface.detach_command())]
    AlreadyAttached { iface: IfaceId },
    #[error("{iface} is not attached; `sgctl status` lists attached interfaces")]
    NotAttached { iface: IfaceId },
    #[error(
        "loading the eBPF programs failed (are you root, and does the kernel have BPF and BTF: /sys/kernel/btf/vmlinux?)"
    )]
    Load(#[source] Box<aya::EbpfError>),
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
    #[error(
        "pinning under {path} failed: {detail}; is bpffs mounted at /sys/fs/bpf (`cargo xtask setup` mounts it)?"
    )]
    Pin { path: String, detail: String },
    #[error("reading pinned state under {path}: {detail}")]
    Pinned { path: String, detail: String },
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

/// Loads a fresh instance of the programs, writes its initial policy, attaches
/// it to `iface` (ingress and egress) and pins links and maps. The policy is
/// in place before the first packet; on any failure nothing stays attached.
pub fn attach(
    iface: &IfaceId,
    opts: &AttachOptions,
    initial: InitialPolicy<'_>,
) -> Result<Attached, LoaderError> {
    pins::ensure_root().map_err(|source| LoaderError::Io {
        what: format!("preparing {}", pins::ROOT),
        source,
    })?;
    let dir = iface.dir();
    if dir.exists() {
        return Err(LoaderError::AlreadyAttached {
            iface: iface.clone(),
        });
    }
    let side_peer: u8 = (opts.side == Side::Peer).into();
    let log_level = opts.bpf_log.level();
    let mut ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_SIDE_PEER, &side_peer, true)
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries(names::MAP_CT_V4, opts.conntrack_entries)
        .map_max_entries(names::MAP_CT_V6, opts.conntrack_entries)
        .load(SG_OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;
    // Which ingress hook: decided before loading, so only the programs that
    // will be attached go through the verifier (it dominates attach time).
    let physical = in_netns(iface.netns.as_deref(), || ifinfo::driver_info(&iface.iface))?
        .map_err(|source| LoaderError::Io {
            what: format!("{iface}: reading its driver information"),
            source,
        })?
        .is_some_and(|info| info.is_physical());
    let ingress = match (opts.ingress_hook, physical) {
        (IngressHook::Auto, true) | (IngressHook::Xdp, _) | (IngressHook::XdpGeneric, _) => {
            names::PROG_XDP_INGRESS
        }
        (IngressHook::Auto, false) | (IngressHook::Tc, _) => names::PROG_TC_INGRESS,
    };
    crate::private_dir::create_subdir(&dir).map_err(|e| LoaderError::Io {
        what: format!("creating {}", dir.display()),
        source: io::Error::other(e),
    })?;
    // Programs first (they keep references to every map), then the maps
    // (filled and pinned), then the attachment: the policy is in place
    // before the first packet arrives. The policy maps stay open until the
    // end, in case a fallback must load another program.
    let result = load_programs(&mut ebpf, &[ingress, names::PROG_TC_EGRESS])
        .and_then(|()| prepare_maps(&mut ebpf, &dir, initial))
        .and_then(|maps| {
            let hook = in_netns(iface.netns.as_deref(), || {
                attach_here(&mut ebpf, iface, opts, physical, &dir)
            })
            .map_err(LoaderError::from)
            .and_then(|r| r);
            drop(maps);
            hook
        });
    match result {
        Ok(ingress_hook) => Ok(Attached {
            iface: iface.clone(),
            ingress_hook,
            side: opts.side,
        }),
        Err(e) => {
            // Removing the pins drops the links: nothing half-attached remains.
            let _ = pins::remove_iface_dir(iface);
            Err(e)
        }
    }
}

/// The attach steps proper; runs inside the interface's namespace.
fn attach_here(
    ebpf: &mut Ebpf,
    iface: &IfaceId,
    opts: &AttachOptions,
    physical: bool,
    dir: &Path,
) -> Result<AttachedHook, LoaderError> {
    let hook = match opts.ingress_hook {
        IngressHook::Auto if physical => match attach_xdp(ebpf, iface, XdpMode::Driver, dir) {
            Ok(()) => AttachedHook::Xdp,
            Err(e) => {
                let e = anyhow::Error::from(e);
                log::warn!("{iface}: native XDP failed ({e:#}); using TC ingress instead");
                load_programs(ebpf, &[names::PROG_TC_INGRESS])?;
                attach_tc(ebpf, iface, TcAttachType::Ingress, dir)?;
                AttachedHook::Tc
            }
        },
        IngressHook::Auto | IngressHook::Tc => {
            attach_tc(ebpf, iface, TcAttachType::Ingress, dir)?;
            AttachedHook::Tc
        }
        IngressHook::Xdp => {
            attach_xdp(ebpf, iface, XdpMode::Driver, dir)?;
            AttachedHook::Xdp
        }
        IngressHook::XdpGeneric => {
            attach_xdp(ebpf, iface, XdpMode::Skb, dir)?;
            AttachedHook::XdpGeneric
        }
    };
    attach_tc(ebpf, iface, TcAttachType::Egress, dir)?;
    Ok(hook)
}

/// Maps pinned beside the policy maps: counters, connection and fragment tables.
pub const STATE_MAPS: [&str; 7] = [
    names::MAP_COUNTERS,
    names::MAP_CT_V4,
    names::MAP_CT_V6,
    names::MAP_CT_RECLAIM,
    names::MAP_FRAGS,
    names::MAP_EVENTS,
    names::MAP_EVENTS_LOST,
];

/// Loads (verifies) the named programs without attaching them.
fn load_programs(ebpf: &mut Ebpf, programs: &[&'static str]) -> Result<(), LoaderError> {
    for &name in programs {
        let loaded = if name == names::PROG_XDP_INGRESS {
            program::<Xdp>(ebpf, name)?.load()
        } else {
            program::<SchedClassifier>(ebpf, name)?.load()
        };
        loaded.map_err(|source| LoaderError::Program {
            name,
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// Writes the initial policy and pins every map, before anything attaches.
fn prepare_maps(
    ebpf: &mut Ebpf,
    dir: &Path,
    initial: InitialPolicy<'_>,
) -> Result<PolicyMaps, LoaderError> {
    for name in STATE_MAPS {
        let map = ebpf
            .map(name)
            .expect("map is in the object (checked by tests)");
        let path = dir.join(name);
        map.pin(&path).map_err(|e| LoaderError::Pin {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    let mut policy = PolicyMaps::take_from(ebpf, Some(dir))?;
    match initial {
        InitialPolicy::Observe => policy.observe()?,
        InitialPolicy::Enforce {
            policy: compiled,
            timeouts_s,
        } => policy.install(compiled, timeouts_s)?,
    }
    Ok(policy)
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), LoaderError> {
    link.pin(path).map_err(|e| LoaderError::Pin {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(())
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &IfaceId,
    mode: XdpMode,
    dir: &Path,
) -> Result<(), LoaderError> {
    let name = names::PROG_XDP_INGRESS;
    let prog: &mut Xdp = program(ebpf, name)?;
    let attach_error = |source| LoaderError::Attach {
        source: Box::new(source),
        what: format!("XDP ({mode:?} mode) attach"),
        iface: iface.clone(),
        hint: " (the driver may not support native XDP; try `--ingress-hook tc` or `--ingress-hook xdp-generic`)",
    };
    let link_id = prog.attach(&iface.iface, mode).map_err(attach_error)?;
    let link = prog.take_link(link_id).map_err(attach_error)?;
    let link: FdLink = link.try_into().map_err(|e: LinkError| LoaderError::Pin {
        path: dir.display().to_string(),
        detail: format!("XDP attached through netlink, which cannot be pinned ({e})"),
    })?;
    let hook = if mode == XdpMode::Skb {
        AttachedHook::XdpGeneric
    } else {
        AttachedHook::Xdp
    };
    pin_link(link, &dir.join(link_pin_name("ingress", hook)))
}

fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &IfaceId,
    attach_type: TcAttachType,
    dir: &Path,
) -> Result<(), LoaderError> {
    let (name, direction) = match attach_type {
        TcAttachType::Egress => (names::PROG_TC_EGRESS, "egress"),
        _ => (names::PROG_TC_INGRESS, "ingress"),
    };
    let prog: &mut SchedClassifier = program(ebpf, name)?;
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
    let link: FdLink = link.try_into().map_err(|e: LinkError| LoaderError::Pin {
        path: dir.display().to_string(),
        detail: format!("TC attached through netlink (no tcx), which cannot be pinned ({e})"),
    })?;
    pin_link(link, &dir.join(link_pin_name(direction, AttachedHook::Tc)))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("program {name} is in the object (checked by tests)"));
    prog.try_into().map_err(|source| LoaderError::Program {
        name,
        source: Box::new(source),
    })
}

/// Detaches `iface`: removing its pins releases the links (the programs leave
/// the interface) and the maps.
pub fn detach(iface: &IfaceId) -> Result<(), LoaderError> {
    match pins::remove_iface_dir(iface) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LoaderError::NotAttached {
            iface: iface.clone(),
        }),
        Err(source) => Err(LoaderError::Io {
            what: format!("removing {}", iface.dir().display()),
            source,
        }),
    }
}

/// Summed (over CPUs) counters of one attached interface.
pub type CounterTable = BTreeMap<(Direction, Reason), Counter>;

/// Opens the pinned map `name` of an attached interface as map type `T`.
fn open_pinned<T>(
    iface: &IfaceId,
    name: &str,
    kind: fn(MapData) -> Map,
) -> Result<(T, PathBuf), LoaderError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = iface.dir().join(name);
    let map = MapData::from_pin(&path)
        .map(kind)
        .and_then(T::try_from)
        .map_err(|e| pinned_error(&path, e))?;
    Ok((map, path))
}

fn pinned_error(path: &Path, detail: impl std::fmt::Display) -> LoaderError {
    LoaderError::Pinned {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads `SG_COUNTERS` of an attached interface from its pin.
pub fn read_counters(iface: &IfaceId) -> Result<CounterTable, LoaderError> {
    let (map, path): (PerCpuArray<MapData, Counter>, _) =
        open_pinned(iface, names::MAP_COUNTERS, Map::PerCpuArray)?;
    let mut table = CounterTable::new();
    for direction in Direction::ALL {
        for reason in Reason::ALL {
            let per_cpu = map
                .get(&counter_index(direction, reason), 0)
                .map_err(|e| pinned_error(&path, e))?;
            table.insert((direction, reason), per_cpu.iter().sum());
        }
    }
    Ok(table)
}

/// Pinned links of an attached interface: (pin name, hook, kernel program id).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinnedHook {
    pub direction: String,
    pub hook: AttachedHook,
    pub program_id: u32,
}

pub fn pinned_hooks(iface: &IfaceId) -> Result<Vec<PinnedHook>, LoaderError> {
    let dir = iface.dir();
    let mut hooks = Vec::new();
    let listing = |source| LoaderError::Io {
        what: format!("listing {}", dir.display()),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(pins::LINK_PREFIX) else {
            continue;
        };
        let Some((direction, hook)) = rest.split_once('-') else {
            continue;
        };
        let Some(hook) = AttachedHook::from_name(hook) else {
            continue;
        };
        let link: FdLink = PinnedLink::from_pin(entry.path())
            .map_err(|e| LoaderError::Pinned {
                path: entry.path().display().to_string(),
                detail: e.to_string(),
            })?
            .into();
        let info = link.info().map_err(|e| LoaderError::Pinned {
            path: entry.path().display().to_string(),
            detail: e.to_string(),
        })?;
        hooks.push(PinnedHook {
            direction: direction.to_string(),
            hook,
            program_id: info.program_id(),
        });
    }
    hooks.sort_by(|a, b| a.direction.cmp(&b.direction));
    Ok(hooks)
}

/// Starts forwarding kernel-side aya-log records of `iface` to the `log` crate.
/// The records exist only if it was attached with `--bpf-log` above `off`.
pub fn kernel_logger(
    iface: &IfaceId,
) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, LoaderError> {
    let hooks = pinned_hooks(iface)?;
    let hook = hooks.first().ok_or_else(|| LoaderError::NotAttached {
        iface: iface.clone(),
    })?;
    aya_log::EbpfLogger::init_from_id(hook.program_id).map_err(|e| LoaderError::Pinned {
        path: iface.dir().display().to_string(),
        detail: format!("opening the kernel log ring buffer: {e}"),
    })
}

/// Per-rule hit counters (summed over CPUs) of an attached interface, by rule hash.
pub fn read_rule_hits(iface: &IfaceId) -> Result<BTreeMap<u32, Counter>, LoaderError> {
    let (map, path): (aya::maps::PerCpuHashMap<MapData, u32, Counter>, _) =
        open_pinned(iface, names::MAP_RULE_HITS, Map::PerCpuHashMap)?;
    let mut hits = BTreeMap::new();
    for item in map.iter() {
        let (rule, per_cpu) = item.map_err(|e| pinned_error(&path, e))?;
        hits.insert(rule, per_cpu.iter().sum());
    }
    Ok(hits)
}

/// Flow-log events the kernel could not report (rate limit, full buffer).
pub fn read_events_lost(iface: &IfaceId) -> Result<u64, LoaderError> {
    let (map, path): (PerCpuArray<MapData, u64>, _) =
        open_pinned(iface, names::MAP_EVENTS_LOST, Map::PerCpuArray)?;
    let values = map.get(&0, 0).map_err(|e| pinned_error(&path, e))?;
    Ok(values.iter().sum())
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
    }
}
