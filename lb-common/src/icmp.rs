//! ICMP and ICMPv6 messages the balancer acts on: echo requests to a VIP address (answered
//! by the load balancer itself), and errors about a VIP flow (steered to the backend that
//! owns the flow, found from the packet quoted inside the error).

use crate::{
    maps::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP},
    parse::{Headers, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, PacketBytes},
};

/// ICMP echo request / reply types.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP destination unreachable (code 4: fragmentation needed) and time exceeded.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 types.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// Length of the ICMP / ICMPv6 header (type, code, checksum, 4 more bytes).
pub const ICMP_HLEN: usize = 8;

/// What an ICMP message is, for the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    /// An echo request (ping).
    EchoRequest,
    /// An error quoting a TCP/UDP packet. `flow` is the flow the quoted packet belongs to,
    /// as the balancer keys it: the quoted packet went from the VIP to the client (a
    /// backend's reply), so the flow is client -> VIP.
    Error { flow: FlowKey },
    /// Anything else (replies, errors quoting other protocols, cut short).
    Other,
}

/// Classifies the ICMP or ICMPv6 message of a packet whose headers are `h`.
#[inline(always)]
pub fn classify<P: PacketBytes + ?Sized>(pkt: &P, h: &Headers) -> Icmp {
    let off = usize::from(h.l4_offset);
    let Some(hdr) = pkt.bytes::<2>(off) else {
        return Icmp::Other;
    };
    let (echo, is_error) = match (h.family, h.proto) {
        (FAMILY_V4, IPPROTO_ICMP) => (
            hdr[0] == ICMP_ECHO_REQUEST,
            hdr[0] == ICMP_DEST_UNREACH || hdr[0] == ICMP_TIME_EXCEEDED,
        ),
        (FAMILY_V6, IPPROTO_ICMPV6) => (
            hdr[0] == ICMPV6_ECHO_REQUEST,
            hdr[0] == ICMPV6_DEST_UNREACH
                || hdr[0] == ICMPV6_PACKET_TOO_BIG
                || hdr[0] == ICMPV6_TIME_EXCEEDED,
        ),
        _ => return Icmp::Other,
    };
    if echo {
        return Icmp::EchoRequest;
    }
    if !is_error {
        return Icmp::Other;
    }
    let inner = off + ICMP_HLEN;
    let quoted = if h.family == FAMILY_V4 {
        quoted_v4(pkt, inner)
    } else {
        quoted_v6(pkt, inner)
    };
    match quoted {
        Some(flow) => Icmp::Error { flow },
        None => Icmp::Other,
    }
}

/// The client -> VIP flow of a quoted IPv4 packet (VIP -> client) at `off`.
#[inline(always)]
fn quoted_v4<P: PacketBytes + ?Sized>(pkt: &P, off: usize) -> Option<FlowKey> {
    let ip = pkt.bytes::<IPV4_HLEN>(off)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    if ihl < IPV4_HLEN || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let ports = pkt.bytes::<4>(off + ihl)?;
    let mut vip: Addr = [0; 16];
    let mut client: Addr = [0; 16];
    vip[..4].copy_from_slice(&ip[12..16]);
    client[..4].copy_from_slice(&ip[16..20]);
    Some(reverse(vip, client, ports, proto, FAMILY_V4))
}

/// The client -> VIP flow of a quoted IPv6 packet (VIP -> client) at `off`. Quoted packets
/// with extension headers are not followed.
#[inline(always)]
fn quoted_v6<P: PacketBytes + ?Sized>(pkt: &P, off: usize) -> Option<FlowKey> {
    let fixed = pkt.bytes::<8>(off)?;
    let vip = pkt.bytes::<16>(off + 8)?;
    let client = pkt.bytes::<16>(off + 24)?;
    let proto = fixed[6];
    if fixed[0] >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let ports = pkt.bytes::<4>(off + IPV6_HLEN)?;
    Some(reverse(vip, client, ports, proto, FAMILY_V6))
}

#[inline(always)]
fn reverse(vip: Addr, client: Addr, ports: [u8; 4], proto: u8, family: u8) -> FlowKey {
    FlowKey {
        src: client,
        dst: vip,
        sport: u16::from_ne_bytes([ports[2], ports[3]]),
        dport: u16::from_ne_bytes([ports[0], ports[1]]),
        proto,
        family,
        reserved: [0; 2],
    }
}

/// The MTU to announce to a client in "fragmentation needed" / "packet too big": the
/// egress MTU minus the encapsulation, never below the family's minimum (68 for IPv4,
/// 1280 for IPv6).
#[inline(always)]
pub fn announced_mtu(egress_mtu: u16, outer_len: u16, family: u8) -> u16 {
    let floor = if family == FAMILY_V4 { 68 } else { 1280 };
    egress_mtu.saturating_sub(outer_len).max(floor)
}

/// The first 4 bytes of an ICMP(v6) echo reply made from a request's (type, code,
/// checksum): type changed to `reply_type`, checksum updated incrementally (the rest of the
/// message, and for ICMPv6 the pseudo-header once addresses are swapped, is unchanged).
#[inline(always)]
pub fn echo_reply_header(request: [u8; 4], reply_type: u8) -> [u8; 4] {
    let old = u16::from_be_bytes([request[0], request[1]]);
    let new = u16::from_be_bytes([reply_type, request[1]]);
    let check = crate::csum::replace16(u16::from_be_bytes([request[2], request[3]]), old, new);
    let c = check.to_be_bytes();
    [reply_type, request[1], c[0], c[1]]
}

/// Length of the part of the client's packet an IPv4 "fragmentation needed" quotes: its IP
/// header (without options) and the first 8 bytes of its TCP/UDP header.
pub const QUOTED_V4: usize = 28;
/// Length of the part an ICMPv6 "packet too big" quotes: the IPv6 header (without extension
/// headers) and the first 8 bytes of the TCP/UDP header.
pub const QUOTED_V6: usize = 48;

/// The IPv4 header of an ICMP error of `payload` bytes from `vip` to `client` (checksum
/// included).
#[inline(always)]
pub fn error_ipv4_header(vip: [u8; 4], client: [u8; 4], payload: u16) -> [u8; 20] {
    let t = (IPV4_HLEN as u16 + payload).to_be_bytes();
    let mut ip = [
        0x45,
        0xc0,
        t[0],
        t[1],
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
        vip[0],
        vip[1],
        vip[2],
        vip[3],
        client[0],
        client[1],
        client[2],
        client[3],
    ];
    let c = crate::csum::ipv4_header_checksum(&ip).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    ip
}

/// The ICMP header of "fragmentation needed" announcing `mtu`, given the one's-complement
/// sum of the quoted bytes.
#[inline(always)]
pub fn frag_needed_header(mtu: u16, quoted_sum: u32) -> [u8; 8] {
    let sum = quoted_sum
        + u32::from(u16::from_be_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]))
        + u32::from(mtu);
    let c = crate::csum::fold(sum).to_be_bytes();
    let m = mtu.to_be_bytes();
    [
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        c[0],
        c[1],
        0,
        0,
        m[0],
        m[1],
    ]
}

/// The ICMPv6 header of "packet too big" from `vip` to `client` announcing `mtu`, given
/// the one's-complement sum of the quoted bytes (`QUOTED_V6` of them).
#[inline(always)]
pub fn packet_too_big_header(vip: &Addr, client: &Addr, mtu: u32, quoted_sum: u32) -> [u8; 8] {
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut sum = crate::csum::sum_words(vip, quoted_sum);
    sum = crate::csum::sum_words(client, sum);
    sum += (ICMP_HLEN + QUOTED_V6) as u32 + u32::from(IPPROTO_ICMPV6);
    sum += u32::from(ICMPV6_PACKET_TOO_BIG) << 8;
    sum += (mtu >> 16) + (mtu & 0xffff);
    let c = crate::csum::fold(sum).to_be_bytes();
    let m = mtu.to_be_bytes();
    [ICMPV6_PACKET_TOO_BIG, 0, c[0], c[1], m[0], m[1], m[2], m[3]]
}

/// The first 8 bytes of the IPv6 header of an ICMPv6 error of `payload` bytes.
#[inline(always)]
pub fn error_ipv6_first_words(payload: u16) -> [u8; 8] {
    let p = payload.to_be_bytes();
    [0x60, 0, 0, 0, p[0], p[1], IPPROTO_ICMPV6, 64]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{fold, sum_words};
    use crate::{
        maps::port_from_map,
        parse::{Parsed, parse},
    };

    fn frame(ethertype: [u8; 2], ip: &[u8]) -> [u8; 200] {
        let mut f = [0u8; 200];
        f[12..14].copy_from_slice(&ethertype);
        f[14..14 + ip.len()].copy_from_slice(ip);
        f
    }

    /// An ICMPv4 error from 192.0.2.254 to the VIP quoting a backend's reply VIP:80 ->
    /// client:40000.
    fn v4_error(kind: u8) -> ([u8; 200], usize) {
        let mut ip = [0u8; 20 + 8 + 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&56u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&[192, 0, 2, 254]);
        ip[16..20].copy_from_slice(&[203, 0, 113, 10]);
        ip[20] = kind;
        ip[21] = 4;
        // quoted: VIP:80 -> 192.0.2.1:40000, TCP
        ip[28] = 0x45;
        ip[37] = PROTO_TCP;
        ip[40..44].copy_from_slice(&[203, 0, 113, 10]);
        ip[44..48].copy_from_slice(&[192, 0, 2, 1]);
        ip[48..50].copy_from_slice(&80u16.to_be_bytes());
        ip[50..52].copy_from_slice(&40000u16.to_be_bytes());
        (frame([8, 0], &ip), 14 + 56)
    }

    #[test]
    fn v4_error_gives_the_client_to_vip_flow() {
        let (f, n) = v4_error(ICMP_DEST_UNREACH);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        let Icmp::Error { flow } = classify(&f[..n], &h) else {
            panic!("not an error")
        };
        assert_eq!(&flow.src[..4], &[192, 0, 2, 1]);
        assert_eq!(&flow.dst[..4], &[203, 0, 113, 10]);
        assert_eq!(
            (port_from_map(flow.sport), port_from_map(flow.dport)),
            (40000, 80)
        );
        assert_eq!((flow.proto, flow.family), (PROTO_TCP, FAMILY_V4));
        // Cut inside the quoted ports: not usable.
        let Parsed::Ip(h2) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(classify(&f[..n - 6], &h2), Icmp::Other);
    }

    #[test]
    fn echo_and_other_types() {
        let (mut f, n) = v4_error(ICMP_ECHO_REQUEST);
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        assert_eq!(classify(&f[..n], &h), Icmp::EchoRequest);
        f[34] = ICMP_ECHO_REPLY;
        assert_eq!(classify(&f[..n], &h), Icmp::Other);
    }

    #[test]
    fn v6_packet_too_big() {
        let mut ip = [0u8; 40 + 8 + 48];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&56u16.to_be_bytes());
        ip[6] = IPPROTO_ICMPV6;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe]);
        ip[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        ip[40] = ICMPV6_PACKET_TOO_BIG;
        ip[48] = 0x60;
        ip[54] = PROTO_TCP;
        ip[56..72].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        ip[72..88].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0xc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip[88..90].copy_from_slice(&443u16.to_be_bytes());
        ip[90..92].copy_from_slice(&50000u16.to_be_bytes());
        let f = frame([0x86, 0xdd], &ip);
        let n = 14 + ip.len();
        let Parsed::Ip(h) = parse(&f[..n]) else {
            panic!()
        };
        let Icmp::Error { flow } = classify(&f[..n], &h) else {
            panic!()
        };
        assert_eq!(flow.src[15], 1);
        assert_eq!(flow.dst[15], 0x10);
        assert_eq!(
            (port_from_map(flow.sport), port_from_map(flow.dport)),
            (50000, 443)
        );
    }

    #[test]
    fn echo_reply_checksum_stays_valid() {
        // An echo request with some payload, checksum computed whole.
        let mut msg = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let c = fold(sum_words(&msg, 0)).to_be_bytes();
        msg[2..4].copy_from_slice(&c);
        let h = echo_reply_header([msg[0], msg[1], msg[2], msg[3]], ICMP_ECHO_REPLY);
        msg[..4].copy_from_slice(&h);
        assert_eq!(msg[0], 0);
        assert_eq!(fold(sum_words(&msg, 0)), 0, "reply checksum verifies");
    }

    #[test]
    fn frag_needed_and_packet_too_big_verify() {
        let quoted = [0x45u8; QUOTED_V4];
        let ip = error_ipv4_header(
            [203, 0, 113, 10],
            [192, 0, 2, 1],
            (ICMP_HLEN + QUOTED_V4) as u16,
        );
        assert_eq!(fold(sum_words(&ip, 0)), 0);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56);
        let icmp = frag_needed_header(1480, sum_words(&quoted, 0));
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1480);
        assert_eq!(
            fold(sum_words(&quoted, sum_words(&icmp, 0))),
            0,
            "ICMP checksum verifies"
        );

        let (vip, client) = ([0x20u8; 16], [0x30u8; 16]);
        let q6 = [0x61u8; QUOTED_V6];
        let icmp = packet_too_big_header(&vip, &client, 1460, sum_words(&q6, 0));
        assert_eq!(icmp[0], ICMPV6_PACKET_TOO_BIG);
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1460
        );
        let mut sum = sum_words(&vip, sum_words(&client, 0)) + 56 + 58;
        sum = sum_words(&q6, sum_words(&icmp, sum));
        assert_eq!(fold(sum), 0, "ICMPv6 checksum verifies");
        assert_eq!(error_ipv6_first_words(56), [0x60, 0, 0, 0, 0, 56, 58, 64]);
    }

    #[test]
    fn sum_of_packet_bytes_matches_sum_of_words() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            crate::csum::sum_packet::<_, 8>(&data[..], 0, 0),
            Some(sum_words(&data, 0))
        );
        assert_eq!(crate::csum::sum_packet::<_, 8>(&data[..], 2, 0), None);
    }

    #[test]
    fn announced_mtu_floors() {
        assert_eq!(announced_mtu(1500, 20, FAMILY_V4), 1480);
        assert_eq!(announced_mtu(1500, 40, FAMILY_V6), 1460);
        assert_eq!(announced_mtu(1300, 40, FAMILY_V6), 1280);
        assert_eq!(announced_mtu(60, 20, FAMILY_V4), 68);
    }
}
