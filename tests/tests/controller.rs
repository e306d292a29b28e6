//! The controller end to end: a real `xlb run` in a namespace topology with real clients
//! and servers.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xlb_tests::{
    packet::{Packet, SYN},
    scenario::{Scenario, VIP, backend_index_by_id, backend_name},
    servers::tcp_request,
    topology::CLIENT_V4,
};

fn vip80() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

/// Which backend a frame from the client to the VIP goes to, as userspace predicts it.
fn predicted(maps: &xlb::dataplane::Balancer, sport: u16) -> u32 {
    let frame = Packet::tcp(IpAddr::V4(CLIENT_V4), sport, VIP.parse().unwrap(), 80, SYN).build();
    maps.predict(&frame).unwrap().expect("a VIP packet").maglev_backend
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn connections_land_on_the_predicted_backend() {
    let s = Scenario::new(3);
    let maps = s.maps();
    let ids = backend_index_by_id(&s.daemon.status(), 0);
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for sport in 20_000..20_300u16 {
        let src = SocketAddr::new(IpAddr::V4(CLIENT_V4), sport);
        let reply = tcp_request(&s.topo.client, Some(src), vip80(), b"").unwrap_or_else(|e| {
            let (_, out, _) = s.daemon.cli(&["stats"]);
            panic!("connection from port {sport}: {e}\n{out}")
        });
        let got = String::from_utf8_lossy(&reply).lines().next().unwrap_or("").to_owned();
        let want = backend_name(ids[&predicted(&maps, sport)]);
        assert_eq!(got, want, "connection from port {sport}");
        *per_backend.entry(got).or_default() += 1;
    }
    // 300 connections over 3 equal backends: each gets a fair share (binomial, 6 sigma).
    for (b, n) in &per_backend {
        assert!((60..=140).contains(n), "{b} got {n} of 300: {per_backend:?}");
    }
    assert_eq!(per_backend.len(), 3);
}
