//! Property tests on the real balancer program: whatever arrives, the program never
//! returns XDP_ABORTED, and traffic that is not for a VIP leaves byte for byte unchanged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use xlb_tests::{
    fixtures::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    lab::{Lab, lab_vips},
    packet::{Ext, Packet, diff},
};

fn is_vip_address(a: IpAddr) -> bool {
    lab_vips().iter().any(|v| v.addr == a)
}

/// Any IPv4 or IPv6 packet with random addresses, protocol, ports, options, tags and
/// length; the caller filters VIP destinations out.
fn any_packet() -> impl Strategy<Value = (Packet, IpAddr)> {
    let v4 = any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)));
    let v6 = any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)));
    let pair = prop_oneof![(v4.clone(), v4), (v6.clone(), v6)];
    (
        pair,
        0u8..5,
        any::<(u16, u16, u8)>(),
        proptest::collection::vec(any::<u8>(), 0..120),
        (any::<bool>(), 0u8..3, any::<bool>(), any::<u16>()),
        proptest::option::of(14usize..160),
    )
        .prop_map(
            |((src, dst), kind, (sport, dport, flags), payload, (vlan, opts, frag, tos), cut)| {
                let mut p = match kind {
                    0 => Packet::tcp(src, sport, dst, dport, flags),
                    1 => Packet::udp(src, sport, dst, dport),
                    2 => Packet::icmp(src, dst, 8, 0, &[0, 1, 0, 1]),
                    3 => Packet::ip_proto(src, dst, flags),
                    _ => Packet::tcp(src, sport, dst, dport, flags).tcp_data_offset(flags % 16),
                };
                p = p.payload(&payload).tos(tos as u8);
                if vlan {
                    p = p.vlan(tos & 0x0fff);
                }
                if src.is_ipv4() {
                    if opts > 0 {
                        p = p.ipv4_options(&vec![1u8; usize::from(opts) * 4]);
                    }
                    if frag {
                        p = p.ipv4_frag(tos & 0x3fff);
                    }
                } else if opts > 0 {
                    p = p.ipv6_ext(Ext::HopByHop { len8: opts - 1 });
                    if frag {
                        p = p.ipv6_ext(Ext::Fragment {
                            offset: tos & 0x1fff,
                            more: tos & 1 == 1,
                            id: 1,
                        });
                    }
                }
                if let Some(n) = cut {
                    p = p.truncate(n);
                }
                (p, dst)
            },
        )
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn non_vip_packets_pass_unchanged() {
    let lab = Lab::new();
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&any_packet(), |(p, dst)| {
            prop_assume!(!is_vip_address(dst));
            let frame = p.build();
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL);
            // no interface delivers them either.
            prop_assume!(frame.len() >= 14);
            let (action, out) = lab.run(&frame);
            prop_assert_eq!(action, XDP_PASS);
            prop_assert!(out == frame, "{}", diff(&out, &frame));
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn any_bytes_get_a_defined_action_and_non_vip_traffic_is_untouched() {
    let lab = Lab::new();
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    // Random bytes after a valid Ethernet header with an IP ethertype, and fully random frames.
    let frames = prop_oneof![
        proptest::collection::vec(any::<u8>(), 14..200),
        (
            prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x8100)],
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(et, body)| {
                let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xfe];
                f.extend_from_slice(&et.to_be_bytes());
                f.extend_from_slice(&body);
                f
            }),
    ];
    runner
        .run(&frames, |frame| {
            prop_assume!(frame.len() >= 14);
            let (action, out) = lab.run(&frame);
            prop_assert!(
                [XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&action),
                "action {}",
                action
            );
            let vip = lab.lb.predict(&frame).unwrap().is_some();
            if !vip && action == XDP_PASS {
                prop_assert!(out == frame, "{}", diff(&out, &frame));
            }
            Ok(())
        })
        .unwrap();
}

/// Every truncation of VIP packets (each header boundary and every byte in between) gets a
/// defined action, leaves the frame as it was, and is counted under a documented reason.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn every_truncation_of_a_vip_packet_is_refused_cleanly() {
    use lb_common::stats::{ACTIONS, Reason};
    use xlb_tests::packet::{ACK, SYN};
    let lab = Lab::new();
    let c4: IpAddr = "192.0.2.1".parse().unwrap();
    let c6: IpAddr = "2001:db8:c::1".parse().unwrap();
    let vip4: IpAddr = "203.0.113.10".parse().unwrap();
    let vip6: IpAddr = "2001:db8:203::10".parse().unwrap();
    let packets = [
        Packet::tcp(c4, 40000, vip4, 80, SYN)
            .ipv4_options(&[1, 1, 1, 1, 0x94, 4, 0, 0])
            .payload(b"data"),
        Packet::tcp(c6, 40000, vip6, 443, ACK)
            .ipv6_ext(Ext::HopByHop { len8: 0 })
            .ipv6_ext(Ext::Routing { len8: 1 })
            .payload(b"data"),
        Packet::udp(c4, 5000, vip4, 53).vlan(7).payload(b"query"),
    ];
    let allowed = [
        Reason::PassNotIp.index(),
        Reason::PassBadIp.index(),
        Reason::DropMalformed.index(),
    ];
    for p in packets {
        let full = p.build();
        let (action, _) = lab.run(&full);
        assert_eq!(action, XDP_TX, "the whole packet is forwarded");
        for n in 14..full.len() {
            let frame = &full[..n];
            let before = lab.lb.global_stats().unwrap();
            let (action, out) = lab.run(frame);
            let after = lab.lb.global_stats().unwrap();
            assert!(
                action == XDP_PASS || action == XDP_DROP,
                "cut at {n}: action {action}"
            );
            assert_eq!(out, frame, "cut at {n}: the frame was changed");
            let why = (0..Reason::COUNT)
                .find(|r| after[(ACTIONS + r) as usize] != before[(ACTIONS + r) as usize])
                .unwrap();
            assert!(
                allowed.contains(&why),
                "cut at {n}: counted as {}",
                Reason::ALL[why as usize].name()
            );
        }
    }
}
