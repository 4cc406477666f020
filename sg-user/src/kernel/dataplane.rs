//! One data plane per host: the programs, loaded and verified once, and the
//! host-wide maps, pinned under [`crate::kernel::pins::PROGS_DIR`] and
//! [`crate::kernel::pins::MAPS_DIR`].
//!
//! # Design
//!
//! Every attached interface runs the same three programs (`sg_xdp_ingress` or
//! `sg_tc_ingress`, and `sg_tc_egress`). A packet finds its interface — its
//! *endpoint* — in `SG_ENDPOINTS`, a hash keyed by (namespace cookie,
//! ifindex) of the device it is on; the value ([`IfaceConfig`]) carries the
//! endpoint id, side, policy id, idle timeouts, flow-log rate, mode and
//! connection limit. So:
//!
//! - the verifier runs three times per host, not twice per interface;
//! - an interface costs one endpoint entry and two link pins (its counters
//!   are a row of a preallocated array, its connections live in the
//!   host-wide tables keyed by endpoint id);
//! - interfaces with the same compiled rules share one policy (keys start
//!   with the policy id, then the generation; the policy's generation is
//!   its atomic switch); moving an interface to another policy is one
//!   update of its endpoint.
//!
//! The namespace cookie is the device's (`dev->nd_net.net->net_cookie`, read
//! with `bpf_probe_read_kernel` at offsets taken from the kernel's BTF,
//! [`crate::kernel::offsets`]): `bpf_get_netns_cookie` is refused to XDP
//! programs by this kernel's verifier, and on tc it answers with the
//! *socket's* namespace — the initial one for every received packet. User
//! space gets the same value from `SO_NETNS_COOKIE` inside the namespace.
//!
//! The endpoint is written before the links are attached and removed after
//! they are detached (synchronously, `BPF_LINK_DETACH`); a packet on an
//! interface the table does not know (a leftover link, an interface moved to
//! another namespace) is dropped as `no_policy` (fail closed) and counted in
//! row 0.
//!
//! The alternative — a per-interface preamble program with the settings as
//! read-only globals, tail-calling shared programs (Calico's design) — loads
//! and verifies one program per interface, so the number of programs would
//! grow with interfaces; it was not chosen.
//!
//! Under `BPF_PROG_TEST_RUN` the kernel runs XDP and tc programs on the
//! loopback device of the caller's namespace: the endpoint key is (cookie of
//! that namespace, ifindex 1), which [`crate::harness::testrun`] registers.
//!
//! Changes to the data plane (loading it, adding and removing endpoints) are
//! serialised by a lock file ([`DATAPLANE_LOCK`]) held by [`Session`]; readers
//! (status, metrics) need no lock.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData, MapError, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use aya_obj::programs::XdpAttachType;
use sg_common::{
    COUNTER_SLOTS, Counter, Direction, IfaceConfig, Reason,
    endpoint::{CT_COUNT_KERNEL, CT_COUNT_USER, EndpointKey, MAX_ENDPOINTS, ct_count_index},
    endpoint_counter_index, names,
};
use thiserror::Error;

use crate::{
    kernel::BoxError,
    kernel::pins::{self, IfaceId, NsIdent},
    kernel::policy_maps::{PolicyMapError, PolicyMaps},
    model::Choice,
};

/// The compiled kernel programs, embedded at build time.
pub static SG_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg"));

/// Kernel-side log level (aya-log). Statements above it are removed by the
/// verifier as dead code, so `off` costs nothing on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BpfLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Choice for BpfLog {
    const ALL: &'static [BpfLog] = &[
        BpfLog::Off,
        BpfLog::Error,
        BpfLog::Warn,
        BpfLog::Info,
        BpfLog::Debug,
        BpfLog::Trace,
    ];

    fn name(self) -> &'static str {
        match self {
            BpfLog::Off => "off",
            BpfLog::Error => "error",
            BpfLog::Warn => "warn",
            BpfLog::Info => "info",
            BpfLog::Debug => "debug",
            BpfLog::Trace => "trace",
        }
    }
}

/// Maps of the data plane beside the control maps: counters, connection
/// and fragment tables, events.
pub const STATE_MAPS: [&str; 9] = [
    names::MAP_COUNTERS,
    names::MAP_CT_V4,
    names::MAP_CT_V6,
    names::MAP_CT_COUNT,
    names::MAP_CT_RECLAIM,
    names::MAP_FRAGS,
    names::MAP_EVENTS,
    names::MAP_EVENTS_LOST,
    names::MAP_EVENTS_RATE,
];

/// Every interface attached on this machine, in any namespace: the
/// endpoints of the host's data plane (see [`crate::kernel::dataplane`]) and
/// attachments left in the legacy layout (after checking that [`pins::ROOT`] can
/// be trusted: see [`crate::sys::private_dir`]).
pub fn attached_ifaces() -> io::Result<Vec<IfaceId>> {
    crate::sys::private_dir::check(Path::new(pins::ROOT)).map_err(io::Error::other)?;
    let mut found: Vec<IfaceId> = match DataPlane::open() {
        Ok(Some(dp)) => dp
            .endpoints()
            .map_err(io::Error::other)?
            .into_iter()
            .map(|e| e.id)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(io::Error::other(e)),
    };
    for (id, _) in pins::legacy_attachments()? {
        if !found.contains(&id) {
            found.push(id);
        }
    }
    found.sort();
    Ok(found)
}

/// Serialises changes to the data plane between processes and threads: an
/// `flock` on the data plane's own bpffs directory. Not a file under
/// `/run/sgctl`: a sidecar container has a private `/run` but shares
/// `/sys/fs/bpf` with the host, and the endpoint ids it hands out must not
/// collide with the host's or another sidecar's. (bpffs holds no regular
/// files, but `flock` works on any inode, directories included.)
pub const DATAPLANE_LOCK: &str = pins::ROOT;

/// The programs every interface runs, pinned under [`pins::PROGS_DIR`].
pub const PROGRAMS: [&str; 3] = [
    names::PROG_XDP_INGRESS,
    names::PROG_TC_INGRESS,
    names::PROG_TC_EGRESS,
];

#[derive(Debug, Error)]
pub enum DataPlaneError {
    #[error(
        "loading the eBPF programs failed (hint: are you root, and does the kernel have BPF and BTF (/sys/kernel/btf/vmlinux)?)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program `{name}` failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "pinning under {path} failed (is bpffs mounted at /sys/fs/bpf? `cargo xtask setup` mounts it)"
    )]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("reading the data plane's map {path}")]
    Pinned {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Policy(#[from] PolicyMapError),
    #[error(
        "all {max} endpoints of the data plane are in use; detach interfaces that are gone (`sgctl status` lists them)",
        max = MAX_ENDPOINTS - 1
    )]
    Full,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Settings fixed when the data plane is first loaded on a host.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Capacity of each host-wide connection table (IPv4 and IPv6).
    pub conntrack_entries: u32,
    pub bpf_log: BpfLog,
}

/// An attached interface as the data plane knows it.
#[derive(Clone, Debug)]
pub struct EndpointInfo {
    pub id: IfaceId,
    pub key: EndpointKey,
    pub cfg: IfaceConfig,
}

/// The host's data plane, opened from its pins.
pub struct DataPlane {
    pub maps: PolicyMaps,
    counters: PerCpuArray<MapData, Counter>,
    ct_count: Array<MapData, u64>,
    events_lost: PerCpuArray<MapData, u64>,
}

fn map_path(name: &str) -> PathBuf {
    Path::new(pins::MAPS_DIR).join(name)
}

fn pinned_error(path: &Path, source: impl Into<BoxError>) -> DataPlaneError {
    DataPlaneError::Pinned {
        path: path.display().to_string(),
        source: source.into(),
    }
}

fn open_map<T>(name: &str, kind: fn(MapData) -> Map) -> Result<T, DataPlaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = map_path(name);
    MapData::from_pin(&path)
        .map(kind)
        .and_then(T::try_from)
        .map_err(|e| pinned_error(&path, e))
}

/// Marks which object the pinned data plane was loaded from: an empty
/// directory `object-<hash>` under [`pins::PROGS_DIR`].
fn object_marker() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SG_OBJECT.hash(&mut h);
    Path::new(pins::PROGS_DIR).join(format!("object-{:016x}", h.finish()))
}

/// True when the programs of this host's data plane are pinned.
pub fn is_loaded() -> bool {
    PROGRAMS
        .iter()
        .all(|p| Path::new(pins::PROGS_DIR).join(p).exists())
}

impl DataPlane {
    /// Opens the host's data plane; `None` when it was never loaded.
    pub fn open() -> Result<Option<DataPlane>, DataPlaneError> {
        if !is_loaded() {
            return Ok(None);
        }
        Ok(Some(DataPlane {
            maps: PolicyMaps::from_pins(Path::new(pins::MAPS_DIR))?,
            counters: open_map(names::MAP_COUNTERS, Map::PerCpuArray)?,
            ct_count: open_map(names::MAP_CT_COUNT, Map::Array)?,
            events_lost: open_map(names::MAP_EVENTS_LOST, Map::PerCpuArray)?,
        }))
    }

    /// Every endpoint, with the interface it stands for.
    pub fn endpoints(&self) -> Result<Vec<EndpointInfo>, DataPlaneError> {
        let mut lookups = crate::kernel::pins::NsLookups::default();
        let mut out: Vec<EndpointInfo> = self
            .maps
            .endpoints()?
            .into_iter()
            .map(|(key, cfg)| EndpointInfo {
                id: IfaceId::found_with(
                    &c_str(&cfg.ifname),
                    NsIdent {
                        dev: cfg.netns_dev,
                        ino: cfg.netns_ino,
                    },
                    Some(c_str(&cfg.netns_name))
                        .filter(|n| !n.is_empty())
                        .as_deref(),
                    &mut lookups,
                ),
                key,
                cfg,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The endpoint of `id`, if it is attached: by namespace identity, or —
    /// for a named namespace that no longer exists — by the name it was
    /// attached under. The id returned is the attachment's own (named as
    /// when attached, which is where its pins are): a sidecar attaches its
    /// namespace unnamed even when the host knows a name for it.
    pub fn endpoint_of(&self, id: &IfaceId) -> Result<Option<EndpointInfo>, DataPlaneError> {
        let name = id.iface.as_bytes();
        Ok(self
            .maps
            .endpoints()?
            .into_iter()
            .find(|(_, cfg)| {
                let recorded = NsIdent {
                    dev: cfg.netns_dev,
                    ino: cfg.netns_ino,
                };
                c_str(&cfg.ifname).as_bytes() == name
                    && if id.ns == NsIdent::MISSING {
                        // A deleted named namespace, by the name it had
                        // (not one that now names another namespace: then
                        // `id.ns` is that one's identity).
                        id.netns.is_some()
                            && id.netns.as_deref() == Some(c_str(&cfg.netns_name).as_str())
                    } else {
                        recorded == id.ns
                    }
            })
            .map(|(key, cfg)| {
                let ns = NsIdent {
                    dev: cfg.netns_dev,
                    ino: cfg.netns_ino,
                };
                let recorded_name = c_str(&cfg.netns_name);
                EndpointInfo {
                    id: IfaceId {
                        iface: id.iface.clone(),
                        netns: if recorded_name.is_empty() {
                            // Unnamed when attached: the caller's own
                            // namespace is shown unnamed anyway.
                            None
                        } else {
                            Some(recorded_name)
                        },
                        ns,
                    },
                    key,
                    cfg,
                }
            }))
    }

    /// Pins again the maps whose pins were removed out of band, from the
    /// programs that still use them; returns their names.
    pub fn repin_maps(names: &[&str]) -> Result<Vec<String>, DataPlaneError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !map_path(n).exists())
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut repinned = Vec::new();
        let info = aya::programs::ProgramInfo::from_pin(
            Path::new(pins::PROGS_DIR).join(names::PROG_TC_EGRESS),
        )
        .map_err(|e| pinned_error(Path::new(pins::PROGS_DIR), e))?;
        for id in info
            .map_ids()
            .map_err(|e| pinned_error(Path::new(pins::PROGS_DIR), e))?
            .unwrap_or_default()
        {
            let Ok(map) = MapData::from_id(id) else {
                continue;
            };
            let Ok(info) = map.info() else { continue };
            let Ok(name) = info.name_as_str().map(str::to_string).ok_or(()) else {
                continue;
            };
            // Kernel map names are cut at 15 bytes; ours are shorter.
            if let Some(full) = missing.iter().find(|m| **m == name) {
                map.pin(map_path(full))
                    .map_err(|e| pinned_error(&map_path(full), e))?;
                repinned.push(full.to_string());
            }
        }
        Ok(repinned)
    }

    /// Counters (summed over CPUs) of endpoint `endpoint` (0: packets on
    /// interfaces the table does not know).
    pub fn counters(&self, endpoint: u32) -> Result<CounterTable, DataPlaneError> {
        let mut table = CounterTable::new();
        for direction in Direction::ALL {
            for reason in Reason::ALL {
                let per_cpu = self
                    .counters
                    .get(&endpoint_counter_index(endpoint, direction, reason), 0)
                    .map_err(|e| pinned_error(&map_path(names::MAP_COUNTERS), e))?;
                table.insert((direction, reason), per_cpu.iter().sum());
            }
        }
        Ok(table)
    }

    /// Clears an endpoint's counters and connection counts (a new endpoint
    /// may reuse the id of one that is gone).
    pub fn reset_endpoint_row(&mut self, endpoint: u32) -> Result<(), DataPlaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for slot in 0..COUNTER_SLOTS {
            let zeros = aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus])?;
            self.counters
                .set(endpoint * COUNTER_SLOTS + slot, zeros, 0)
                .map_err(|e| pinned_error(&map_path(names::MAP_COUNTERS), e))?;
        }
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
        self.events_lost
            .set(endpoint, zeros, 0)
            .map_err(|e| pinned_error(&map_path(names::MAP_EVENTS_LOST), e))?;
        for slot in [CT_COUNT_KERNEL, CT_COUNT_USER] {
            self.ct_count
                .set(ct_count_index(endpoint, slot), 0, 0)
                .map_err(|e| pinned_error(&map_path(names::MAP_CT_COUNT), e))?;
        }
        Ok(())
    }

    /// Flow-log events endpoint `endpoint` could not report.
    pub fn events_lost(&self, endpoint: u32) -> Result<u64, DataPlaneError> {
        let values = self
            .events_lost
            .get(&endpoint, 0)
            .map_err(|e| pinned_error(&map_path(names::MAP_EVENTS_LOST), e))?;
        Ok(values.iter().sum())
    }
}

/// Summed (over CPUs) counters of one endpoint.
pub type CounterTable = BTreeMap<(Direction, Reason), Counter>;

/// A NUL-padded name as a string.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `s` NUL-padded into `N` bytes; empty when it does not fit with its NUL.
pub fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0; N];
    if s.len() < N {
        out[..s.len()].copy_from_slice(s.as_bytes());
    }
    out
}

/// The cookie `bpf_get_netns_cookie` returns for the calling thread's
/// namespace (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Takes [`DATAPLANE_LOCK`], waiting for it. After locking, checks that the
/// directory locked is still the one at the path (a `detach --all` of
/// another process may have removed and recreated it) and starts over if
/// not, so a removal never lets two holders in.
fn lock_data_plane() -> Result<std::fs::File, DataPlaneError> {
    use std::os::unix::fs::MetadataExt as _;
    loop {
        let dir = std::fs::File::open(DATAPLANE_LOCK)?;
        // SAFETY: valid fd; flock(2) has no memory preconditions.
        while unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err.into());
            }
        }
        let held = dir.metadata()?;
        match std::fs::metadata(DATAPLANE_LOCK) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(dir),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                pins::ensure_root()?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A change session: holds [`DATAPLANE_LOCK`], the data plane (loaded on
/// first use) and the endpoint ids in use.
pub struct Session {
    pub dp: DataPlane,
    /// Map pins that were missing (removed out of band) and were pinned
    /// again from the programs when the session opened.
    pub repinned: Vec<String>,
    used: BTreeSet<u32>,
    _lock: std::fs::File,
}

impl Session {
    /// Takes the lock (waiting for it) and opens the data plane, loading and
    /// pinning it first when this host has none.
    pub fn open_or_load(opts: &LoadOptions) -> Result<Session, DataPlaneError> {
        pins::ensure_root()?;
        let lock = lock_data_plane()?;
        let stale = is_loaded() && !object_marker().exists();
        if stale {
            // No link uses its programs (its maps may not even open with
            // this version's layouts).
            let empty = pins::linked_ifaces().is_ok_and(|l| l.is_empty());
            if !empty {
                return Err(io::Error::other(format!(
                    "the data plane pinned under {} was loaded by another version of sgctl and \
                     still has interfaces attached; detach them with that version (`sgctl detach \
                     --all`), then apply again",
                    pins::ROOT
                ))
                .into());
            }
            // Nothing uses it: load this version's instead.
            let _ = std::fs::remove_dir_all(pins::PROGS_DIR);
            let _ = std::fs::remove_dir_all(pins::MAPS_DIR);
        }
        let repinned = if is_loaded() {
            let mut all: Vec<&str> = crate::kernel::policy_maps::POLICY_MAPS.to_vec();
            all.extend(STATE_MAPS);
            DataPlane::repin_maps(&all)?
        } else {
            Vec::new()
        };
        let mut dp = match DataPlane::open()? {
            Some(dp) => dp,
            None => {
                load(opts)?;
                DataPlane::open()?.ok_or_else(|| {
                    io::Error::other("the data plane vanished right after it was loaded")
                })?
            }
        };
        dp.maps.cache_endpoints()?;
        let used = dp
            .maps
            .endpoints()?
            .into_iter()
            .map(|(_, cfg)| cfg.endpoint)
            .collect();
        Ok(Session {
            dp,
            repinned,
            used,
            _lock: lock,
        })
    }

    /// A free endpoint id, reserved for this session.
    pub fn allocate_endpoint(&mut self) -> Result<u32, DataPlaneError> {
        let id = (1..MAX_ENDPOINTS)
            .find(|i| !self.used.contains(i))
            .ok_or(DataPlaneError::Full)?;
        self.used.insert(id);
        Ok(id)
    }

    /// Gives an endpoint id back.
    pub fn release_endpoint(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// Loads the object, verifies the programs once and pins programs and maps.
/// Whatever a crashed earlier load left is removed first.
fn load(opts: &LoadOptions) -> Result<(), DataPlaneError> {
    let _ = std::fs::remove_dir_all(pins::PROGS_DIR);
    let _ = std::fs::remove_dir_all(pins::MAPS_DIR);
    let log_level = opts.bpf_log as u8;
    let offsets = crate::kernel::offsets::offsets()?;
    let mut loader = EbpfLoader::new();
    loader
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries(names::MAP_CT_V4, opts.conntrack_entries)
        .map_max_entries(names::MAP_CT_V6, opts.conntrack_entries);
    for (name, off) in &offsets {
        loader.override_global(name, off, true);
    }
    let mut ebpf = loader
        .load(SG_OBJECT)
        .map_err(|e| DataPlaneError::Load(Box::new(e)))?;
    for dir in [pins::MAPS_DIR, pins::PROGS_DIR] {
        crate::sys::private_dir::create_subdir(Path::new(dir)).map_err(io::Error::other)?;
    }
    std::fs::create_dir(object_marker())?;
    let result = (|| {
        // Maps first, programs last: pinned programs mean a complete data plane.
        let names: Vec<String> = ebpf
            .maps()
            .map(|(name, _)| name.to_string())
            .filter(|n| n.starts_with("SG_"))
            .collect();
        for name in names {
            let path = map_path(&name);
            let map = ebpf.map(&name).expect("listed above");
            map.pin(&path).map_err(|source| DataPlaneError::Pin {
                path: path.display().to_string(),
                source,
            })?;
        }
        for name in PROGRAMS {
            let prog = ebpf.program_mut(name).expect("program is in the object");
            let path = Path::new(pins::PROGS_DIR).join(name);
            let program_error = |source| DataPlaneError::Program {
                name,
                source: Box::new(source),
            };
            let pin_error = |source: aya::pin::PinError| DataPlaneError::Pin {
                path: path.display().to_string(),
                source,
            };
            if name == names::PROG_XDP_INGRESS {
                let p: &mut Xdp = prog.try_into().map_err(program_error)?;
                p.load().map_err(program_error)?;
                p.pin(&path).map_err(pin_error)?;
            } else {
                let p: &mut SchedClassifier = prog.try_into().map_err(program_error)?;
                p.load().map_err(program_error)?;
                p.pin(&path).map_err(pin_error)?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(pins::PROGS_DIR);
        let _ = std::fs::remove_dir_all(pins::MAPS_DIR);
    }
    result
}

/// The pinned XDP ingress program.
pub fn xdp_program() -> Result<Xdp, DataPlaneError> {
    Xdp::from_pin(
        Path::new(pins::PROGS_DIR).join(names::PROG_XDP_INGRESS),
        XdpAttachType::Interface,
    )
    .map_err(|source| DataPlaneError::Program {
        name: names::PROG_XDP_INGRESS,
        source: Box::new(source),
    })
}

/// A pinned tc program (`names::PROG_TC_INGRESS` or `names::PROG_TC_EGRESS`).
pub fn tc_program(name: &'static str) -> Result<SchedClassifier, DataPlaneError> {
    SchedClassifier::from_pin(Path::new(pins::PROGS_DIR).join(name)).map_err(|source| {
        DataPlaneError::Program {
            name,
            source: Box::new(source),
        }
    })
}

/// Kernel ids of the data plane's pinned programs (for counting loaded programs).
pub fn program_ids() -> Vec<u32> {
    PROGRAMS
        .iter()
        .filter_map(|name| {
            aya::programs::ProgramInfo::from_pin(Path::new(pins::PROGS_DIR).join(name))
                .ok()
                .map(|info| info.id())
        })
        .collect()
}
