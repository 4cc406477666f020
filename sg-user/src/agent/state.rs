//! What `sgctl` keeps about each attached interface that the kernel does
//! not (`/run/sgctl/<scope>/<iface>.json`: groups, rule names, the config
//! that attached it), and a config's identity. Read by status, drift and
//! the daemon; written by apply.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{agent::lock::STATE_DIR, kernel::pins::IfaceId, sys::private_dir::PrivateDirError};

/// An interface's state file could not be written.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("encoding the state of {iface}")]
    Encode {
        iface: IfaceId,
        #[source]
        source: serde_json::Error,
    },
    /// Its directory (the error names it and says what to check).
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
    /// The file (the error names it and says what to check).
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

/// What `sgctl status` and the daemon need that the kernel does not keep.
/// Nothing in it changes with membership or the policy's generation (the
/// kernel's policy is the authority for those), so a membership change on
/// a host of a thousand interfaces rewrites no state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceState {
    pub side: String,
    pub groups: Vec<String>,
    /// The config that attached it, by its identity ([`config_identity`]):
    /// only an apply of the same config detaches it when it leaves the config.
    pub config: Option<PathBuf>,
    /// The interface's index when it was attached: a different index now
    /// means it was deleted and created again, and must be attached anew.
    pub ifindex: u32,
    /// Rule hash → what the rule is.
    pub rules: BTreeMap<u32, RuleInfo>,
}

/// A rule as `sgctl status` and the metrics name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: String,
    pub group: String,
    pub description: Option<String>,
}

pub(crate) fn state_path(id: &IfaceId) -> PathBuf {
    PathBuf::from(STATE_DIR)
        .join(id.state_scope())
        .join(format!("{}.json", id.iface))
}

pub fn read_state(id: &IfaceId) -> Option<IfaceState> {
    let text = std::fs::read_to_string(state_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes an interface's state (0600, atomically). The error names the file.
pub(crate) fn write_state(id: &IfaceId, state: &IfaceState) -> Result<(), StateError> {
    let path = state_path(id);
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Encode {
        iface: id.clone(),
        source,
    })?;
    crate::sys::private_dir::create_subdir(path.parent().expect("has a parent"))?;
    crate::sys::private_dir::write_state_file(&path, &bytes)?;
    Ok(())
}

pub(crate) fn remove_state(id: &IfaceId) {
    let path = state_path(id);
    let _ = std::fs::remove_file(&path);
    if let Some(scope) = path.parent() {
        // Fails harmlessly while other interfaces of the scope remain.
        let _ = std::fs::remove_dir(scope);
    }
}

/// Puts back the state file as it was before a failed kernel change.
pub(crate) fn restore_state(id: &IfaceId, previous: Option<&[u8]>) {
    match previous {
        Some(bytes) => {
            if let Err(e) = crate::sys::private_dir::write_state_file(&state_path(id), bytes) {
                tracing::warn!("{id}: restoring its state file: {e}");
            }
        }
        None => remove_state(id),
    }
}

/// A config's identity: its absolute path with the directory resolved
/// (symlinks, `..`) and the file name kept. Two files with the same relative
/// name in different directories are different configs; a config that is a
/// symlink swapped on update (a Kubernetes ConfigMap volume) keeps its identity.
pub fn config_identity(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}
