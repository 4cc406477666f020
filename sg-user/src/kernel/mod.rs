//! The kernel layer: the only one that uses aya. It owns the data plane
//! (programs loaded once per host, host-wide maps), the bpffs layout, the
//! endpoint table, policies in maps, attach/detach/upgrade of interfaces and
//! the connection tables. It may import `model`, `compile` and `sys`.

pub mod conntrack;
pub mod dataplane;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod policy_maps;

/// Any error of a lower layer kept as the source of a kernel error (aya's
/// map, program and link errors differ by call; the chain prints the cause).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
