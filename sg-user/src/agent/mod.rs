//! The agent layer: what `sgctl` does over time on top of the kernel layer —
//! locks, per-interface state, apply, status and drift, metrics, flow logs,
//! link watching and the daemon. It may import every layer below it (`model`, `compile`,
//! `sys`, `kernel`), never `lab` or the CLI.

pub mod apply;
pub mod cni;
pub mod daemon;
pub mod daemon_state;
pub mod discover;
pub mod drift;
pub mod endpoints;
pub mod flowlog;
pub mod linkwatch;
pub mod lock;
pub mod metrics;
pub mod state;
pub mod status;
pub mod store;
