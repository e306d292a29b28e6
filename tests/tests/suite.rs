//! The product end to end: address families, encapsulations, UDP, client affinity, traffic
//! that must not be touched, and bulk transfers that must arrive intact.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xlb_tests::{
    scenario::{Scenario, header, tcp_vip},
    servers::{self, FNV_OFFSET, connect, fnv1a, pattern, tcp_request, udp_request},
    topology::{backend_v4, backend_v6},
};

fn list(addrs: impl Iterator<Item = IpAddr>) -> String {
    addrs
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every kind of VIP: v4 (the scenario's web VIP), v6-in-v6, v4-in-v6, UDP over v6,
/// source affinity.
fn families_config() -> String {
    let v4 = list((1..=3).map(|i| IpAddr::V4(backend_v4(i))));
    let v6 = list((1..=3).map(|i| IpAddr::V6(backend_v6(i))));
    header()
        + &tcp_vip(80, &[1, 2, 3], "")
        + &format!(
            "[[vip]]\nname = \"web6\"\naddress = \"2001:db8:203::10\"\nport = 80\nbackends = [ {v6} ]\nhealth_check = {{ protocol = \"none\" }}\n\n"
        )
        + &format!(
            "[[vip]]\nname = \"web4in6\"\naddress = \"203.0.113.11\"\nport = 80\nbackends = [ {v6} ]\nhealth_check = {{ protocol = \"none\" }}\n\n"
        )
        + &format!(
            "[[vip]]\nname = \"dns6\"\naddress = \"2001:db8:203::10\"\nport = 53\nprotocol = \"udp\"\nbackends = [ {v6} ]\nhealth_check = {{ protocol = \"none\" }}\n\n"
        )
        + &format!(
            "[[vip]]\nname = \"sticky\"\naddress = \"203.0.113.12\"\nport = 80\nhash = \"source-address\"\nbackends = [ {v4} ]\n\n"
        )
}

/// Three backends serving every VIP of `families_config` (the extra VIP addresses on their
/// loopbacks), with `servers` started on them.
fn families_scenario(
    servers: impl FnOnce(&xlb_tests::topology::Topology) -> Vec<xlb_tests::servers::Server>,
) -> Scenario {
    Scenario::with_servers(3, &families_config(), 3, |topo| {
        topo.add_vip_on_backends("203.0.113.11".parse().unwrap());
        topo.add_vip_on_backends("203.0.113.12".parse().unwrap());
        servers(topo)
    })
}

fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn every_family_and_protocol_reaches_every_backend() {
    let s = families_scenario(|topo| {
        let mut v = Vec::new();
        for (i, ns) in topo.backends.iter().enumerate() {
            let name = format!("backend-{}", i + 1);
            v.push(servers::identity_server(
                ns,
                "[2001:db8:203::10]:80".parse().unwrap(),
                &name,
            ));
            v.push(servers::udp_identity_server(
                ns,
                "[2001:db8:203::10]:53".parse().unwrap(),
                &name,
            ));
        }
        v
    });
    let cases: [(&str, SocketAddr); 3] = [
        ("IPv6-in-IPv6", "[2001:db8:203::10]:80".parse().unwrap()),
        ("IPv4-in-IPv6", "203.0.113.11:80".parse().unwrap()),
        ("IPv4-in-IPv4", "203.0.113.10:80".parse().unwrap()),
    ];
    for (what, vip) in cases {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..90 {
            let r = tcp_request(&s.topo.client, None, vip, b"")
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            *seen.entry(first_line(&r)).or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "{what}: {seen:?}");
        assert!(seen.values().all(|n| *n >= 10), "{what}: {seen:?}");
    }
    let mut seen = HashSet::new();
    for i in 0..60 {
        let r = udp_request(
            &s.topo.client,
            "[2001:db8:203::10]:53".parse().unwrap(),
            format!("q{i}").as_bytes(),
        )
        .expect("UDP over IPv6");
        seen.insert(String::from_utf8(r).unwrap());
    }
    assert_eq!(seen.len(), 3, "UDP/IPv6 spread: {seen:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn source_affinity_keeps_each_client_on_one_backend() {
    let s = families_scenario(|_| Vec::new());
    // 24 clients (extra addresses on the client host), 8 connections each.
    let vip: SocketAddr = "203.0.113.12:80".parse().unwrap();
    let mut by_client: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for c in 10..34u8 {
        let addr: IpAddr = format!("192.0.2.{c}").parse().unwrap();
        s.topo
            .client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        for _ in 0..8 {
            let r = tcp_request(&s.topo.client, Some(SocketAddr::new(addr, 0)), vip, b"").unwrap();
            by_client.entry(addr).or_default().insert(first_line(&r));
        }
    }
    for (c, backends) in &by_client {
        assert_eq!(backends.len(), 1, "client {c} reached {backends:?}");
    }
    let used: HashSet<&String> = by_client.values().flatten().collect();
    assert!(used.len() >= 2, "24 clients all on {used:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn traffic_that_is_not_for_a_vip_is_untouched() {
    let s = Scenario::new(2);
    // A service on the LB host itself, and the VIP address on a port that is no VIP.
    let lb_service =
        servers::identity_server(&s.topo.lb, "198.18.0.2:2222".parse().unwrap(), "lb-host");
    let before = s.daemon.status();
    // ICMP: client <-> router, client -> LB host, router -> backends (v4 and v6).
    s.topo
        .client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "192.0.2.1"]);
    s.topo
        .client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2"]);
    s.topo.client.exec(
        "ping",
        &["-6", "-c", "3", "-i", "0.2", "-W", "1", "2001:db8:18::2"],
    );
    // ARP and neighbour discovery through the LB's XDP program: forget, then resolve again.
    s.topo.router.ip(&["neigh", "flush", "dev", "lb"]);
    s.topo
        .router
        .exec("ping", &["-c", "2", "-i", "0.2", "-W", "1", "198.18.0.2"]);
    s.topo.router.exec(
        "ping",
        &["-6", "-c", "2", "-i", "0.2", "-W", "1", "2001:db8:18::2"],
    );
    // TCP to a service of the LB host.
    for _ in 0..20 {
        let r = tcp_request(
            &s.topo.client,
            None,
            "198.18.0.2:2222".parse().unwrap(),
            b"hi",
        )
        .unwrap();
        assert_eq!(first_line(&r), "lb-host");
    }
    drop(lb_service);
    let after = s.daemon.status();
    let count = |st: &xlb::api::Snapshot, n: &str| {
        st.reasons
            .iter()
            .find(|r| r.reason.name() == n)
            .unwrap()
            .value
    };
    assert_eq!(
        count(&after, "forwarded"),
        count(&before, "forwarded"),
        "nothing was forwarded"
    );
    assert!(
        count(&after, "not_vip") > count(&before, "not_vip") + 60,
        "passed as not_vip"
    );
    assert!(
        count(&after, "not_ip") > count(&before, "not_ip"),
        "ARP passed as not_ip"
    );
    let dropped = |st: &xlb::api::Snapshot| xlb::stats::total(st, lb_common::stats::Kind::Drop);
    assert_eq!(dropped(&after), dropped(&before), "nothing dropped");
}

/// Uploads `size` bytes through the VIP to a sink that returns its count and hash.
fn upload(s: &Scenario, vip: SocketAddr, size: usize) -> (Duration, String) {
    let data = pattern(size);
    let expect = format!("{size} {:016x}", fnv1a(FNV_OFFSET, &data));
    let mut c = connect(&s.topo.client, None, vip, Duration::from_secs(3)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    c.write_all(&data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer.trim_end(),
        expect,
        "the sink received exactly what was sent"
    );
    (start.elapsed(), answer)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn bulk_uploads_arrive_intact_over_v4_and_v6() {
    let config = header()
        + &tcp_vip(80, &[1, 2], "")
        + &format!(
            "[[vip]]\nname = \"bulk6\"\naddress = \"2001:db8:203::10\"\nport = 9000\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n\n\
             [[vip]]\nname = \"bulk4\"\naddress = \"203.0.113.10\"\nport = 9000\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n\n",
            list((1..=2).map(|i| IpAddr::V6(backend_v6(i)))),
            list((1..=2).map(|i| IpAddr::V4(backend_v4(i)))),
        );
    let s = Scenario::with_servers(2, &config, 2, |topo| {
        let mut v = xlb_tests::scenario::on_every_backend(topo, 9000, servers::sink_server);
        for ns in &topo.backends {
            v.push(servers::sink_server(
                ns,
                "[2001:db8:203::10]:9000".parse().unwrap(),
                "",
            ));
        }
        v
    });
    const SIZE: usize = 64 << 20;
    for vip in ["203.0.113.10:9000", "[2001:db8:203::10]:9000"] {
        let (took, _) = upload(&s, vip.parse().unwrap(), SIZE);
        eprintln!(
            "bulk upload through {vip}: {} MiB in {took:?} ({:.0} Mbit/s)",
            SIZE >> 20,
            (SIZE * 8) as f64 / took.as_secs_f64() / 1e6
        );
    }
    // Receivers verified every TCP checksum: none failed.
    for b in &s.topo.backends {
        let csum_errors = b.exec("cat", &["/proc/net/snmp"]);
        let line: Vec<&str> = csum_errors
            .lines()
            .filter(|l| l.starts_with("Tcp:"))
            .collect();
        let names: Vec<&str> = line[0].split_whitespace().collect();
        let vals: Vec<&str> = line[1].split_whitespace().collect();
        let i = names.iter().position(|n| *n == "InCsumErrors").unwrap();
        assert_eq!(vals[i], "0", "TCP checksum errors on {}", b.name());
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn path_mtu_discovery_works_through_the_balancer() {
    // The LB-to-backend side has the clients' 1500-byte MTU: full-size segments do not fit
    // once encapsulated, and the balancer must tell the clients so.
    let config = header()
        + &tcp_vip(9000, &[1, 2], "")
        + &format!(
            "[[vip]]\nname = \"bulk6\"\naddress = \"2001:db8:203::10\"\nport = 9000\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n\n",
            list((1..=2).map(|i| IpAddr::V6(backend_v6(i)))),
        );
    let s = Scenario::on(
        xlb_tests::topology::Topology::with_lb_mtu(2, 1500),
        &config,
        2,
        |topo| {
            let mut v = xlb_tests::scenario::on_every_backend(topo, 9000, servers::sink_server);
            for ns in &topo.backends {
                v.push(servers::sink_server(
                    ns,
                    "[2001:db8:203::10]:9000".parse().unwrap(),
                    "",
                ));
            }
            v
        },
    );
    for vip in ["203.0.113.10:9000", "[2001:db8:203::10]:9000"] {
        upload(&s, vip.parse().unwrap(), 8 << 20);
    }
    let st = s.daemon.status();
    let count = |n: &str| {
        st.reasons
            .iter()
            .find(|r| r.reason.name() == n)
            .unwrap()
            .value
    };
    assert!(
        count("too_big_signalled") >= 2,
        "the clients were told (v4 and v6): {}",
        count("too_big_signalled")
    );
    assert_eq!(count("too_big"), 0, "nothing dropped silently");
    // The client's kernel learned the path MTU from the balancer's messages.
    let routes = s.topo.client.exec("ip", &["route", "get", "203.0.113.10"]);
    assert!(routes.contains("mtu 1480"), "{routes}");
    let routes6 = s
        .topo
        .client
        .exec("ip", &["-6", "route", "get", "2001:db8:203::10"]);
    assert!(routes6.contains("mtu 1460"), "{routes6}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ping_to_a_vip_is_answered_by_the_balancer() {
    let s = Scenario::new(1);
    s.topo
        .client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "203.0.113.10"]);
    let st = s.daemon.status();
    let answered = st
        .reasons
        .iter()
        .find(|r| r.reason.name() == "icmp_echo_answered")
        .unwrap()
        .value;
    assert_eq!(answered, 3);
}
