//! Empty on purpose: the programs are the `sg` binary (src/main.rs). This
//! library target lets `sg-user` depend on the crate for rebuild tracking.
#![no_std]
