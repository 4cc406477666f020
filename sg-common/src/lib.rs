//! Types shared by the kernel programs (`sg-ebpf`) and user space (`sg-user`).
//!
//! Everything here is `#[repr(C)]`, explicitly padded, and has a size test: the
//! kernel and user space read the same bytes. Nothing else belongs in this crate.
#![no_std]

pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod events;
pub mod names;
pub mod policy;
pub mod proto;

pub use counters::{
    COUNTER_SLOTS, Counter, Direction, REASON_SLOTS, Reason, counter_index, endpoint_counter_index,
};
pub use policy::IfaceConfig;
