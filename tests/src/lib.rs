//! Test support for xlb: a packet builder, network namespaces that clean up after
//! themselves, the fixture lab that runs the real XDP programs through
//! `BPF_PROG_TEST_RUN`, and the end-to-end topology with real servers and a real `xlb run`.
//! The tests themselves are in `tests/tests/`; the ones that need root are `#[ignore]`d by
//! default and run by `cargo xtask test`.

pub mod bird;
pub mod cluster;
pub mod daemon;
pub mod docker;
pub mod fixtures;
pub mod haproxy;
pub mod lab;
pub mod nat_fixtures;
pub mod nat_scenario;
pub mod netns;
pub mod packet;
pub mod scenario;
pub mod servers;
pub mod sha256;
pub mod topology;
