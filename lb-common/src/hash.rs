//! The flow hash and the reduction of a hash to a Maglev slot.
//!
//! Both run in the kernel for every new flow and in userspace to predict where a packet
//! goes, so they must give the same answer on every host: the key is read as little-endian
//! words explicitly, never through the host's native order.

use crate::maps::{FlowKey, VIP_F_HASH_SOURCE};
use crate::parse::Headers;

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xff51_afd7_ed55_8ccd;
const K2: u64 = 0xc4ce_b9fe_1a85_ec53;

#[inline(always)]
fn le64(b: &[u8; 16], i: usize) -> u64 {
    u64::from_le_bytes([
        b[i],
        b[i + 1],
        b[i + 2],
        b[i + 3],
        b[i + 4],
        b[i + 5],
        b[i + 6],
        b[i + 7],
    ])
}

#[inline(always)]
fn absorb(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(K0);
    h ^ (h >> 29)
}

/// 32-bit hash of a flow key: five 64-bit words absorbed with a multiply-xorshift step,
/// then the murmur3 64-bit finaliser for full avalanche. Seven multiplications, no table,
/// no loop the verifier has to walk.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let tail = u64::from(key.sport)
        | (u64::from(key.dport) << 16)
        | (u64::from(key.proto) << 32)
        | (u64::from(key.family) << 40);
    flow_hash_words(&[
        le64(&key.src, 0),
        le64(&key.src, 8),
        le64(&key.dst, 0),
        le64(&key.dst, 8),
        tail,
    ])
}

/// `flow_hash` of the key whose five 8-byte words are `w` (on a little-endian host, the
/// words the key is in memory), for a caller that has them in registers.
#[inline(always)]
pub fn flow_hash_words(w: &[u64; 5]) -> u32 {
    let mut h = K2;
    h = absorb(h, w[0]);
    h = absorb(h, w[1]);
    h = absorb(h, w[2]);
    h = absorb(h, w[3]);
    h = absorb(h, w[4]);
    h ^= h >> 33;
    h = h.wrapping_mul(K1);
    h ^= h >> 33;
    h = h.wrapping_mul(K2);
    h ^= h >> 33;
    h as u32
}

/// Words of the address filter (`VIP_FILTER`): 1,024 words of 64 bits, 8 KiB.
pub const VIP_FILTER_WORDS: u32 = 1024;
/// Addresses per filter word: each has four bits, three used (`FILTER_VIP`, `FILTER_NAT`,
/// `FILTER_TARGET` above its shift, a multiple of 4, so the shift is a mask and a shift of
/// the hash); the fourth bit of the last one, bit 63, is `FILTER_F_TARGETS`.
pub const FILTER_SLOTS_PER_WORD: u64 = 16;
/// Filter bit (above an address's shift): the address has a VIP.
pub const FILTER_VIP: u32 = 0;
/// Filter bit: the address is a SNAT address: packets to it may be NAT replies.
pub const FILTER_NAT: u32 = 1;
/// Filter bit: the address is the target of a client-preserving NAT VIP: packets from it
/// may be NAT replies.
pub const FILTER_TARGET: u32 = 2;
/// Bit 63 of every filter word, set while any address has `FILTER_TARGET`: only then are
/// packets' sources looked up too, so other traffic pays nothing for that mode.
pub const FILTER_F_TARGETS: u64 = 1 << 63;

/// Where the address filter (`VIP_FILTER`) keeps the bits of `addr`: word `word`, bits
/// `shift + FILTER_*`. A packet whose destination has none of its bits set (and whose
/// word has no `FILTER_F_TARGETS`) is neither for a VIP nor a NAT reply: it is passed with
/// one array read. Two multiplications; distinct addresses share bits rarely (a false
/// positive only costs a lookup).
#[inline(always)]
pub fn filter_position(addr: &crate::maps::Addr) -> (u32, u32) {
    filter_position_words(le64(addr, 0), le64(addr, 8))
}

/// `filter_position` of the address whose two halves, read as little-endian words, are
/// `lo` and `hi` (an IPv4 address: its four bytes as a little-endian `u32` and 0), for a
/// caller that has the address in registers rather than in an array.
#[inline(always)]
pub fn filter_position_words(lo: u64, hi: u64) -> (u32, u32) {
    let h = absorb(absorb(K2, lo), hi);
    let word = (h >> 54) as u32;
    ((word), ((h >> 48) as u32 & 0xf) << 2)
}

/// The flow-table key (and hash input) of a packet to a VIP: its 5-tuple, or for a
/// source-affinity VIP (`VIP_F_HASH_SOURCE`) the source address with the VIP's address,
/// configured port (`vip_port`, 0 for an any-port VIP) and protocol, so that every
/// connection of one client shares one entry and one backend.
#[inline(always)]
pub fn flow_key(h: &Headers, vip_port: u16, vip_flags: u32) -> FlowKey {
    let affinity = vip_flags & VIP_F_HASH_SOURCE != 0;
    FlowKey {
        src: h.src,
        dst: h.dst,
        sport: if affinity { 0 } else { h.sport },
        dport: if affinity { vip_port } else { h.dport },
        proto: h.proto,
        family: h.family,
        reserved: [0; 2],
    }
}

/// Index in the `MAGLEV` array of the slot a flow hash selects in Maglev table `table` of
/// size `m`.
#[inline(always)]
pub fn table_index(table: u32, m: u32, hash: u32) -> u32 {
    table.wrapping_mul(m).wrapping_add(maglev_slot(hash, m))
}

/// Maps a 32-bit hash uniformly onto `[0, m)` with one multiplication and a shift
/// (Lemire's "fast range"), instead of a division by `m`.
///
/// Every slot receives either `floor(2^32 / m)` or `ceil(2^32 / m)` hash values, as with
/// `hash % m`; the data plane and every prediction in userspace use this function.
#[inline(always)]
pub fn maglev_slot(hash: u32, m: u32) -> u32 {
    ((u64::from(hash) * u64::from(m)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FAMILY_V4, PROTO_TCP, port_to_map};

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey {
            sport: port_to_map(sport),
            dport: port_to_map(80),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
        k
    }

    /// Fixed vectors: the hash decides which backend every flow reaches, on every host, so
    /// a change of these values is a change of the wire behaviour and must be deliberate.
    #[test]
    fn known_vectors() {
        assert_eq!(flow_hash(&FlowKey::default()), 0xffd4_42de);
        assert_eq!(flow_hash(&key([192, 0, 2, 1], 40000)), 0x433a_0e1d);
        assert_eq!(flow_hash(&key([192, 0, 2, 1], 40001)), 0xf7e0_9229);
        assert_eq!(flow_hash(&key([192, 0, 2, 2], 40000)), 0x0d4e_2c6e);
    }

    #[test]
    fn every_field_matters() {
        let base = key([192, 0, 2, 1], 40000);
        let h = flow_hash(&base);
        for i in 0..16 {
            let mut k = base;
            k.src[i] ^= 1;
            assert_ne!(flow_hash(&k), h, "src byte {i}");
            let mut k = base;
            k.dst[i] ^= 1;
            assert_ne!(flow_hash(&k), h, "dst byte {i}");
        }
        for f in [
            |k: &mut FlowKey| k.sport ^= 1,
            |k: &mut FlowKey| k.dport ^= 1,
            |k: &mut FlowKey| k.proto ^= 1,
            |k: &mut FlowKey| k.family ^= 1,
        ] {
            let mut k = base;
            f(&mut k);
            assert_ne!(flow_hash(&k), h);
        }
    }

    /// Sequential source ports from one client (the usual case) spread evenly over slots:
    /// a chi-square test over 64 buckets at 1e-4 significance.
    #[test]
    fn sequential_ports_spread_evenly() {
        const BUCKETS: usize = 64;
        const N: u32 = 64 * 1000;
        let mut counts = [0u32; BUCKETS];
        for p in 0..N {
            let k = key([198, 18, (p >> 8) as u8 & 3, 7], 1024 + (p % 60000) as u16);
            counts[maglev_slot(flow_hash(&k), BUCKETS as u32) as usize] += 1;
        }
        let expected = f64::from(N) / BUCKETS as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // chi-square critical value for 63 degrees of freedom at p = 1e-4 is about 112.
        assert!(chi2 < 112.0, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn slot_is_in_range_and_uniform_at_the_edges() {
        for m in [1u32, 2, 3, 251, 65_537, 1_048_573] {
            assert_eq!(maglev_slot(0, m), 0);
            assert_eq!(maglev_slot(u32::MAX, m), m - 1);
        }
        // Each slot of a small table gets floor or ceil of 2^32 / m hash values.
        let m = 7u64;
        for s in 0..m {
            let first = (s << 32).div_ceil(m);
            let last = (((s + 1) << 32).div_ceil(m)) - 1;
            let count = last - first + 1;
            assert!(count == (1u64 << 32) / m || count == (1u64 << 32) / m + 1);
            assert_eq!(u64::from(maglev_slot(first as u32, m as u32)), s);
            assert_eq!(u64::from(maglev_slot(last as u32, m as u32)), s);
        }
    }

    #[test]
    fn the_filter_tells_neighbouring_addresses_apart() {
        extern crate std;
        // A /24 of VIPs and the v6 addresses next to each other: nearly every address has
        // bits of its own, so other traffic to the same subnet rarely takes the lookup.
        let mut slots = std::collections::BTreeSet::new();
        for last in 0..=255u8 {
            let mut v4 = [0u8; 16];
            v4[..4].copy_from_slice(&[203, 0, 113, last]);
            let mut v6 = [0u8; 16];
            v6[..2].copy_from_slice(&[0x20, 0x01]);
            v6[2..4].copy_from_slice(&[0x0d, 0xb8]);
            v6[15] = last;
            for a in [v4, v6] {
                let (word, shift) = filter_position(&a);
                assert!(word < VIP_FILTER_WORDS && shift + FILTER_TARGET < 63 && shift % 4 == 0);
                slots.insert((word, shift));
            }
        }
        assert!(slots.len() >= 495, "{} distinct slots of 512", slots.len());
    }
}
