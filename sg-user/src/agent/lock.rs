//! Locks that serialise everything that changes enforcement state.
//!
//! - **The state lock** (`/run/sgctl/state.lock`, `flock`): held by `apply`,
//!   `attach`, `detach`, `conntrack flush|gc` and each daemon reload or
//!   reconcile, for the whole read-state → compile → install → write-state
//!   sequence. Two of them never interleave, so the kernel always enforces
//!   what the state files say and a generation number is never handed out
//!   twice. The holder writes its pid and what it does into the file, so a
//!   waiter can say what it waits for.
//! - **A daemon lock** per config (`/run/sgctl/daemon-<key>.lock`): held by
//!   `sgctl run` for its lifetime; a second `sgctl run` on the same config
//!   refuses with the first one's pid.
//!
//! Order: a daemon takes its daemon lock first (once, at start, without
//! waiting) and the state lock afterwards (per reload). Nothing takes the
//! state lock and then a daemon lock, so the two cannot deadlock.
//!
//! `flock` locks belong to an open file description: the kernel releases
//! them when the holder exits, however it exits (no stale lock after
//! `kill -9`). A daemon removes its lock file when it stops; a taker checks
//! after locking that the file it locked is still the one at the path (and
//! starts over otherwise), so a removal never lets two holders in.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::sys::private_dir::{self, PrivateDirError};

/// Where `sgctl` keeps what the kernel cannot: rule names and settings of
/// each attached interface, daemon state, locks (tmpfs: gone at reboot, like
/// the pins).
pub const STATE_DIR: &str = "/run/sgctl";
/// The state lock's file name under [`STATE_DIR`].
pub const STATE_LOCK: &str = "state.lock";

/// Whether to wait for a lock another process holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    /// Block until it is free.
    #[default]
    Block,
    /// Fail at once with [`LockError::Busy`].
    NoWait,
}

/// Who holds a lock, as its holder recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub purpose: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.purpose.is_empty()) {
            (Some(pid), false) => write!(f, "pid {pid}: {}", self.purpose),
            (Some(pid), true) => write!(f, "pid {pid}"),
            (None, _) => write!(f, "holder not recorded yet"),
        }
    }
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "another sgctl is changing enforcement state ({holder}); run the command again when it has \
         finished, or leave out --no-wait to wait for it"
    )]
    Busy { holder: Holder },
    #[error(
        "{config} is already kept enforced by `sgctl run` ({holder}); stop that one first \
         (`kill {pid}`), or use `sgctl status` to see it",
        pid = .holder.pid.map_or("PID".to_string(), |p| p.to_string())
    )]
    DaemonRunning { config: PathBuf, holder: Holder },
    #[error("lock file {path}: {source}; is {STATE_DIR} full or read-only?")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Held {
    /// Kept open: the lock lives exactly as long as this descriptor.
    _file: File,
    path: PathBuf,
}

impl Held {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lock file, then releases the lock (for per-config locks,
    /// which would otherwise pile up, one per config ever run).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Proof that the state lock is held: functions that change enforcement
/// state take it as an argument.
#[derive(Debug)]
pub struct StateLock(Held);

impl StateLock {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Makes sure [`STATE_DIR`] exists root-owned 0700 (see [`private_dir`]).
///
/// # Errors
/// It cannot be created, or exists and cannot be trusted.
pub fn ensure_state_dir() -> Result<(), PrivateDirError> {
    private_dir::ensure(Path::new(STATE_DIR))
}

/// Takes the state lock. When another process holds it, `on_wait` is called
/// once with the holder and then this blocks (or fails, with
/// [`Wait::NoWait`]).
///
/// # Errors
/// [`LockError::Busy`] under `NoWait`; the state directory cannot be trusted
/// or the lock file cannot be opened.
pub fn state_lock(
    purpose: &str,
    wait: Wait,
    on_wait: impl FnOnce(&Holder),
) -> Result<StateLock, LockError> {
    ensure_state_dir()?;
    let path = Path::new(STATE_DIR).join(STATE_LOCK);
    match take(&path, purpose, wait, on_wait)? {
        Ok(held) => Ok(StateLock(held)),
        Err(holder) => Err(LockError::Busy { holder }),
    }
}

/// Takes the state lock only when it is free right now (for periodic work
/// that can simply run at the next tick).
///
/// # Errors
/// As [`state_lock`], except that a busy lock is `Ok(None)`.
pub fn try_state_lock(purpose: &str) -> Result<Option<StateLock>, LockError> {
    match state_lock(purpose, Wait::NoWait, |_| {}) {
        Ok(held) => Ok(Some(held)),
        Err(LockError::Busy { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The daemon lock file of a config identity (see [`crate::agent::state::config_identity`]).
pub fn daemon_lock_path(config: &Path) -> PathBuf {
    Path::new(STATE_DIR).join(format!("daemon-{}.lock", config_key(config)))
}

/// A short, stable key for a config path (FNV-1a, 64 bits, hex): file names
/// of per-config daemon files.
pub fn config_key(config: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in config.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Takes the daemon lock of `config` (its identity) without waiting.
///
/// # Errors
/// [`LockError::DaemonRunning`] with the holder's pid when another daemon
/// keeps this config; the state directory cannot be trusted.
pub fn daemon_lock(config: &Path) -> Result<Held, LockError> {
    ensure_state_dir()?;
    let purpose = format!("sgctl run -c {}", config.display());
    take(&daemon_lock_path(config), &purpose, Wait::NoWait, |_| {})?.map_err(|holder| {
        LockError::DaemonRunning {
            config: config.to_path_buf(),
            holder,
        }
    })
}

/// Opens `path` and locks it; `Ok(Err(holder))` when busy under `NoWait`.
fn take(
    path: &Path,
    purpose: &str,
    wait: Wait,
    on_wait: impl FnOnce(&Holder),
) -> Result<Result<Held, Holder>, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut on_wait = Some(on_wait);
    loop {
        let mut file = private_dir::open_with_mode(
            path,
            private_dir::STATE_FILE_MODE,
            OpenOptions::new().read(true).write(true),
        )
        .map_err(io_err)?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err)? {
            let holder = read_holder(&mut file);
            if wait == Wait::NoWait {
                return Ok(Err(holder));
            }
            if let Some(say) = on_wait.take() {
                say(&holder);
            }
            flock(&file, libc::LOCK_EX).map_err(io_err)?;
        }
        if !still_at(&file, path) {
            // Removed (and maybe created again) by its last holder: the lock
            // we got guards nothing. Take the one at the path.
            continue;
        }
        record_holder(&mut file, purpose).map_err(io_err)?;
        return Ok(Ok(Held {
            _file: file,
            path: path.to_path_buf(),
        }));
    }
}

/// True when `file` is the file now at `path`.
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `flock(2)`, retried on EINTR; false when a non-blocking lock is busy.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: a valid open fd.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn record_holder(file: &mut File, purpose: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}\n{purpose}", std::process::id())?;
    Ok(())
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    let mut lines = text.lines();
    Holder {
        pid: lines.next().and_then(|l| l.trim().parse().ok()),
        purpose: lines.next().unwrap_or_default().to_string(),
    }
}

/// Reads who holds (or last held) the lock at `path`, without locking.
pub fn holder_of(path: &Path) -> Option<Holder> {
    let mut file = File::open(path).ok()?;
    Some(read_holder(&mut file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-lock-{tag}-{}", std::process::id()));
        private_dir::ensure(&dir).unwrap();
        dir
    }

    #[test]
    fn second_taker_sees_the_holder_and_gets_it_after_release() {
        let dir = scratch("take");
        let path = dir.join("x.lock");
        let first = take(&path, "first job", Wait::Block, |_| {})
            .unwrap()
            .unwrap();
        let busy = take(&path, "second job", Wait::NoWait, |_| {})
            .unwrap()
            .unwrap_err();
        assert_eq!(busy.pid, Some(std::process::id()));
        assert_eq!(busy.purpose, "first job");
        let waiter = std::thread::spawn(move || {
            let mut told = Vec::new();
            let held = take(&path, "second job", Wait::Block, |h| told.push(h.clone()))
                .unwrap()
                .unwrap();
            (held, told)
        });
        // The waiter either already waits or has not started: both end the same.
        drop(first);
        let (_held, told) = waiter.join().unwrap();
        assert!(told.len() <= 1, "says at most once what it waits for");
        assert!(told.iter().all(|h| h.purpose == "first job"), "{told:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_lock_file_is_never_held_twice() {
        let dir = scratch("remove");
        let path = dir.join("d.lock");
        let first = take(&path, "first", Wait::Block, |_| {}).unwrap().unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || take(&path, "second", Wait::Block, |_| {}).unwrap().unwrap())
        };
        first.remove();
        let second = waiter.join().unwrap();
        assert!(
            still_at(&second._file, &path),
            "the waiter holds the file at the path, not the removed one"
        );
        assert!(
            take(&path, "third", Wait::NoWait, |_| {}).unwrap().is_err(),
            "and it excludes others"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_keys_are_stable_and_distinct() {
        assert_eq!(
            config_key(Path::new("/etc/sg.yaml")),
            config_key(Path::new("/etc/sg.yaml"))
        );
        assert_ne!(
            config_key(Path::new("/a/sg.yaml")),
            config_key(Path::new("/b/sg.yaml"))
        );
        assert_eq!(config_key(Path::new("")), "cbf29ce484222325");
    }
}
