//! A private view of this process's bpffs and state directory, so that
//! several agents can run on one machine, each as if it were a host of its
//! own (`--bpffs DIR --state-dir DIR`): the process moves to a mount
//! namespace of its own in which DIR is bind-mounted over `/sys/fs/bpf`
//! (and the state directory over `/run/sgctl`). The bpffs itself is mounted
//! in the machine's namespace, so pins outlive the process as they do at
//! `/sys/fs/bpf`.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::Path,
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// True when a bpffs is mounted at `dir`.
pub fn is_bpffs(dir: &Path) -> bool {
    let Ok(path) = cstr(dir) else { return false };
    // SAFETY: valid C string and a zeroed out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let dst_c = cstr(dst)?;
    let fstype = fstype.map(|f| CString::new(f).expect("no NUL"));
    // SAFETY: valid C strings or null; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("mounting on {}: {e}", dst.display()),
        ))
    }
}

/// Makes `bpffs` (a bpffs; one is mounted there if not) this process's
/// `/sys/fs/bpf` and `state_dir` its `/run/sgctl`. Call before any thread
/// starts: the mount namespace is the calling thread's.
///
/// # Errors
/// A directory cannot be created or mounted, or the mount namespace cannot
/// be unshared (not root).
pub fn private_view(bpffs: Option<&Path>, state_dir: Option<&Path>) -> io::Result<()> {
    if bpffs.is_none() && state_dir.is_none() {
        return Ok(());
    }
    if let Some(dir) = bpffs {
        std::fs::create_dir_all(dir)?;
        // Two sgctl processes starting at once (`run` and `status`) must not
        // both mount: a second bpffs stacked on the first would hide the
        // pins and outlive an unmount. Check and mount under a lock on the
        // directory; one opened after the mount is the bpffs root, whose
        // holder sees it mounted.
        let held = std::fs::File::open(dir)?;
        // SAFETY: flock(2) on an fd we own; released when `held` closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if !is_bpffs(dir) {
            mount(Some(Path::new("bpf")), dir, Some("bpf"), 0)?;
        }
        drop(held);
    }
    if let Some(dir) = state_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir_all("/run/sgctl")?;
    }
    // SAFETY: unshare(2) with a flag; affects only this (single) thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("a private mount namespace for --bpffs/--state-dir: {e} (needs root)"),
        ));
    }
    // Nothing mounted from here on propagates back to the machine.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    if let Some(dir) = bpffs {
        mount(Some(dir), Path::new("/sys/fs/bpf"), None, libc::MS_BIND)?;
    }
    if let Some(dir) = state_dir {
        mount(Some(dir), Path::new("/run/sgctl"), None, libc::MS_BIND)?;
    }
    Ok(())
}
