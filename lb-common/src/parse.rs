//! Ethernet / VLAN / IPv4 / IPv6 / TCP / UDP header parsing over any byte source.
//!
//! The parser reads through [`PacketBytes`], the only place bounds are checked: the XDP
//! program implements it over packet memory with the pointer comparison the verifier
//! understands, and `[u8]` implements it for host tests and userspace predictions. Both run
//! the same [`parse`], so userspace knows exactly how the kernel sees a packet.
//!
//! The parser never fails outright: it says how far it understood the packet, and the
//! caller decides (a packet it cannot classify as VIP traffic is passed on untouched).

use crate::maps::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};

/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype of an 802.1ad (QinQ outer) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// IP protocol number of IPv4-in-IP encapsulation.
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP encapsulation.
pub const IPPROTO_IPV6: u8 = 41;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How many IPv6 extension headers the parser walks before giving up on finding the L4
/// header: a chain of up to this many is followed. Real traffic carries zero to two; a
/// longer chain to a VIP is dropped as malformed (and counted), one to any other address is
/// passed untouched.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Read access to a packet's bytes, bounds-checked.
#[expect(
    clippy::len_without_is_empty,
    reason = "a packet is never empty where this is used; `len` bounds header lengths"
)]
pub trait PacketBytes {
    /// Length of the packet in bytes.
    fn len(&self) -> usize;
    /// The `N` bytes at `offset`, or `None` if the packet is shorter than `offset + N`.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The `N` 32-bit words (`4 * N` bytes) at `offset`, each read in native byte order and
    /// zero-extended to 64 bits (for checksum sums), or `None` if the packet is shorter. The
    /// XDP packet checks the bounds once and loads each word with one instruction.
    #[inline(always)]
    fn words<const N: usize>(&self, offset: usize) -> Option<[u64; N]> {
        let mut out = [0u64; N];
        let mut i = 0;
        while i < N {
            out[i] = u64::from(u32::from_ne_bytes(self.bytes::<4>(offset + 4 * i)?));
            i += 1;
        }
        Some(out)
    }
}

impl PacketBytes for [u8] {
    #[inline]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(self.get(offset..end)?);
        Some(out)
    }
}

/// What the parser found after the IP header.
///
/// A fieldless enum on purpose: the ports live in [`Headers`] and are always initialised.
/// With the ports inside an enum variant, LLVM leaves them undefined on the other paths and
/// may then compute with whatever register holds them there, a packet pointer included,
/// which the verifier refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A complete TCP or UDP header: `sport`, `dport` and `tcp_flags` are valid.
    Ports,
    /// An IP fragment (IPv4 MF or offset, or an IPv6 fragment header that is not atomic).
    Fragment,
    /// The TCP/UDP header is cut short or invalid (TCP data offset < 5, UDP length < 8),
    /// or the IPv6 extension-header chain is too long to follow.
    Malformed,
    /// Another protocol (ICMP, ESP, GRE, ...).
    Other,
}

/// The parsed headers of an IP packet.
///
/// Aligned to 8 bytes with the addresses first: the BPF backend then moves each address
/// with two 8-byte loads instead of sixteen byte loads (which also cost a stack slot each
/// when registers run out).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub src: Addr,
    pub dst: Addr,
    /// Offset of the IP header (14, or 18 behind a VLAN tag).
    pub l3_offset: u16,
    /// Offset of the L4 header (after IPv4 options or IPv6 extension headers).
    pub l4_offset: u16,
    /// Length of the IP datagram from its header (IPv4 total length, IPv6 40 + payload
    /// length); never more than the bytes present after `l3_offset`.
    pub ip_len: u16,
    /// Source port (network order in memory); 0 unless `l4` is `Ports`.
    pub sport: u16,
    /// Destination port (network order in memory); 0 unless `l4` is `Ports`.
    pub dport: u16,
    /// Whether one VLAN tag precedes the IP header.
    pub vlan: bool,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// The L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    /// IPv4 TOS byte or IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// IPv4 "don't fragment" flag (always true for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// TCP flags byte; 0 for UDP and unless `l4` is `Ports`.
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub l4: L4,
    /// TCP sequence number (network order in memory); 0 for UDP and unless `l4` is
    /// `Ports`. A SYN's tells its retransmission from a new connection on the same port.
    pub tcp_seq: u32,
}

impl Headers {
    /// The packet's 5-tuple as a flow key, or `None` when there are no ports.
    #[inline(always)]
    pub fn five_tuple(&self) -> Option<FlowKey> {
        match self.l4 {
            L4::Ports => Some(FlowKey {
                src: self.src,
                dst: self.dst,
                sport: self.sport,
                dport: self.dport,
                proto: self.proto,
                family: self.family,
                reserved: [0; 2],
            }),
            _ => None,
        }
    }
}

/// The outcome of parsing a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, two VLAN tags, ...).
    NotIp,
    /// An IP ethertype, but the IP header is truncated or inconsistent (bad version, IHL
    /// below 5 or past the end, total length shorter than the header or longer than the
    /// frame). Nothing about it can be trusted.
    BadIp,
    /// IP headers understood; see [`Headers::l4`] for the rest.
    Ip(Headers),
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses Ethernet, at most one VLAN tag, IPv4 (with options) or IPv6 (with up to
/// [`MAX_IPV6_EXT_HEADERS`] extension headers), and the TCP or UDP ports.
#[inline(always)]
pub fn parse<P: PacketBytes + ?Sized>(pkt: &P) -> Parsed {
    let Some(eth) = pkt.bytes::<ETH_HLEN>(0) else {
        return Parsed::NotIp;
    };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = pkt.bytes::<VLAN_HLEN>(ETH_HLEN) else {
            return Parsed::NotIp;
        };
        ethertype = be16([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
        vlan = true;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(pkt, l3, vlan),
        ETH_P_IPV6 => parse_ipv6(pkt, l3, vlan),
        _ => Parsed::NotIp,
    }
}

/// The common case of [`parse`], cheaper: an untagged frame with IPv4 without options or
/// IPv6 without extension headers, not a fragment, carrying a complete TCP or UDP header.
/// Returns `Parsed::Ip` with exactly the headers `parse` returns for such a packet, and
/// `Parsed::NotIp` for any other, which `parse` must then be asked about.
///
/// The offsets are constants here (no VLAN tag, no options, no extension-header walk), so
/// the kernel's copy loads every field at a fixed offset and is less than half of
/// `parse`'s general path. (`Parsed` rather than an `Option`: an `Option` around the enum
/// left the payload undefined on paths the verifier walks.)
#[inline(always)]
pub fn parse_common<P: PacketBytes + ?Sized>(pkt: &P) -> Parsed {
    let Some(ethertype) = pkt.bytes::<2>(12) else {
        return Parsed::NotIp;
    };
    match be16(ethertype) {
        ETH_P_IP => ipv4::<P, true>(pkt, ETH_HLEN, false),
        ETH_P_IPV6 => ipv6::<P, true>(pkt, ETH_HLEN, false),
        _ => Parsed::NotIp,
    }
}

/// What `ipv4` and `ipv6` answer with `COMMON` where the general parser would say anything
/// but `L4::Ports`.
#[inline(always)]
const fn bad<const COMMON: bool>() -> Parsed {
    if COMMON { Parsed::NotIp } else { Parsed::BadIp }
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(pkt: &P, l3: usize, vlan: bool) -> Parsed {
    ipv4::<P, false>(pkt, l3, vlan)
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(pkt: &P, l3: usize, vlan: bool) -> Parsed {
    ipv6::<P, false>(pkt, l3, vlan)
}

/// IPv4 at `l3`. With `COMMON` ([`parse_common`]): `Parsed::NotIp` unless the header has
/// no options, the packet is not a fragment and its TCP/UDP header is complete.
#[inline(always)]
fn ipv4<P: PacketBytes + ?Sized, const COMMON: bool>(pkt: &P, l3: usize, vlan: bool) -> Parsed {
    let Some(ip) = pkt.bytes::<IPV4_HLEN>(l3) else {
        return bad::<COMMON>();
    };
    if COMMON && ip[0] != 0x45 {
        return Parsed::NotIp;
    }
    if ip[0] >> 4 != 4 {
        return Parsed::BadIp;
    }
    let ihl = if COMMON {
        IPV4_HLEN
    } else {
        usize::from(ip[0] & 0x0f) * 4
    };
    let total = usize::from(be16([ip[2], ip[3]]));
    if ihl < IPV4_HLEN || total < ihl || total > pkt.len() - l3 {
        return bad::<COMMON>();
    }
    let frag = be16([ip[6], ip[7]]);
    if COMMON && frag & 0x3fff != 0 {
        return Parsed::NotIp;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip[12..16]);
    dst[..4].copy_from_slice(&ip[16..20]);
    let proto = ip[9];
    let l4_offset = l3 + ihl;
    let (l4, ports) = if frag & 0x3fff != 0 {
        // MF set or a non-zero offset.
        (L4::Fragment, NO_PORTS)
    } else {
        parse_l4(pkt, proto, l4_offset, l3 + total)
    };
    if COMMON && l4 != L4::Ports {
        return Parsed::NotIp;
    }
    Parsed::Ip(Headers {
        l3_offset: l3 as u16,
        l4_offset: l4_offset as u16,
        ip_len: total as u16,
        vlan,
        family: FAMILY_V4,
        proto,
        tos: ip[1],
        dont_fragment: frag & 0x4000 != 0,
        ttl: ip[8],
        src,
        dst,
        l4,
        sport: ports.0,
        dport: ports.1,
        tcp_flags: ports.2,
        tcp_seq: ports.3,
    })
}

/// IPv6 at `l3`. With `COMMON` ([`parse_common`]): `Parsed::NotIp` unless the fixed
/// header is followed directly by a complete TCP or UDP header.
#[inline(always)]
fn ipv6<P: PacketBytes + ?Sized, const COMMON: bool>(pkt: &P, l3: usize, vlan: bool) -> Parsed {
    // The fixed header in one read: one bounds check, five 8-byte loads in the kernel.
    let Some(ip) = pkt.bytes::<IPV6_HLEN>(l3) else {
        return bad::<COMMON>();
    };
    let mut fixed = [0u8; 8];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    fixed.copy_from_slice(&ip[..8]);
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    if fixed[0] >> 4 != 6 {
        return bad::<COMMON>();
    }
    let total = IPV6_HLEN + usize::from(be16([fixed[4], fixed[5]]));
    if total > pkt.len() - l3 {
        return bad::<COMMON>();
    }
    let end = l3 + total;
    let mut next = fixed[6];
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    // Set when the walk reaches a header that is not an extension header.
    let mut walked = false;
    if COMMON {
        if next != PROTO_TCP && next != PROTO_UDP {
            return Parsed::NotIp;
        }
        walked = true;
    }
    for _ in 0..if COMMON { 0 } else { MAX_IPV6_EXT_HEADERS } {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                let Some(h) = pkt.bytes::<2>(off) else { break };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment header: 8 octets; "atomic" when offset and M are both zero.
            44 => {
                let Some(h) = pkt.bytes::<4>(off) else { break };
                next = h[0];
                if be16([h[2], h[3]]) & 0xfff9 != 0 {
                    fragment = true;
                }
                off += 8;
            }
            // Authentication header: length in 4-octet units, not counting the first 2.
            51 => {
                let Some(h) = pkt.bytes::<2>(off) else { break };
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            _ => {
                walked = true;
                break;
            }
        }
    }
    // After exactly MAX_IPV6_EXT_HEADERS extension headers the loop ends without looking at
    // the next one: it is the L4 header unless it is one more extension header.
    if !walked && !matches!(next, 0 | 43 | 44 | 51 | 60) {
        walked = true;
    }
    let (l4, ports) = if fragment {
        (L4::Fragment, NO_PORTS)
    } else if walked {
        parse_l4(pkt, next, off, end)
    } else {
        // Cut short, or ran out of header budget before reaching the L4 header.
        (L4::Malformed, NO_PORTS)
    };
    if COMMON && l4 != L4::Ports {
        return Parsed::NotIp;
    }
    let tos = (fixed[0] << 4) | (fixed[1] >> 4);
    Parsed::Ip(Headers {
        l3_offset: l3 as u16,
        l4_offset: off as u16,
        ip_len: total as u16,
        vlan,
        family: FAMILY_V6,
        proto: next,
        tos,
        dont_fragment: true,
        ttl: fixed[7],
        src,
        dst,
        l4,
        sport: ports.0,
        dport: ports.1,
        tcp_flags: ports.2,
        tcp_seq: ports.3,
    })
}

/// (source port, destination port, TCP flags, TCP sequence number) when there are none.
const NO_PORTS: (u16, u16, u8, u32) = (0, 0, 0, 0);

/// Reads the ports of a TCP or UDP header at `off`; `end` is where the IP datagram ends.
#[inline(always)]
fn parse_l4<P: PacketBytes + ?Sized>(
    pkt: &P,
    proto: u8,
    off: usize,
    end: usize,
) -> (L4, (u16, u16, u8, u32)) {
    match proto {
        PROTO_TCP => {
            if off + 20 > end {
                return (L4::Malformed, NO_PORTS);
            }
            let Some(tcp) = pkt.bytes::<14>(off) else {
                return (L4::Malformed, NO_PORTS);
            };
            let data_offset = usize::from(tcp[12] >> 4) * 4;
            if data_offset < 20 || off + data_offset > end {
                return (L4::Malformed, NO_PORTS);
            }
            let ports = (
                u16::from_ne_bytes([tcp[0], tcp[1]]),
                u16::from_ne_bytes([tcp[2], tcp[3]]),
                tcp[13],
                u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            );
            (L4::Ports, ports)
        }
        PROTO_UDP => {
            if off + 8 > end {
                return (L4::Malformed, NO_PORTS);
            }
            let Some(udp) = pkt.bytes::<6>(off) else {
                return (L4::Malformed, NO_PORTS);
            };
            let len = usize::from(be16([udp[4], udp[5]]));
            if len < 8 || off + len > end {
                return (L4::Malformed, NO_PORTS);
            }
            (
                L4::Ports,
                (
                    u16::from_ne_bytes([udp[0], udp[1]]),
                    u16::from_ne_bytes([udp[2], udp[3]]),
                    0,
                    0,
                ),
            )
        }
        _ => (L4::Other, NO_PORTS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::port_from_map;

    /// A minimal frame builder for these unit tests (the fixture suite has a full one).
    fn eth(ethertype: u16) -> [u8; 14] {
        let mut e = [0u8; 14];
        e[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        e[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        e[12..14].copy_from_slice(&ethertype.to_be_bytes());
        e
    }

    fn ipv4(proto: u8, payload: &[u8], options: &[u8]) -> [u8; 128] {
        let mut out = [0u8; 128];
        let ihl = 20 + options.len();
        out[0] = 0x40 | (ihl / 4) as u8;
        out[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
        out[6] = 0x40;
        out[8] = 64;
        out[9] = proto;
        out[12..16].copy_from_slice(&[192, 0, 2, 1]);
        out[16..20].copy_from_slice(&[203, 0, 113, 10]);
        out[20..ihl].copy_from_slice(options);
        out[ihl..ihl + payload.len()].copy_from_slice(payload);
        out
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    fn frame(parts: &[&[u8]]) -> ([u8; 256], usize) {
        let mut f = [0u8; 256];
        let mut n = 0;
        for p in parts {
            f[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        (f, n)
    }

    fn tcp_v4_frame(options: &[u8]) -> ([u8; 256], usize) {
        let t = tcp(40000, 80, TCP_SYN);
        let ip = ipv4(PROTO_TCP, &t, options);
        let ip_len = 20 + options.len() + 20;
        frame(&[&eth(ETH_P_IP), &ip[..ip_len]])
    }

    #[test]
    fn ipv4_tcp() {
        let (f, n) = tcp_v4_frame(&[]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!("not parsed")
        };
        assert_eq!((h.l3_offset, h.l4_offset, h.ip_len), (14, 34, 40));
        assert_eq!(h.family, FAMILY_V4);
        assert_eq!(&h.dst[..4], &[203, 0, 113, 10]);
        assert!(h.dont_fragment);
        assert_eq!(h.l4, L4::Ports);
        assert_eq!(
            (port_from_map(h.sport), port_from_map(h.dport), h.tcp_flags),
            (40000, 80, TCP_SYN)
        );
        assert_eq!(u32::from_be(h.tcp_seq), 0x0102_0304);
    }

    #[test]
    fn ipv4_options_move_the_l4_header() {
        let (f, n) = tcp_v4_frame(&[1, 1, 1, 0, 0x94, 4, 0, 0]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!("not parsed")
        };
        assert_eq!(h.l4_offset, 14 + 28);
        assert_eq!(h.l4, L4::Ports);
    }

    #[test]
    fn every_truncation_is_classified_without_panic() {
        let (f, n) = tcp_v4_frame(&[1, 1, 1, 0]);
        for cut in 0..n {
            let p = parse(&f[..cut]);
            match cut {
                0..14 => assert_eq!(p, Parsed::NotIp, "cut {cut}"),
                // The IPv4 total length is now longer than the frame.
                _ => assert_eq!(p, Parsed::BadIp, "cut {cut}"),
            }
        }
        assert!(matches!(parse(&f[..n]), Parsed::Ip(_)));
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        // A 54-byte TCP/IPv4 frame padded to the 60-byte Ethernet minimum.
        let (f, n) = tcp_v4_frame(&[]);
        let Parsed::Ip(h) = parse(&f[..n + 6]) else {
            panic!()
        };
        assert_eq!(h.ip_len, 40);
    }

    #[test]
    fn bad_ihl_and_lengths() {
        let (mut f, n) = tcp_v4_frame(&[]);
        f[14] = 0x44; // IHL 4
        assert_eq!(parse(&f[..n]), Parsed::BadIp);
        f[14] = 0x4f; // IHL 15 = 60 bytes > total length 40
        assert_eq!(parse(&f[..n]), Parsed::BadIp);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&19u16.to_be_bytes()); // total < header
        assert_eq!(parse(&f[..n]), Parsed::BadIp);
        f[16..18].copy_from_slice(&41u16.to_be_bytes()); // total > frame
        assert_eq!(parse(&f[..n]), Parsed::BadIp);
        f[16..18].copy_from_slice(&39u16.to_be_bytes()); // TCP header cut by total length
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.l4, L4::Malformed);
    }

    #[test]
    fn tcp_data_offset_below_five_is_malformed() {
        let (mut f, n) = tcp_v4_frame(&[]);
        f[34 + 12] = 4 << 4;
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.l4, L4::Malformed);
    }

    #[test]
    fn ipv4_fragments() {
        for frag in [0x2000u16, 0x0001, 0x2010] {
            let (mut f, n) = tcp_v4_frame(&[]);
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            let Parsed::Ip(h) = parse(&f[..n]) else {
                panic!()
            };
            assert_eq!(h.l4, L4::Fragment, "frag field {frag:#x}");
        }
    }

    #[test]
    fn vlan_and_non_ip() {
        let t = tcp(1, 2, 0);
        let ip = ipv4(PROTO_TCP, &t, &[]);
        let (f, n) = frame(&[&eth(ETH_P_8021Q), &[0, 100, 0x08, 0x00], &ip[..40]]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert!(h.vlan);
        assert_eq!((h.l3_offset, h.l4_offset), (18, 38));
        // Two tags: not parsed further.
        let (f, n) = frame(&[
            &eth(ETH_P_8021AD),
            &[0, 1, 0x81, 0x00],
            &[0, 2, 8, 0],
            &ip[..40],
        ]);
        assert_eq!(parse(&f[..n]), Parsed::NotIp);
        let (f, n) = frame(&[&eth(0x0806), &[0u8; 28]]);
        assert_eq!(parse(&f[..n]), Parsed::NotIp);
    }

    fn ipv6(next: u8, payload: &[u8]) -> [u8; 200] {
        let mut out = [0u8; 200];
        out[0] = 0x60;
        out[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        out[6] = next;
        out[7] = 64;
        out[8..24].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        out[24..40].copy_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        out[40..40 + payload.len()].copy_from_slice(payload);
        out
    }

    #[test]
    fn ipv6_extension_headers() {
        let t = tcp(40000, 443, TCP_ACK);
        // hop-by-hop (8) -> destination options (16) -> TCP
        let mut payload = [0u8; 44];
        payload[0] = 60;
        payload[8] = PROTO_TCP;
        payload[9] = 1;
        payload[24..44].copy_from_slice(&t);
        let ip = ipv6(0, &payload);
        let (f, n) = frame(&[&eth(ETH_P_IPV6), &ip[..84]]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.proto, PROTO_TCP);
        assert_eq!(h.l4_offset, 14 + 40 + 24);
        assert_eq!((h.l4, h.tcp_flags), (L4::Ports, TCP_ACK));

        // A non-atomic fragment header.
        let mut payload = [0u8; 28];
        payload[0] = PROTO_TCP;
        payload[3] = 1; // M flag
        payload[8..28].copy_from_slice(&t);
        let ip = ipv6(44, &payload);
        let (f, n) = frame(&[&eth(ETH_P_IPV6), &ip[..68]]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.l4, L4::Fragment);

        // An atomic fragment (offset 0, M 0) still has its ports.
        let mut payload = [0u8; 28];
        payload[0] = PROTO_TCP;
        payload[8..28].copy_from_slice(&t);
        let ip = ipv6(44, &payload);
        let (f, n) = frame(&[&eth(ETH_P_IPV6), &ip[..68]]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.l4, L4::Ports);

        // A chain of exactly MAX_IPV6_EXT_HEADERS is followed; one more is too long.
        assert_eq!(ext_chain(MAX_IPV6_EXT_HEADERS, &t), L4::Ports);
        assert_eq!(ext_chain(MAX_IPV6_EXT_HEADERS + 1, &t), L4::Malformed);
    }

    /// What the parser finds after `n` destination-options headers before TCP segment `t`.
    fn ext_chain(n: usize, t: &[u8; 20]) -> L4 {
        let mut payload = [0u8; 8 * (MAX_IPV6_EXT_HEADERS + 1) + 20];
        for i in 0..n {
            payload[i * 8] = if i + 1 == n { PROTO_TCP } else { 60 };
        }
        payload[8 * n..8 * n + 20].copy_from_slice(t);
        let ip = ipv6(if n == 0 { PROTO_TCP } else { 60 }, &payload[..8 * n + 20]);
        let len = 40 + 8 * n + 20;
        let (f, m) = frame(&[&eth(ETH_P_IPV6), &ip[..len]]);
        let Parsed::Ip(h) = parse(&f[..m]) else {
            panic!()
        };
        h.l4
    }

    #[test]
    fn udp_zero_length_is_malformed() {
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        let ip = ipv4(PROTO_UDP, &udp, &[]);
        let (f, n) = frame(&[&eth(ETH_P_IP), &ip[..28]]);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(h.l4, L4::Malformed);
    }

    /// Whether `parse` found the shape `parse_common` takes: untagged, no IPv4 options or
    /// IPv6 extension headers, complete TCP/UDP ports.
    fn common_shape(h: &Headers) -> bool {
        let l4 = if h.family == FAMILY_V4 { 34 } else { 54 };
        h.l4 == L4::Ports && !h.vlan && h.l3_offset == 14 && h.l4_offset == l4
    }

    /// `parse_common` answers exactly where the packet has the common shape, and then with
    /// what `parse` says.
    fn assert_common_agrees(data: &[u8]) {
        match (parse_common(data), parse(data)) {
            (Parsed::Ip(c), Parsed::Ip(h)) => {
                assert_eq!(c, h);
                assert!(common_shape(&c));
            }
            (Parsed::Ip(c), p) => panic!("parse_common {c:?}, parse {p:?}"),
            (Parsed::NotIp, Parsed::Ip(h)) => {
                assert!(!common_shape(&h), "parse_common missed {h:?}")
            }
            (Parsed::NotIp, _) => {}
            (Parsed::BadIp, _) => panic!("parse_common says BadIp"),
        }
    }

    /// The common-case frames, TCP and UDP over IPv4 and IPv6.
    fn common_frames() -> [([u8; 256], usize); 4] {
        let t = tcp(40000, 80, TCP_ACK);
        let mut udp = [0u8; 12];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        let (v4t, v4u) = (ipv4(PROTO_TCP, &t, &[]), ipv4(PROTO_UDP, &udp, &[]));
        let (v6t, v6u) = (ipv6(PROTO_TCP, &t), ipv6(PROTO_UDP, &udp));
        [
            frame(&[&eth(ETH_P_IP), &v4t[..40]]),
            frame(&[&eth(ETH_P_IP), &v4u[..32]]),
            frame(&[&eth(ETH_P_IPV6), &v6t[..60]]),
            frame(&[&eth(ETH_P_IPV6), &v6u[..52]]),
        ]
    }

    #[test]
    fn common_case_parses_as_the_general_parser() {
        for (f, n) in common_frames() {
            assert!(matches!(parse_common(&f[..n]), Parsed::Ip(_)));
            for len in 0..=n + 4 {
                assert_common_agrees(&f[..len]);
            }
        }
        // Each of the shapes the general parser handles beyond the common one.
        let (f, n) = tcp_v4_frame(&[1, 1, 1, 0]);
        assert_eq!(parse_common(&f[..n]), Parsed::NotIp);
        assert_common_agrees(&f[..n]);
        let (f, n) = tcp_v4_frame(&[]);
        let mut tagged = [0u8; 256];
        tagged[..12].copy_from_slice(&f[..12]);
        tagged[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        tagged[16..n + 4].copy_from_slice(&f[12..n]);
        assert_eq!(parse_common(&tagged[..n + 4]), Parsed::NotIp);
        assert_common_agrees(&tagged[..n + 4]);
    }

    proptest::proptest! {
        /// Common-case frames with bytes changed (any header field, the ethertype, the IP
        /// version and length, the L4 lengths) and cut anywhere: `parse_common` agrees with
        /// `parse`.
        #[test]
        fn common_case_agrees_on_mutations(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..80, proptest::num::u8::ANY), 0..4),
            cut in 0usize..90,
        ) {
            let (mut f, n) = common_frames()[which];
            for (at, b) in edits {
                f[at] = b;
            }
            assert_common_agrees(&f[..n.min(cut.max(n / 2))]);
            assert_common_agrees(&f[..n]);
        }

        /// Arbitrary bytes never panic the parser, and whatever it reports lies inside the
        /// frame.
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Parsed::Ip(h) = parse(&data[..]) {
                proptest::prop_assert!(usize::from(h.l3_offset) + usize::from(h.ip_len) <= data.len());
            }
            assert_common_agrees(&data[..]);
        }

        /// Random IPv4 frames (with a valid IP ethertype) are classified consistently.
        #[test]
        fn random_ipv4_bodies(body in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let mut data = eth(ETH_P_IP).to_vec();
            data.extend_from_slice(&body);
            let _ = parse(&data[..]);
            assert_common_agrees(&data[..]);
        }
    }
}
