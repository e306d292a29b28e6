//! Internet checksum (RFC 1071) helpers.

/// Adds the 16-bit big-endian words of `bytes` to a running one's-complement sum (not yet
/// folded). `bytes` must have even length.
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Adds the `N` bytes at `offset` of a packet, as big-endian 16-bit words, to `sum`; `None`
/// if the packet is shorter. `N` must be even.
#[inline(always)]
pub fn sum_packet<P: crate::parse::PacketBytes + ?Sized, const N: usize>(
    pkt: &P,
    offset: usize,
    mut sum: u32,
) -> Option<u32> {
    let mut i = 0;
    while i + 1 < N {
        let w = pkt.bytes::<2>(offset + i)?;
        sum += u32::from(u16::from_be_bytes(w));
        i += 2;
    }
    Some(sum)
}

/// Folds a running sum to 16 bits and complements it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The header checksum of an IPv4 header without options whose checksum field (bytes 10
/// and 11) is zero.
#[inline(always)]
pub fn ipv4_header_checksum(header: &[u8; 20]) -> u16 {
    fold(sum_words(header, 0))
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`
/// (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_matches_recomputation() {
        let h = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = ipv4_header_checksum(&h);
        for new_ttl in [1u8, 63, 64, 255, 0] {
            let old = u16::from_be_bytes([h[8], h[9]]);
            let mut g = h;
            g[8] = new_ttl;
            let new = u16::from_be_bytes([g[8], g[9]]);
            assert_eq!(
                replace16(c, old, new),
                ipv4_header_checksum(&g),
                "ttl {new_ttl}"
            );
        }
    }

    #[test]
    fn known_header() {
        // The example header from RFC 1071 discussions / Wikipedia: checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A correct header sums to 0xffff, i.e. folds to zero.
        assert_eq!(fold(sum_words(&h, 0)), 0);
    }
}
