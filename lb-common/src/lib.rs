//! Types and pure functions shared by xlb's XDP programs and its controller.
//!
//! Everything the kernel and userspace must agree on is defined here exactly once: the
//! layout of every BPF map key and value, the counter indexes and their names, the flow
//! hash and the Maglev slot reduction, and the packet-header parser. The parser is generic
//! over [`parse::PacketBytes`], so the XDP program runs it over packet memory and host tests
//! (and the controller, when it predicts which backend a packet will reach) run the very
//! same code over a `&[u8]`.
//!
//! This crate is `#![no_std]` and allocation-free; it does not touch maps or sockets. The
//! `user` feature adds `aya::Pod` impls so the types can be stored in maps from userspace.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod admit;
pub mod csum;
pub mod encap;
pub mod hash;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod resolve;
pub mod stats;

pub use maps::*;
