//! The system layer, a leaf: network namespaces (entering, creating, veth
//! and addresses for the lab and tests), interface facts, and the private
//! directories sgctl keeps its state in. It imports nothing of the crate.

pub mod ifinfo;
pub mod netns;
pub mod private_dir;
