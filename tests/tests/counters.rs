//! Counters end to end: exact against what the client's own kernel says it sent, the same
//! in `/metrics` (parsed by a Prometheus parser) as in `xlb stats -o json`, continuous
//! across daemon restarts, and zero for a reused backend id.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use xlb::api::Snapshot;
use xlb_tests::{
    netns::Netns,
    scenario::{Scenario, VIP, header, on_every_backend, tcp_vip},
    servers::{self, tcp_request, udp_request},
    topology::backend_v4,
};

/// A field of /proc/net/snmp or /proc/net/netstat (e.g. ("Udp", "OutDatagrams")), read
/// inside `ns`.
fn kernel_counter(ns: &Netns, group: &str, field: &str) -> u64 {
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = ns.exec("cat", &[file]);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some(n), Some(v)) = (
                names.strip_prefix(&format!("{group}: ")),
                values.strip_prefix(&format!("{group}: ")),
            ) else {
                continue;
            };
            if let Some(i) = n.split_whitespace().position(|x| x == field) {
                return v.split_whitespace().nth(i).unwrap().parse().unwrap();
            }
        }
    }
    panic!("no {group}:{field}");
}

fn udp_vip_config() -> String {
    let backends: Vec<String> = (1..=3)
        .map(|i| format!("{{ address = \"{}\" }}", backend_v4(i)))
        .collect();
    header()
        + &tcp_vip(80, &[1, 2, 3], "")
        + &format!(
            "[[vip]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n\n",
            backends.join(", ")
        )
}

fn vip<'a>(s: &'a Snapshot, id: &str) -> &'a xlb::api::VipStatus {
    s.vips
        .iter()
        .find(|v| v.vip.to_string() == id)
        .expect("vip")
}

/// (packets, bytes) of a VIP and of each of its backends, as deltas between snapshots.
fn deltas(before: &Snapshot, after: &Snapshot, id: &str) -> ((u64, u64), Vec<(u64, u64)>) {
    let (b, a) = (vip(before, id), vip(after, id));
    let v = (
        a.counters.packets - b.counters.packets,
        a.counters.bytes - b.counters.bytes,
    );
    let per = a
        .backends
        .iter()
        .map(|x| {
            let old = b
                .backends
                .iter()
                .find(|y| y.address == x.address)
                .map_or((0, 0), |y| (y.counters.packets, y.counters.bytes));
            (x.counters.packets - old.0, x.counters.bytes - old.1)
        })
        .collect();
    (v, per)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn counters_are_exact_for_udp_and_tcp() {
    let s = Scenario::with_servers(3, &udp_vip_config(), 3, |topo| {
        on_every_backend(topo, 53, servers::udp_identity_server)
    });
    let udp_vip: SocketAddr = format!("{VIP}:53").parse().unwrap();
    let tcp_vip_addr: SocketAddr = format!("{VIP}:80").parse().unwrap();

    // Exactly N datagrams of varied sizes; every one is answered.
    let before = s.daemon.status();
    let (dgrams0, octets0) = (
        kernel_counter(&s.topo.client, "Udp", "OutDatagrams"),
        kernel_counter(&s.topo.client, "IpExt", "OutOctets"),
    );
    const N: usize = 500;
    let mut answered: HashMap<String, u64> = HashMap::new();
    for i in 0..N {
        let payload = vec![b'x'; 1 + i % 700];
        let reply = udp_request(&s.topo.client, udp_vip, &payload)
            .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        *answered
            .entry(String::from_utf8(reply).unwrap())
            .or_default() += 1;
    }
    let after = s.daemon.status();
    let sent = kernel_counter(&s.topo.client, "Udp", "OutDatagrams") - dgrams0;
    let octets = kernel_counter(&s.topo.client, "IpExt", "OutOctets") - octets0;
    assert_eq!(sent, N as u64);
    let ((vp, vb), per) = deltas(&before, &after, "203.0.113.10:53/udp");
    assert_eq!(vp, N as u64, "VIP packets");
    assert_eq!(vb, octets, "VIP bytes = IP bytes the client sent");
    assert_eq!(
        per.iter().map(|x| x.0).sum::<u64>(),
        vp,
        "backends sum to the VIP"
    );
    assert_eq!(per.iter().map(|x| x.1).sum::<u64>(), vb);
    // Each backend counted exactly the datagrams it answered.
    for (i, b) in vip(&after, "203.0.113.10:53/udp")
        .backends
        .iter()
        .enumerate()
    {
        let name = format!(
            "backend-{}",
            u32::from(
                b.address
                    .to_string()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse::<u8>()
                    .unwrap()
            ) - 10
        );
        assert_eq!(
            per[i].0,
            answered.get(&name).copied().unwrap_or(0),
            "{name}"
        );
    }
    eprintln!("udp: {N} datagrams, {octets} bytes, per backend {per:?}");

    // K TCP connections: every segment the client's TCP sent, SYNs and ACKs included.
    let before = s.daemon.status();
    let (segs0, octets0) = (
        kernel_counter(&s.topo.client, "Tcp", "OutSegs"),
        kernel_counter(&s.topo.client, "IpExt", "OutOctets"),
    );
    const K: usize = 100;
    for i in 0..K {
        let r = tcp_request(
            &s.topo.client,
            None,
            tcp_vip_addr,
            format!("request {i}").as_bytes(),
        )
        .unwrap();
        assert!(r.starts_with(b"backend-"));
    }
    std::thread::sleep(Duration::from_millis(300)); // the last ACKs
    let after = s.daemon.status();
    let segs = kernel_counter(&s.topo.client, "Tcp", "OutSegs") - segs0;
    let octets = kernel_counter(&s.topo.client, "IpExt", "OutOctets") - octets0;
    let ((vp, vb), per) = deltas(&before, &after, "203.0.113.10:80/tcp");
    assert_eq!(vp, segs, "VIP packets = TCP segments the client sent");
    assert_eq!(vb, octets);
    assert_eq!(per.iter().map(|x| x.0).sum::<u64>(), vp);
    assert_eq!(per.iter().map(|x| x.1).sum::<u64>(), vb);
    assert_eq!(
        vip(&after, "203.0.113.10:80/tcp").counters.new_flows
            - vip(&before, "203.0.113.10:80/tcp").counters.new_flows,
        K as u64
    );
    eprintln!(
        "tcp: {K} connections, {segs} segments ({} per connection), {octets} bytes",
        segs as f64 / K as f64
    );
}

fn metrics(s: &Scenario) -> String {
    let mut c = {
        let _inside = s.topo.lb.enter();
        std::net::TcpStream::connect("127.0.0.1:9469").expect("metrics endpoint")
    };
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn metrics_parse_and_match_stats_and_survive_restarts() {
    let mut s = Scenario::new(3);
    let vip80: SocketAddr = format!("{VIP}:80").parse().unwrap();
    for _ in 0..30 {
        tcp_request(&s.topo.client, None, vip80, b"x").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // Nothing moves while we compare: no traffic now.
    let (code, json, err) = s.daemon.cli(&["stats", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let stats: Snapshot = serde_json::from_str(&json).unwrap();
    let body = metrics(&s);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{body}");
        found[0]
    };
    let v = &stats.vips[0];
    let vl = [("vip", "203.0.113.10:80/tcp"), ("vip_name", "web")];
    assert_eq!(
        value("xlb_vip_packets_total", &vl),
        v.counters.packets as f64
    );
    assert_eq!(value("xlb_vip_bytes_total", &vl), v.counters.bytes as f64);
    assert_eq!(
        value("xlb_vip_new_flows_total", &vl),
        v.counters.new_flows as f64
    );
    for b in &v.backends {
        let addr = b.address.to_string();
        let bl = [("vip", "203.0.113.10:80/tcp"), ("backend", addr.as_str())];
        assert_eq!(
            value("xlb_backend_packets_total", &bl),
            b.counters.packets as f64,
            "{addr}"
        );
        assert_eq!(
            value("xlb_backend_bytes_total", &bl),
            b.counters.bytes as f64,
            "{addr}"
        );
        assert_eq!(
            value("xlb_backend_new_flows_total", &bl),
            b.counters.new_flows as f64,
            "{addr}"
        );
        assert_eq!(value("xlb_backend_healthy", &bl), 1.0);
        assert_eq!(value("xlb_backend_weight", &bl), 100.0);
    }
    let forwarded = stats
        .reasons
        .iter()
        .find(|r| r.reason.name() == "forwarded")
        .unwrap()
        .value;
    assert_eq!(
        value("xlb_forwarded_packets_total", &[("reason", "forwarded")]),
        forwarded as f64
    );
    let tx = stats.actions.iter().find(|a| a.name == "tx").unwrap().value;
    assert_eq!(
        value("xlb_xdp_actions_total", &[("action", "tx")]),
        tx as f64
    );
    assert_eq!(value("xlb_drops_total", &[("reason", "no_backend")]), 0.0);
    assert_eq!(
        value("xlb_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(v.counters.packets >= 150, "{v:?}");

    // Restart: counters continue from where they were.
    let before = s.daemon.status();
    s.daemon.restart();
    for _ in 0..10 {
        tcp_request(&s.topo.client, None, vip80, b"x").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = s.daemon.status();
    assert_eq!(
        after.vips[0].counters.new_flows,
        before.vips[0].counters.new_flows + 10
    );
    assert!(after.vips[0].counters.packets >= before.vips[0].counters.packets + 50);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_reused_backend_id_starts_from_zero() {
    let config = header() + &tcp_vip(80, &[1, 2], "deregistration_delay = \"0s\"");
    let s = Scenario::with_config(3, &config, 2);
    let vip80: SocketAddr = format!("{VIP}:80").parse().unwrap();
    for _ in 0..40 {
        tcp_request(&s.topo.client, None, vip80, b"x").unwrap();
    }
    let st = s.daemon.status();
    let old = st.vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == "198.51.100.12")
        .unwrap()
        .clone();
    assert!(old.counters.packets > 0);
    let (code, _, err) = s
        .daemon
        .cli(&["backend", "del", "203.0.113.10:80/tcp", "198.51.100.12"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(600));
    let (code, _, err) = s
        .daemon
        .cli(&["backend", "add", "203.0.113.10:80/tcp", "198.51.100.13"]);
    assert_eq!(code, 0, "{err}");
    let st = s.daemon.status();
    let new = st.vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == "198.51.100.13")
        .unwrap();
    assert_eq!(new.id, old.id, "the freed id is reused");
    assert_eq!(
        (
            new.counters.packets,
            new.counters.bytes,
            new.counters.new_flows
        ),
        (0, 0, 0)
    );
}
