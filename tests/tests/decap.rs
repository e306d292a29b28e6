//! The decapsulator's fixtures on the real programs (its TC and its XDP hook), and the
//! round trip balancer -> decapsulator giving back the client's packet byte for byte.

use std::net::IpAddr;

use lb_common::stats::decap;
use xlb::decap::Decap;
use xlb_tests::{
    fixtures::{self, XDP_PASS, XDP_TX},
    lab::Lab,
    netns::require_root,
    packet::{ACK, Ext, Packet, SYN, diff},
};

const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x21];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn local_decap() -> Decap {
    require_root();
    let mut d = Decap::load().expect("load the decapsulator");
    d.add_local(ip("198.51.100.21")).unwrap();
    d.add_local(ip("2001:db8:100::21")).unwrap();
    d
}

/// `inner` wrapped in an outer IP header from `src` to `dst` (protocol 4 or 41 by family).
fn wrap(inner: &Packet, src: &str, dst: &str) -> Packet {
    let proto = if inner.is_ipv6() { 41 } else { 4 };
    Packet::ip_proto(ip(src), ip(dst), proto)
        .payload(&inner.ip_bytes())
        .macs(BACKEND_MAC, LB_MAC)
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    /// `None`: unchanged.
    output: Option<Vec<u8>>,
    counter: u32,
}

fn cases() -> Vec<Case> {
    let c4 = ip("192.0.2.1");
    let c6 = ip("2001:db8:c::1");
    let tcp4 = Packet::tcp(c4, 40000, ip("203.0.113.10"), 80, SYN).macs(BACKEND_MAC, LB_MAC);
    let tcp6 = Packet::tcp(c6, 40000, ip("2001:db8:203::10"), 443, ACK)
        .payload(b"abc")
        .macs(BACKEND_MAC, LB_MAC);
    let decapsulated = |name, outer: Packet, inner: &Packet| Case {
        name,
        input: outer.build(),
        output: Some(inner.build()),
        counter: decap::DECAPSULATED,
    };
    let unchanged = |name, p: Packet, counter| Case {
        name,
        input: p.build(),
        output: None,
        counter,
    };
    vec![
        decapsulated(
            "IPv4-in-IPv4",
            wrap(&tcp4, "198.51.100.10", "198.51.100.21"),
            &tcp4,
        ),
        decapsulated(
            "IPv6-in-IPv6",
            wrap(&tcp6, "2001:db8:100::10", "2001:db8:100::21"),
            &tcp6,
        ),
        decapsulated(
            "IPv4-in-IPv6",
            wrap(&tcp4, "2001:db8:100::10", "2001:db8:100::21"),
            &tcp4,
        ),
        decapsulated(
            "IPv6-in-IPv4",
            wrap(&tcp6, "198.51.100.10", "198.51.100.21"),
            &tcp6,
        ),
        decapsulated(
            "outer IPv4 header with options",
            wrap(&tcp4, "198.51.100.10", "198.51.100.21").ipv4_options(&[1, 1, 1, 0]),
            &tcp4,
        ),
        decapsulated(
            "VLAN-tagged IPv4-in-IPv4 keeps its tag",
            wrap(&tcp4, "198.51.100.10", "198.51.100.21").vlan(100),
            &tcp4.clone().vlan(100),
        ),
        unchanged(
            "encapsulated to another address",
            wrap(&tcp4, "198.51.100.10", "198.51.100.22"),
            decap::PASS_NOT_LOCAL,
        ),
        unchanged(
            "plain TCP to this host",
            Packet::tcp(c4, 40000, ip("198.51.100.21"), 22, SYN),
            decap::PASS_NOT_ENCAP,
        ),
        unchanged(
            "plain IPv6 UDP to this host",
            Packet::udp(c6, 1, ip("2001:db8:100::21"), 53),
            decap::PASS_NOT_ENCAP,
        ),
        unchanged(
            "ARP",
            Packet::arp_request(
                "198.51.100.1".parse().unwrap(),
                "198.51.100.21".parse().unwrap(),
            ),
            decap::PASS_NOT_ENCAP,
        ),
        unchanged(
            "outer IPv4 fragment",
            wrap(&tcp4, "198.51.100.10", "198.51.100.21").ipv4_frag(0x2000),
            decap::PASS_MALFORMED,
        ),
        unchanged(
            "protocol 4 carrying an IPv6 packet",
            Packet::ip_proto(ip("198.51.100.10"), ip("198.51.100.21"), 4).payload(&tcp6.ip_bytes()),
            decap::PASS_MALFORMED,
        ),
        unchanged(
            "outer IPv6 with an extension header first (not produced by xlb)",
            wrap(&tcp6, "2001:db8:100::10", "2001:db8:100::21").ipv6_ext(Ext::DestOpts { len8: 0 }),
            decap::PASS_NOT_ENCAP,
        ),
    ]
}

/// `TC_ACT_OK`: the socket buffer goes on up the stack.
const TC_ACT_OK: u32 = 0;

/// The decapsulator's two hooks as a test runs them: the action that passes a packet on,
/// and one run of the program.
struct Hook {
    name: &'static str,
    pass: u32,
    run: fn(&Decap, &[u8]) -> (u32, Vec<u8>),
}

const HOOKS: [Hook; 2] = [
    Hook {
        name: "tc",
        pass: TC_ACT_OK,
        run: |d, p| d.test_run_tc(p).expect("test run"),
    },
    Hook {
        name: "xdp",
        pass: XDP_PASS,
        run: |d, p| d.test_run(p).expect("test run"),
    },
];

/// The frame without its (single, outer) VLAN tag, as the kernel hands a tagged frame to
/// TC ingress; other frames as they are.
fn untagged(frame: &[u8]) -> Vec<u8> {
    if frame.len() >= 18 && matches!(u16::from_be_bytes([frame[12], frame[13]]), 0x8100 | 0x88a8) {
        [&frame[..12], &frame[16..]].concat()
    } else {
        frame.to_vec()
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn decapsulator_fixtures() {
    let d = local_decap();
    let mut failures = Vec::new();
    for hook in &HOOKS {
        for mut c in cases() {
            // A tag still in the frame at TC ingress is the inner one of two: the outer
            // header is not where the kernel's helper would remove it from.
            if hook.name == "tc" && c.name.starts_with("VLAN-tagged") {
                c.output = None;
                c.counter = decap::PASS_MALFORMED;
            }
            let name = format!("{} ({})", c.name, hook.name);
            let before = d.stats().unwrap();
            let (action, out) = (hook.run)(&d, &c.input);
            let after = d.stats().unwrap();
            let want = c.output.as_ref().unwrap_or(&c.input);
            if action != hook.pass {
                failures.push(format!("{name}: action {action}"));
            }
            if &out != want {
                failures.push(format!("{name}: {}", diff(&out, want)));
            }
            let moved: Vec<usize> = (0..after.len())
                .filter(|&i| after[i] != before[i])
                .collect();
            if moved != vec![c.counter as usize]
                || after[c.counter as usize] != before[c.counter as usize] + 1
            {
                failures.push(format!(
                    "{name}: counters {before:?} -> {after:?}, expected +1 at {}",
                    c.counter
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every frame the balancer encapsulates comes out of the decapsulator as the client sent
/// it (only the MAC addresses differ: they are the last hop's).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn balancer_then_decapsulator_gives_back_the_client_packet() {
    let lab = Lab::new();
    let mut d = Decap::load().expect("load the decapsulator");
    for ids in &lab.backend_ids {
        for id in ids {
            d.add_local(lab.backend_addr(*id)).unwrap();
        }
    }
    let mut checked = 0;
    for f in fixtures::balancer_fixtures(&lab) {
        // Only encapsulated frames (ICMP replies are XDP_TX too, back to the client).
        if f.action != XDP_TX || f.backend.is_none() {
            continue;
        }
        let (_, encapsulated) = lab.run(&f.input);
        for hook in &HOOKS {
            // TC ingress gets a tagged frame without its tag (the kernel keeps it aside).
            let (sent, client) = if hook.name == "tc" {
                (untagged(&encapsulated), untagged(&f.input))
            } else {
                (encapsulated.clone(), f.input.clone())
            };
            let (action, out) = (hook.run)(&d, &sent);
            assert_eq!(action, hook.pass, "{} ({})", f.name, hook.name);
            assert_eq!(
                &out[..12],
                &sent[..12],
                "{} ({}): MACs are the last hop's",
                f.name,
                hook.name
            );
            assert!(
                out[12..] == client[12..],
                "{} ({}): {}",
                f.name,
                hook.name,
                diff(&out[12..], &client[12..])
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} round trips");
}
