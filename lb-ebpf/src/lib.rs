//! Pieces shared by xlb's XDP programs: bounds-checked packet access and per-CPU counters.
//!
//! The programs themselves are the binaries of this crate: `xlb-balancer` (src/main.rs),
//! `xlb-decap` (src/bin/decap.rs) and `xlb-reference` (trivial programs used as the floor in
//! benchmarks and as the `XDP_PASS` program that lets veth peers receive `XDP_TX` frames).
//! Header parsing is not here: it lives in `lb-common` so host tests run the same code.
#![no_std]
// Word-sized packet access (`packet::word`) is BPF assembly.
#![feature(asm_experimental_arch)]

pub mod packet;
pub mod stats;
