//! Where enforcement state lives in bpffs, so it outlives `sgctl` and a later
//! `sgctl` finds it. One data plane per host (see [`crate::kernel::dataplane`]):
//!
//! ```text
//! /sys/fs/bpf/sg/
//!     progs/sg_tc_ingress, sg_tc_egress, sg_xdp_ingress
//!                           the programs, loaded and verified once per host
//!     maps/SG_*             the host-wide maps (endpoints, policies, counters,
//!                           connection tables …), by their name in the object
//!     if/<dev>_<ino>/<iface>/
//!         link-ingress-<hook>   bpf_link of the ingress program (hook: xdp, xdp-generic, tc)
//!         link-egress-tc        bpf_link of the egress program
//! ```
//!
//! An interface is identified by its network namespace's identity — the
//! device and inode numbers of its nsfs file ([`NsIdent`]) — and its name,
//! never by "host" or by a namespace name: two containers' `eth0` are two
//! interfaces. Named namespaces (`/run/netns/NAME`) are shown by name, the
//! initial namespace as the host, others as `eth0@netns:INODE`. Removing a
//! link pin detaches it.
//!
//! The layout before one data plane per host (`sg/host/<iface>/`,
//! `sg/netns-<name>/<iface>/`, every interface with its own programs and
//! maps) is [`legacy_attachments`]; `sgctl apply` moves it to this one.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::sys::netns::NETNS_RUN_DIR;

pub const BPFFS: &str = "/sys/fs/bpf";
pub const ROOT: &str = "/sys/fs/bpf/sg";
/// The programs, pinned once per host.
pub const PROGS_DIR: &str = "/sys/fs/bpf/sg/progs";
/// The host-wide maps.
pub const MAPS_DIR: &str = "/sys/fs/bpf/sg/maps";
/// Per-interface link pins, by namespace identity.
pub const IFACES_DIR: &str = "/sys/fs/bpf/sg/if";
pub const LINK_PREFIX: &str = "link-";

/// A network namespace's identity: device and inode of its nsfs file (what
/// `stat /proc/PID/ns/net` or `ip netns identify` compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct NsIdent {
    pub dev: u64,
    pub ino: u64,
}

impl NsIdent {
    /// The identity of a namespace that could not be resolved (a named
    /// namespace that does not exist): matches no attachment.
    pub const MISSING: NsIdent = NsIdent { dev: 0, ino: 0 };

    /// The namespace the nsfs file (or bind mount) `path` refers to.
    pub fn of_path(path: &Path) -> io::Result<NsIdent> {
        let meta = std::fs::metadata(path)?;
        Ok(NsIdent {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<NsIdent> {
        NsIdent::of_path(Path::new("/proc/thread-self/ns/net"))
    }

    /// The initial namespace (of pid 1): the only one shown as the host.
    pub fn initial() -> Option<NsIdent> {
        NsIdent::of_path(Path::new("/proc/1/ns/net")).ok()
    }

    /// A named namespace (`/run/netns/NAME`).
    pub fn named(name: &str) -> io::Result<NsIdent> {
        NsIdent::of_path(&Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Directory name under [`IFACES_DIR`].
    pub fn dir_name(&self) -> String {
        format!("{}_{}", self.dev, self.ino)
    }

    #[cfg(test)]
    fn from_dir_name(name: &str) -> Option<NsIdent> {
        let (dev, ino) = name.split_once('_')?;
        Some(NsIdent {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
        })
    }

    /// The name under `/run/netns` that refers to this namespace, if any.
    pub fn find_name(&self) -> Option<String> {
        let entries = std::fs::read_dir(NETNS_RUN_DIR).ok()?;
        entries.flatten().find_map(|e| {
            (NsIdent::of_path(&e.path()).ok()? == *self)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
    }

    /// A path that enters this namespace: a `/run/netns` name or a process in it.
    pub fn find_path(&self) -> Option<PathBuf> {
        if let Some(name) = self.find_name() {
            return Some(Path::new(NETNS_RUN_DIR).join(name));
        }
        self.find_pid()
            .map(|pid| Path::new("/proc").join(pid.to_string()).join("ns/net"))
    }

    /// A process in this namespace, if one is visible from here.
    pub fn find_pid(&self) -> Option<u32> {
        let procs = std::fs::read_dir("/proc").ok()?;
        procs.flatten().find_map(|p| {
            let pid = p.file_name().to_str()?.parse::<u32>().ok()?;
            (NsIdent::of_path(&p.path().join("ns/net")).ok()? == *self).then_some(pid)
        })
    }
}

/// Namespace identities looked up once for a batch of [`IfaceId::found_with`]
/// calls (listing a thousand endpoints costs one look at each name, not
/// three `stat`s per endpoint).
#[derive(Default)]
pub struct NsLookups {
    here: Option<Vec<NsIdent>>,
    named: std::collections::HashMap<String, Option<NsIdent>>,
}

impl NsLookups {
    /// The caller's namespace and the initial one (shown unnamed).
    fn here(&mut self) -> &[NsIdent] {
        self.here.get_or_insert_with(|| {
            NsIdent::current()
                .ok()
                .into_iter()
                .chain(NsIdent::initial())
                .collect()
        })
    }

    /// What `/run/netns/NAME` is now (`None`: nothing).
    fn named(&mut self, name: &str) -> Option<NsIdent> {
        if let Some(ns) = self.named.get(name) {
            return *ns;
        }
        let ns = NsIdent::named(name).ok();
        self.named.insert(name.to_string(), ns);
        ns
    }
}

/// Identifies a protected interface: its name and the namespace it lives in
/// — a named namespace by its name (unique at any moment, and what a
/// deleted one is still called), any other by its identity.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IfaceId {
    pub iface: String,
    /// The namespace's name under `/run/netns`; none for the namespace `sgctl`
    /// runs in (or, from a listing, a namespace without a name).
    pub netns: Option<String>,
    /// The namespace's identity ([`NsIdent::MISSING`] when a named
    /// namespace does not exist).
    pub ns: NsIdent,
}

impl IfaceId {
    /// What equality, order and hashing compare.
    fn key(&self) -> (&str, Result<&str, NsIdent>) {
        (
            &self.iface,
            match &self.netns {
                Some(name) => Ok(name),
                None => Err(self.ns),
            },
        )
    }
}

impl PartialEq for IfaceId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for IfaceId {}

impl PartialOrd for IfaceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IfaceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for IfaceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl IfaceId {
    /// `iface` in the named namespace `netns`, or in the caller's.
    pub fn new(iface: &str, netns: Option<&str>) -> IfaceId {
        let ns = match netns {
            Some(name) => NsIdent::named(name),
            None => NsIdent::current(),
        };
        IfaceId {
            iface: iface.to_string(),
            netns: netns.map(str::to_string),
            ns: ns.unwrap_or(NsIdent::MISSING),
        }
    }

    /// An attachment found in the kernel: namespace by identity, with the
    /// name it had when attached (`recorded`) if that name still refers to
    /// it, else the name it has now, if any. The caller's own namespace and
    /// the initial one are unnamed.
    pub fn found(iface: &str, ns: NsIdent, recorded: Option<&str>) -> IfaceId {
        IfaceId::found_with(iface, ns, recorded, &mut NsLookups::default())
    }

    /// [`IfaceId::found`] for one of many attachments: the namespaces are
    /// looked up once per batch, not three times per attachment.
    pub fn found_with(
        iface: &str,
        ns: NsIdent,
        recorded: Option<&str>,
        lookups: &mut NsLookups,
    ) -> IfaceId {
        let here = lookups.here().contains(&ns);
        let netns = if here {
            None
        } else {
            // A recorded name that no longer exists keeps naming it (the
            // namespace was deleted: status says so); one that now names
            // another namespace does not.
            // Only the name it was attached under: its pins live under that
            // name, or under its identity when it had none (a sidecar inside
            // a container sees its own namespace unnamed, even when the host
            // has a name for it; [`IfaceId::whereabouts`] shows that name).
            recorded
                .filter(|n| lookups.named(n).is_none_or(|now| now == ns))
                .map(str::to_string)
        };
        IfaceId {
            iface: iface.to_string(),
            netns,
            ns,
        }
    }

    /// Where `apply` keeps its state under `root`: by name for named
    /// namespaces, `host` for the initial one, by identity otherwise.
    pub fn state_scope(&self) -> String {
        match &self.netns {
            Some(ns) => format!("netns-{ns}"),
            None if NsIdent::initial() == Some(self.ns) => "host".into(),
            None => format!("ns-{}", self.ns.dir_name()),
        }
    }

    /// The directory of its link pins: by name for a named namespace, by
    /// identity for any other.
    pub fn dir(&self) -> PathBuf {
        let scope = match &self.netns {
            Some(name) => format!("netns-{name}"),
            None => self.ns.dir_name(),
        };
        Path::new(IFACES_DIR).join(scope).join(&self.iface)
    }

    /// Its directory in the layout before one data plane per host.
    pub fn legacy_dir(&self) -> PathBuf {
        let scope = match &self.netns {
            None => "host".to_string(),
            Some(ns) => format!("netns-{ns}"),
        };
        Path::new(ROOT).join(scope).join(&self.iface)
    }

    /// True for the initial namespace's interfaces (the host's own).
    pub fn on_host(&self) -> bool {
        self.netns.is_none() && NsIdent::initial() == Some(self.ns)
    }

    /// A path that enters its namespace; `None`: the caller's own.
    ///
    /// # Errors
    /// The namespace does not exist (any more).
    pub fn netns_path(&self) -> io::Result<Option<PathBuf>> {
        if let Some(name) = &self.netns {
            return Ok(Some(Path::new(NETNS_RUN_DIR).join(name)));
        }
        if NsIdent::current().ok() == Some(self.ns) {
            return Ok(None);
        }
        self.ns.find_path().map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("network namespace {} no longer exists", self.ns.ino),
            )
        })
    }

    /// `--iface NAME [--netns NS]`: how commands name this interface.
    pub fn cli_args(&self) -> String {
        match &self.netns {
            None => format!("--iface {}", self.iface),
            Some(ns) => format!("--iface {} --netns {ns}", self.iface),
        }
    }

    /// The command that detaches this interface.
    pub fn detach_command(&self) -> String {
        if self.netns.is_none() && NsIdent::current().ok() != Some(self.ns) {
            // No name to give: by identity while the namespace lives, with
            // every other orphan once it is gone.
            if self.namespace_gone() {
                return "sgctl detach --orphans".to_string();
            }
            return format!(
                "sgctl detach --iface {} --netns-inode {}",
                self.iface, self.ns.ino
            );
        }
        format!("sgctl detach {}", self.cli_args())
    }

    /// `iface` in the namespace whose nsfs inode is `ino` (`--netns-inode`,
    /// for namespaces without a name, as `status` shows them:
    /// `eth0@netns:INODE`).
    pub fn by_inode(iface: &str, ino: u64) -> io::Result<IfaceId> {
        let dev = NsIdent::current()?.dev;
        Ok(IfaceId {
            iface: iface.to_string(),
            netns: None,
            ns: NsIdent { dev, ino },
        })
    }

    /// True when its namespace no longer exists: what is attached there is
    /// an orphan (pins and an endpoint, no interface).
    pub fn namespace_gone(&self) -> bool {
        match &self.netns {
            Some(name) => NsIdent::named(name).map_or(true, |now| now != self.ns),
            None => {
                NsIdent::current().ok() != Some(self.ns)
                    && NsIdent::initial() != Some(self.ns)
                    && self.ns.find_path().is_none()
            }
        }
    }

    /// Where a person finds its namespace, for one without a name of its
    /// own: the host's `/run/netns` name for it (a container runtime's)
    /// and a process in it, e.g. `/run/netns/cni-1234, pid 4321`. `None`
    /// for a named namespace, the caller's own, and one that is gone.
    pub fn whereabouts(&self) -> Option<String> {
        if self.netns.is_some() || NsIdent::current().ok() == Some(self.ns) {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(name) = self.ns.find_name() {
            parts.push(format!("{NETNS_RUN_DIR}/{name}"));
        }
        if let Some(pid) = self.ns.find_pid() {
            parts.push(format!("pid {pid}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl std::fmt::Display for IfaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{}@{}", self.iface, ns),
            None if NsIdent::initial() == Some(self.ns)
                || NsIdent::current().ok() == Some(self.ns) =>
            {
                write!(f, "{}", self.iface)
            }
            None => write!(f, "{}@netns:{}", self.iface, self.ns.ino),
        }
    }
}

/// Removes an interface's link pins (which detaches its programs) and its
/// namespace directory once that is empty.
pub fn remove_iface_dir(iface: &IfaceId) -> io::Result<()> {
    let dir = iface.dir();
    std::fs::remove_dir_all(&dir)?;
    if let Some(scope) = dir.parent() {
        // Fails harmlessly while other interfaces of the namespace remain.
        let _ = std::fs::remove_dir(scope);
    }
    Ok(())
}

/// The entries of directory `dir`; none when it does not exist.
fn entries_if_any(dir: &str) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Interfaces with link pins under [`IFACES_DIR`]: (namespace directory,
/// interface name).
pub fn linked_ifaces() -> io::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for scope in entries_if_any(IFACES_DIR)? {
        let ns = scope.file_name().to_string_lossy().into_owned();
        for iface in std::fs::read_dir(scope.path())? {
            found.push((
                ns.clone(),
                iface?.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    found.sort();
    Ok(found)
}

/// Makes sure bpffs is mounted and [`ROOT`] exists root-owned 0700 (a
/// non-root user can create directories in `/sys/fs/bpf`, mode 1777).
///
/// # Errors
/// bpffs cannot be mounted, or [`ROOT`] cannot be created or trusted.
pub fn ensure_root() -> io::Result<()> {
    ensure_bpffs()?;
    crate::sys::private_dir::ensure(Path::new(ROOT)).map_err(io::Error::other)
}

/// Interfaces attached in the layout before one data plane per host, with
/// their directory: `sg/host/<iface>/` (the namespace sgctl runs in) and
/// `sg/netns-<name>/<iface>/`.
pub fn legacy_attachments() -> io::Result<Vec<(IfaceId, PathBuf)>> {
    let mut found = Vec::new();
    for scope in entries_if_any(ROOT)? {
        let scope_name = scope.file_name().to_string_lossy().into_owned();
        let netns = if scope_name == "host" {
            None
        } else if let Some(ns) = scope_name.strip_prefix("netns-") {
            Some(ns.to_string())
        } else {
            continue;
        };
        for iface in std::fs::read_dir(scope.path())? {
            let iface = iface?;
            let id = IfaceId::new(&iface.file_name().to_string_lossy(), netns.as_deref());
            found.push((id, iface.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes a legacy attachment's directory (releasing its links and its own
/// maps) and its scope directory once that is empty.
pub fn remove_legacy_dir(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(dir)?;
    if let Some(scope) = dir.parent() {
        let _ = std::fs::remove_dir(scope);
    }
    Ok(())
}

/// True when bpffs is mounted at [`BPFFS`].
pub fn bpffs_mounted() -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: valid C string and a zeroed out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at [`BPFFS`] unless it is there already (as bpftool does).
pub fn ensure_bpffs() -> io::Result<()> {
    if bpffs_mounted() {
        return Ok(());
    }
    let src = std::ffi::CString::new("bpf").expect("no NUL");
    let dst = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: valid C strings; mount(2) with no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!(
                "bpffs is not mounted at {BPFFS} and mounting it failed ({err}); \
                 run `mount -t bpf bpf {BPFFS}` as root"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_by_namespace_identity() {
        // Not the initial namespace (4026531840 on most systems).
        let ns = NsIdent {
            dev: 4,
            ino: 4026999999,
        };
        let id = IfaceId {
            iface: "eth0".into(),
            netns: Some("web".into()),
            ns,
        };
        assert_eq!(id.dir(), PathBuf::from("/sys/fs/bpf/sg/if/netns-web/eth0"));
        assert_eq!(
            id.legacy_dir(),
            PathBuf::from("/sys/fs/bpf/sg/netns-web/eth0")
        );
        assert_eq!(id.to_string(), "eth0@web");
        assert_eq!(NsIdent::from_dir_name(&ns.dir_name()), Some(ns));
        let unnamed = IfaceId { netns: None, ..id };
        assert_eq!(unnamed.to_string(), "eth0@netns:4026999999");
        assert_eq!(
            unnamed.dir(),
            PathBuf::from("/sys/fs/bpf/sg/if/4_4026999999/eth0")
        );
    }
}
