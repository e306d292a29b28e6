//! Where a backend starts and how it steps through the table: its [`Placement`].
//!
//! Every host must derive the same placement from the same backend, in every version of
//! xlb, so the hash is written out here (a splitmix64-style mixer over an explicit
//! little-endian encoding of the key) instead of borrowing `std`'s `DefaultHasher`, whose
//! output is allowed to change between Rust releases. The known-answer tests pin it.

use std::net::IpAddr;

use super::BackendKey;

/// Odd constant added between words (the 64-bit golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const MIX1: u64 = 0xbf58_476d_1ce4_e5b9;
const MIX2: u64 = 0x94d0_49bb_1331_11eb;

/// A bijective 64-bit finaliser (xor-shift / multiply, three rounds): every input bit
/// affects every output bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX2);
    z ^ (z >> 31)
}

/// 64-bit hash of a backend key under a seed.
///
/// The key is read as three little-endian words: address bytes 0..8, address bytes
/// 8..16 (an IPv4 address fills bytes 0..4 and leaves the rest zero), and
/// `family | port << 8` with family 4 or 6, so an IPv4 address and its IPv4-mapped IPv6
/// form are different backends.
pub(super) fn key_hash(key: &BackendKey, seed: u64) -> u64 {
    let mut bytes = [0u8; 16];
    let family: u64 = match key.addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            bytes = a.octets();
            6
        }
    };
    let lo = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    let tail = family | u64::from(key.port) << 8;
    let mut h = mix(seed ^ GOLDEN);
    for word in [lo, hi, tail] {
        h = mix(h.wrapping_add(GOLDEN) ^ word);
    }
    h
}

/// Maps a 32-bit value uniformly onto `[0, n)` with a multiplication and a shift.
#[inline]
fn reduce(x: u32, n: u32) -> u32 {
    ((u64::from(x) * u64::from(n)) >> 32) as u32
}

/// A backend's preference order over the slots of a table of prime size `m`: slot
/// `(offset + j * skip) mod m` is its `j`-th choice. As `m` is prime and
/// `1 <= skip < m`, the order visits every slot exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    /// First choice, in `[0, m)`.
    pub offset: u32,
    /// Step between choices, in `[1, m)`.
    pub skip: u32,
    /// Position in the canonical order of backends (ties are broken by the key): who
    /// goes first within a round, and who gets the spare slots when `m` does not divide.
    pub rank: u64,
}

impl Placement {
    /// The placement of `key` in a table of size `m >= 2`.
    pub fn new(key: &BackendKey, m: u32, seed: u64) -> Self {
        let h = key_hash(key, seed);
        Self {
            offset: reduce((h >> 32) as u32, m),
            skip: 1 + reduce(h as u32, m - 1),
            // A separate mix, so the order of backends is independent of their offsets.
            rank: mix(h ^ MIX2),
        }
    }
}
