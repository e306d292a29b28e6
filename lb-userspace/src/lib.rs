//! The xlb controller: loads the XDP balancer, fills its maps from a configuration,
//! builds Maglev tables, checks backend health, and reports counters.
//!
//! The `xlb` binary (src/main.rs) is a thin command-line layer over this library; the
//! end-to-end tests and benchmarks use the library directly. Nothing here runs per packet:
//! the data plane is the XDP program in `lb-ebpf`.

pub mod announce;
pub mod api;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod discovery;
pub mod engine;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod neighbour;
pub mod netlink;
pub mod nic;
pub mod predict;
pub mod programs;
pub mod stats;
pub mod trace;
pub mod words;
