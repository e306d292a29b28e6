//! Golden packet fixtures for the balancer: a description, an input frame, the expected
//! action, the expected output frame, and the counter that must move. The same fixtures
//! feed the fixture test and the per-packet benchmark.

use std::net::IpAddr;

use lb_common::stats::{ACTIONS, Reason};

use crate::{
    lab::Lab,
    packet::{
        ACK, ETH_P_8021AD, ETH_P_8021Q, Ext, FIN, ICMP, PSH, Packet, ROUTER_MAC, RST, SYN, TCP,
    },
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// What the frame must look like after the program.
#[derive(Clone, Debug)]
pub enum Output {
    /// Byte for byte the input.
    Unchanged,
    /// Exactly this frame.
    Frame(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub output: Output,
    /// The `lb_common::stats::Reason` counter that must move by one.
    pub reason: Reason,
    /// For forwarded packets, the backend id userspace predicted.
    pub backend: Option<u32>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

/// A client address of the fixtures.
pub fn client4() -> IpAddr {
    ip("192.0.2.1")
}

pub fn client6() -> IpAddr {
    ip("2001:db8:c::1")
}

/// Every balancer fixture, with expectations computed from the lab's prediction.
pub fn balancer_fixtures(lab: &Lab) -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut encap = |name: &'static str, p: Packet, action: u32| {
        let (id, frame) = lab.expected_encap(&p);
        out.push(Fixture {
            name,
            input: p.build(),
            action,
            output: Output::Frame(frame),
            reason: Reason::Forwarded,
            backend: Some(id),
        });
    };
    let (c4, c6) = (client4(), client6());

    // Forwarded, encapsulated.
    encap(
        "tcp4 SYN to a VIP: IPv4-in-IPv4 to the predicted backend",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN),
        XDP_TX,
    );
    encap(
        "tcp4 data without SYN (flow unknown here, e.g. after a restart elsewhere)",
        Packet::tcp(c4, 40001, ip("203.0.113.10"), 80, ACK | PSH)
            .payload(b"GET / HTTP/1.1\r\n\r\n"),
        XDP_TX,
    );
    encap(
        "tcp4 FIN",
        Packet::tcp(c4, 40002, ip("203.0.113.10"), 80, FIN | ACK),
        XDP_TX,
    );
    encap(
        "udp4 to a UDP VIP",
        Packet::udp(c4, 5353, ip("203.0.113.10"), 53).payload(&[0xab; 32]),
        XDP_TX,
    );
    encap(
        "tcp6 SYN to a v6 VIP: IPv6-in-IPv6",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, SYN),
        XDP_TX,
    );
    encap(
        "udp6 to a v6 UDP VIP",
        Packet::udp(c6, 5353, ip("2001:db8:203::20"), 53).payload(b"query"),
        XDP_TX,
    );
    // Long enough for the fast path (`fast::packet6` reads 14 bytes of L4); the one above
    // is the general path's.
    encap(
        "udp6 to a v6 UDP VIP, a new flow's first datagram of 32 bytes",
        Packet::udp(c6, 5354, ip("2001:db8:203::20"), 53).payload(&[0xcd; 32]),
        XDP_TX,
    );
    encap(
        "udp6 to a v6 UDP VIP, the same flow's second datagram",
        Packet::udp(c6, 5354, ip("2001:db8:203::20"), 53).payload(&[0xef; 40]),
        XDP_TX,
    );
    encap(
        "tcp4 to a VIP with IPv6 backends: IPv4-in-IPv6",
        Packet::tcp(c4, 40000, ip("203.0.113.20"), 80, SYN),
        XDP_TX,
    );
    encap(
        "any-port VIP, port 8080",
        Packet::tcp(c4, 40000, ip("203.0.113.30"), 8080, SYN),
        XDP_TX,
    );
    encap(
        "any-port VIP, port 22",
        Packet::tcp(c4, 40000, ip("203.0.113.30"), 22, SYN),
        XDP_TX,
    );
    encap(
        "source-affinity VIP, client port 40000",
        Packet::tcp(c4, 40000, ip("203.0.113.40"), 80, SYN),
        XDP_TX,
    );
    encap(
        "source-affinity VIP, same client, port 50000",
        Packet::tcp(c4, 50000, ip("203.0.113.40"), 80, SYN),
        XDP_TX,
    );
    encap(
        "VLAN-tagged tcp4: encapsulated inside its VLAN, sent back out the trunk",
        Packet::tcp(c4, 40003, ip("203.0.113.10"), 80, SYN).vlan(100),
        XDP_TX,
    );
    encap(
        "IPv4 with options (IHL 7): parsed, inner packet kept whole",
        Packet::tcp(c4, 40004, ip("203.0.113.10"), 80, SYN)
            .ipv4_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0]),
        XDP_TX,
    );
    encap(
        "DSCP/ECN of the inner packet copied to the outer header",
        Packet::tcp(c4, 40005, ip("203.0.113.10"), 80, SYN).tos(0xb9),
        XDP_TX,
    );
    encap(
        "minimum-size frame with Ethernet padding: lengths from the IP header",
        Packet::udp(c4, 5000, ip("203.0.113.10"), 53).trailer(&[0; 18]),
        XDP_TX,
    );
    encap(
        "IPv6 with hop-by-hop and destination options before TCP",
        Packet::tcp(c6, 40001, ip("2001:db8:203::10"), 443, SYN)
            .ipv6_ext(Ext::HopByHop { len8: 0 })
            .ipv6_ext(Ext::DestOpts { len8: 1 }),
        XDP_TX,
    );
    encap(
        "IPv6 atomic fragment (offset 0, no M): carries its ports, balanced",
        Packet::tcp(c6, 40002, ip("2001:db8:203::10"), 443, SYN).ipv6_ext(Ext::Fragment {
            offset: 0,
            more: false,
            id: 7,
        }),
        XDP_TX,
    );
    encap(
        "backend reached through another interface: redirected",
        Packet::tcp(c4, 40000, ip("203.0.113.70"), 80, SYN),
        XDP_REDIRECT,
    );

    encap(
        "IPv6 with exactly 6 extension headers (the most the parser follows): forwarded",
        ext_chain(c6, lb_common::parse::MAX_IPV6_EXT_HEADERS, 40010),
        XDP_TX,
    );
    encap(
        "IPv4 TTL 2: forwarded (one more hop is allowed)",
        Packet::tcp(c4, 40011, ip("203.0.113.10"), 80, SYN).ttl(2),
        XDP_TX,
    );

    // Next hop not resolved yet: dropped, the controller told to resolve it.
    let p = Packet::tcp(c4, 40000, ip("203.0.113.80"), 80, SYN);
    let pred = lab.lb.predict(&p.build()).unwrap().unwrap();
    out.push(Fixture {
        name: "next hop MAC unknown: dropped (the controller is asked to resolve it)",
        input: p.build(),
        action: XDP_DROP,
        output: Output::Unchanged,
        reason: Reason::DropNoNeigh,
        backend: Some(pred.backend()),
    });

    // Not VIP traffic: passed byte for byte.
    let mut pass = |name: &'static str, p: Packet, why: Reason| {
        out.push(Fixture {
            name,
            input: p.build(),
            action: XDP_PASS,
            output: Output::Unchanged,
            reason: why,
            backend: None,
        });
    };
    pass(
        "ARP request",
        Packet::arp_request(
            "192.0.2.1".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        ),
        Reason::PassNotIp,
    );
    pass(
        "LLDP frame",
        Packet::ethertype(0x88cc, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1])
            .macs([0x01, 0x80, 0xc2, 0, 0, 0x0e], crate::packet::ROUTER_MAC),
        Reason::PassNotIp,
    );
    pass(
        "tcp4 to another address",
        Packet::tcp(c4, 40000, ip("203.0.113.11"), 80, SYN),
        Reason::PassNotVip,
    );

    pass(
        "ICMP echo request to another address",
        Packet::icmp(c4, ip("203.0.113.11"), 8, 0, &[0, 1, 0, 1]),
        Reason::PassNotVip,
    );
    pass(
        "ICMP echo reply to a VIP address",
        Packet::icmp(c4, ip("203.0.113.10"), 0, 0, &[0, 1, 0, 1]),
        Reason::PassNotVip,
    );
    pass(
        "tcp4 to a VIP address that is also the host's own, on a port with no VIP: the host's",
        Packet::tcp(c4, 40000, ip("203.0.113.40"), 22, SYN),
        Reason::PassNotVip,
    );
    pass(
        "tcp6 to a v6 VIP address that is also the host's own, another port: the host's",
        Packet::tcp(c6, 40000, ip("2001:db8:203::20"), 22, SYN),
        Reason::PassNotVip,
    );
    pass(
        "tcp4 to another address in a frame for another MAC: the kernel's to judge",
        Packet::tcp(c4, 40000, ip("203.0.113.11"), 80, SYN).macs(OTHER_MAC, ROUTER_MAC),
        Reason::PassNotVip,
    );
    pass(
        "tcp4 with TTL 1 and a bad header checksum to another address: untouched",
        Packet::tcp(c4, 40000, ip("203.0.113.11"), 80, SYN)
            .ttl(1)
            .ipv4_checksum(0x1234),
        Reason::PassNotVip,
    );
    pass(
        "tcp6 to another address",
        Packet::tcp(c6, 40000, ip("2001:db8:203::11"), 443, SYN),
        Reason::PassNotVip,
    );
    pass(
        "tcp4 from the LB host's own subnet to a non-VIP",
        Packet::tcp(ip("198.51.100.21"), 22, ip("198.51.100.1"), 40000, ACK),
        Reason::PassNotVip,
    );
    pass(
        "two VLAN tags (QinQ) in front of a VIP packet: not parsed",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN)
            .vlan_tpid(ETH_P_8021AD, 10)
            .vlan_tpid(ETH_P_8021Q, 20),
        Reason::PassNotIp,
    );
    pass(
        "IPv4 header cut short",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).truncate(14 + 16),
        Reason::PassBadIp,
    );
    pass(
        "IPv4 IHL below 5",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).ipv4_ihl(4),
        Reason::PassBadIp,
    );
    pass(
        "IPv4 total length beyond the frame",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).ipv4_total_len(200),
        Reason::PassBadIp,
    );
    pass(
        "IPv6 payload length beyond the frame",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, SYN).ipv6_payload_len(400),
        Reason::PassBadIp,
    );
    pass(
        "fragment to a non-VIP address",
        Packet::udp(c4, 1, ip("203.0.113.11"), 53).ipv4_frag(0x2000),
        Reason::PassNotVip,
    );

    // VIP traffic that cannot be forwarded: dropped with a reason.
    let mut drop = |name: &'static str, p: Packet, why: Reason| {
        out.push(Fixture {
            name,
            input: p.build(),
            action: XDP_DROP,
            output: Output::Unchanged,
            reason: why,
            backend: None,
        });
    };
    drop(
        "first IPv4 fragment (MF) to a VIP",
        Packet::udp(c4, 5000, ip("203.0.113.10"), 53)
            .payload(&[1; 64])
            .ipv4_frag(0x2000),
        Reason::DropFragment,
    );
    drop(
        "later IPv4 fragment (offset) to a VIP address",
        Packet::ip_proto(c4, ip("203.0.113.10"), 17)
            .payload(&[1; 64])
            .ipv4_frag(0x0010),
        Reason::DropFragment,
    );
    drop(
        "IPv6 fragment to a VIP",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, SYN).ipv6_ext(Ext::Fragment {
            offset: 0,
            more: true,
            id: 9,
        }),
        Reason::DropFragment,
    );
    drop(
        "TCP header cut short inside a consistent IP packet",
        Packet::ip_proto(c4, ip("203.0.113.10"), TCP)
            .payload(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0]),
        Reason::DropMalformed,
    );
    drop(
        "TCP data offset below 5",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).tcp_data_offset(4),
        Reason::DropMalformed,
    );
    drop(
        "UDP length 0",
        Packet::udp(c4, 5000, ip("203.0.113.10"), 53).udp_len(0),
        Reason::DropMalformed,
    );
    drop(
        "IPv6 with 7 extension headers (one more than the parser follows)",
        ext_chain(c6, lb_common::parse::MAX_IPV6_EXT_HEADERS + 1, 40000),
        Reason::DropMalformed,
    );
    // To an address that has VIPs, but no VIP takes the packet: passed, the kernel would
    // route it back to the router, which sends it here again.
    drop(
        "tcp4 to the VIP address on another port",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 443, SYN),
        Reason::DropNotVipPort,
    );
    drop(
        "udp4 to the VIP address and port of a TCP VIP",
        Packet::udp(c4, 40000, ip("203.0.113.10"), 80),
        Reason::DropNotVipPort,
    );
    drop(
        "tcp6 to a v6 VIP address on another port",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 22, SYN),
        Reason::DropNotVipPort,
    );
    drop(
        "GRE (another protocol) to a VIP address",
        Packet::ip_proto(c4, ip("203.0.113.10"), 47).payload(&[0; 8]),
        Reason::DropNotVipPort,
    );
    // What a router would not forward (RFC 1812; the kernel's forwarding path).
    drop(
        "VIP packet with a bad IPv4 header checksum",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).ipv4_checksum(0x1234),
        Reason::DropBadIpChecksum,
    );
    drop(
        "VIP packet with IPv4 options and a bad header checksum",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN)
            .ipv4_options(&[0x94, 0x04, 0, 0])
            .ipv4_checksum(0x1234),
        Reason::DropBadIpChecksum,
    );
    drop(
        "VIP packet with TTL 1",
        Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).ttl(1),
        Reason::DropTtl,
    );
    drop(
        "VIP packet with TTL 0",
        Packet::udp(c4, 5000, ip("203.0.113.10"), 53).ttl(0),
        Reason::DropTtl,
    );
    drop(
        "IPv6 VIP packet with hop limit 1",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, SYN).ttl(1),
        Reason::DropTtl,
    );
    for (name, src) in [
        ("VIP packet from 0.0.0.0", "0.0.0.0"),
        ("VIP packet from 0/8", "0.1.2.3"),
        ("VIP packet from loopback", "127.0.0.1"),
        ("VIP packet from a multicast source", "224.0.0.5"),
        ("VIP packet from 240/4", "240.0.0.1"),
        ("VIP packet from 255.255.255.255", "255.255.255.255"),
        ("VIP packet from the VIP itself", "203.0.113.10"),
    ] {
        drop(
            name,
            Packet::tcp(ip(src), 40000, ip("203.0.113.10"), 80, SYN),
            Reason::DropMartian,
        );
    }
    for (name, src) in [
        ("IPv6 VIP packet from ::", "::"),
        ("IPv6 VIP packet from ::1", "::1"),
        ("IPv6 VIP packet from a multicast source", "ff02::1"),
        (
            "IPv6 VIP packet from an IPv4-mapped source",
            "::ffff:192.0.2.1",
        ),
        ("IPv6 VIP packet from the VIP itself", "2001:db8:203::10"),
    ] {
        drop(
            name,
            Packet::tcp(ip(src), 40000, ip("2001:db8:203::10"), 443, SYN),
            Reason::DropMartian,
        );
    }
    for (name, mac) in [
        ("VIP packet in a frame for another host's MAC", OTHER_MAC),
        ("VIP packet in a broadcast frame", [0xff; 6]),
        ("VIP packet in a multicast frame", [0x01, 0, 0x5e, 0, 0, 1]),
    ] {
        drop(
            name,
            Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).macs(mac, ROUTER_MAC),
            Reason::DropNotOurMac,
        );
    }
    drop(
        "IPv6 VIP packet in a multicast frame",
        Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, SYN)
            .macs([0x33, 0x33, 0, 0, 0, 1], ROUTER_MAC),
        Reason::DropNotOurMac,
    );
    drop(
        "VIP with no backend",
        Packet::tcp(c4, 40000, ip("203.0.113.50"), 80, SYN),
        Reason::DropNoBackend,
    );
    drop(
        "backend behind an unreachable route",
        Packet::tcp(c4, 40000, ip("203.0.113.60"), 80, SYN),
        Reason::DropNoRoute,
    );
    drop(
        "IPv6 VIP with an IPv4 backend (cannot be encapsulated)",
        Packet::tcp(c6, 40000, ip("2001:db8:203::30"), 80, SYN),
        Reason::DropFamily,
    );
    let _ = (ICMP, RST);
    out.extend(icmp_fixtures(lab));
    out
}

/// ICMP: echo answered, errors steered to the flow's backend, too-big signalled.
fn icmp_fixtures(lab: &Lab) -> Vec<Fixture> {
    let mut out = Vec::new();
    let (c4, c6) = (client4(), client6());
    let (vip4, vip6) = (ip("203.0.113.10"), ip("2001:db8:203::10"));
    let payload = b"abcdefghijklmnopqrstuvwx";
    let reply = |to: Packet| {
        Output::Frame(
            to.macs(crate::packet::ROUTER_MAC, crate::packet::LB_MAC)
                .build(),
        )
    };

    // Echo requests to a VIP address are answered by the balancer (TTL 64, id 0).
    let mut echo4 = vec![0x12, 0x34, 0, 7];
    echo4.extend_from_slice(payload);
    out.push(Fixture {
        name: "ICMP echo request to a VIP address: answered by the balancer",
        input: Packet::icmp(c4, vip4, 8, 0, &echo4).tos(0x10).build(),
        action: XDP_TX,
        output: reply(
            Packet::icmp(vip4, c4, 0, 0, &echo4)
                .tos(0x10)
                .ipv4_id(0)
                .ipv4_frag(0),
        ),
        reason: Reason::IcmpEchoAnswered,
        backend: None,
    });
    out.push(Fixture {
        name: "ICMPv6 echo request to a VIP address: answered by the balancer",
        input: Packet::icmp(c6, vip6, 128, 0, &echo4).build(),
        action: XDP_TX,
        output: reply(Packet::icmp(vip6, c6, 129, 0, &echo4)),
        reason: Reason::IcmpEchoAnswered,
        backend: None,
    });

    // An odd-length payload (the checksum pads it), TTL 1 (addressed to the VIP, not
    // forwarded): answered.
    let mut odd = vec![0x12, 0x34, 0, 8];
    odd.extend_from_slice(b"odd");
    out.push(Fixture {
        name: "ICMP echo request with an odd-length payload and TTL 1: answered",
        input: Packet::icmp(c4, vip4, 8, 0, &odd).ttl(1).build(),
        action: XDP_TX,
        output: reply(Packet::icmp(vip4, c4, 0, 0, &odd).ipv4_id(0).ipv4_frag(0)),
        reason: Reason::IcmpEchoAnswered,
        backend: None,
    });
    let big: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    out.push(Fixture {
        name: "ICMPv6 echo request of 1,400 bytes: answered",
        input: Packet::icmp(c6, vip6, 128, 0, &big).build(),
        action: XDP_TX,
        output: reply(Packet::icmp(vip6, c6, 129, 0, &big)),
        reason: Reason::IcmpEchoAnswered,
        backend: None,
    });
    let refused = |name: &'static str, input: Vec<u8>, why: Reason| Fixture {
        name,
        input,
        action: XDP_DROP,
        output: Output::Unchanged,
        reason: why,
        backend: None,
    };
    // The ICMP checksum is at 14 + 20 + 2 (IPv4) and 14 + 40 + 2 (IPv6).
    out.push(refused(
        "ICMP echo request with a bad checksum: not answered",
        corrupt(Packet::icmp(c4, vip4, 8, 0, &echo4).build(), 36),
        Reason::DropBadIcmpChecksum,
    ));
    out.push(refused(
        "ICMPv6 echo request with a bad checksum: not answered",
        corrupt(Packet::icmp(c6, vip6, 128, 0, &echo4).build(), 56),
        Reason::DropBadIcmpChecksum,
    ));
    out.push(refused(
        "ICMP echo request in a broadcast frame: not answered",
        Packet::icmp(c4, vip4, 8, 0, &echo4)
            .macs([0xff; 6], ROUTER_MAC)
            .build(),
        Reason::DropNotOurMac,
    ));
    out.push(refused(
        "ICMP echo request from a broadcast source: not answered",
        Packet::icmp(ip("255.255.255.255"), vip4, 8, 0, &echo4).build(),
        Reason::DropMartian,
    ));
    out.push(refused(
        "ICMPv6 echo request from a multicast source: not answered",
        Packet::icmp(ip("ff02::1"), vip6, 128, 0, &echo4).build(),
        Reason::DropMartian,
    ));
    out.push(refused(
        "ICMP echo request with a bad IPv4 header checksum: not answered",
        Packet::icmp(c4, vip4, 8, 0, &echo4)
            .ipv4_checksum(0x4321)
            .build(),
        Reason::DropBadIpChecksum,
    ));

    // Errors quoting a backend's reply (VIP -> client) go to the backend of that flow.
    let steer = |name: &'static str, err: Packet, flow: Packet| {
        let pred = lab.lb.predict(&flow.build()).unwrap().expect("a VIP flow");
        let backend = lab.backend_addr(pred.backend());
        let source = match backend {
            IpAddr::V4(_) => IpAddr::V4(crate::lab::SOURCE_V4),
            IpAddr::V6(_) => IpAddr::V6(crate::lab::SOURCE_V6),
        };
        let frame = err.encapsulated(
            source,
            backend,
            crate::lab::neighbour_mac(backend),
            crate::packet::LB_MAC,
            pred.hash,
        );
        Fixture {
            name,
            input: err.build(),
            action: XDP_TX,
            output: Output::Frame(frame),
            reason: Reason::IcmpErrorSteered,
            backend: Some(pred.backend()),
        }
    };
    let reply4 = Packet::tcp(vip4, 80, c4, 40100, ACK);
    out.push(steer(
        "ICMP fragmentation-needed about a VIP flow: sent to the flow's backend",
        Packet::too_big(ip("192.0.2.254"), vip4, 1400, &reply4),
        Packet::tcp(c4, 40100, vip4, 80, ACK),
    ));
    let reply6 = Packet::tcp(ip("2001:db8:203::10"), 443, c6, 40200, ACK);
    out.push(steer(
        "ICMPv6 packet-too-big about a VIP flow: sent to the flow's backend",
        Packet::too_big(ip("2001:db8:c::fe"), vip6, 1280, &reply6),
        Packet::tcp(c6, 40200, vip6, 443, ACK),
    ));
    let not_vip = Packet::tcp(vip4, 8443, c4, 40100, ACK);
    out.push(Fixture {
        name: "ICMP error about a flow to a port that is no VIP: passed",
        input: Packet::too_big(ip("192.0.2.254"), vip4, 1400, &not_vip).build(),
        action: XDP_PASS,
        output: Output::Unchanged,
        reason: Reason::PassNotVip,
        backend: None,
    });

    // Too big once encapsulated (fx0's MTU is 1500): the client is told the usable MTU.
    // The balancer's own answer: DSCP CS6, no id, DF clear for IPv4; no flow label for IPv6.
    let signalled = |name: &'static str, big: Packet, vip: IpAddr, client: IpAddr, mtu: u16| {
        let answer = Packet::too_big(vip, client, mtu, &big);
        let answer = match vip {
            IpAddr::V4(_) => answer.tos(0xc0).ipv4_id(0).ipv4_frag(0),
            IpAddr::V6(_) => answer.flow_label(0),
        };
        Fixture {
            name,
            input: big.build(),
            action: XDP_TX,
            output: reply(answer),
            reason: Reason::TooBigSignalled,
            backend: None,
        }
    };
    out.push(signalled(
        "IPv4 VIP packet with DF too big once encapsulated: fragmentation needed, MTU 1480",
        Packet::tcp(c4, 40300, vip4, 80, ACK).payload(&[0x5a; 1450]),
        vip4,
        c4,
        1480,
    ));
    out.push(signalled(
        "IPv4 VIP packet too big for IPv6 encapsulation: MTU 1460 announced",
        Packet::tcp(c4, 40301, ip("203.0.113.20"), 80, ACK).payload(&[0x5a; 1440]),
        ip("203.0.113.20"),
        c4,
        1460,
    ));
    out.push(signalled(
        "IPv6 VIP packet too big once encapsulated: packet too big, MTU 1460",
        Packet::tcp(c6, 40302, vip6, 443, ACK).payload(&[0x5a; 1430]),
        vip6,
        c6,
        1460,
    ));
    out.push(signalled(
        "oversized (2954-byte) frame to a VIP: fragmentation needed, MTU 1480",
        Packet::tcp(c4, 40303, vip4, 80, ACK).payload(&[0x77; 2900]),
        vip4,
        c4,
        1480,
    ));
    out.push(Fixture {
        name: "IP-in-IP to a VIP address: not a VIP protocol, dropped (it would loop)",
        input: Packet::ip_proto(c4, vip4, 4)
            .payload(&Packet::tcp(c4, 1, ip("198.51.100.21"), 80, SYN).ip_bytes())
            .build(),
        action: XDP_DROP,
        output: Output::Unchanged,
        reason: Reason::DropNotVipPort,
        backend: None,
    });
    out.push(Fixture {
        name: "IPv4 VIP packet too big without DF: dropped (cannot fragment, must not signal)",
        input: Packet::udp(c4, 5000, vip4, 53)
            .payload(&[1; 1460])
            .ipv4_frag(0)
            .build(),
        action: XDP_DROP,
        output: Output::Unchanged,
        reason: Reason::DropTooBig,
        backend: None,
    });
    out
}

/// A SYN to the v6 VIP behind `n` destination-options headers.
fn ext_chain(c6: IpAddr, n: usize, sport: u16) -> Packet {
    let mut p = Packet::tcp(c6, sport, ip("2001:db8:203::10"), 443, SYN);
    for _ in 0..n {
        p = p.ipv6_ext(Ext::DestOpts { len8: 0 });
    }
    p
}

/// Another host's MAC on the LB's segment.
pub const OTHER_MAC: crate::packet::Mac = [0x02, 0, 0, 0, 0, 0x77];

/// `frame` with byte `at` flipped.
fn corrupt(mut frame: Vec<u8>, at: usize) -> Vec<u8> {
    frame[at] ^= 0xff;
    frame
}

/// Runs one fixture in the lab and checks action, output and counters; returns an error
/// message instead of panicking so a test can report every failing fixture at once.
pub fn check(lab: &Lab, f: &Fixture) -> Result<(), String> {
    let before = lab.lb.global_stats().map_err(|e| e.to_string())?;
    let (action, out) = lab.run(&f.input);
    let after = lab.lb.global_stats().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    if action != f.action {
        problems.push(format!("action {action}, expected {}", f.action));
    }
    let want = match &f.output {
        Output::Unchanged => &f.input,
        Output::Frame(w) => w,
    };
    if &out != want {
        problems.push(format!(
            "output differs: {}",
            crate::packet::diff(&out, want)
        ));
    }
    let moved: Vec<(usize, u64)> = after
        .iter()
        .zip(&before)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a - b))
        .collect();
    let expected = {
        let mut e = vec![
            (f.action as usize, 1u64),
            ((ACTIONS + f.reason.index()) as usize, 1u64),
        ];
        e.sort();
        e
    };
    if moved != expected {
        let names = |v: &[(usize, u64)]| {
            v.iter()
                .map(|(i, d)| format!("{}+{d}", counter_name(*i as u32)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push(format!(
            "counters moved [{}], expected [{}]",
            names(&moved),
            names(&expected)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", f.name, problems.join("; ")))
    }
}

/// Name of a global counter index.
pub fn counter_name(i: u32) -> String {
    if i < ACTIONS {
        format!("action:{}", lb_common::stats::ACTION_NAMES[i as usize])
    } else {
        format!("reason:{}", Reason::ALL[(i - ACTIONS) as usize].name())
    }
}
