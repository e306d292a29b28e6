//! What a router refuses to forward: the checks the balancer makes on packets bound for a
//! VIP before it sends them to a backend or answers them (RFC 1812 sections 4.2.2.5, 5.2.2,
//! 5.3.1 and 5.3.7, and the Linux forwarding path, which the balancer stands in for).
//!
//! Pure functions over the parsed headers and the packet bytes, run by the kernel and by
//! host tests alike. Only VIP packets are checked: every other packet goes to the kernel
//! unchanged, which makes its own decisions.

use crate::{
    maps::Addr,
    parse::{IPV4_HLEN, PacketBytes},
};

/// Whether the IPv4 header at `l3`, `ihl` bytes long (20 to 60), has a correct checksum:
/// its 16-bit words sum to 0xffff in one's complement. Summed as 32-bit words (five loads
/// for a header without options); a header the packet does not hold is not correct.
#[inline(always)]
pub fn ipv4_header_checksum_ok<P: PacketBytes + ?Sized>(pkt: &P, l3: usize, ihl: usize) -> bool {
    let Some(w) = pkt.words::<5>(l3) else {
        return false;
    };
    let mut sum = w[0] + w[1] + w[2] + w[3] + w[4];
    // Options: at most 40 bytes, ten words.
    let mut off = IPV4_HLEN;
    for _ in 0..10 {
        if off + 4 > ihl {
            break;
        }
        let Some(w) = pkt.bytes::<4>(l3 + off) else {
            return false;
        };
        sum += u64::from(u32::from_ne_bytes(w));
        off += 4;
    }
    fold16(sum) == 0xffff
}

/// Folds a sum of 32-bit words (at most 2^16 of them) to 16 bits, one's complement. The
/// byte order the words were read in does not matter for the comparison with 0xffff.
#[inline(always)]
pub fn fold16(mut sum: u64) -> u32 {
    // Below 2^48: two 32-bit halves add to below 2^33, then four 16-bit quarters of that
    // to below 2^19, and two more folds end it.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + ((sum >> 16) & 0xffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u32
}

/// Whether `sum`, a sum of 32-bit words (an IPv4 header without options is five), read
/// in any byte order, is that of a correct header: it folds to 0xffff
/// (`csum::fold_words`, three 16-bit folds).
#[inline(always)]
pub fn words_sum_ok(sum: u64) -> bool {
    crate::csum::fold_words(sum) == 0xffff
}

/// Whether an IPv4 source address is one no packet to a VIP may come from: "this network"
/// 0/8, loopback 127/8, multicast 224/4, the reserved 240/4 with the limited broadcast
/// 255.255.255.255, or the destination (the VIP) itself (RFC 1812 5.3.7; the kernel drops
/// these as martians before forwarding).
#[inline(always)]
pub fn martian_source_v4(src: &Addr, dst: &Addr) -> bool {
    let first = src[0];
    first == 0 || first == 127 || first >= 224 || src[..4] == dst[..4]
}

/// Whether an IPv6 source address is one no packet to a VIP may come from: unspecified
/// `::`, loopback `::1`, multicast `ff00::/8` (RFC 4291 2.7), IPv4-mapped `::ffff:0:0/96`
/// (never on the wire, RFC 4291 2.5.5.2), or the destination (the VIP) itself.
#[inline(always)]
pub fn martian_source_v6(src: &Addr, dst: &Addr) -> bool {
    let half = |a: &Addr, i: usize| {
        u64::from_be_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    let (hi, lo) = (half(src, 0), half(src, 8));
    (hi == 0 && (lo <= 1 || lo >> 32 == 0xffff))
        || src[0] == 0xff
        || (hi == half(dst, 0) && lo == half(dst, 8))
}

/// Whether a frame with destination MAC `dst` is addressed to this host, whose MAC is
/// `ours`; an all-zero `ours` (unknown) accepts every frame. (Compared as a 32-bit and a
/// 16-bit word: two loads and two compares each side.)
#[inline(always)]
pub fn frame_for_us(dst: &[u8; 6], ours: &[u8; 6]) -> bool {
    let hi = |m: &[u8; 6]| u32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
    let lo = |m: &[u8; 6]| u16::from_ne_bytes([m[4], m[5]]);
    let (oh, ol) = (hi(ours), lo(ours));
    (oh == hi(dst) && ol == lo(dst)) || (oh == 0 && ol == 0)
}

/// Whether a MAC address is a group (multicast or broadcast) address.
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(o: [u8; 4]) -> Addr {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&o);
        a
    }

    fn v6(s: &str) -> Addr {
        s.parse::<core::net::Ipv6Addr>().unwrap().octets()
    }

    /// An IPv4 header (with `options`) whose checksum is right, in a frame at offset 14.
    fn frame(options: &[u8]) -> ([u8; 100], usize) {
        let ihl = 20 + options.len();
        let mut f = [0u8; 100];
        let h = &mut f[14..14 + ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&(ihl as u16).to_be_bytes());
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&[192, 0, 2, 1]);
        h[16..20].copy_from_slice(&[203, 0, 113, 10]);
        h[20..].copy_from_slice(options);
        let mut sum = 0u32;
        for w in h.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        let c = crate::csum::fold(sum).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        (f, 14 + ihl)
    }

    #[test]
    fn three_folds_decide_a_words_sum_as_fold16_does() {
        // Every sum of up to eight words near multiples of 0xffff, and pseudo-random ones.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for k in 0..(8u64 << 32) / 0xffff / 4096 {
            for d in [0, 1, 2, 0xfffe, 0xffff, 0x1_0000] {
                let sum = (k * 4096 * 0xffff).wrapping_add(d) % (8 << 32);
                assert_eq!(words_sum_ok(sum), fold16(sum) == 0xffff, "{sum:#x}");
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let sum = x % (8 << 32);
            assert_eq!(words_sum_ok(sum), fold16(sum) == 0xffff, "{sum:#x}");
        }
        for sum in [
            0,
            0xffff,
            0x1fffe,
            0xffff_ffff,
            0x1_0000_fffe,
            7 * 0xffff_ffff,
        ] {
            assert_eq!(words_sum_ok(sum), fold16(sum) == 0xffff, "{sum:#x}");
        }
    }

    #[test]
    fn ipv4_checksums_with_and_without_options() {
        for opts in [&[][..], &[1, 1, 1, 0][..], &[0x94, 4, 0, 0, 7, 7, 7, 7][..]] {
            let (mut f, n) = frame(opts);
            let ihl = 20 + opts.len();
            assert!(ipv4_header_checksum_ok(&f[..n], 14, ihl), "{opts:?}");
            // Every single-bit error is caught.
            for byte in 14..n {
                for bit in 0..8 {
                    f[byte] ^= 1 << bit;
                    assert!(!ipv4_header_checksum_ok(&f[..n], 14, ihl), "{byte}/{bit}");
                    f[byte] ^= 1 << bit;
                }
            }
            // A header cut short is not correct.
            assert!(!ipv4_header_checksum_ok(&f[..n - 1], 14, ihl));
        }
    }

    #[test]
    fn martian_sources() {
        let vip = v4([203, 0, 113, 10]);
        for bad in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
            [203, 0, 113, 10],
        ] {
            assert!(martian_source_v4(&v4(bad), &vip), "{bad:?}");
        }
        for good in [
            [192, 0, 2, 1],
            [1, 0, 0, 0],
            [223, 255, 255, 255],
            [203, 0, 113, 11],
        ] {
            assert!(!martian_source_v4(&v4(good), &vip), "{good:?}");
        }
        let vip6 = v6("2001:db8:203::10");
        for bad in [
            "::",
            "::1",
            "ff02::1",
            "ff0e::5",
            "::ffff:192.0.2.1",
            "2001:db8:203::10",
        ] {
            assert!(martian_source_v6(&v6(bad), &vip6), "{bad}");
        }
        for good in [
            "2001:db8:c::1",
            "::2",
            "fe80::1",
            "fc00::1",
            "2001:db8:203::11",
        ] {
            assert!(!martian_source_v6(&v6(good), &vip6), "{good}");
        }
    }

    #[test]
    fn frames_and_group_addresses() {
        let ours = [2, 0, 0, 0, 0, 1];
        assert!(frame_for_us(&ours, &ours));
        assert!(!frame_for_us(&[2, 0, 0, 0, 0, 2], &ours));
        assert!(!frame_for_us(&[0xff; 6], &ours));
        assert!(frame_for_us(&[0xff; 6], &[0; 6]), "unknown MAC: no check");
        assert!(is_group_mac(&[0xff; 6]));
        assert!(is_group_mac(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group_mac(&ours));
    }
}
