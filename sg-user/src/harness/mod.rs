//! Test support (feature `test-support`): packets built byte by byte and
//! the data plane under `BPF_PROG_TEST_RUN`. Not part of `sgctl`.

pub mod configs;
pub mod etcd;
pub mod legacy;
pub mod packet;
pub mod podman;
pub mod testrun;
