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
