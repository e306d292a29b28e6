//! Golden fixtures of NAT VIPs: a connection's packets in order (the client's SYN makes its
//! translation, the target's reply uses it), each with the exact output frame. Expected
//! frames are built by the test's own packet builder, whose checksums are computed from
//! scratch, so they check the data plane's incremental updates independently.

use std::net::IpAddr;

use lb_common::stats::Reason;

use crate::{
    fixtures::{Fixture, Output, XDP_DROP, XDP_PASS, XDP_TX, client4, client6},
    lab::{Lab, SNAT_V4, SNAT_V6, neighbour_mac},
    packet::{ACK, FIN, LB_MAC, Packet, ROUTER_MAC, RST, SYN},
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

/// The target (address, port) the lab's prediction gives `p`.
pub fn target_of(lab: &Lab, p: &Packet) -> (IpAddr, u16) {
    let pred = lab
        .lb
        .predict(&p.build())
        .unwrap()
        .expect("a NAT VIP packet");
    let b = lab.lb.backend(pred.backend()).unwrap();
    (
        b.ip().expect("target address"),
        lb_common::port_from_map(b.port),
    )
}

/// `p` as sent towards a target: MACs of the target's neighbour, TTL one less.
pub fn to_target(p: Packet, target: IpAddr, ttl: u8) -> Output {
    Output::Frame(p.macs(neighbour_mac(target), LB_MAC).ttl(ttl).build())
}

/// `p` as sent back towards a client through the default router.
pub fn to_client(p: Packet, ttl: u8) -> Output {
    Output::Frame(p.macs(ROUTER_MAC, LB_MAC).ttl(ttl).build())
}

/// A fixture of `input` with its expected action, output and reason, for no backend.
pub fn fixture(
    name: &'static str,
    input: Packet,
    action: u32,
    output: Output,
    reason: Reason,
) -> Fixture {
    Fixture {
        name,
        input: input.build(),
        action,
        output,
        reason,
        backend: None,
    }
}

/// The NAT fixtures, in the order they must run.
pub fn nat_fixtures(lab: &Lab) -> Vec<Fixture> {
    let mut out = Vec::new();
    let (c4, c6) = (client4(), client6());
    let (snat4, snat6) = (IpAddr::V4(SNAT_V4), IpAddr::V6(SNAT_V6));

    // Full NAT, IPv4 TCP: the client's port is kept.
    let vip = ip("203.0.113.90");
    let syn = Packet::tcp(c4, 41000, vip, 80, SYN);
    let (t, tport) = target_of(lab, &syn);
    out.push(fixture(
        "nat tcp4 SYN: to the target's address and port, from the SNAT address and the client's port",
        syn,
        XDP_TX,
        to_target(Packet::tcp(snat4, 41000, t, tport, SYN), t, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat tcp4 data of the connection, translated the same way",
        Packet::tcp(c4, 41000, vip, 80, ACK).payload(b"GET / HTTP/1.1\r\n\r\n"),
        XDP_TX,
        to_target(
            Packet::tcp(snat4, 41000, t, tport, ACK).payload(b"GET / HTTP/1.1\r\n\r\n"),
            t,
            63,
        ),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat tcp4 reply from the target: back to the client, from the VIP",
        Packet::tcp(t, tport, snat4, 41000, SYN | ACK).payload(b"odd-length reply!"),
        XDP_TX,
        to_client(
            Packet::tcp(vip, 80, c4, 41000, SYN | ACK).payload(b"odd-length reply!"),
            63,
        ),
        Reason::NatReturned,
    ));

    // Full NAT, IPv4 UDP, with a checksum and without (0 stays 0).
    let dns = ip("203.0.113.90");
    let q = Packet::udp(c4, 5300, dns, 53).payload(b"query");
    let (t, tport) = target_of(lab, &q);
    out.push(fixture(
        "nat udp4 first datagram: translated, the flow made",
        q,
        XDP_TX,
        to_target(Packet::udp(snat4, 5300, t, tport).payload(b"query"), t, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat udp4 reply: back to the client",
        Packet::udp(t, tport, snat4, 5300).payload(b"answer"),
        XDP_TX,
        to_client(Packet::udp(dns, 53, c4, 5300).payload(b"answer"), 63),
        Reason::NatReturned,
    ));
    out.push(fixture(
        "nat udp4 without a checksum: it stays 0",
        Packet::udp(c4, 5301, dns, 53)
            .payload(b"q0")
            .no_udp_checksum(),
        XDP_TX,
        to_target(
            Packet::udp(snat4, 5301, t, tport)
                .payload(b"q0")
                .no_udp_checksum(),
            t,
            63,
        ),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat udp4 reply without a checksum: it stays 0",
        Packet::udp(t, tport, snat4, 5301)
            .payload(b"a0")
            .no_udp_checksum(),
        XDP_TX,
        to_client(
            Packet::udp(dns, 53, c4, 5301)
                .payload(b"a0")
                .no_udp_checksum(),
            63,
        ),
        Reason::NatReturned,
    ));
    // Datagrams of 10 bytes or more (a frame of 52 bytes or more: every one that crosses an
    // Ethernet) of those flows take the fast path's translation: the same bytes out.
    let (q, a) = (b"a later query", b"a longer answer");
    out.push(fixture(
        "nat udp4 later datagram of the flow: translated, the checksum updated",
        Packet::udp(c4, 5300, dns, 53).payload(q),
        XDP_TX,
        to_target(Packet::udp(snat4, 5300, t, tport).payload(q), t, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat udp4 later reply: back to the client, the checksum updated",
        Packet::udp(t, tport, snat4, 5300).payload(a),
        XDP_TX,
        to_client(Packet::udp(dns, 53, c4, 5300).payload(a), 63),
        Reason::NatReturned,
    ));
    out.push(fixture(
        "nat udp4 later datagram without a checksum: it stays 0",
        Packet::udp(c4, 5301, dns, 53).payload(q).no_udp_checksum(),
        XDP_TX,
        to_target(
            Packet::udp(snat4, 5301, t, tport)
                .payload(q)
                .no_udp_checksum(),
            t,
            63,
        ),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat udp4 later reply without a checksum: it stays 0",
        Packet::udp(t, tport, snat4, 5301)
            .payload(a)
            .no_udp_checksum(),
        XDP_TX,
        to_client(
            Packet::udp(dns, 53, c4, 5301).payload(a).no_udp_checksum(),
            63,
        ),
        Reason::NatReturned,
    ));

    // Full NAT, IPv6 TCP.
    let vip6 = ip("2001:db8:203::90");
    let syn6 = Packet::tcp(c6, 42000, vip6, 443, SYN);
    let (t6, tport6) = target_of(lab, &syn6);
    out.push(fixture(
        "nat tcp6 SYN: to the target, from the IPv6 SNAT address",
        syn6,
        XDP_TX,
        to_target(Packet::tcp(snat6, 42000, t6, tport6, SYN), t6, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat tcp6 reply: back to the client",
        Packet::tcp(t6, tport6, snat6, 42000, SYN | ACK),
        XDP_TX,
        to_client(Packet::tcp(vip6, 443, c6, 42000, SYN | ACK), 63),
        Reason::NatReturned,
    ));

    // Client-preserving NAT: only the destination changes; the reply comes from the target
    // to the client and gets the VIP as its source.
    let vipc = ip("203.0.113.91");
    let sync = Packet::tcp(c4, 43000, vipc, 80, SYN);
    let (tc, tportc) = target_of(lab, &sync);
    out.push(fixture(
        "nat client-preserving SYN: only the destination rewritten",
        sync,
        XDP_TX,
        to_target(Packet::tcp(c4, 43000, tc, tportc, SYN), tc, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat client-preserving reply from the target to the client: source the VIP",
        Packet::tcp(tc, tportc, c4, 43000, SYN | ACK),
        XDP_TX,
        to_client(Packet::tcp(vipc, 80, c4, 43000, SYN | ACK), 63),
        Reason::NatReturned,
    ));

    // ICMP errors about the IPv4 TCP connection, both ways.
    let (t, tport) = target_of(lab, &Packet::tcp(c4, 41000, vip, 80, SYN));
    out.push(fixture(
        "ICMP fragmentation-needed from the client's side about a NAT reply: translated for the target",
        Packet::too_big(
            ip("192.0.2.254"),
            vip,
            1400,
            &Packet::tcp(vip, 80, c4, 41000, ACK),
        ),
        XDP_TX,
        to_target(
            Packet::too_big(snat4, t, 1400, &Packet::tcp(t, tport, snat4, 41000, ACK)),
            t,
            63,
        ),
        Reason::IcmpErrorSteered,
    ));
    out.push(fixture(
        "ICMP fragmentation-needed from the target's side about a NAT packet: translated for the client",
        Packet::too_big(
            ip("198.51.100.254"),
            snat4,
            1300,
            &Packet::tcp(snat4, 41000, t, tport, ACK),
        ),
        XDP_TX,
        to_client(
            Packet::too_big(vip, c4, 1300, &Packet::tcp(c4, 41000, vip, 80, ACK)),
            63,
        ),
        Reason::IcmpErrorToClient,
    ));
    let (tu, tportu) = target_of(lab, &Packet::udp(c4, 5300, dns, 53));
    let mut unreach = vec![0u8; 4];
    unreach.extend_from_slice(
        &Packet::udp(snat4, 5300, tu, tportu)
            .payload(b"query")
            .ip_bytes(),
    );
    let mut unreach_client = vec![0u8; 4];
    unreach_client.extend_from_slice(&Packet::udp(c4, 5300, dns, 53).payload(b"query").ip_bytes());
    out.push(fixture(
        "ICMP port unreachable from the UDP target: translated for the client (quoted checksum too)",
        Packet::icmp(tu, snat4, 3, 3, &unreach),
        XDP_TX,
        to_client(Packet::icmp(dns, c4, 3, 3, &unreach_client), 63),
        Reason::IcmpErrorToClient,
    ));

    // FIN both ways (recorded; the entries stay for their closing time), then an RST.
    out.push(fixture(
        "nat tcp4 FIN from the client",
        Packet::tcp(c4, 41000, vip, 80, FIN | ACK),
        XDP_TX,
        to_target(Packet::tcp(snat4, 41000, t, tport, FIN | ACK), t, 63),
        Reason::Forwarded,
    ));
    out.push(fixture(
        "nat tcp4 FIN from the target",
        Packet::tcp(t, tport, snat4, 41000, FIN | ACK),
        XDP_TX,
        to_client(Packet::tcp(vip, 80, c4, 41000, FIN | ACK), 63),
        Reason::NatReturned,
    ));

    // What NAT does not take.
    out.push(fixture(
        "to the SNAT address with no NAT entry (the host's own traffic): passed untouched",
        Packet::tcp(ip("198.51.100.77"), 22, snat4, 50000, ACK),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotNat,
    ));
    out.push(fixture(
        "ICMP echo request to the SNAT address: the host's, passed untouched",
        Packet::icmp(ip("198.51.100.77"), snat4, 8, 0, &[0, 1, 0, 1]),
        XDP_PASS,
        Output::Unchanged,
        Reason::PassNotNat,
    ));
    out.push(fixture(
        "nat tcp4 RST with no connection: nothing to translate it with, dropped",
        Packet::tcp(c4, 41999, vip, 80, RST),
        XDP_DROP,
        Output::Unchanged,
        Reason::DropNatNoEntry,
    ));
    out
}
