//! The data plane's decisions end to end, in namespaces, with the real daemon: a port
//! reused after a drain, next hops resolved on the data plane's behalf, and packets to a
//! VIP address on a port with no VIP, which must not loop between the balancer and the
//! router.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use xlb::api::Snapshot;
use xlb_tests::{
    netns::Netns,
    packet::{Packet, SYN},
    scenario::{Scenario, VIP, VIP6, backend_name, header, tcp_vip},
    servers::{self, connect},
    topology::{CLIENT_V4, CLIENT_V6, backend_v4, backend_v6},
};

/// A global reason counter of the daemon's snapshot.
fn reason(s: &Snapshot, name: &str) -> u64 {
    s.reasons
        .iter()
        .find(|r| r.reason.name() == name)
        .unwrap_or_else(|| panic!("no reason {name}"))
        .value
}

/// Connects from the client's fixed source port `sport` to `dst`, reads the serving
/// backend's name (its first line), and aborts the connection (SO_LINGER 0: an RST, no
/// TIME_WAIT), so the same 4-tuple can connect again at once.
fn connect_and_abort(client: &Netns, sport: u16, dst: SocketAddr) -> String {
    let src = SocketAddr::new(IpAddr::V4(CLIENT_V4), sport);
    let s = connect(client, Some(src), dst, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect from port {sport}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .expect("the backend's name");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the stream's own descriptor with a linger value and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    line.trim().to_owned()
}

/// New flows counted for each backend of the first VIP, by backend name.
fn backend_new_flows(s: &Snapshot) -> Vec<(String, u64)> {
    s.vips[0]
        .backends
        .iter()
        .map(|b| {
            let IpAddr::V4(a) = b.address.address else {
                panic!("v4 backends")
            };
            (
                backend_name(usize::from(a.octets()[3]) - 10),
                b.counters.new_flows,
            )
        })
        .collect()
}

/// A client that reuses its source port (busy clients, NATs) after the backend its old
/// connection went to was drained: the SYN starts a new flow on a backend that takes new
/// flows, and the drained backend counts no new flow.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_port_reused_after_a_drain_reaches_another_backend() {
    let s = Scenario::new(3);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let sport = 47123;
    let first = connect_and_abort(&s.topo.client, sport, vip);
    let drained = backend_v4(first.trim_start_matches("backend-").parse().unwrap());
    let (code, _, err) = s.daemon.cli(&[
        "backend",
        "drain",
        "203.0.113.10:80/tcp",
        &drained.to_string(),
    ]);
    assert_eq!(code, 0, "drain: {err}");
    s.wait_for(
        Duration::from_secs(5),
        "the drained backend out of the table",
        |st| {
            st.vips[0]
                .backends
                .iter()
                .any(|b| b.address.address == IpAddr::V4(drained) && !b.takes_new_flows)
        },
    );
    let before = backend_new_flows(&s.daemon.status());
    let second = connect_and_abort(&s.topo.client, sport, vip);
    std::thread::sleep(Duration::from_millis(100));
    let after = backend_new_flows(&s.daemon.status());
    assert_ne!(
        second, first,
        "the reused port went back to the drained backend"
    );
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let want = u64::from(*name == second);
        assert_eq!(
            a - b,
            want,
            "{name}: new flows before {before:?} after {after:?}"
        );
    }
}

/// Removes every neighbour entry of the LB's interface (v4 and v6).
fn flush_neighbours(lb: &Netns) {
    lb.ip(&["neigh", "flush", "dev", "eth0"]);
    lb.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
}

/// The LB's neighbour entry for `addr` on eth0, if it has a link-layer address.
fn resolved(lb: &Netns, addr: &str) -> bool {
    let out = lb.ip(&["neigh", "show", addr, "dev", "eth0"]);
    out.contains("lladdr")
}

/// With the next hop's MAC unknown (the LB's neighbour table flushed, no health checks to
/// refill it), the first packet of a connection is dropped and the daemon has the kernel
/// resolve the next hop: the client's retransmission goes through, for IPv4 and IPv6.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_unresolved_next_hop_is_resolved_and_the_retransmission_goes_through() {
    let v6: Vec<String> = (1..=2)
        .map(|i| format!("{{ address = \"{}\" }}", backend_v6(i)))
        .collect();
    let config = header()
        + &tcp_vip(80, &[1, 2], "").replace(
            "[vip.health_check]\n",
            "[vip.health_check]\nprotocol = \"none\"\n",
        )
        + &format!(
            "[[vip]]\nname = \"web6\"\naddress = \"{VIP6}\"\nport = 80\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n\n",
            v6.join(", ")
        );
    let s = Scenario::with_servers(2, &config, 2, |topo| {
        topo.backends
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let addr = SocketAddr::new(VIP6.parse().unwrap(), 80);
                servers::identity_server(ns, addr, &backend_name(i + 1))
            })
            .collect()
    });
    for (vip, client, gateway) in [
        (
            SocketAddr::new(VIP.parse().unwrap(), 80),
            IpAddr::V4(CLIENT_V4),
            "198.18.0.1",
        ),
        (
            SocketAddr::new(VIP6.parse().unwrap(), 80),
            IpAddr::V6(CLIENT_V6),
            "2001:db8:18::1",
        ),
    ] {
        flush_neighbours(&s.topo.lb);
        assert!(!resolved(&s.topo.lb, gateway), "{gateway} still resolved");
        let before = reason(&s.daemon.status(), "no_neighbour");
        let start = Instant::now();
        let src = SocketAddr::new(client, 0);
        let c = connect(&s.topo.client, Some(src), vip, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect to {vip} after the flush: {e}"));
        let took = start.elapsed();
        drop(c);
        let dropped = reason(&s.daemon.status(), "no_neighbour") - before;
        eprintln!("{vip}: connected after {took:?}, {dropped} packet(s) dropped as no_neighbour");
        assert!(took < Duration::from_secs(3), "{vip}: took {took:?}");
        assert!(
            (1..=5).contains(&dropped),
            "{vip}: {dropped} packets counted as no_neighbour"
        );
        assert!(
            resolved(&s.topo.lb, gateway),
            "{gateway} not resolved afterwards"
        );
    }
}

/// Router-side packet counters of interface `dev`: (received, transmitted).
fn link_packets(ns: &Netns, dev: &str) -> (u64, u64) {
    let out = ns.ip(&["-s", "-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let stats = &v[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().expect("rx packets"),
        stats["tx"]["packets"].as_u64().expect("tx packets"),
    )
}

/// Sends the IP packet `ip` from `ns` through a raw socket.
fn send_raw(ns: &Netns, ip: &[u8], dst: IpAddr) {
    let _inside = ns.enter();
    let IpAddr::V4(d) = dst else {
        panic!("v4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(d.octets()),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, ip.len() as isize, "sendto: {e}");
    }
}

/// SYNs to a VIP address on a port that is no VIP (22) are dropped, each counted once as
/// `not_vip_port`, and none comes back out of the LB: passed to the LB's kernel, each was
/// routed back to the router, which sent it to the LB again, until its TTL ran out.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn syns_to_a_vip_address_on_another_port_are_dropped_not_looped() {
    let config = header()
        + &tcp_vip(80, &[1], "").replace(
            "[vip.health_check]\n",
            "[vip.health_check]\nprotocol = \"none\"\n",
        );
    let s = Scenario::with_config(1, &config, 1);
    const N: u64 = 200;
    let before = reason(&s.daemon.status(), "not_vip_port");
    let (rx0, tx0) = link_packets(&s.topo.router, "lb");
    let vip: IpAddr = VIP.parse().unwrap();
    for i in 0..N {
        let p = Packet::tcp(IpAddr::V4(CLIENT_V4), 30000 + i as u16, vip, 22, SYN);
        send_raw(&s.topo.client, &p.ip_bytes(), vip);
    }
    std::thread::sleep(Duration::from_millis(500));
    let dropped = reason(&s.daemon.status(), "not_vip_port") - before;
    let (rx1, tx1) = link_packets(&s.topo.router, "lb");
    let (to_lb, from_lb) = (tx1 - tx0, rx1 - rx0);
    eprintln!(
        "{N} SYNs to {VIP}:22: {dropped} dropped; router sent {to_lb} to the LB, got {from_lb} back"
    );
    assert_eq!(dropped, N, "every SYN counted once");
    assert!(
        (N..N + 10).contains(&to_lb),
        "the router sent {to_lb} packets to the LB"
    );
    assert!(
        from_lb < 10,
        "the LB sent {from_lb} packets back to the router"
    );
}
