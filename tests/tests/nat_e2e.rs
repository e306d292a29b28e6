//! NAT end to end, on the two container layouts: a bridge-mode container host (tasks
//! behind nftables DNAT on host ports 32768+) and awsvpc tasks with addresses of their own;
//! and client-preserving NAT with the target's default route through the load balancer.
//! Nothing of xlb runs on the target side.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr},
    time::{Duration, Instant},
};

use xlb_tests::{
    daemon::Daemon,
    nat_scenario::{BridgeHost, HOST_PORT, SNAT, host_targets, nat_header, nat_vip, prepare_nat},
    netns::Netns,
    scenario::{Scenario, on_every_backend},
    servers::{self, Sha256, connect, pattern, sha256_hex, tcp_request, udp_request},
    topology::{Topology, addr, backend_v4, veth},
};

const MB64: usize = 64 << 20;

/// These tests move hundreds of megabytes and tens of thousands of connections: one at a
/// time, so that on a small machine none starves another's health checks.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new("203.0.113.10".parse().unwrap(), port)
}

/// `n` HTTP requests to the VIP; the answering task's name -> count (and failures).
fn distribution(client: &Netns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let req = format!("GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let who = match tcp_request(client, None, to, req.as_bytes()) {
            Ok(r) => String::from_utf8_lossy(&r)
                .lines()
                .last()
                .unwrap_or("?")
                .to_owned(),
            Err(e) => format!("FAILED: {e}"),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

/// Uploads 64 MB to the bulk VIP and checks the SHA-256 the target computed.
fn upload(client: &Netns, to: SocketAddr) {
    let data = pattern(MB64);
    let mut c = connect(client, None, to, Duration::from_secs(3)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"UP\n").unwrap();
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.trim(), sha256_hex(&data), "upload arrived intact");
}

/// Downloads `n` bytes from the bulk VIP, reading `slow`ly if asked; returns the SHA-256.
fn download(client: &Netns, to: SocketAddr, n: usize, slow: Option<Duration>) -> String {
    let mut c = connect(client, None, to, Duration::from_secs(3)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(format!("DOWN {n}\n").as_bytes()).unwrap();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                sha.update(&buf[..k]);
                got += k;
                if let Some(d) = slow {
                    std::thread::sleep(d);
                }
            }
            Err(e) => panic!("download failed after {got} bytes: {e}"),
        }
    }
    assert_eq!(got, n, "downloaded bytes");
    sha.hex()
}

/// The bridge-mode layout: one container host (backend 1) with three tasks serving HTTP on
/// :80 (host ports 32768-32770) and the bulk server on :9000 (host ports 33001-33003).
fn bridge_layout(extra: &str) -> (Scenario, BridgeHost) {
    let topo = Topology::new(1);
    prepare_nat(&topo);
    let host = IpAddr::V4(backend_v4(1));
    let tasks = BridgeHost::new(&topo, 1, 3, &[(33001, 9000)], |ns, k| {
        let any = |p| SocketAddr::new("0.0.0.0".parse().unwrap(), p);
        vec![
            servers::http_server(ns, any(80), &format!("task-{k}")),
            servers::bulk_server(ns, any(9000), ""),
        ]
    });
    let config = nat_header()
        + &nat_vip("web", 80, "tcp", &host_targets(host, HOST_PORT, 3), extra)
        + &nat_vip("bulk", 9000, "tcp", &host_targets(host, 33001, 3), extra);
    let daemon = Daemon::start(&topo.lb, &config);
    let s = Scenario {
        topo,
        daemon,
        servers: Vec::new(),
        extra: Vec::new(),
    };
    s.wait_for(Duration::from_secs(15), "6 healthy targets", |st| {
        st.vips
            .iter()
            .flat_map(|v| &v.backends)
            .filter(|b| b.health == xlb::engine::Health::Healthy)
            .count()
            == 6
    });
    (s, tasks)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn bridge_mode_tasks_behind_host_ports_get_traffic_and_bulk_data_intact() {
    let _one = one_at_a_time();
    let (s, _tasks) = bridge_layout("deregistration_delay = \"10s\"");
    let client = &s.topo.client;
    let seen = distribution(client, vip(80), 300);
    for k in 1..=3 {
        let n = seen.get(&format!("task-{k}")).copied().unwrap_or(0);
        assert!(n >= 50, "task-{k} got {n} of 300: {seen:?}");
    }
    assert_eq!(seen.values().sum::<usize>(), 300, "{seen:?}");
    upload(client, vip(9000));
    let want = sha256_hex(&pattern(MB64));
    assert_eq!(
        download(client, vip(9000), MB64, None),
        want,
        "download intact"
    );

    // 20,000 sequential short connections through the one SNAT address.
    let started = Instant::now();
    let mut failures = 0;
    for i in 0..20_000 {
        let req = format!("GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        match tcp_request(client, None, vip(80), req.as_bytes()) {
            Ok(r) if String::from_utf8_lossy(&r).contains("task-") => {}
            _ => failures += 1,
        }
    }
    eprintln!(
        "20000 sequential connections in {:.1?}, {failures} failures",
        started.elapsed()
    );
    assert_eq!(failures, 0);
    let st = s.daemon.status();
    let web = st.vips.iter().find(|v| v.name == "web").unwrap();
    assert!(
        web.counters.new_flows >= 20_300,
        "{}",
        web.counters.new_flows
    );
    assert!(web.counters.reply_packets > 0);
    // The sweeper counts the SNAT address's use (connections closed recently are still
    // tracked for their closing time).
    s.wait_for(Duration::from_secs(5), "SNAT use shown", |st| {
        st.snat
            .iter()
            .any(|a| a.address == IpAddr::V4(SNAT) && a.ports_per_target == 64512)
    });
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_download_survives_a_daemon_kill_and_a_removed_target_keeps_its_connection() {
    let _one = one_at_a_time();
    let (mut s, _tasks) = bridge_layout("deregistration_delay = \"20s\"");
    let want = sha256_hex(&pattern(MB64));
    let slow = Some(Duration::from_millis(2));
    // SIGKILL and restart in the middle of a download that takes a few seconds.
    {
        let (client, daemon) = (&s.topo.client, &mut s.daemon);
        std::thread::scope(|sc| {
            let t = sc.spawn(|| download(client, vip(9000), MB64, slow));
            std::thread::sleep(Duration::from_millis(500));
            daemon.kill9();
            daemon.restart();
            assert_eq!(
                t.join().unwrap(),
                want,
                "download intact across the restart"
            );
        });
    }
    // A target removed under load keeps its connection for the deregistration delay.
    let (client, daemon) = (&s.topo.client, &s.daemon);
    std::thread::scope(|sc| {
        let t = sc.spawn(|| download(client, vip(9000), MB64, slow));
        let busy = |st: &xlb::api::Snapshot| {
            st.vips
                .iter()
                .find(|v| v.name == "bulk")
                .and_then(|v| {
                    v.backends
                        .iter()
                        .filter(|b| b.counters.reply_bytes > 1 << 20)
                        .max_by_key(|b| b.counters.reply_bytes)
                })
                .map(|b| b.address)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let target = loop {
            if let Some(t) = busy(&daemon.status()) {
                break t;
            }
            assert!(Instant::now() < deadline, "no bulk target busy");
            std::thread::sleep(Duration::from_millis(20));
        };
        let (code, out, err) = daemon.cli(&[
            "backend",
            "del",
            "203.0.113.10:9000/tcp",
            &target.to_string(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        // Read while the download runs: after its delay the target is gone, and on a
        // loaded machine the download can take most of it.
        let st = daemon.status();
        let b = st
            .vips
            .iter()
            .find(|v| v.name == "bulk")
            .unwrap()
            .backends
            .iter()
            .find(|b| b.address == target)
            .expect("still deregistering");
        assert!(!b.takes_new_flows && b.deregistration_left_secs.is_some());
        assert_eq!(
            t.join().unwrap(),
            want,
            "the removed target's download completes"
        );
    });
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn awsvpc_tasks_with_their_own_addresses_and_exact_counters() {
    let _one = one_at_a_time();
    let topo = Topology::new(3);
    prepare_nat(&topo);
    let targets: Vec<SocketAddr> = (1..=3)
        .map(|i| SocketAddr::new(IpAddr::V4(backend_v4(i)), 3000))
        .collect();
    let config = nat_header()
        + &nat_vip("web", 80, "tcp", &targets, "")
        + &nat_vip("dns", 53, "udp", &targets, "")
        + &nat_vip(
            "bulk",
            9000,
            "tcp",
            &targets
                .iter()
                .map(|t| SocketAddr::new(t.ip(), 9000))
                .collect::<Vec<_>>(),
            "",
        );
    let mut servers = on_every_backend(&topo, 3000, servers::http_server);
    servers.extend(on_every_backend(&topo, 3000, servers::udp_identity_server));
    servers.extend(on_every_backend(&topo, 9000, servers::bulk_server));
    let daemon = Daemon::start(&topo.lb, &config);
    let s = Scenario {
        topo,
        daemon,
        servers,
        extra: Vec::new(),
    };
    s.wait_healthy(3, Duration::from_secs(15));
    let seen = distribution(&s.topo.client, vip(80), 300);
    for i in 1..=3 {
        let n = seen.get(&format!("backend-{i}")).copied().unwrap_or(0);
        assert!(n >= 50, "backend-{i} got {n}: {seen:?}");
    }
    upload(&s.topo.client, vip(9000));
    assert_eq!(
        download(&s.topo.client, vip(9000), MB64, None),
        sha256_hex(&pattern(MB64))
    );
    // Counters: exactly what the client sent and received, both directions.
    let (n, payload) = (50u64, [7u8; 100]);
    for _ in 0..n {
        let r = udp_request(&s.topo.client, vip(53), &payload).expect("answer");
        assert!(String::from_utf8_lossy(&r).starts_with("backend-"));
    }
    let st = s.daemon.status();
    let dns = st.vips.iter().find(|v| v.name == "dns").unwrap();
    assert_eq!(dns.counters.packets, n);
    assert_eq!(dns.counters.bytes, n * (20 + 8 + 100));
    assert_eq!(dns.counters.reply_packets, n);
    assert_eq!(
        dns.counters.reply_bytes,
        n * (20 + 8 + 9),
        "answers are backend-N"
    );
    let per: u64 = dns.backends.iter().map(|b| b.counters.reply_packets).sum();
    assert_eq!(per, n);
    assert_eq!(
        dns.backends.iter().map(|b| b.counters.packets).sum::<u64>(),
        n
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn client_preserving_nat_through_the_target_gateway() {
    let _one = one_at_a_time();
    // The target sits on the load balancer's own segment, its default route via the LB.
    let topo = Topology::new(1);
    topo.router.ip(&["link", "add", "lbbr", "type", "bridge"]);
    topo.router.ip(&["addr", "flush", "dev", "lb"]);
    topo.router.ip(&["link", "set", "lb", "master", "lbbr"]);
    topo.router.ip(&["link", "set", "lbbr", "up"]);
    addr(&topo.router, "lbbr", "198.18.0.1/24", "2001:db8:18::1/64");
    topo.router
        .ip(&["route", "replace", "203.0.113.0/24", "via", "198.18.0.2"]);
    let target = Netns::new("tgt");
    veth(&target, "eth0", &topo.router, "tgt");
    topo.router.ip(&["link", "set", "tgt", "master", "lbbr"]);
    addr(&target, "eth0", "198.18.0.20/24", "2001:db8:18::20/64");
    target.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    target.exec("ethtool", &["-K", "eth0", "tx", "off"]);
    // Frames the balancer sends by XDP_TX cross the bridge to the target: veth delivers
    // them to a peer with an XDP program.
    let _pass = {
        let _inside = topo.router.enter();
        let mut e = aya::Ebpf::load(xlb::programs::REFERENCE).unwrap();
        let p: &mut aya::programs::Xdp = e.program_mut("xlb_pass").unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach_to_if_index(topo.router.ifindex("tgt"), aya::programs::XdpMode::Driver)
            .unwrap();
        e
    };
    let _server = servers::peer_server(&target, "0.0.0.0:3000".parse().unwrap(), "");
    let _ping = target
        .command("ping")
        .args(["-c", "1", "-W", "1", "198.18.0.2"])
        .output();
    let config = nat_header()
        + &nat_vip(
            "web",
            80,
            "tcp",
            &["198.18.0.20:3000".parse().unwrap()],
            "nat_source = \"client\"",
        );
    let daemon = Daemon::start(&topo.lb, &config);
    let s = Scenario {
        topo,
        daemon,
        servers: Vec::new(),
        extra: Vec::new(),
    };
    s.wait_healthy(1, Duration::from_secs(15));
    for _ in 0..20 {
        let r = tcp_request(&s.topo.client, None, vip(80), b"").expect("answer through the LB");
        let text = String::from_utf8_lossy(&r);
        assert!(
            text.starts_with("peer 192.0.2.2:"),
            "the target sees the client's own address: {text}"
        );
    }
    let st = s.daemon.status();
    assert!(st.vips[0].counters.reply_packets > 0);
    drop(target);
}

/// The addresses with a route in the announce table of the balancer's namespace (what BIRD
/// would export); none while the table does not exist yet (the kernel makes it with the
/// daemon's first route, which a loaded machine may not have reached at the first look).
fn announced(s: &Scenario) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            s.topo.lb.name(),
            "-4",
            "route",
            "show",
            "table",
            "4242",
            "proto",
            "250",
        ])
        .output()
        .expect("run ip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("FIB table does not exist"),
            "ip route show table 4242: {stderr}"
        );
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn wait_routes(
    s: &Scenario,
    within: Duration,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = announced(s);
        if done(&now) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what} not within {within:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_drain_withdraws_the_vip_first_and_the_snat_route_after_its_connections() {
    let _one = one_at_a_time();
    let topo = Topology::new(1);
    prepare_nat(&topo);
    let target = SocketAddr::new(IpAddr::V4(backend_v4(1)), 8080);
    let server = servers::http_server(&topo.backends[0], "0.0.0.0:8080".parse().unwrap(), "task-1");
    let config = nat_header().replacen(
        "[daemon]\n",
        "[announce]\nwarm_up = \"0s\"\ndrain_timeout = \"8s\"\n\n[daemon]\n",
        1,
    ) + &nat_vip("web", 80, "tcp", &[target], "");
    let daemon = Daemon::start(&topo.lb, &config);
    let s = Scenario {
        topo,
        daemon,
        servers: vec![server],
        extra: Vec::new(),
    };
    let (vip_route, snat_route) = ("203.0.113.10".to_owned(), SNAT.to_string());
    let has = |r: &[String], a: &String| r.contains(a);
    wait_routes(&s, Duration::from_secs(15), "VIP and SNAT announced", |r| {
        has(r, &vip_route) && has(r, &snat_route)
    });
    // A connection this host holds, idle: its SNAT port is in use.
    let mut held = connect(&s.topo.client, None, vip(80), Duration::from_secs(3)).expect("connect");
    s.wait_for(Duration::from_secs(6), "the connection counted", |st| {
        st.snat.iter().any(|a| a.ports_in_use == 1)
    });

    let t = Instant::now();
    let (code, out, err) = s.daemon.cli(&["announce", "withdraw"]);
    assert_eq!(code, 0, "{out}{err}");
    let vip_gone = wait_routes(&s, Duration::from_secs(3), "VIP withdrawn", |r| {
        !has(r, &vip_route)
    });
    assert!(
        has(&announced(&s), &snat_route),
        "the SNAT route stays while a connection uses it"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        has(&announced(&s), &snat_route),
        "still there 3 s into the drain"
    );
    let text = xlb::stats::status_text(&s.daemon.status());
    assert!(
        text.contains(&format!(
            "SNAT address {SNAT} announced while draining: 1 NAT connection still uses it"
        )),
        "{text}"
    );
    // The held connection is still served while the host drains.
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("task-1\n"), "{answer}");
    drop(held);
    // Closed, its entries stay 10 s (CLOSED_TIMEOUT): the drain timeout (8 s) ends it first.
    wait_routes(
        &s,
        Duration::from_secs(12),
        "SNAT withdrawn at the drain timeout",
        |r| !has(r, &snat_route),
    );
    let snat_gone = t.elapsed();
    eprintln!(
        "VIP route withdrawn {vip_gone:?} after `announce withdraw`, SNAT route {snat_gone:?} (drain timeout 8 s, a connection open)"
    );
    assert!(snat_gone >= Duration::from_millis(7500), "{snat_gone:?}");

    let (code, out, err) = s.daemon.cli(&["announce", "restore"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_routes(&s, Duration::from_secs(5), "announced again", |r| {
        has(r, &vip_route) && has(r, &snat_route)
    });
    s.wait_for(
        Duration::from_secs(20),
        "the closed connection swept",
        |st| st.snat.iter().all(|a| a.ports_in_use == 0),
    );
    // No connection left: the SNAT route goes one sweep after the VIP, not at the timeout.
    let t = Instant::now();
    let (code, out, err) = s.daemon.cli(&["announce", "withdraw"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_routes(&s, Duration::from_secs(6), "both withdrawn", |r| {
        !has(r, &vip_route) && !has(r, &snat_route)
    });
    eprintln!(
        "with no NAT connection both routes withdrawn {:?} after `announce withdraw`",
        t.elapsed()
    );
}
