//! The data plane's resolver and userspace's prediction agree: random packets over random
//! map states (backends draining, down or re-given, tables switched, flows remembered,
//! affinity and the any-port flag toggled) run through the real program with
//! BPF_PROG_TEST_RUN and through `Balancer::predict`, which must name the same backend, the
//! same VIP to count for and the same new-flow decision, or agree that no VIP takes the
//! packet. SYNs come with two sequence numbers, so that some are retransmissions of the
//! SYN that made their entry and some start another connection on its port.

use std::net::IpAddr;

use lb_common::{
    ADMIN_F_FAILING, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, CFG_F_WILDCARD_VIPS,
    FlowValue, VIP_F_HASH_SOURCE,
    stats::{ACTIONS, Reason},
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use xlb_tests::{
    fixtures::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    lab::Lab,
    packet::{ACK, FIN, PSH, Packet, RST, SYN},
};

/// One step: change the maps, or send a packet.
#[derive(Clone, Debug)]
enum Op {
    /// Backend id (1-based index into all the lab's ids), state, generation, and whether it
    /// fails its checks (`ADMIN_F_FAILING`).
    Backend(usize, u8, u32, bool),
    /// Switch a VIP (by lab index) to a table without one of its backends (by position).
    Table(usize, usize),
    /// Switch a VIP back to a table of all its backends.
    FullTable(usize),
    /// Toggle source affinity on the web4 VIP.
    Affinity(bool),
    /// Set or clear the any-port flag.
    Wildcard(bool),
    /// Remember a flow for a packet's 5-tuple to a backend id (by index).
    Remember(Pkt, usize),
    Send(Pkt),
}

/// A packet to one of the lab's VIP addresses.
#[derive(Clone, Debug)]
struct Pkt {
    target: usize,
    client: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    /// The TCP sequence number: a SYN with its entry's is a retransmission.
    seq: u32,
}

/// (address, port, TCP) of the lab's VIPs worth sending to, and ports besides.
const TARGETS: [(&str, u16, bool); 9] = [
    ("203.0.113.10", 80, true),
    ("203.0.113.10", 53, false),
    ("203.0.113.10", 443, true),
    ("2001:db8:203::10", 443, true),
    ("203.0.113.20", 80, true),
    ("203.0.113.30", 0, true),
    ("203.0.113.40", 80, true),
    ("2001:db8:203::20", 53, false),
    ("203.0.113.50", 80, true),
];

impl Pkt {
    fn build(&self) -> Packet {
        let (addr, port, tcp) = TARGETS[self.target];
        let dst: IpAddr = addr.parse().unwrap();
        let src: IpAddr = if dst.is_ipv4() {
            format!("192.0.2.{}", 1 + self.client).parse().unwrap()
        } else {
            format!("2001:db8:c::{}", 1 + self.client).parse().unwrap()
        };
        let dport = if port == 0 { self.dport } else { port };
        if tcp {
            Packet::tcp(src, self.sport, dst, dport, self.flags).tcp_seq(self.seq, 0)
        } else {
            Packet::udp(src, self.sport, dst, dport)
        }
    }
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        0..TARGETS.len(),
        0u8..3,
        40000u16..40004,
        prop_oneof![Just(22u16), Just(8080)],
        prop_oneof![
            Just(SYN),
            Just(ACK),
            Just(SYN | ACK),
            Just(RST),
            Just(PSH | ACK),
            Just(FIN | ACK)
        ],
        prop_oneof![Just(1000u32), Just(2000)],
    )
        .prop_map(|(target, client, sport, dport, flags, seq)| Pkt {
            target,
            client,
            sport,
            dport,
            flags,
            seq,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..20, prop_oneof![Just(BACKEND_ACTIVE), Just(BACKEND_DRAINING), Just(BACKEND_DOWN)], 1u32..3, any::<bool>())
            .prop_map(|(i, s, g, f)| Op::Backend(i, s, g, f)),
        1 => (0usize..7, 0usize..3).prop_map(|(v, b)| Op::Table(v, b)),
        1 => (0usize..7).prop_map(Op::FullTable),
        1 => any::<bool>().prop_map(Op::Affinity),
        1 => any::<bool>().prop_map(Op::Wildcard),
        2 => (pkt(), 0usize..20).prop_map(|(p, b)| Op::Remember(p, b)),
        12 => pkt().prop_map(Op::Send),
    ]
}

/// Applies a map change the way the controller could leave the maps.
fn apply(lab: &mut Lab, op: &Op, ids: &[u32]) {
    match op {
        Op::Backend(i, state, generation, failing) => {
            let id = ids[i % ids.len()];
            lab.set_backend_state(id, *state, *generation);
            let mut b = lab.lb.backend(id).unwrap();
            b.admin = if *failing { ADMIN_F_FAILING } else { 0 };
            lab.lb.set_backend(id, &b).unwrap();
        }
        Op::Table(v, b) => {
            let name = lab.vips[*v].name;
            let all = &lab.backend_ids[*v];
            if let Some(gone) = all.get(b % all.len().max(1)).copied() {
                lab.switch_table_without(name, &[gone]);
            }
        }
        Op::FullTable(v) => {
            let name = lab.vips[*v].name;
            let all = lab.backend_ids[*v].clone();
            lab.switch_table(name, &all);
        }
        Op::Affinity(on) => {
            let (_, key) = lab.vip("web4");
            let mut info = lab.lb.vip(&key).unwrap().unwrap();
            info.flags = if *on { VIP_F_HASH_SOURCE } else { 0 };
            lab.lb.set_vip(&key, &info).unwrap();
        }
        Op::Wildcard(on) => {
            let mut cfg = lab.lb.config().unwrap();
            if *on {
                cfg.flags |= CFG_F_WILDCARD_VIPS;
            } else {
                cfg.flags &= !CFG_F_WILDCARD_VIPS;
            }
            lab.lb.set_config(&cfg).unwrap();
        }
        Op::Remember(p, b) => {
            if let Some(pred) = lab.lb.predict(&p.build().build()).unwrap() {
                let five = lb_common::hash::flow_key(
                    &match lb_common::parse::parse(&p.build().build()[..]) {
                        lb_common::parse::Parsed::Ip(h) => h,
                        _ => unreachable!(),
                    },
                    pred.flow.dport,
                    0,
                );
                let id = ids[b % ids.len()];
                let generation = lab.lb.backend(id).unwrap().generation;
                lab.lb
                    .set_flow(
                        &five,
                        &FlowValue {
                            backend: id,
                            generation,
                            // As a SYN of this packet's sequence number left it, or
                            // another's.
                            syn_seq: (p.seq + (*b % 2) as u32).to_be(),
                            ..FlowValue::default()
                        },
                    )
                    .unwrap();
            }
        }
        Op::Send(_) => unreachable!(),
    }
}

/// Sends `p` through the kernel and checks it against the prediction made just before.
fn check(lab: &Lab, p: &Pkt) -> Result<(), TestCaseError> {
    let frame = p.build().build();
    let pred = lab.lb.predict(&frame).unwrap();
    let global0 = lab.lb.global_stats().unwrap();
    let vip0 = pred.map(|x| lab.lb.vip_stats(x.vip_index).unwrap());
    let (action, out) = lab.run(&frame);
    let global1 = lab.lb.global_stats().unwrap();
    let moved = |r: Reason| {
        global1[(ACTIONS + r.index()) as usize] - global0[(ACTIONS + r.index()) as usize]
    };
    let what = format!("{p:?}: predicted {pred:?}, action {action}");
    match pred {
        None => {
            prop_assert!(
                (action == XDP_PASS && moved(Reason::PassNotVip) == 1)
                    || (action == XDP_DROP && moved(Reason::DropNotVipPort) == 1),
                "{}",
                what
            );
            prop_assert!(out == frame, "{}", what);
        }
        Some(x) if x.backend() == 0 => {
            prop_assert!(
                action == XDP_DROP && moved(Reason::DropNoBackend) == 1,
                "{}",
                what
            );
        }
        Some(x) => {
            let forwarded = action == XDP_TX || action == XDP_REDIRECT;
            if forwarded {
                let backend = lab.backend_addr(x.backend());
                let outer_dst = match backend {
                    IpAddr::V4(_) => IpAddr::V4(<[u8; 4]>::try_from(&out[30..34]).unwrap().into()),
                    IpAddr::V6(_) => IpAddr::V6(<[u8; 16]>::try_from(&out[38..54]).unwrap().into()),
                };
                prop_assert_eq!(outer_dst, backend, "{}", what);
            } else {
                // Resolved alike, and then the way to the backend failed (the lab has a
                // backend behind an unreachable route, one unresolved, one of the wrong
                // family, which a remembered flow may name).
                let after = moved(Reason::DropNoRoute)
                    + moved(Reason::DropNoNeigh)
                    + moved(Reason::DropFamily);
                prop_assert!(action == XDP_DROP && after == 1, "{}", what);
            }
            let v = lab.lb.vip_stats(x.vip_index).unwrap();
            let v0 = vip0.unwrap();
            prop_assert_eq!(
                v.packets - v0.packets,
                u64::from(forwarded),
                "counted for VIP {}: {}",
                x.vip_index,
                what
            );
            prop_assert_eq!(
                v.new_flows - v0.new_flows,
                u64::from(x.new_flow),
                "new flow: {}",
                what
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_kernel_and_the_prediction_resolve_alike() {
    let mut lab = Lab::new();
    // The DSR backends: a flow entry naming a NAT target without its translation is a
    // state only a NAT connection's own packets make (`tests/tests/nat.rs`).
    let ids: Vec<u32> = lab
        .backend_ids
        .iter()
        .zip(&lab.vips)
        .filter(|(_, v)| v.mode == lb_common::MODE_DSR)
        .flat_map(|(ids, _)| ids.iter().copied())
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: 20,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let sent = std::cell::Cell::new(0u32);
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<&str, u32>::new());
    let lab = std::cell::RefCell::new(&mut lab);
    runner
        .run(&proptest::collection::vec(op(), 150), |ops| {
            let mut lab = lab.borrow_mut();
            for op in &ops {
                match op {
                    Op::Send(p) => {
                        check(&lab, p)?;
                        sent.set(sent.get() + 1);
                        let kind = match lab.lb.predict(&p.build().build()).unwrap() {
                            None => "no VIP",
                            Some(x) if x.remembered.is_some() => "remembered",
                            Some(x) if x.maglev_backend == 0 => "no backend",
                            Some(_) => "Maglev",
                        };
                        *outcomes.borrow_mut().entry(kind).or_default() += 1;
                    }
                    other => apply(&mut lab, other, &ids),
                }
            }
            Ok(())
        })
        .unwrap();
    let (sent, outcomes) = (sent.get(), outcomes.into_inner());
    eprintln!("{sent} packets agreed: {outcomes:?}");
    assert!(sent > 500, "only {sent} packets");
}
