//! The balancer's golden fixtures, run on the real program through BPF_PROG_TEST_RUN.

use xlb_tests::{fixtures, lab::Lab};

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn golden_fixtures() {
    let lab = Lab::new();
    let all = fixtures::balancer_fixtures(&lab);
    assert!(all.len() >= 30, "only {} fixtures", all.len());
    let failures: Vec<String> = all
        .iter()
        .filter_map(|f| fixtures::check(&lab, f).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

use lb_common::{BACKEND_DOWN, BACKEND_DRAINING, hash::flow_hash};
use xlb_tests::{
    fixtures::{XDP_TX, client4},
    packet::{ACK, Packet, RST, SYN, diff},
};

fn vip_addr() -> std::net::IpAddr {
    "203.0.113.10".parse().unwrap()
}

/// Sends `p` and checks it went out encapsulated to backend `id`.
fn assert_sent_to(lab: &Lab, p: &Packet, id: u32) {
    let (action, out) = lab.run(&p.build());
    assert_eq!(action, XDP_TX, "action");
    let backend = lab.backend_addr(id);
    let source = std::net::IpAddr::V4(xlb_tests::lab::SOURCE_V4);
    let hash = lab.lb.predict(&p.build()).unwrap().unwrap().hash;
    let want = p.encapsulated(
        source,
        backend,
        xlb_tests::lab::neighbour_mac(backend),
        xlb_tests::packet::LB_MAC,
        hash,
    );
    assert!(
        out == want,
        "not sent to backend {id} ({backend}): {}",
        diff(&out, &want)
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn established_flow_keeps_its_backend_when_the_table_changes() {
    let mut lab = Lab::new();
    let syn = Packet::tcp(client4(), 41000, vip_addr(), 80, SYN);
    let first = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
    assert_sent_to(&lab, &syn, first);
    // A new table without that backend (it stays active: e.g. a weight change).
    lab.switch_table_without("web4", &[first]);
    let ack = Packet::tcp(client4(), 41000, vip_addr(), 80, ACK).payload(b"more");
    assert_sent_to(&lab, &ack, first);
    // A new flow follows the new table.
    let fresh = Packet::tcp(client4(), 41001, vip_addr(), 80, SYN);
    let p = lab.lb.predict(&fresh.build()).unwrap().unwrap();
    assert!(
        lab.backend_ids[0].contains(&p.backend()) && p.backend() != first,
        "new flow predicted on {}",
        p.backend()
    );
    assert_sent_to(&lab, &fresh, p.backend());
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn rst_is_forwarded_but_not_remembered() {
    let lab = Lab::new();
    let rst = Packet::tcp(client4(), 42000, vip_addr(), 80, RST);
    let p = lab.lb.predict(&rst.build()).unwrap().unwrap();
    assert_sent_to(&lab, &rst, p.backend());
    assert_eq!(
        lab.lb.flow(&p.flow).unwrap(),
        None,
        "an RST must not create a flow entry"
    );
    let syn = Packet::tcp(client4(), 42000, vip_addr(), 80, SYN);
    assert_sent_to(&lab, &syn, p.backend());
    assert_eq!(
        lab.lb.flow(&p.flow).unwrap().map(|v| v.backend),
        Some(p.backend())
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn flows_of_a_down_backend_move_and_drained_ones_stay() {
    let mut lab = Lab::new();
    // Find two flows on two different backends.
    let mut flows = Vec::new();
    for port in 43000..43100 {
        let syn = Packet::tcp(client4(), port, vip_addr(), 80, SYN);
        let b = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
        if flows.iter().all(|(_, other)| *other != b) {
            assert_sent_to(&lab, &syn, b);
            flows.push((port, b));
        }
        if flows.len() == 2 {
            break;
        }
    }
    let [(down_port, down), (drain_port, drained)] = flows[..] else {
        panic!("two backends")
    };
    lab.switch_table_without("web4", &[down, drained]);
    lab.set_backend_state(down, BACKEND_DOWN, 1);
    lab.set_backend_state(drained, BACKEND_DRAINING, 1);

    // The drained backend keeps its flow.
    assert_sent_to(
        &lab,
        &Packet::tcp(client4(), drain_port, vip_addr(), 80, ACK),
        drained,
    );
    // The down backend's flow moves to the new table's choice, and is remembered there.
    let ack = Packet::tcp(client4(), down_port, vip_addr(), 80, ACK);
    let p = lab.lb.predict(&ack.build()).unwrap().unwrap();
    assert_eq!(p.remembered, None, "a down backend must not keep flows");
    let b = p.maglev_backend;
    assert!(lab.backend_ids[0].contains(&b) && b != down && b != drained);
    assert_sent_to(&lab, &ack, p.maglev_backend);
    assert_eq!(
        lab.lb.flow(&p.flow).unwrap().map(|v| v.backend),
        Some(p.maglev_backend)
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_reused_backend_id_does_not_inherit_flows() {
    let mut lab = Lab::new();
    let syn = Packet::tcp(client4(), 44000, vip_addr(), 80, SYN);
    let first = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
    assert_sent_to(&lab, &syn, first);
    // The id is given to another backend (new generation); the table no longer has it.
    lab.switch_table_without("web4", &[first]);
    lab.set_backend_state(first, lb_common::BACKEND_ACTIVE, 2);
    let ack = Packet::tcp(client4(), 44000, vip_addr(), 80, ACK);
    let p = lab.lb.predict(&ack.build()).unwrap().unwrap();
    assert_eq!(p.remembered, None);
    assert_sent_to(&lab, &ack, p.maglev_backend);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn counters_move_by_exactly_what_was_sent() {
    let lab = Lab::new();
    let (vip_id, _) = lab.vip("web4");
    let mut per_backend = std::collections::HashMap::<u32, (u64, u64, u64)>::new();
    let mut bytes_total = 0;
    // 40 flows of 3 packets each (SYN, data, FIN).
    for port in 45000..45040u16 {
        for (i, flags) in [SYN, ACK, ACK | lb_common::parse::TCP_FIN]
            .into_iter()
            .enumerate()
        {
            let p = Packet::tcp(client4(), port, vip_addr(), 80, flags).payload(&vec![
                7u8;
                usize::from(
                    port % 50
                )
            ]);
            let pred = lab.lb.predict(&p.build()).unwrap().unwrap();
            let (action, _) = lab.run(&p.build());
            assert_eq!(action, XDP_TX);
            let len = p.ip_bytes().len() as u64;
            bytes_total += len;
            let e = per_backend.entry(pred.backend()).or_default();
            e.0 += 1;
            e.1 += len;
            e.2 += u64::from(i == 0);
        }
    }
    let vs = lab.lb.vip_stats(vip_id).unwrap();
    assert_eq!((vs.packets, vs.bytes, vs.new_flows), (120, bytes_total, 40));
    assert_eq!((vs.flow_hits, vs.flow_misses), (80, 40));
    for id in &lab.backend_ids[0] {
        let s = lab.lb.backend_stats(*id).unwrap();
        let want = per_backend.get(id).copied().unwrap_or_default();
        assert_eq!((s.packets, s.bytes, s.new_flows), want, "backend {id}");
    }
    assert!(
        per_backend.len() >= 2,
        "flows should spread over backends: {per_backend:?}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ipv6_outer_flow_label_is_the_flow_hash_on_every_packet() {
    let lab = Lab::new();
    let c6: std::net::IpAddr = "2001:db8:c::7".parse().unwrap();
    let vip: std::net::IpAddr = "2001:db8:203::10".parse().unwrap();
    let syn = Packet::tcp(c6, 46000, vip, 443, SYN);
    let p = lab.lb.predict(&syn.build()).unwrap().unwrap();
    let label = |out: &[u8]| u32::from_be_bytes([0, out[15] & 0x0f, out[16], out[17]]);
    let (_, first) = lab.run(&syn.build());
    let (_, second) = lab.run(&Packet::tcp(c6, 46000, vip, 443, ACK).build());
    assert_eq!(label(&first), flow_hash(&p.flow) & 0xfffff);
    assert_eq!(
        label(&first),
        label(&second),
        "label must not change once the flow is remembered"
    );
}

/// The next hop is cached per CPU for about a second (`forward::CachedHop`): a changed
/// neighbour, a route withdrawn and a lowered MTU must all reach packets within that bound,
/// with no controller involved.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn route_neighbour_and_mtu_changes_reach_packets_within_a_second() {
    use lb_common::stats::{ACTIONS, Reason};
    use std::time::{Duration, Instant};

    let lab = Lab::new();
    let backend: std::net::IpAddr = "198.18.0.5".parse().unwrap();
    let p = Packet::tcp(client4(), 46000, "203.0.113.70".parse().unwrap(), 80, ACK);
    let big = Packet::tcp(client4(), 46000, "203.0.113.70".parse().unwrap(), 80, ACK)
        .payload(&[9u8; 1200]);
    let (action, out) = lab.run(&p.build());
    assert!(
        action == XDP_TX || action == 4,
        "forwarded (action {action})"
    );
    assert_eq!(
        out[..6],
        xlb_tests::lab::neighbour_mac(backend),
        "first MAC"
    );

    // Polls until `done` holds for a run, for at most 3 s (the cache keeps 1 s).
    let within = |what: &str, frame: &[u8], done: &dyn Fn(u32, &[u8]) -> bool| {
        let start = Instant::now();
        loop {
            let (action, out) = lab.run(frame);
            if done(action, &out) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{what}: still not seen after 3 s (action {action})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let new_mac = [0x02, 0, 0, 0, 0x18, 0xaa];
    lab.ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.5",
        "lladdr",
        "02:00:00:00:18:aa",
        "dev",
        "fx2",
        "nud",
        "permanent",
    ]);
    let took = within("new neighbour MAC", &p.build(), &|_, out| {
        out[..6] == new_mac
    });
    eprintln!("new MAC used after {took:?}");

    let no_route = lab.counter(ACTIONS + Reason::DropNoRoute.index());
    lab.ns.ip(&["route", "add", "blackhole", "198.18.0.5/32"]);
    within("withdrawn route", &p.build(), &|action, _| action == 1);
    assert_eq!(
        lab.counter(ACTIONS + Reason::DropNoRoute.index()),
        no_route + 1
    );

    lab.ns.ip(&["route", "del", "blackhole", "198.18.0.5/32"]);
    // Locked: forwarding uses a route's MTU only then (or with ip_forward_use_pmtu).
    lab.ns.ip(&[
        "route",
        "add",
        "198.18.0.5/32",
        "dev",
        "fx2",
        "mtu",
        "lock",
        "1000",
    ]);
    let signalled = lab.counter(ACTIONS + Reason::TooBigSignalled.index());
    within("lowered MTU", &big.build(), &|action, _| action == XDP_TX);
    assert_eq!(
        lab.counter(ACTIONS + Reason::TooBigSignalled.index()),
        signalled + 1
    );
    // Packets that fit still go, to the new MAC.
    let (_, out) = lab.run(&p.build());
    assert_eq!(out[..6], new_mac);
}

/// The VIP address filter follows VIPs as they come and go: a VIP added to a running
/// balancer is balanced at once, a removed one's traffic is passed untouched again, and its
/// bit is cleared unless another VIP address shares it.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn vips_added_and_removed_at_run_time_pass_the_address_filter() {
    use lb_common::{VipInfo, VipKey, hash::filter_position};

    let mut lab = Lab::new();
    let addr: std::net::IpAddr = "203.0.113.99".parse().unwrap();
    let key = VipKey::new(addr, 80, lb_common::PROTO_TCP);
    let addr_key = VipKey {
        port: 0,
        proto: 0,
        ..key
    };
    let (word, shift) = filter_position(&key.addr);
    let is_set = |lab: &Lab| lab.lb.vip_filter().unwrap()[word as usize] >> shift & 1;
    let p = Packet::tcp(client4(), 47000, addr, 80, SYN);
    let (action, out) = lab.run(&p.build());
    assert_eq!(
        (action, &out),
        (2, &p.build()),
        "passed before the VIP exists"
    );
    assert_eq!(is_set(&lab), 0);

    // The "web4" VIP's table and backends, under a new address.
    let (_, web) = lab.vip("web4");
    let info = lab.lb.vip(&web).unwrap().unwrap();
    lab.lb
        .set_vip(&key, &VipInfo { index: 15, ..info })
        .unwrap();
    lab.lb.set_vip_address(&addr_key, 1).unwrap();
    assert_eq!(is_set(&lab), 1);
    let (action, _) = lab.run(&p.build());
    assert_eq!(action, XDP_TX, "balanced once added");

    lab.lb.remove_vip(&key).unwrap();
    lab.lb.set_vip_address(&addr_key, 0).unwrap();
    let (action, out) = lab.run(&p.build());
    assert_eq!((action, &out), (2, &p.build()), "passed once removed");
    let shared = lab
        .lb
        .vip_addresses()
        .unwrap()
        .iter()
        .any(|(k, _)| filter_position(&k.addr) == (word, shift));
    assert_eq!(is_set(&lab), u64::from(shared));
}

/// Remembered flows are found before their VIP (the backend entry names the VIP), so the
/// release of a removed VIP's backend ids must be what stops its flows, even on an address
/// that keeps other VIPs; and the other VIPs' flows go on.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn flows_of_a_removed_vip_stop_while_its_address_keeps_other_vips() {
    use lb_common::{BACKEND_UNUSED, VipInfo, VipKey};

    let mut lab = Lab::new();
    let (_, web) = lab.vip("web4");
    let web_info = lab.lb.vip(&web).unwrap().unwrap();
    // VIP 203.0.113.10:8080 beside web4 (:80), with a backend id of its own.
    let id = 200;
    let mut b = lab.lb.backend(lab.backend_ids[0][0]).unwrap();
    b.vip = 14;
    b.generation = 7;
    lab.lb.set_backend(id, &b).unwrap();
    lab.lb
        .write_table(28, &vec![id; xlb_tests::lab::M as usize])
        .unwrap();
    let key = VipKey::new(vip_addr(), 8080, lb_common::PROTO_TCP);
    lab.lb
        .set_vip(
            &key,
            &VipInfo {
                index: 14,
                table: 28,
                ..web_info
            },
        )
        .unwrap();
    let web_flow = Packet::tcp(client4(), 48000, vip_addr(), 80, SYN);
    let flow = Packet::tcp(client4(), 48000, vip_addr(), 8080, SYN);
    let (action, _) = lab.run(&web_flow.build());
    assert_eq!(action, XDP_TX);
    assert_sent_to(&lab, &flow, id);
    let data = Packet::tcp(client4(), 48000, vip_addr(), 8080, ACK);
    assert_sent_to(&lab, &data, id);
    let stats = lab.lb.vip_stats(14).unwrap();
    assert_eq!(
        (stats.packets, stats.flow_hits),
        (2, 1),
        "counted for its VIP"
    );

    // Removed the way the controller removes a VIP: the entry, then its backend ids.
    lab.lb.remove_vip(&key).unwrap();
    let between = lab
        .lb
        .predict(&data.build())
        .unwrap()
        .expect("still followed");
    assert_eq!((between.backend(), between.vip_index), (id, 14));
    lab.set_backend_state(id, BACKEND_UNUSED, 7);
    assert_eq!(lab.lb.predict(&data.build()).unwrap(), None);
    // Its address keeps other VIPs, so the port is now one no VIP takes: dropped, not
    // passed to a kernel that would route it back to the router.
    let (action, out) = lab.run(&data.build());
    assert_eq!(
        (action, out),
        (xlb_tests::fixtures::XDP_DROP, data.build()),
        "dropped as not_vip_port once the VIP is gone"
    );
    let web_data = Packet::tcp(client4(), 48000, vip_addr(), 80, ACK);
    let (action, _) = lab.run(&web_data.build());
    assert_eq!(action, XDP_TX, "web4's flow goes on");
}

/// Switching a VIP to source affinity keeps its established connections where they are
/// (their 5-tuple entries are found first), ICMP errors about them included; new
/// connections follow the client's affinity entry. Userspace's prediction agrees with the
/// kernel at every step.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn switching_a_vip_to_source_affinity_keeps_established_connections() {
    use lb_common::VIP_F_HASH_SOURCE;

    let mut lab = Lab::new();
    let (_, web) = lab.vip("web4");
    let info = lab.lb.vip(&web).unwrap().unwrap();
    // Established connections from one client, spread over the backends.
    let ports: Vec<u16> = (49000..49016).collect();
    let mut first = Vec::new();
    for &port in &ports {
        let syn = Packet::tcp(client4(), port, vip_addr(), 80, SYN);
        let id = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
        assert_sent_to(&lab, &syn, id);
        first.push(id);
    }
    assert!(
        first.iter().any(|b| *b != first[0]),
        "16 connections should use more than one backend: {first:?}"
    );
    lab.lb
        .set_vip(
            &web,
            &lb_common::VipInfo {
                flags: info.flags | VIP_F_HASH_SOURCE,
                ..info
            },
        )
        .unwrap();
    for (&port, &id) in ports.iter().zip(&first) {
        let data = Packet::tcp(client4(), port, vip_addr(), 80, ACK);
        let p = lab.lb.predict(&data.build()).unwrap().unwrap();
        assert_eq!(p.backend(), id, "prediction for port {port}");
        assert_sent_to(&lab, &data, id);
    }
    // ICMP errors about those connections (a router's "fragmentation needed" quoting the
    // backend's reply) still reach the backend that has each of them.
    for (&port, &id) in ports.iter().zip(&first) {
        let reply = Packet::tcp(vip_addr(), 80, client4(), port, ACK);
        let err = Packet::too_big("192.0.2.254".parse().unwrap(), vip_addr(), 1400, &reply);
        let (action, out) = lab.run(&err.build());
        assert_eq!(action, XDP_TX, "ICMP error for port {port}");
        let std::net::IpAddr::V4(backend) = lab.backend_addr(id) else {
            panic!("web4 has IPv4 backends")
        };
        assert_eq!(out[30..34], backend.octets(), "ICMP error for port {port}");
    }
    // New connections of this client all go to its affinity backend: each SYN takes the
    // Maglev choice of the client's key and writes the client's entry.
    let new = |port| Packet::tcp(client4(), port, vip_addr(), 80, SYN);
    let affinity = lab.lb.predict(&new(50000).build()).unwrap().unwrap();
    assert!(affinity.remembered.is_none() && affinity.new_flow);
    assert_sent_to(&lab, &new(50000), affinity.backend());
    for port in 50001..50005 {
        let p = lab.lb.predict(&new(port).build()).unwrap().unwrap();
        assert_eq!(p.backend(), affinity.backend(), "port {port}");
        assert_eq!(p.flow, affinity.flow, "the client's key");
        assert!(!p.new_flow, "the client's entry already holds that choice");
        assert_sent_to(&lab, &new(port), affinity.backend());
        assert_eq!(
            lab.lb.flow(&p.flow).unwrap().map(|v| v.backend),
            Some(affinity.backend())
        );
    }
}

/// A SYN starts a new flow: with an entry that sends its 5-tuple to a backend now draining
/// (a client reusing its port), it takes Maglev's current choice, overwrites the entry and
/// counts one new flow for the VIP and that backend; the same SYN again (a retransmission)
/// counts nothing more. Packets without SYN keep following the entry.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_syn_takes_the_current_choice_and_overwrites_its_entry() {
    use lb_common::FlowValue;

    let mut lab = Lab::new();
    let (vip_id, _) = lab.vip("web4");
    let syn = Packet::tcp(client4(), 51000, vip_addr(), 80, SYN);
    let p = lab.lb.predict(&syn.build()).unwrap().unwrap();
    let pick = p.maglev_backend;
    let old = *lab.backend_ids[0].iter().find(|b| **b != pick).unwrap();
    // An entry from an earlier connection on the same 5-tuple, to a backend now draining.
    lab.lb
        .set_flow(
            &p.flow,
            &FlowValue {
                backend: old,
                generation: 1,
                ..FlowValue::default()
            },
        )
        .unwrap();
    lab.switch_table_without("web4", &[old]);
    lab.set_backend_state(old, BACKEND_DRAINING, 1);
    let ack = Packet::tcp(client4(), 51000, vip_addr(), 80, ACK);
    assert_sent_to(&lab, &ack, old);

    let pick = lab.lb.predict(&syn.build()).unwrap().unwrap();
    assert!(pick.new_flow && pick.remembered.is_none(), "{pick:?}");
    let (v0, n0, o0) = (
        lab.lb.vip_stats(vip_id).unwrap(),
        lab.lb.backend_stats(pick.backend()).unwrap(),
        lab.lb.backend_stats(old).unwrap(),
    );
    assert_sent_to(&lab, &syn, pick.backend());
    assert_eq!(
        lab.lb.flow(&pick.flow).unwrap().map(|v| v.backend),
        Some(pick.backend()),
        "the entry is overwritten"
    );
    let (v1, n1, o1) = (
        lab.lb.vip_stats(vip_id).unwrap(),
        lab.lb.backend_stats(pick.backend()).unwrap(),
        lab.lb.backend_stats(old).unwrap(),
    );
    assert_eq!(v1.new_flows - v0.new_flows, 1, "VIP new flows");
    assert_eq!(
        n1.new_flows - n0.new_flows,
        1,
        "the new backend's new flows"
    );
    assert_eq!(o1, o0, "the drained backend counts nothing");
    // A retransmitted SYN finds its own choice: forwarded, not a new flow.
    assert!(!lab.lb.predict(&syn.build()).unwrap().unwrap().new_flow);
    assert_sent_to(&lab, &syn, pick.backend());
    assert_eq!(lab.lb.vip_stats(vip_id).unwrap().new_flows, v1.new_flows);
    // The connection's packets follow the new entry.
    assert_sent_to(&lab, &ack, pick.backend());
}

/// A SYN retransmitted after its backend left the Maglev table (drained, deregistering)
/// is the same connection, half open there: it stays on that backend and counts nothing
/// new. (Sent to another backend, its answer would race the first one's, and whichever the
/// client took, the other backend would reset the connection.) A SYN with another sequence
/// number on the same port is a new connection and takes the current choice; so does a
/// retransmission once its backend fails its checks (kept for its established flows by
/// `on_unhealthy = "keep"`, but the SYN may never have reached it).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_retransmitted_syn_stays_on_the_backend_of_its_first_copy() {
    let mut lab = Lab::new();
    let (vip_id, _) = lab.vip("web4");
    let new_flows = |lab: &Lab| lab.lb.vip_stats(vip_id).unwrap().new_flows;
    let syn = Packet::tcp(client4(), 51100, vip_addr(), 80, SYN).tcp_seq(7000, 0);
    let first = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
    let n0 = new_flows(&lab);
    assert_sent_to(&lab, &syn, first);
    assert_eq!(new_flows(&lab), n0 + 1);

    lab.switch_table_without("web4", &[first]);
    let generation = lab.lb.backend(first).unwrap().generation;
    lab.set_backend_state(first, BACKEND_DRAINING, generation);
    let p = lab.lb.predict(&syn.build()).unwrap().unwrap();
    assert_ne!(p.maglev_backend, first);
    assert_eq!((p.backend(), p.new_flow), (first, false), "{p:?}");
    let first_stats = lab.lb.backend_stats(first).unwrap();
    assert_sent_to(&lab, &syn, first);
    assert_eq!(new_flows(&lab), n0 + 1, "a retransmission is no new flow");
    let after = lab.lb.backend_stats(first).unwrap();
    assert_eq!(
        (after.new_flows, after.packets),
        (first_stats.new_flows, first_stats.packets + 1)
    );
    let ack = Packet::tcp(client4(), 51100, vip_addr(), 80, ACK).tcp_seq(7001, 1);
    assert_sent_to(&lab, &ack, first);

    // Another connection on the same port: the current choice, a new flow.
    let again = Packet::tcp(client4(), 51100, vip_addr(), 80, SYN).tcp_seq(9000, 0);
    let second = lab.lb.predict(&again.build()).unwrap().unwrap();
    assert!(second.new_flow && second.remembered.is_none(), "{second:?}");
    assert_ne!(second.backend(), first);
    assert_sent_to(&lab, &again, second.backend());
    assert_eq!(new_flows(&lab), n0 + 2);
    assert_eq!(
        lab.lb.flow(&second.flow).unwrap().map(|v| v.backend),
        Some(second.backend())
    );

    // Its retransmission once that backend fails its checks (kept, out of the table): the
    // current choice again.
    let second = second.backend();
    lab.switch_table_without("web4", &[first, second]);
    let mut b = lab.lb.backend(second).unwrap();
    (b.state, b.admin) = (BACKEND_DRAINING, lb_common::ADMIN_F_FAILING);
    lab.lb.set_backend(second, &b).unwrap();
    let third = lab.lb.predict(&again.build()).unwrap().unwrap();
    assert!(third.new_flow && third.remembered.is_none(), "{third:?}");
    assert!(![first, second].contains(&third.backend()));
    assert_sent_to(&lab, &again, third.backend());
    assert_eq!(new_flows(&lab), n0 + 3);
}

/// UDP counts a new flow for each packet that creates a flow entry, and only those, for
/// IPv4 and IPv6: short datagrams (the general path's: `fast::packet` reads 18 bytes of
/// an IPv4 packet's L4, 14 of an IPv6 one's) and longer ones (the fast path's), each sent to
/// the backend userspace predicts, byte for byte, and counted for it.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn udp_counts_the_packets_that_create_a_flow() {
    let lab = Lab::new();
    let v6: std::net::IpAddr = "2001:db8:203::20".parse().unwrap();
    for (name, client, vip) in [
        ("dns4", client4(), vip_addr()),
        ("dns6", xlb_tests::fixtures::client6(), v6),
    ] {
        let (vip_id, _) = lab.vip(name);
        let before = lab.lb.vip_stats(vip_id).unwrap();
        let mut per_backend = std::collections::BTreeMap::<u32, (u64, u64)>::new();
        for port in 52000..52010u16 {
            let payload = if port % 2 == 0 {
                &b""[..]
            } else {
                &[0xab; 32][..]
            };
            for n in 0..3u64 {
                let p = Packet::udp(client, port, vip, 53).payload(payload);
                let (id, want) = lab.expected_encap(&p);
                let (action, out) = lab.run(&p.build());
                assert_eq!(action, XDP_TX, "{name} port {port}, datagram {n}");
                assert!(
                    out == want,
                    "{name} port {port}, datagram {n}: {}",
                    diff(&out, &want)
                );
                let e = per_backend.entry(id).or_default();
                e.0 += 1;
                e.1 += u64::from(n == 0);
            }
        }
        let s = lab.lb.vip_stats(vip_id).unwrap();
        assert_eq!(
            (
                s.packets - before.packets,
                s.new_flows - before.new_flows,
                s.flow_hits - before.flow_hits
            ),
            (30, 10, 20),
            "{name}: packets, new flows, hits"
        );
        for (id, (packets, new_flows)) in per_backend {
            let b = lab.lb.backend_stats(id).unwrap();
            assert_eq!(
                (b.packets, b.new_flows),
                (packets, new_flows),
                "{name}: backend {id}'s packets and new flows"
            );
        }
    }
}

/// An all-zero interface MAC turns the frame check off; a known one refuses VIP packets in
/// frames to another MAC.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_frame_check_follows_the_configured_mac() {
    let mut lab = Lab::new();
    let other = Packet::tcp(client4(), 53000, vip_addr(), 80, SYN).macs(
        xlb_tests::fixtures::OTHER_MAC,
        xlb_tests::packet::ROUTER_MAC,
    );
    let (action, _) = lab.run(&other.build());
    assert_eq!(
        action,
        xlb_tests::fixtures::XDP_DROP,
        "refused with our MAC known"
    );
    lab.lb.set_interface_mac([0; 6]).unwrap();
    let (action, _) = lab.run(&other.build());
    assert_eq!(action, XDP_TX, "accepted with the check off");
    lab.lb
        .set_interface_mac(xlb_tests::fixtures::OTHER_MAC)
        .unwrap();
    let (action, _) = lab.run(&Packet::tcp(client4(), 53001, vip_addr(), 80, SYN).build());
    assert_eq!(action, xlb_tests::fixtures::XDP_DROP, "our MAC changed");
}

/// A known flow's packets are decided as a new flow's are: every check a router makes, and
/// every shape the common path does not take, gives the same action, output and counter
/// as it would without the flow entry; the good ones go to the flow's backend, counted as
/// hits.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_known_flows_packets_are_checked_and_counted_like_any_other() {
    use lb_common::{parse::TCP_FIN, stats::Reason};
    use xlb_tests::fixtures::{OTHER_MAC, Output, XDP_DROP, XDP_PASS, check};
    let lab = Lab::new();
    let (web4, _) = lab.vip("web4");
    let (dns4, _) = lab.vip("dns4");
    let syn = Packet::tcp(client4(), 43000, vip_addr(), 80, SYN);
    let first = lab.lb.predict(&syn.build()).unwrap().unwrap().backend();
    assert_sent_to(&lab, &syn, first);
    let udp = Packet::udp(client4(), 5300, vip_addr(), 53).payload(b"first");
    let (action, _) = lab.run(&udp.build());
    assert_eq!(action, XDP_TX);
    let (web_before, dns_before) = (
        lab.lb.vip_stats(web4).unwrap(),
        lab.lb.vip_stats(dns4).unwrap(),
    );
    let ack = || Packet::tcp(client4(), 43000, vip_addr(), 80, ACK).payload(b"data");
    let forwarded = |name, p: Packet| forwarded_to(&lab, first, name, p);
    let refused = refused_as;
    let cases = [
        forwarded("data", ack()),
        forwarded(
            "FIN",
            Packet::tcp(client4(), 43000, vip_addr(), 80, FIN_ACK),
        ),
        forwarded("with IPv4 options", ack().ipv4_options(&[1, 1, 1, 0])),
        forwarded("behind a VLAN tag", ack().vlan(7)),
        forwarded("with a trailer after the datagram", ack().trailer(&[0; 6])),
        refused("TTL 1", ack().ttl(1), XDP_DROP, Reason::DropTtl),
        refused(
            "a bad header checksum",
            ack().ipv4_checksum(0x1234),
            XDP_DROP,
            Reason::DropBadIpChecksum,
        ),
        refused(
            "a frame for another MAC",
            ack().macs(OTHER_MAC, xlb_tests::packet::ROUTER_MAC),
            XDP_DROP,
            Reason::DropNotOurMac,
        ),
        refused(
            "a TCP data offset below 5",
            ack().tcp_data_offset(4),
            XDP_DROP,
            Reason::DropMalformed,
        ),
        refused(
            "a first fragment",
            ack().ipv4_frag(0x2000),
            XDP_DROP,
            Reason::DropFragment,
        ),
        refused(
            "a total length past the frame",
            ack().ipv4_total_len(400),
            XDP_PASS,
            Reason::PassBadIp,
        ),
    ];
    let failures: Vec<String> = cases.iter().filter_map(|f| check(&lab, f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A UDP flow's second datagram, and one with a wrong UDP length.
    let (action, _) = lab.run(&udp.clone().payload(b"second").build());
    assert_eq!(action, XDP_TX);
    let bad = refused(
        "a UDP length past the datagram",
        udp.clone().udp_len(300),
        XDP_DROP,
        Reason::DropMalformed,
    );
    check(&lab, &bad).unwrap();
    // The five forwarded packets were hits of the flow, counted with their bytes.
    let web = lab.lb.vip_stats(web4).unwrap();
    let bytes: u64 = cases[..5]
        .iter()
        .map(|f| match &f.output {
            Output::Frame(_) => ipv4_len(&f.input),
            Output::Unchanged => 0,
        })
        .sum();
    assert_eq!(web.flow_hits - web_before.flow_hits, 5);
    assert_eq!(web.packets - web_before.packets, 5);
    assert_eq!(web.bytes - web_before.bytes, bytes);
    assert_eq!(web.flow_misses, web_before.flow_misses);
    let dns = lab.lb.vip_stats(dns4).unwrap();
    assert_eq!(
        (
            dns.flow_hits - dns_before.flow_hits,
            dns.packets - dns_before.packets
        ),
        (1, 1)
    );
    const FIN_ACK: u8 = TCP_FIN | ACK;
}

/// The same for a known IPv6 flow (IPv6-in-IPv6 to its backend, the flow hash as the outer
/// flow label on every packet): refusals keep their reasons, the good packets go to the
/// flow's backend as exact frames, counted as hits.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_known_ipv6_flows_packets_are_checked_and_counted_like_any_other() {
    use lb_common::stats::Reason;
    use xlb_tests::fixtures::{OTHER_MAC, XDP_DROP, check, client6};
    let lab = Lab::new();
    let (web6, _) = lab.vip("web6");
    let vip6: std::net::IpAddr = "2001:db8:203::10".parse().unwrap();
    let syn = Packet::tcp(client6(), 43100, vip6, 443, SYN);
    let (first, frame) = lab.expected_encap(&syn);
    let (action, out) = lab.run(&syn.build());
    assert_eq!(
        (action, &out),
        (XDP_TX, &frame),
        "the SYN: {}",
        diff(&out, &frame)
    );
    let before = lab.lb.vip_stats(web6).unwrap();
    let ack = || Packet::tcp(client6(), 43100, vip6, 443, ACK).payload(b"data6");
    let forwarded = |name, p: Packet| forwarded_to(&lab, first, name, p);
    let refused = |name, p, reason| refused_as(name, p, XDP_DROP, reason);
    let cases = [
        forwarded("data", ack()),
        forwarded("with a traffic class", ack().tos(0xb8)),
        forwarded("behind a VLAN tag", ack().vlan(7)),
        refused("hop limit 1", ack().ttl(1), Reason::DropTtl),
        refused(
            "a frame for another MAC",
            ack().macs(OTHER_MAC, xlb_tests::packet::ROUTER_MAC),
            Reason::DropNotOurMac,
        ),
        refused(
            "a TCP data offset below 5",
            ack().tcp_data_offset(4),
            Reason::DropMalformed,
        ),
    ];
    let failures: Vec<String> = cases.iter().filter_map(|f| check(&lab, f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let after = lab.lb.vip_stats(web6).unwrap();
    assert_eq!(after.flow_hits - before.flow_hits, 3);
    assert_eq!(after.packets - before.packets, 3);
    assert_eq!(after.flow_misses, before.flow_misses);
}

/// The fixture of `p` forwarded, as the general path would, to backend `first` (the flow's).
fn forwarded_to(
    lab: &Lab,
    first: u32,
    name: &'static str,
    p: Packet,
) -> xlb_tests::fixtures::Fixture {
    let (id, frame) = lab.expected_encap(&p);
    assert_eq!(id, first, "{name}: predicted on another backend");
    xlb_tests::fixtures::Fixture {
        name,
        input: p.build(),
        action: XDP_TX,
        output: xlb_tests::fixtures::Output::Frame(frame),
        reason: lb_common::stats::Reason::Forwarded,
        backend: Some(id),
    }
}

/// The fixture of `p` refused untouched with `action` and `reason`.
fn refused_as(
    name: &'static str,
    p: Packet,
    action: u32,
    reason: lb_common::stats::Reason,
) -> xlb_tests::fixtures::Fixture {
    xlb_tests::fixtures::Fixture {
        name,
        input: p.build(),
        action,
        output: xlb_tests::fixtures::Output::Unchanged,
        reason,
        backend: None,
    }
}

/// The IP length of an Ethernet frame's datagram (behind at most one VLAN tag).
fn ipv4_len(frame: &[u8]) -> u64 {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    u64::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]))
}
