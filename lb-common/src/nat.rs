//! NAT: rewriting a packet's addresses and ports with incremental checksums, rewriting
//! ICMP errors about a NAT flow (outer and quoted headers), the connection-tracking clock,
//! and the SNAT port candidates of an allocation. Pure: the XDP program runs these over
//! packet memory, host tests over byte slices.
//!
//! Checksums are updated as RFC 1624 says (`HC' = ~(~HC + ~m + m')`), summing 32-bit
//! words in the machine's byte order: the one's-complement sum does not depend on byte
//! order (RFC 1071, 2.B), so the fields are never byte-swapped.

use crate::{
    maps::{Addr, FAMILY_V4, PROTO_TCP, PROTO_UDP},
    parse::{Headers, IPPROTO_ICMPV6, IPV6_HLEN, PacketBytes},
};

/// Write access to a packet's bytes, bounds-checked.
pub trait PacketWrite: PacketBytes {
    /// Writes `bytes` at `offset`; false (nothing written) if they do not fit.
    fn write<const N: usize>(&mut self, offset: usize, bytes: &[u8; N]) -> bool;
}

impl PacketWrite for [u8] {
    #[inline]
    fn write<const N: usize>(&mut self, offset: usize, bytes: &[u8; N]) -> bool {
        match offset
            .checked_add(N)
            .and_then(|end| self.get_mut(offset..end))
        {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// The connection-tracking clock is `CLOCK_MONOTONIC` (coarse) in units of 2^30 ns
/// (1.07 s): `nat_clock(ns) = ns >> NAT_CLOCK_SHIFT`. Fine enough for idle timeouts of
/// seconds, and an entry's time changes (and is written) about once a second.
pub const NAT_CLOCK_SHIFT: u32 = 30;

/// The tracking clock at monotonic time `ns`.
#[inline(always)]
pub const fn nat_clock(ns: u64) -> u32 {
    (ns >> NAT_CLOCK_SHIFT) as u32
}

/// How many (address, port) candidates a new NAT connection tries before it is refused
/// as `snat_exhausted`.
pub const SNAT_ATTEMPTS: u32 = 8;

/// The SNAT port (host order) of allocation attempt `attempt` for a client whose source
/// port is `client_port` (host order), ports `min..=max`: the client's own port first when
/// it is in the range, then a random one (`random`), then the ports after it, wrapping
/// within the range. `None` for attempt 0 when the client's port is outside the range.
#[inline(always)]
pub fn snat_port(attempt: u32, client_port: u16, random: u32, min: u16, max: u16) -> Option<u16> {
    if attempt == 0 {
        return (client_port >= min && client_port <= max).then_some(client_port);
    }
    let span = u32::from(max.saturating_sub(min)) + 1;
    // Lemire's fast range instead of a division; then probe upwards.
    let start = ((u64::from(random) * u64::from(span)) >> 32) as u32;
    let off = (start + attempt - 1) % span;
    Some(min + off as u16)
}

/// `~old + new` over the 32-bit words of two addresses (the first word only for IPv4).
#[inline(always)]
pub fn addr_delta(old: &Addr, new: &Addr, v4: bool) -> u64 {
    let word =
        |a: &Addr, i: usize| u64::from(u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]));
    let mut d = u64::from(!(word(old, 0) as u32)) + word(new, 0);
    if !v4 {
        let mut i = 4;
        while i < 16 {
            d += u64::from(!(word(old, i) as u32)) + word(new, i);
            i += 4;
        }
    }
    d
}

/// The IPv4 source and destination addresses `s` and `d` as the 8 bytes of the header,
/// made from their 32-bit words: the data plane then loads each address with one
/// instruction and stores them with one, not byte by byte.
#[inline(always)]
fn v4_pair(s: &Addr, d: &Addr) -> [u8; 8] {
    let w = |a: &Addr| u64::from(u32::from_ne_bytes([a[0], a[1], a[2], a[3]]));
    (w(s) | (w(d) << 32)).to_ne_bytes()
}

/// `~old + new` of one 16-bit word.
#[inline(always)]
pub fn word_delta(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// A checksum (as read, in machine order) after the covered data changed by `delta`.
#[inline(always)]
pub fn update(check: u16, delta: u64) -> u16 {
    update_wide(u64::from(check), delta) as u16
}

/// `update` of a checksum held in a 64-bit register (`check` below 2^16), the result below
/// 2^16 too: the complements are xors with 0xffff, so a checksum loaded zero-extended
/// needs no mask before or after.
#[inline(always)]
pub fn update_wide(check: u64, delta: u64) -> u64 {
    u64::from(crate::csum::fold_words((check ^ 0xffff) + delta)) ^ 0xffff
}

/// New addresses and ports of a packet (ports network order in memory, as in `Headers`).
/// Aligned to 8 bytes, so addresses move in two 8-byte words, not sixteen bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

/// The offset of the L4 checksum of a TCP or UDP header at `l4`.
#[inline(always)]
fn l4_checksum_at(proto: u8, l4: usize) -> usize {
    if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 }
}

/// Rewrites the TCP or UDP packet `h` to the addresses and ports of `to`, decrements its
/// TTL / hop limit (the caller has checked it is above 1) and updates the IPv4 header and
/// L4 checksums incrementally. An IPv4 UDP checksum of 0 (none) stays 0; a UDP checksum
/// that comes out 0 is sent as 0xffff. False if the packet is too short (nothing is
/// written then).
#[inline(always)]
pub fn rewrite<P: PacketWrite + ?Sized>(pkt: &mut P, h: &Headers, to: &Rewrite) -> bool {
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    let v4 = h.family == FAMILY_V4;
    let at = l4_checksum_at(h.proto, l4);
    let Some(c) = pkt.bytes::<2>(at) else {
        return false;
    };
    let check = u16::from_ne_bytes(c);
    let addrs = addr_delta(&h.src, &to.src, v4) + addr_delta(&h.dst, &to.dst, v4);
    let ports = word_delta(h.sport, to.sport) + word_delta(h.dport, to.dport);
    let ttl = h.ttl.wrapping_sub(1);
    let ok = if v4 {
        let Some(w) = pkt.bytes::<4>(l3 + 8) else {
            return false;
        };
        let delta = addrs
            + word_delta(
                u16::from_ne_bytes([w[0], w[1]]),
                u16::from_ne_bytes([ttl, w[1]]),
            );
        let ip = update(u16::from_ne_bytes([w[2], w[3]]), delta).to_ne_bytes();
        pkt.write(l3 + 8, &[ttl, w[1], ip[0], ip[1]])
            && pkt.write(l3 + 12, &v4_pair(&to.src, &to.dst))
    } else {
        match pkt.bytes::<2>(l3 + 6) {
            // The next header with the hop limit: two bytes (see `rewrite_quoted`).
            Some(nh) => {
                pkt.write(l3 + 6, &[nh[0], ttl])
                    && pkt.write(l3 + 8, &to.src)
                    && pkt.write(l3 + 24, &to.dst)
            }
            None => false,
        }
    };
    let new = if h.proto == PROTO_UDP && v4 && check == 0 {
        0
    } else {
        let n = update(check, addrs + ports);
        if n == 0 && h.proto == PROTO_UDP {
            0xffff
        } else {
            n
        }
    };
    let (sp, dp) = (to.sport.to_ne_bytes(), to.dport.to_ne_bytes());
    ok && pkt.write(l4, &[sp[0], sp[1], dp[0], dp[1]]) && pkt.write(at, &new.to_ne_bytes())
}

/// Rewrites an ICMP / ICMPv6 error `h` about a NAT flow: the outer addresses become
/// `outer_src` and `outer_dst` (TTL decremented), the quoted packet's addresses and ports
/// become those of `quoted`; the quoted IPv4 header checksum, the quoted TCP/UDP checksum
/// when the error carries it, and the ICMP checksum (with the ICMPv6 pseudo-header) are
/// updated incrementally. False when the packet is not such an error or too short. (The
/// data plane calls the two halves from subprograms of their own, for stack.)
#[inline(always)]
pub fn rewrite_error<P: PacketWrite + ?Sized>(
    pkt: &mut P,
    h: &Headers,
    outer_src: &Addr,
    outer_dst: &Addr,
    quoted: &Rewrite,
) -> bool {
    let delta = rewrite_quoted(pkt, h, quoted);
    delta != NOT_REWRITTEN && rewrite_error_outer(pkt, h, outer_src, outer_dst, delta)
}

/// `rewrite_quoted`'s answer when the packet is not an error it can rewrite (nothing is
/// written then). No real delta has every bit set.
pub const NOT_REWRITTEN: u64 = u64::MAX;

/// The quoted half of `rewrite_error`: rewrites the quoted packet's addresses, ports and
/// checksums, and returns the change of what the ICMP checksum covers (the outer half
/// applies it), or `NOT_REWRITTEN`.
#[inline(always)]
pub fn rewrite_quoted<P: PacketWrite + ?Sized>(pkt: &mut P, h: &Headers, quoted: &Rewrite) -> u64 {
    let l4 = usize::from(h.l4_offset);
    let v4 = h.family == FAMILY_V4;
    let q = l4 + 8;
    // The quoted header's addresses, protocol and the offset of its L4 header.
    let (addr_at, qproto, ql4) = if v4 {
        // Two-byte reads: for a one-byte read LLVM turns the bounds check into one from
        // which the verifier learns no range (see `lb_ebpf::packet::XdpPacket::ones_sum`).
        let (Some(first), Some(p)) = (pkt.bytes::<2>(q), pkt.bytes::<2>(q + 8)) else {
            return NOT_REWRITTEN;
        };
        (q + 12, p[1], q + usize::from(first[0] & 0x0f) * 4)
    } else {
        let Some(p) = pkt.bytes::<2>(q + 6) else {
            return NOT_REWRITTEN;
        };
        (q + 8, p[0], q + IPV6_HLEN)
    };
    if qproto != PROTO_TCP && qproto != PROTO_UDP {
        return NOT_REWRITTEN;
    }
    let qaddrs = if v4 {
        let Some(w) = pkt.words::<2>(addr_at) else {
            return NOT_REWRITTEN;
        };
        words_delta(&w, &quoted.src, &quoted.dst, true)
    } else {
        let Some(w) = pkt.words::<8>(addr_at) else {
            return NOT_REWRITTEN;
        };
        words_delta(&w, &quoted.src, &quoted.dst, false)
    };
    let Some(qports) = pkt.bytes::<4>(ql4) else {
        return NOT_REWRITTEN;
    };
    let qport_delta = word_delta(u16::from_ne_bytes([qports[0], qports[1]]), quoted.sport)
        + word_delta(u16::from_ne_bytes([qports[2], qports[3]]), quoted.dport);
    // Everything the ICMP checksum covers that changes.
    let mut icmp = qaddrs + qport_delta;
    let mut ok = true;
    if v4 {
        // The quoted IPv4 header's checksum (it covers its addresses).
        let Some(c) = pkt.bytes::<2>(q + 10) else {
            return NOT_REWRITTEN;
        };
        let old = u16::from_ne_bytes(c);
        let new = update(old, qaddrs);
        icmp += word_delta(old, new);
        let (s, d) = (&quoted.src, &quoted.dst);
        ok &= pkt.write(q + 10, &new.to_ne_bytes())
            && pkt.write(q + 12, &[s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]);
    } else {
        ok &= pkt.write(q + 8, &quoted.src) && pkt.write(q + 24, &quoted.dst);
    }
    // The quoted TCP/UDP checksum, when the error quotes that much.
    let qat = l4_checksum_at(qproto, ql4);
    if let Some(c) = pkt.bytes::<2>(qat) {
        let old = u16::from_ne_bytes(c);
        if !(qproto == PROTO_UDP && v4 && old == 0) {
            let mut new = update(old, qaddrs + qport_delta);
            if new == 0 && qproto == PROTO_UDP {
                new = 0xffff;
            }
            icmp += word_delta(old, new);
            ok &= pkt.write(qat, &new.to_ne_bytes());
        }
    }
    let (sp, dp) = (quoted.sport.to_ne_bytes(), quoted.dport.to_ne_bytes());
    ok &= pkt.write(ql4, &[sp[0], sp[1], dp[0], dp[1]]);
    if ok { icmp } else { NOT_REWRITTEN }
}

/// The outer half of `rewrite_error`: the outer addresses (and TTL, and the IPv4 header
/// checksum), and the ICMP checksum updated by `delta` (the quoted half's) and, for
/// ICMPv6, by its pseudo-header's change.
#[inline(always)]
pub fn rewrite_error_outer<P: PacketWrite + ?Sized>(
    pkt: &mut P,
    h: &Headers,
    outer_src: &Addr,
    outer_dst: &Addr,
    delta: u64,
) -> bool {
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    let v4 = h.family == FAMILY_V4;
    let Some(ic) = pkt.bytes::<4>(l4) else {
        return false;
    };
    let mut icmp = delta;
    let outer = addr_delta(&h.src, outer_src, v4) + addr_delta(&h.dst, outer_dst, v4);
    let ttl = h.ttl.wrapping_sub(1);
    let ok = if v4 {
        let Some(w) = pkt.bytes::<4>(l3 + 8) else {
            return false;
        };
        let d = outer
            + word_delta(
                u16::from_ne_bytes([w[0], w[1]]),
                u16::from_ne_bytes([ttl, w[1]]),
            );
        let ip = update(u16::from_ne_bytes([w[2], w[3]]), d).to_ne_bytes();
        let (s, d) = (outer_src, outer_dst);
        pkt.write(l3 + 8, &[ttl, w[1], ip[0], ip[1]])
            && pkt.write(l3 + 12, &[s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]])
    } else {
        // ICMPv6's checksum covers the pseudo-header, so the outer addresses too.
        icmp += outer;
        match pkt.bytes::<2>(l3 + 6) {
            Some(nh) => {
                pkt.write(l3 + 6, &[nh[0], ttl])
                    && pkt.write(l3 + 8, outer_src)
                    && pkt.write(l3 + 24, outer_dst)
            }
            None => false,
        }
    };
    let new = update(u16::from_ne_bytes([ic[2], ic[3]]), icmp).to_ne_bytes();
    ok && pkt.write(l4 + 2, &new)
}

/// `~old + new` of a source and destination address read as 32-bit words `old` (two for
/// IPv4, eight for IPv6: source words first).
#[inline(always)]
fn words_delta<const N: usize>(old: &[u64; N], src: &Addr, dst: &Addr, v4: bool) -> u64 {
    let n = if v4 { 1 } else { 4 };
    let word = |a: &Addr, i: usize| {
        u64::from(u32::from_ne_bytes([
            a[4 * i],
            a[4 * i + 1],
            a[4 * i + 2],
            a[4 * i + 3],
        ]))
    };
    let mut d = 0;
    let mut i = 0;
    while i < n {
        d += u64::from(!(old[i] as u32)) + word(src, i);
        d += u64::from(!(old[n + i] as u32)) + word(dst, i);
        i += 1;
    }
    d
}

/// Whether `h` (ICMP or ICMPv6) is of the protocol an error of its family must have.
#[inline(always)]
pub fn is_icmp_of_family(h: &Headers) -> bool {
    if h.family == FAMILY_V4 {
        h.proto == crate::parse::IPPROTO_ICMP
    } else {
        h.proto == IPPROTO_ICMPV6
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::parse::{Parsed, parse};

    /// The Internet checksum of `data` computed from scratch, 16-bit big-endian words.
    fn from_scratch(data: &[u8], mut sum: u32) -> u16 {
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
        let mut s = 0u32;
        for c in src.chunks(2).chain(dst.chunks(2)) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        s + u32::from(proto) + len as u32
    }

    /// An IPv4 TCP or UDP frame with correct checksums.
    fn v4_frame(
        proto: u8,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
        let mut f = std::vec![0u8; 14 + 20 + l4len];
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = from_scratch(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let l4 = &mut f[34..];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            l4[12] = 5 << 4;
            l4[13] = 0x10;
        } else {
            l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
        }
        let n = l4.len() - payload.len();
        l4[n..].copy_from_slice(payload);
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        let mut c = from_scratch(&f[34..], pseudo(&src, &dst, proto, l4len));
        if c == 0 && proto == PROTO_UDP {
            c = 0xffff;
        }
        f[34 + at..34 + at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn headers(f: &[u8]) -> Headers {
        match parse(f) {
            Parsed::Ip(h) => h,
            _ => panic!("not IP"),
        }
    }

    fn addr4(a: [u8; 4]) -> Addr {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn rewrite_matches_a_checksum_from_scratch() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            for payload in [&b""[..], b"x", b"hello world, odd!"] {
                let mut f = v4_frame(proto, [192, 0, 2, 1], 40000, [203, 0, 113, 10], 80, payload);
                let h = headers(&f);
                let to = Rewrite {
                    src: addr4([198, 18, 0, 2]),
                    dst: addr4([198, 51, 100, 20]),
                    sport: 41234u16.to_be(),
                    dport: 32768u16.to_be(),
                };
                assert!(rewrite(&mut f[..], &h, &to));
                let want = v4_frame(
                    proto,
                    [198, 18, 0, 2],
                    41234,
                    [198, 51, 100, 20],
                    32768,
                    payload,
                );
                let mut want = want;
                want[22] = 63;
                let c = {
                    let mut ip = want[14..34].to_vec();
                    ip[10] = 0;
                    ip[11] = 0;
                    from_scratch(&ip, 0)
                };
                want[24..26].copy_from_slice(&c.to_be_bytes());
                assert_eq!(f, want, "proto {proto} payload {payload:?}");
            }
        }
    }

    #[test]
    fn udp_checksum_zero_stays_zero() {
        let mut f = v4_frame(PROTO_UDP, [192, 0, 2, 1], 5353, [203, 0, 113, 10], 53, b"q");
        f[34 + 6] = 0;
        f[34 + 7] = 0;
        let h = headers(&f);
        let to = Rewrite {
            src: addr4([198, 18, 0, 2]),
            dst: addr4([198, 51, 100, 20]),
            sport: 1u16.to_be(),
            dport: 2u16.to_be(),
        };
        assert!(rewrite(&mut f[..], &h, &to));
        assert_eq!(&f[40..42], &[0, 0]);
    }

    #[test]
    fn port_candidates() {
        assert_eq!(snat_port(0, 40000, 0, 1024, 65535), Some(40000));
        assert_eq!(snat_port(0, 80, 0, 1024, 65535), None);
        // Random start, then the following ports, wrapping inside the range.
        assert_eq!(snat_port(1, 0, 0, 40000, 40003), Some(40000));
        assert_eq!(snat_port(2, 0, 0, 40000, 40003), Some(40001));
        assert_eq!(snat_port(1, 0, u32::MAX, 40000, 40003), Some(40003));
        assert_eq!(snat_port(2, 0, u32::MAX, 40000, 40003), Some(40000));
        for a in 1..SNAT_ATTEMPTS {
            let p = snat_port(a, 0, 0x1234_5678, 1024, 65535).unwrap();
            assert!(p >= 1024);
        }
    }

    #[test]
    fn clock_units() {
        assert_eq!(nat_clock(0), 0);
        assert_eq!(nat_clock(1 << 30), 1);
        assert_eq!(nat_clock(350 << 30), 350);
    }
}
