//! What a running daemon publishes about itself (`/run/sgctl/daemon-KEY.json`)
//! and how `status` and the metrics read it back. Written by the daemon.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::agent::{
    lock::{self, STATE_DIR},
    state::config_identity,
};

/// What the daemon publishes in /run/sgctl/daemon-KEY.json (for `sgctl
/// status`; KEY from the config's identity, see [`lock::config_key`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// The config's identity ([`crate::agent::state::config_identity`]).
    pub config: PathBuf,
    pub started: u64,
    /// Result of the last reload attempt.
    pub last_reload_ok: bool,
    pub last_reload_at: u64,
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Generation in force per interface (`NAME@NETNS`), 0 when absent.
    pub generations: BTreeMap<String, u32>,
    /// Times the kernel dropped link and address events because a watcher's
    /// socket buffer was full, per namespace (`host` for the daemon's own);
    /// each one triggered a full reconcile.
    #[serde(default)]
    pub netlink_overflows: BTreeMap<String, u64>,
    /// Times a namespace's link watcher failed (and was reopened).
    #[serde(default)]
    pub link_watch_failures: BTreeMap<String, u64>,
    /// The shared store's connection, with `--store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::agent::store::StoreStatus>,
}

/// Where the daemon of the config with this identity publishes its state.
pub fn state_path(identity: &Path) -> PathBuf {
    Path::new(STATE_DIR).join(format!("daemon-{}.json", lock::config_key(identity)))
}

/// The published state of the daemon keeping `config` (as typed; its
/// identity is looked up), if one is (or was last) running.
pub fn read_state_for(config: &Path) -> Option<DaemonState> {
    let identity = config_identity(config)?;
    serde_json::from_slice(&std::fs::read(state_path(&identity)).ok()?).ok()
}

/// The published states of all daemons that are running, oldest first.
pub fn read_states() -> Vec<DaemonState> {
    let mut states: Vec<DaemonState> = std::fs::read_dir(STATE_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("daemon-") && name.ends_with(".json")
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .filter(is_running)
        .collect();
    states.sort_by_key(|s: &DaemonState| (s.started, s.pid));
    states
}

/// The state of the most recently started daemon that is running.
pub fn read_state() -> Option<DaemonState> {
    read_states().pop()
}

/// True when the pid in the state file is alive.
pub fn is_running(state: &DaemonState) -> bool {
    Path::new(&format!("/proc/{}", state.pid)).exists()
}
