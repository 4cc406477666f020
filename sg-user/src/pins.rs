//! Where enforcement state lives in bpffs, so it outlives `sgctl` and a later
//! `sgctl` finds it:
//!
//! ```text
//! /sys/fs/bpf/sg/<scope>/<iface>/
//!     link-ingress-<hook>   bpf_link of the ingress program (hook: xdp, xdp-generic, tc)
//!     link-egress-tc        bpf_link of the egress program
//!     SG_*                  every map, by its name in the object (counters,
//!                           policy tries, connection tables …)
//! ```
//! `<scope>` is `host` for the namespace `sgctl` runs in, `netns-<name>` for a
//! named namespace (`/run/netns/<name>`). Removing a link pin detaches it.

use std::{
    io,
    path::{Path, PathBuf},
};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const ROOT: &str = "/sys/fs/bpf/sg";
pub const LINK_PREFIX: &str = "link-";

/// Identifies a protected interface: its name and the namespace it lives in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct IfaceId {
    pub iface: String,
    pub netns: Option<String>,
}

impl IfaceId {
    pub fn new(iface: &str, netns: Option<&str>) -> IfaceId {
        IfaceId {
            iface: iface.to_string(),
            netns: netns.map(str::to_string),
        }
    }

    pub fn dir(&self) -> PathBuf {
        let scope = match &self.netns {
            None => "host".to_string(),
            Some(ns) => format!("netns-{ns}"),
        };
        Path::new(ROOT).join(scope).join(&self.iface)
    }
}

impl IfaceId {
    /// `--iface NAME [--netns NS]`: how commands name this interface.
    pub fn cli_args(&self) -> String {
        match &self.netns {
            None => format!("--iface {}", self.iface),
            Some(ns) => format!("--iface {} --netns {ns}", self.iface),
        }
    }

    /// The command that detaches this interface.
    pub fn detach_command(&self) -> String {
        format!("sgctl detach {}", self.cli_args())
    }
}

impl std::fmt::Display for IfaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            None => write!(f, "{}", self.iface),
            Some(ns) => write!(f, "{}@{}", self.iface, ns),
        }
    }
}

/// Removes an interface's pins (which releases its links and maps) and its
/// scope directory once that is empty.
pub fn remove_iface_dir(iface: &IfaceId) -> io::Result<()> {
    let dir = iface.dir();
    std::fs::remove_dir_all(&dir)?;
    if let Some(scope) = dir.parent() {
        // Fails harmlessly while other interfaces of the scope remain.
        let _ = std::fs::remove_dir(scope);
    }
    Ok(())
}

/// Makes sure bpffs is mounted and [`ROOT`] exists root-owned 0700 (a
/// non-root user can create directories in `/sys/fs/bpf`, mode 1777).
///
/// # Errors
/// bpffs cannot be mounted, or [`ROOT`] cannot be created or trusted.
pub fn ensure_root() -> io::Result<()> {
    ensure_bpffs()?;
    crate::private_dir::ensure(Path::new(ROOT)).map_err(io::Error::other)
}

/// Every interface with state under [`ROOT`] (after checking that [`ROOT`]
/// can be trusted: see [`crate::private_dir`]).
pub fn attached_ifaces() -> io::Result<Vec<IfaceId>> {
    crate::private_dir::check(Path::new(ROOT)).map_err(io::Error::other)?;
    let mut found = Vec::new();
    let scopes = match std::fs::read_dir(ROOT) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for scope in scopes {
        let scope = scope?;
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
            found.push(IfaceId {
                iface: iface.file_name().to_string_lossy().into_owned(),
                netns: netns.clone(),
            });
        }
    }
    found.sort();
    Ok(found)
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
    fn scope_directories() {
        assert_eq!(
            IfaceId::new("eth0", None).dir(),
            PathBuf::from("/sys/fs/bpf/sg/host/eth0")
        );
        assert_eq!(
            IfaceId::new("eth0", Some("web")).dir(),
            PathBuf::from("/sys/fs/bpf/sg/netns-web/eth0")
        );
        assert_eq!(IfaceId::new("eth0", Some("web")).to_string(), "eth0@web");
    }
}
