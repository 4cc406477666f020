//! Security groups for Linux, enforced with eBPF: the user-space side.
//!
//! The folders are the layers; data flows one way, and each layer imports
//! only the ones before it:
//!
//! 1. [`model`] — pure: text → document (YAML, AWS JSON) → validated model;
//!    the reference evaluator, the linter, export. Problems and severities
//!    live in [`model::diag`].
//! 2. [`compile`] — pure: a model → the map entries of a policy.
//! 3. [`sys`] — a leaf for the layers above it: entering namespaces,
//!    interface facts, private state directories.
//! 4. [`kernel`] — the only layer that uses aya: the data plane's programs
//!    and maps, pins, attach/detach, connection tables.
//! 5. [`agent`] — what `sgctl` does over time: locks, state, apply, status,
//!    drift, metrics, flow logs, the daemon.
//! 6. [`lab`] — the lab and demo (a product feature: whole topologies in
//!    namespaces).
//!
//! The `sgctl` binary (src/bin/sgctl) is a thin CLI over these. The test
//! harness ([`harness`]: packets, `BPF_PROG_TEST_RUN`) and the fault switch
//! are built only with the `test-support` feature.

pub mod agent;

pub mod compile;
#[cfg(feature = "test-support")]
pub mod harness;
pub mod kernel;
pub mod lab;
pub mod model;
pub mod sys;
