//! Outer headers of encapsulated packets (IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6).
//!
//! Pure builders: the balancer writes what they return in front of the original IP packet,
//! and host tests check them field by field.

use crate::csum::ipv4_header_checksum;
use crate::parse::{IPV4_HLEN, IPV6_HLEN};

/// TTL / hop limit of outer headers.
pub const OUTER_TTL: u8 = 64;

/// An outer IPv4 header (no options) carrying an inner IP datagram of `inner_len` bytes
/// with protocol `proto` (4 for IPv4-in-IPv4). DF is always set: the balancer answers
/// too-big packets itself rather than letting the tunnel fragment. `None` if the result
/// would exceed the IPv4 maximum length.
#[inline(always)]
pub fn outer_ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    inner_len: u16,
    proto: u8,
    tos: u8,
) -> Option<[u8; 20]> {
    let total = inner_len.checked_add(IPV4_HLEN as u16)?;
    let t = total.to_be_bytes();
    let mut h = [
        0x45, tos, t[0], t[1], // version/IHL, TOS, total length
        0, 0, 0x40, 0, // id, flags (DF) / fragment offset
        OUTER_TTL, proto, 0, 0, // TTL, protocol, checksum
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let c = ipv4_header_checksum(&h).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    Some(h)
}

/// [`outer_ipv4`] as the header's five 32-bit words, each as a 4-byte load of its place in
/// the header reads it (native byte order), from the addresses in that form too: the data
/// plane stores five words and sums the checksum over them, instead of building the header
/// byte by byte. The same header as `outer_ipv4` (host tests compare the two), and `None`
/// in the same case.
#[inline(always)]
pub fn outer_ipv4_words(
    src: u32,
    dst: u32,
    inner_len: u16,
    proto: u8,
    tos: u8,
) -> Option<[u32; 5]> {
    let total = inner_len.checked_add(IPV4_HLEN as u16)?;
    let t = total.to_be_bytes();
    let w0 = u32::from_ne_bytes([0x45, tos, t[0], t[1]]);
    let w1 = u32::from_ne_bytes([0, 0, 0x40, 0]);
    let w2 = u32::from_ne_bytes([OUTER_TTL, proto, 0, 0]);
    // A one's-complement sum does not depend on the byte order its words are read in
    // (RFC 1071): over native words, folded and complemented, it is the checksum as a
    // native 2-byte load of bytes 10-11 reads it.
    let sum = u64::from(w0) + u64::from(w1) + u64::from(w2) + u64::from(src) + u64::from(dst);
    let c = (!crate::csum::fold_words(sum)).to_ne_bytes();
    Some([
        w0,
        w1,
        u32::from_ne_bytes([OUTER_TTL, proto, c[0], c[1]]),
        src,
        dst,
    ])
}

/// The first 8 bytes of an outer IPv6 header carrying `payload_len` bytes whose first
/// header is `next` (41 for IPv6, 4 for IPv4); the source and destination addresses follow.
/// `flow_label` (20 bits) gives routers on the way ECMP entropy per flow; `tclass` is
/// copied from the inner packet.
#[inline(always)]
pub fn outer_ipv6_first_words(payload_len: u16, next: u8, tclass: u8, flow_label: u32) -> [u8; 8] {
    let w = ((6u32 << 28) | (u32::from(tclass) << 20) | (flow_label & 0x000f_ffff)).to_be_bytes();
    let p = payload_len.to_be_bytes();
    [w[0], w[1], w[2], w[3], p[0], p[1], next, OUTER_TTL]
}

/// [`outer_ipv6_first_words`] as two 32-bit words, each as a 4-byte load of its place in
/// the header reads it (native byte order), with the traffic class taken from `inner`, the
/// inner IPv6 header's first 4 bytes read the same way: a mask and two ORs for the first
/// word and one OR for the second, where the byte-wise build shifts every byte into place.
/// The data plane's fast path stores these. The same bytes as `outer_ipv6_first_words`
/// with the inner traffic class (host tests compare the two).
#[inline(always)]
pub fn outer_ipv6_first_u32s(inner: u32, payload_len: u16, next: u8, flow_label: u32) -> [u32; 2] {
    let tclass = inner & 0x0ff0_0000u32.to_be();
    [
        tclass | 0x6000_0000u32.to_be() | (flow_label & 0x000f_ffff).to_be(),
        u32::from(payload_len.to_be()) | u32::from_ne_bytes([0, 0, next, OUTER_TTL]),
    ]
}

/// A whole outer IPv6 header (the data plane writes the first words and the addresses
/// separately, to keep 40 bytes off its stack).
pub fn outer_ipv6(
    src: &[u8; 16],
    dst: &[u8; 16],
    payload_len: u16,
    next: u8,
    tclass: u8,
    flow_label: u32,
) -> [u8; 40] {
    let mut h = [0u8; IPV6_HLEN];
    h[0..8].copy_from_slice(&outer_ipv6_first_words(
        payload_len,
        next,
        tclass,
        flow_label,
    ));
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{fold, sum_words};

    #[test]
    fn ipv4_outer_fields_and_checksum() {
        let h = outer_ipv4([198, 51, 100, 10], [198, 51, 100, 21], 60, 4, 0xb8).unwrap();
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], 0xb8);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 80);
        assert_eq!(h[6], 0x40);
        assert_eq!((h[8], h[9]), (64, 4));
        assert_eq!(&h[12..16], &[198, 51, 100, 10]);
        assert_eq!(&h[16..20], &[198, 51, 100, 21]);
        assert_eq!(fold(sum_words(&h, 0)), 0, "checksum must verify");
        assert!(outer_ipv4([0; 4], [0; 4], u16::MAX - 19, 4, 0).is_none());
    }

    /// The header `outer_ipv4_words` describes, as bytes.
    fn words_header(src: [u8; 4], dst: [u8; 4], len: u16, proto: u8, tos: u8) -> Option<[u8; 20]> {
        let w = outer_ipv4_words(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            len,
            proto,
            tos,
        )?;
        let mut h = [0u8; 20];
        for (i, w) in w.iter().enumerate() {
            h[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        Some(h)
    }

    #[test]
    fn ipv4_outer_words_are_the_outer_header() {
        for (src, dst, len) in [
            ([198, 51, 100, 10], [198, 51, 100, 21], 60),
            ([0; 4], [0; 4], 0),
            ([255; 4], [255; 4], u16::MAX - 20),
            ([255; 4], [255; 4], u16::MAX - 19),
        ] {
            for (proto, tos) in [(4, 0), (41, 0xb8), (255, 255)] {
                assert_eq!(
                    words_header(src, dst, len, proto, tos),
                    outer_ipv4(src, dst, len, proto, tos)
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_outer_words_agree(
            src in proptest::array::uniform4(proptest::num::u8::ANY),
            dst in proptest::array::uniform4(proptest::num::u8::ANY),
            len in proptest::num::u16::ANY,
            proto in proptest::num::u8::ANY,
            tos in proptest::num::u8::ANY,
        ) {
            proptest::prop_assert_eq!(
                words_header(src, dst, len, proto, tos),
                outer_ipv4(src, dst, len, proto, tos)
            );
        }
    }

    /// The 8 bytes `outer_ipv6_first_u32s` describes, and `outer_ipv6_first_words` with the
    /// traffic class of the same inner word.
    fn ipv6_first_both(inner: [u8; 4], len: u16, next: u8, label: u32) -> ([u8; 8], [u8; 8]) {
        let w = outer_ipv6_first_u32s(u32::from_ne_bytes(inner), len, next, label);
        let mut words = [0u8; 8];
        words[..4].copy_from_slice(&w[0].to_ne_bytes());
        words[4..].copy_from_slice(&w[1].to_ne_bytes());
        let tclass = (inner[0] << 4) | (inner[1] >> 4);
        (words, outer_ipv6_first_words(len, next, tclass, label))
    }

    #[test]
    fn ipv6_outer_first_u32s_are_the_first_words() {
        // Traffic class 0xb8, flow label 0x12345 in the inner header; the outer gets 0xabcde.
        let (words, bytes) = ipv6_first_both([0x6b, 0x81, 0x23, 0x45], 1000, 41, 0xabcde);
        assert_eq!(words, [0x6b, 0x8a, 0xbc, 0xde, 0x03, 0xe8, 41, 64]);
        assert_eq!(words, bytes);
        // Only the label's 20 bits count; the version is 6 whatever the inner word says.
        let (words, bytes) = ipv6_first_both([0xff; 4], u16::MAX, 4, u32::MAX);
        assert_eq!(words, [0x6f, 0xff, 0xff, 0xff, 0xff, 0xff, 4, 64]);
        assert_eq!(words, bytes);
    }

    proptest::proptest! {
        #[test]
        fn ipv6_outer_first_u32s_agree(
            inner in proptest::array::uniform4(proptest::num::u8::ANY),
            len in proptest::num::u16::ANY,
            next in proptest::num::u8::ANY,
            label in proptest::num::u32::ANY,
        ) {
            let (words, bytes) = ipv6_first_both(inner, len, next, label);
            proptest::prop_assert_eq!(words, bytes);
        }
    }

    #[test]
    fn ipv6_outer_fields() {
        let src = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let dst = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21,
        ];
        let h = outer_ipv6(&src, &dst, 1000, 41, 0xb8, 0xabcde);
        assert_eq!(h[0], 0x6b);
        assert_eq!(h[1], 0x8a);
        assert_eq!(&h[1..4], &[0x8a, 0xbc, 0xde]);
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 1000);
        assert_eq!((h[6], h[7]), (41, 64));
        assert_eq!(&h[8..24], &src);
        assert_eq!(&h[24..40], &dst);
    }
}
