//! NAT VIPs on the real program through BPF_PROG_TEST_RUN: the golden fixtures (both
//! directions, v4 and v6, TCP and UDP, client-preserving, ICMP errors both ways, what NAT
//! does not take), then port collisions, exhaustion and connection teardown.

use std::net::IpAddr;

use lb_common::{
    CT_F_FIN, CT_F_REPLIED, CT_F_RST, FLOW_F_NAT, FlowKey, addr_to_map, port_from_map, port_to_map,
    stats::Reason,
};
use xlb_tests::{
    fixtures::{XDP_DROP, XDP_PASS, XDP_TX, check},
    lab::{Lab, SNAT_V4, why},
    nat_fixtures::{nat_fixtures, target_of},
    packet::{ACK, FIN, Packet, RST, SYN},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn nat_golden_fixtures() {
    let lab = Lab::new();
    let all = nat_fixtures(&lab);
    let failures: Vec<String> = all.iter().filter_map(|f| check(&lab, f).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} NAT fixtures failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// The TCP source port of a frame the balancer sent (IPv4, no options).
fn sport(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

/// The reverse entry's key of a reply from `target` to SNAT port `port`.
fn reply_key(target: (IpAddr, u16), port: u16) -> FlowKey {
    FlowKey {
        src: addr_to_map(target.0).0,
        dst: addr_to_map(IpAddr::V4(SNAT_V4)).0,
        sport: port_to_map(target.1),
        dport: port_to_map(port),
        proto: 6,
        family: 4,
        reserved: [0; 2],
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_port_taken_towards_the_target_is_probed_past_and_replies_find_their_client() {
    let lab = Lab::new();
    let vip = ip("203.0.113.92");
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.3"));
    let first = Packet::tcp(a, 44000, vip, 80, SYN);
    let target = target_of(&lab, &first);
    let (action, out) = lab.run(&first.build());
    assert_eq!(
        (action, sport(&out)),
        (XDP_TX, 44000),
        "the client's port is kept"
    );
    // Another client with the same port, to the same target: another port.
    let (action, out) = lab.run(&Packet::tcp(b, 44000, vip, 80, SYN).build());
    assert_eq!(action, XDP_TX);
    let other = sport(&out);
    assert_ne!(other, 44000);
    assert!(other >= 1024);
    let r = lab
        .lb
        .nat_reverse(&reply_key(target, other))
        .unwrap()
        .expect("entry");
    assert_eq!(r.client, addr_to_map(b).0);
    assert_eq!(port_from_map(r.client_port), 44000);
    // The reply to that port reaches the second client; a retransmitted SYN keeps its port.
    let reply = Packet::tcp(target.0, target.1, IpAddr::V4(SNAT_V4), other, SYN | ACK);
    let (action, out) = lab.run(&reply.build());
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[30..34], &[192, 0, 2, 3], "to the second client");
    let flows_before = lab.lb.vip_stats(lab.vip("nat4-one").0).unwrap().new_flows;
    let (_, out) = lab.run(&Packet::tcp(b, 44000, vip, 80, SYN).build());
    assert_eq!(
        sport(&out),
        other,
        "a retransmitted SYN keeps its translation"
    );
    assert_eq!(
        lab.lb.vip_stats(lab.vip("nat4-one").0).unwrap().new_flows,
        flows_before,
        "and is no new flow"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn with_every_port_taken_a_new_connection_is_dropped_and_counted() {
    let mut lab = Lab::new();
    let mut cfg = lab.lb.config().unwrap();
    cfg.snat_port_min = 45000;
    cfg.snat_port_max = 45001;
    lab.lb.set_config(&cfg).unwrap();
    let vip = ip("203.0.113.92");
    for (client, port) in [("192.0.2.1", 45000), ("192.0.2.3", 45001)] {
        let (action, _) = lab.run(&Packet::tcp(ip(client), port, vip, 80, SYN).build());
        assert_eq!(action, XDP_TX, "{client}:{port}");
    }
    let before = lab.counter(why(Reason::DropSnatExhausted.index()));
    let (action, _) = lab.run(&Packet::tcp(ip("192.0.2.4"), 45000, vip, 80, SYN).build());
    assert_eq!(action, XDP_DROP);
    assert_eq!(
        lab.counter(why(Reason::DropSnatExhausted.index())),
        before + 1
    );
    assert_eq!(
        lab.lb
            .flow(&Packet::tcp(ip("192.0.2.4"), 45000, vip, 80, SYN).five_tuple())
            .unwrap(),
        None,
        "nothing remembered for it"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn fin_both_ways_and_rst_are_recorded_for_the_sweeper() {
    let lab = Lab::new();
    let vip = ip("203.0.113.92");
    let c = ip("192.0.2.1");
    let syn = Packet::tcp(c, 46000, vip, 80, SYN);
    let target = target_of(&lab, &syn);
    lab.run(&syn.build());
    let snat = IpAddr::V4(SNAT_V4);
    lab.run(&Packet::tcp(target.0, target.1, snat, 46000, SYN | ACK).build());
    let conn = syn.five_tuple();
    let rev = reply_key(target, 46000);
    let state = |lab: &Lab| {
        (
            lab.lb.flow(&conn).unwrap().unwrap().state,
            lab.lb.nat_reverse(&rev).unwrap().unwrap().state,
        )
    };
    assert_eq!(state(&lab), (FLOW_F_NAT, CT_F_REPLIED));
    lab.run(&Packet::tcp(c, 46000, vip, 80, FIN | ACK).build());
    lab.run(&Packet::tcp(target.0, target.1, snat, 46000, FIN | ACK).build());
    assert_eq!(
        state(&lab),
        (FLOW_F_NAT | CT_F_FIN, CT_F_REPLIED | CT_F_FIN)
    );
    // The client reuses its port for a new connection: the same translation, state anew.
    lab.run(&syn.build());
    assert_eq!(state(&lab).0, FLOW_F_NAT);
    lab.run(&Packet::tcp(c, 46000, vip, 80, RST).build());
    assert_eq!(state(&lab).0, FLOW_F_NAT | CT_F_RST);
}

/// A NAT connection's SYN retransmitted after its target left the Maglev table (draining,
/// or unhealthy but kept) stays on that target with its translation, and is no new flow;
/// a SYN with another sequence number on the same port is a new connection, which takes
/// the current choice.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_retransmitted_nat_syn_keeps_its_target_and_translation() {
    let mut lab = Lab::new();
    let vip = ip("203.0.113.90");
    let (vip_id, _) = lab.vip("nat4");
    let new_flows = |lab: &Lab| lab.lb.vip_stats(vip_id).unwrap().new_flows;
    let dport = |frame: &[u8]| u16::from_be_bytes([frame[36], frame[37]]);
    let syn = Packet::tcp(ip("192.0.2.1"), 47000, vip, 80, SYN).tcp_seq(7000, 0);
    let first = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
    let target = target_of(&lab, &syn);
    let (action, out) = lab.run(&syn.build());
    assert_eq!(
        (action, dport(&out), sport(&out)),
        (XDP_TX, target.1, 47000)
    );
    let n0 = new_flows(&lab);

    lab.switch_table_without("nat4", &[first]);
    let generation = lab.lb.backend(first).unwrap().generation;
    lab.set_backend_state(first, lb_common::BACKEND_DRAINING, generation);
    let p = lab.lb.predict(&syn.build()).unwrap().unwrap();
    assert_ne!(p.maglev_backend, first);
    assert_eq!((p.backend(), p.new_flow), (first, false), "{p:?}");
    let (action, out) = lab.run(&syn.build());
    assert_eq!(
        (action, dport(&out), sport(&out)),
        (XDP_TX, target.1, 47000),
        "the retransmission reaches the first target, translated as before"
    );
    assert_eq!(new_flows(&lab), n0, "and is no new flow");
    let (action, out) = lab.run(&Packet::tcp(ip("192.0.2.1"), 47000, vip, 80, ACK).build());
    assert_eq!(
        (action, dport(&out)),
        (XDP_TX, target.1),
        "the handshake's ACK too"
    );

    // Failing its checks after answering the connection: the retransmission still stays.
    let snat = IpAddr::V4(SNAT_V4);
    let answer = Packet::tcp(target.0, target.1, snat, 47000, SYN | ACK).tcp_seq(500, 7001);
    assert_eq!(
        lab.run(&answer.build()).0,
        XDP_TX,
        "the answer reaches the client"
    );
    let mut b = lab.lb.backend(first).unwrap();
    b.admin = lb_common::ADMIN_F_FAILING;
    lab.lb.set_backend(first, &b).unwrap();
    let p = lab.lb.predict(&syn.build()).unwrap().unwrap();
    assert_eq!((p.backend(), p.new_flow), (first, false), "{p:?}");
    let (action, out) = lab.run(&syn.build());
    assert_eq!(
        (action, dport(&out), sport(&out)),
        (XDP_TX, target.1, 47000)
    );
    assert_eq!(new_flows(&lab), n0);

    // Another connection on the same port: the current choice, a new flow.
    let again = Packet::tcp(ip("192.0.2.1"), 47000, vip, 80, SYN).tcp_seq(9000, 0);
    let p = lab.lb.predict(&again.build()).unwrap().unwrap();
    assert!(p.new_flow && p.remembered.is_none(), "{p:?}");
    let other = target_of(&lab, &again);
    assert_ne!(other, target);
    let (action, out) = lab.run(&again.build());
    assert_eq!((action, dport(&out)), (XDP_TX, other.1));
    assert_eq!(new_flows(&lab), n0 + 1);
    assert_eq!(
        lab.lb.flow(&again.five_tuple()).unwrap().map(|v| v.backend),
        Some(p.backend())
    );

    // A connection to a target that starts failing before it answers: its retransmitted
    // SYN goes to the current choice, a new flow.
    let all = lab.backend_ids[vip_id as usize].clone();
    lab.switch_table("nat4", &all);
    (b.state, b.admin) = (lb_common::BACKEND_ACTIVE, 0);
    lab.lb.set_backend(first, &b).unwrap();
    let unanswered_syn = |port| Packet::tcp(ip("192.0.2.3"), port, vip, 80, SYN).tcp_seq(3000, 0);
    let client_port = (47100..47200)
        .find(|&port| {
            lab.lb
                .predict(&unanswered_syn(port).build())
                .unwrap()
                .unwrap()
                .backend()
                == first
        })
        .expect("a port whose choice is the first target");
    let unanswered = unanswered_syn(client_port);
    let (action, out) = lab.run(&unanswered.build());
    assert_eq!((action, dport(&out)), (XDP_TX, target.1));
    let first_port = sport(&out);
    lab.switch_table_without("nat4", &[first]);
    (b.state, b.admin) = (lb_common::BACKEND_DRAINING, lb_common::ADMIN_F_FAILING);
    lab.lb.set_backend(first, &b).unwrap();
    let p = lab.lb.predict(&unanswered.build()).unwrap().unwrap();
    assert!(p.new_flow && p.remembered.is_none(), "{p:?}");
    let now = target_of(&lab, &unanswered);
    assert_ne!(now, target);
    let n1 = new_flows(&lab);
    let (action, out) = lab.run(&unanswered.build());
    assert_eq!(
        (action, dport(&out)),
        (XDP_TX, now.1),
        "not the failing target"
    );
    assert_eq!(new_flows(&lab), n1 + 1);
    // The failing target's answer, late (its SYN-ACK lost on the way, then retransmitted):
    // the connection is no longer there, so it must not reach the client, which would take
    // it, acknowledge it to the target it is on now, and be reset by that one.
    let late = Packet::tcp(target.0, target.1, snat, first_port, SYN | ACK).tcp_seq(800, 3001);
    assert_eq!(
        lab.run(&late.build()).0,
        XDP_PASS,
        "the first target's late answer is not translated to the client"
    );
    let answer = Packet::tcp(now.0, now.1, snat, sport(&out), SYN | ACK).tcp_seq(900, 3001);
    let (action, back) = lab.run(&answer.build());
    assert_eq!(
        (action, dport(&back)),
        (XDP_TX, client_port),
        "the answer of the target it is on reaches the client"
    );
}

/// A known NAT connection's packets, both ways, are decided as the general path decides
/// them: every check a router makes gives the same action, output and counter; the good
/// ones are translated exactly (full NAT and client-preserving), FIN recorded both ways,
/// and the VIP's counters move by exactly what was sent. A reply to a port no connection
/// has is passed untouched.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_nat_connections_packets_both_ways_are_checked_and_counted_like_any_other() {
    use xlb_tests::{
        fixtures::{Fixture, OTHER_MAC, Output, XDP_PASS},
        nat_fixtures::{fixture, to_client, to_target},
        packet::ROUTER_MAC,
    };
    let lab = Lab::new();
    let (c, vip, vipc) = (ip("192.0.2.1"), ip("203.0.113.90"), ip("203.0.113.91"));
    let snat = IpAddr::V4(SNAT_V4);
    let syn = Packet::tcp(c, 47000, vip, 80, SYN);
    let t = target_of(&lab, &syn);
    let sync = Packet::tcp(c, 47001, vipc, 80, SYN);
    let tc = target_of(&lab, &sync);
    // Each connection made and answered once, so that both directions know their next hop.
    for p in [
        syn.clone(),
        Packet::tcp(t.0, t.1, snat, 47000, SYN | ACK),
        sync.clone(),
        Packet::tcp(tc.0, tc.1, c, 47001, SYN | ACK),
    ] {
        assert_eq!(lab.run(&p.build()).0, XDP_TX);
    }
    let (nat4, _) = lab.vip("nat4");
    let (client_vip, _) = lab.vip("nat-client");
    let before = (
        lab.lb.vip_stats(nat4).unwrap(),
        lab.lb.vip_stats(client_vip).unwrap(),
    );
    let data = || Packet::tcp(c, 47000, vip, 80, ACK).payload(b"GET /");
    let answer = || Packet::tcp(t.0, t.1, snat, 47000, ACK).payload(b"200 OK");
    let other_mac = |p: Packet| p.macs(OTHER_MAC, ROUTER_MAC);
    let cases = [
        fixture(
            "data to the target",
            data(),
            XDP_TX,
            to_target(
                Packet::tcp(snat, 47000, t.0, t.1, ACK).payload(b"GET /"),
                t.0,
                63,
            ),
            Reason::Forwarded,
        ),
        fixture(
            "its answer back to the client",
            answer(),
            XDP_TX,
            to_client(Packet::tcp(vip, 80, c, 47000, ACK).payload(b"200 OK"), 63),
            Reason::NatReturned,
        ),
        fixture(
            "client-preserving data",
            Packet::tcp(c, 47001, vipc, 80, ACK).payload(b"x"),
            XDP_TX,
            to_target(
                Packet::tcp(c, 47001, tc.0, tc.1, ACK).payload(b"x"),
                tc.0,
                63,
            ),
            Reason::Forwarded,
        ),
        fixture(
            "client-preserving answer",
            Packet::tcp(tc.0, tc.1, c, 47001, ACK).payload(b"y"),
            XDP_TX,
            to_client(Packet::tcp(vipc, 80, c, 47001, ACK).payload(b"y"), 63),
            Reason::NatReturned,
        ),
        fixture(
            "TTL 1",
            data().ttl(1),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropTtl,
        ),
        fixture(
            "a bad header checksum",
            data().ipv4_checksum(0x1234),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropBadIpChecksum,
        ),
        fixture(
            "a frame for another MAC",
            other_mac(data()),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropNotOurMac,
        ),
        fixture(
            "an answer with TTL 1",
            answer().ttl(1),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropTtl,
        ),
        fixture(
            "an answer with a bad header checksum",
            answer().ipv4_checksum(0x1234),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropBadIpChecksum,
        ),
        fixture(
            "an answer in a frame for another MAC",
            other_mac(answer()),
            XDP_DROP,
            Output::Unchanged,
            Reason::DropNotOurMac,
        ),
        fixture(
            "an answer to a port no connection has",
            Packet::tcp(t.0, t.1, snat, 47999, ACK),
            XDP_PASS,
            Output::Unchanged,
            Reason::PassNotNat,
        ),
        fixture(
            "FIN to the target",
            Packet::tcp(c, 47000, vip, 80, FIN | ACK),
            XDP_TX,
            to_target(Packet::tcp(snat, 47000, t.0, t.1, FIN | ACK), t.0, 63),
            Reason::Forwarded,
        ),
        fixture(
            "FIN from the target",
            Packet::tcp(t.0, t.1, snat, 47000, FIN | ACK),
            XDP_TX,
            to_client(Packet::tcp(vip, 80, c, 47000, FIN | ACK), 63),
            Reason::NatReturned,
        ),
    ];
    let failures: Vec<String> = cases.iter().filter_map(|f| check(&lab, f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let ip_len = |f: &Fixture| u64::from(u16::from_be_bytes([f.input[16], f.input[17]]));
    let (full, preserved) = (
        lab.lb.vip_stats(nat4).unwrap(),
        lab.lb.vip_stats(client_vip).unwrap(),
    );
    let sent = |i: &[usize]| (i.len() as u64, i.iter().map(|&i| ip_len(&cases[i])).sum());
    assert_eq!(
        (
            full.flow_hits - before.0.flow_hits,
            full.bytes - before.0.bytes
        ),
        sent(&[0, 11])
    );
    assert_eq!(full.packets - before.0.packets, 2);
    assert_eq!(
        (
            full.reply_packets - before.0.reply_packets,
            full.reply_bytes - before.0.reply_bytes
        ),
        sent(&[1, 12])
    );
    assert_eq!(full.flow_misses, before.0.flow_misses);
    assert_eq!(
        (
            preserved.flow_hits - before.1.flow_hits,
            preserved.bytes - before.1.bytes
        ),
        sent(&[2])
    );
    assert_eq!(
        (
            preserved.reply_packets - before.1.reply_packets,
            preserved.reply_bytes - before.1.reply_bytes
        ),
        sent(&[3])
    );
    let state = |k: &FlowKey| lab.lb.flow(k).unwrap().unwrap().state;
    assert_eq!(state(&syn.five_tuple()), FLOW_F_NAT | CT_F_FIN);
    assert_eq!(
        lab.lb
            .nat_reverse(&reply_key(t, 47000))
            .unwrap()
            .unwrap()
            .state,
        CT_F_REPLIED | CT_F_FIN
    );
}
