//! Security groups for Linux, enforced with eBPF: the user-space side.
//!
//! Data flows one way: config → model → validate → compile → maps → kernel.
//!
//! - Kernel-facing (uses aya): [`loader`] (load, attach, pin, detach, read
//!   counters), [`pins`] (the bpffs layout), [`ifinfo`] (choosing a hook).
//! - Test and demo infrastructure: [`netns`] (namespaces, veth, bridge).
//! - The `sgctl` binary (src/bin/sgctl) is a thin CLI over these modules.

pub mod apply;
pub mod bench;
pub mod compile;
pub mod conntrack;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod discover;
pub mod drift;
pub mod flowlog;
pub mod ifinfo;
pub mod kernel_offsets;
pub mod lab;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod policy_maps;
pub mod private_dir;
pub mod probe;
pub mod status;
pub mod testrun;
