//! Directories and files that only root may touch: the state directory
//! (`/run/sgctl`) and the bpffs directory (`/sys/fs/bpf/sg`).
//!
//! `/sys/fs/bpf` is mode 1777, so any user can create `/sys/fs/bpf/sg` before
//! sgctl does and later move root's pins out of sight. Before use, each
//! directory is created root-owned with mode 0700, or — when it exists —
//! checked: a real directory (not a symlink), owned by us (root), writable by
//! no one else. A directory of an older sgctl (root-owned, 0755) is
//! tightened to 0700; anything else is refused with what to do.
//!
//! Files written inside are created with an explicit mode, whatever the umask:
//! state files 0600, flow logs 0640.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Mode of every directory sgctl creates for itself.
pub const DIR_MODE: u32 = 0o700;
/// Mode of state files (rule names, settings, daemon state, locks).
pub const STATE_FILE_MODE: u32 = 0o600;
/// Mode of flow-log files: readable by the owner's group (log shippers).
pub const FLOW_LOG_MODE: u32 = 0o640;

#[derive(Debug, Error)]
pub enum PrivateDirError {
    #[error(
        "{path} is not a directory sgctl can trust: {problem}. Enforcement state kept there could be \
         moved or forged by another user. Look at what is in it, then {fix}"
    )]
    Untrusted {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("creating {path}: {source}; is the file system full or read-only?")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checking {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `path` (and missing parents) as a 0700 directory owned by us, or
/// checks the one that is there (see the module docs).
///
/// # Errors
/// When it cannot be created, or exists but is a symlink, not a directory,
/// owned by another user, or writable by group or others.
pub fn ensure(path: &Path) -> Result<(), PrivateDirError> {
    match DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
    {
        Ok(()) => {}
        // A dangling symlink makes create fail with EEXIST: check() says what it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(PrivateDirError::Create {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    check(path)
}

/// Checks an existing directory (see [`ensure`]); a directory that does not
/// exist is fine (nothing in it to trust or distrust).
///
/// # Errors
/// As [`ensure`].
pub fn check(path: &Path) -> Result<(), PrivateDirError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PrivateDirError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let untrusted = |problem: String, fix: String| PrivateDirError::Untrusted {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    let shown = path.display();
    if meta.file_type().is_symlink() {
        return Err(untrusted(
            "it is a symbolic link".into(),
            format!("remove it (`rm {shown}`) and run the command again"),
        ));
    }
    if !meta.is_dir() {
        return Err(untrusted(
            "it is not a directory".into(),
            format!("remove it (`rm {shown}`) and run the command again"),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != euid() {
        return Err(untrusted(
            format!("it is owned by uid {}, not by uid {}", meta.uid(), euid()),
            format!(
                "remove it (`rm -r {shown}`; enforcement pinned inside stops) or take it over \
                 (`chown -R root:root {shown} && chmod 0700 {shown}`) and run the command again"
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(untrusted(
            format!("its mode {mode:04o} lets other users write into it"),
            format!("`chmod 0700 {shown}` and run the command again"),
        ));
    }
    if mode != DIR_MODE {
        // Ours and not writable by others (an older sgctl made it 0755): tighten.
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(|source| {
            PrivateDirError::Inspect {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Creates a subdirectory of a private directory with mode 0700 (missing
/// parents too, also 0700).
///
/// # Errors
/// When it cannot be created.
pub fn create_subdir(path: &Path) -> Result<(), PrivateDirError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| PrivateDirError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens (creating) `path` with exactly `mode`, whatever the umask and
/// whatever mode an existing file had.
///
/// # Errors
/// The I/O error of open or chmod.
pub fn open_with_mode(path: &Path, mode: u32, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.create(true).mode(mode).open(path)?;
    if file.metadata()?.mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it)
/// with mode 0600. The error names the path; the temporary file is removed
/// when anything fails.
///
/// # Errors
/// Writing or renaming failed (full or read-only file system …).
pub fn write_state_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let written = open_with_mode(
        &tmp,
        STATE_FILE_MODE,
        OpenOptions::new().write(true).truncate(true),
    )
    // No fsync: the state describes pins in bpffs, which a power loss
    // takes too; a crashed sgctl loses nothing the page cache holds. (An
    // fsync per interface was most of the time of a 200-interface apply on
    // a disk-backed /run.)
    .and_then(|mut f| f.write_all(bytes))
    .and_then(|()| fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io::Error::new(
            e.kind(),
            format!(
                "writing {}: {e}; is the file system full or read-only?",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-private-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_0700_whatever_the_umask() {
        let dir = scratch("create");
        let inner = dir.join("a/b");
        ensure(&inner).unwrap();
        for d in [&dir, &dir.join("a"), &inner] {
            assert_eq!(
                fs::metadata(d).unwrap().mode() & 0o7777,
                DIR_MODE,
                "{}",
                d.display()
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tightens_an_own_0755_directory_and_refuses_a_writable_or_linked_one() {
        let dir = scratch("modes");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, DIR_MODE);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = ensure(&dir).unwrap_err().to_string();
        assert!(
            err.contains("lets other users write") && err.contains("chmod 0700"),
            "{err}"
        );

        let link = dir.with_extension("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = ensure(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_files_are_0600_and_replace_atomically() {
        let dir = scratch("files");
        ensure(&dir).unwrap();
        let path = dir.join("x.json");
        write_state_file(&path, b"one").unwrap();
        write_state_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().mode() & 0o7777,
            STATE_FILE_MODE
        );
        let err = write_state_file(&dir.join("missing/x.json"), b"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/x.json"), "names the path: {err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
