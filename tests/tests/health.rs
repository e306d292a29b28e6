//! Health checks, draining, deregistration and fail-open, end to end with real servers.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use xlb::engine::Health;
use xlb_tests::{
    scenario::{Scenario, VIP, header, tcp_vip},
    servers::{self, connect, tcp_request},
};

fn vip80() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

/// Waits until `f(status)` holds; returns how long it took.
fn backend<'a>(st: &'a xlb::api::Snapshot, addr: &str) -> &'a xlb::api::BackendStatus {
    st.vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == addr)
        .expect("backend")
}

/// Which backend answered each of `n` new connections; failures as "FAILED".
fn spread(s: &Scenario, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match tcp_request(&s.topo.client, None, vip80(), b"") {
            Ok(r) => String::from_utf8_lossy(&r)
                .lines()
                .next()
                .unwrap_or("EMPTY")
                .to_owned(),
            Err(e) => format!("FAILED: {e}"),
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_dead_backend_leaves_within_the_bound_and_returns_when_healthy() {
    // Checks: interval 300ms, timeout 200ms, 2 failures to go down, 2 successes to come back.
    let mut s = Scenario::new(3);
    let dead = "198.51.100.12";
    // Stop backend 2's server: its port now refuses connections.
    s.servers.remove(1);
    let stopped = Instant::now();
    let took = s.wait_for(
        Duration::from_secs(5),
        "backend 2 leaving the table",
        |st| !backend(st, dead).takes_new_flows,
    );
    // Bound: interval x unhealthy_threshold + timeout, plus 300ms margin for scheduling.
    let bound = Duration::from_millis(300 * 2 + 200 + 300);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    let st = s.daemon.status();
    let b = backend(&st, dead);
    assert_eq!(b.health, Health::Unhealthy);
    assert!(
        b.health_reason
            .contains("consecutive failed checks, last: connection refused"),
        "{}",
        b.health_reason
    );
    assert!(st.events.iter().any(
        |e| e.backend.map(|a| a.to_string()) == Some(dead.to_owned())
            && e.message.contains("healthy -> unhealthy")
    ));
    eprintln!(
        "backend down: out of the table {:?} after its server stopped",
        stopped.elapsed()
    );
    // From now on every new connection succeeds and avoids it.
    let seen = spread(&s, 90);
    assert!(
        seen.iter().all(|b| b == "backend-1" || b == "backend-3"),
        "{seen:?}"
    );
    // Start it again: back after 2 successful checks.
    s.servers.insert(
        1,
        servers::echo_server(
            &s.topo.backends[1],
            "0.0.0.0:80".parse().unwrap(),
            "backend-2",
        ),
    );
    let back = s.wait_for(Duration::from_secs(5), "backend 2 returning", |st| {
        backend(st, dead).takes_new_flows
    });
    assert!(
        back <= Duration::from_millis(300 * 2 + 300 + 300),
        "returned after {back:?}"
    );
    let seen = spread(&s, 90);
    assert!(seen.iter().all(|b| b.starts_with("backend-")), "{seen:?}");
    assert!(
        seen.iter().filter(|b| *b == "backend-2").count() >= 10,
        "{seen:?}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_drained_backend_keeps_its_stream_and_gets_no_new_connections() {
    let s = Scenario::new(3);
    // Open streams until one lands on backend 1.
    let mut stream = None;
    for _ in 0..50 {
        let mut c = connect(&s.topo.client, None, vip80(), Duration::from_secs(3)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut name = [0u8; 10];
        c.read_exact(&mut name).unwrap();
        if &name == b"backend-1\n" {
            stream = Some(c);
            break;
        }
    }
    let mut c = stream.expect("a connection on backend 1");
    let (code, out, err) =
        s.daemon
            .cli(&["backend", "drain", "203.0.113.10:80/tcp", "198.51.100.11"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend 198.51.100.11 drained"), "{out}");
    // The stream goes on, intact, while new connections avoid the drained backend.
    let data = servers::pattern(256 * 1024);
    let mut back = vec![0u8; data.len()];
    for round in 0..8 {
        let chunk = &data[round * 32 * 1024..(round + 1) * 32 * 1024];
        c.write_all(chunk).unwrap();
        c.read_exact(&mut back[round * 32 * 1024..(round + 1) * 32 * 1024])
            .unwrap();
        let seen = spread(&s, 10);
        assert!(
            seen.iter().all(|b| b == "backend-2" || b == "backend-3"),
            "round {round}: {seen:?}"
        );
    }
    assert!(back == data, "the stream's bytes came back intact");
    let st = s.daemon.status();
    assert_eq!(backend(&st, "198.51.100.11").state.as_str(), "drained");
    // Undrain: it takes new flows again.
    let (code, _, _) =
        s.daemon
            .cli(&["backend", "undrain", "203.0.113.10:80/tcp", "198.51.100.11"]);
    assert_eq!(code, 0);
    let seen = spread(&s, 60);
    assert!(seen.iter().any(|b| b == "backend-1"), "{seen:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn when_every_backend_fails_its_check_traffic_fails_open() {
    // Health checked over HTTP on port 8080, served by separate health servers; the
    // service on port 80 stays up.
    let config = (header() + &tcp_vip(80, &[1, 2, 3], "")).replace(
        "interval = \"300ms\"",
        "protocol = \"http\"\nport = 8080\npath = \"/health\"\ninterval = \"300ms\"",
    );
    let mut scenario = Scenario::with_servers(3, &config, 3, |topo| {
        xlb_tests::scenario::on_every_backend(topo, 8080, servers::http_server)
    });
    // Every health server goes away: every backend turns unhealthy, and the VIP fails open.
    scenario.extra.clear();
    scenario.wait_for(Duration::from_secs(5), "fail-open", |st| {
        st.vips[0].fail_open
    });
    let st = scenario.daemon.status();
    assert!(
        st.vips[0]
            .backends
            .iter()
            .all(|b| b.health == Health::Unhealthy && b.takes_new_flows)
    );
    let (_, text, _) = scenario.daemon.cli(&["status"]);
    assert!(text.contains("FAIL-OPEN"), "{text}");
    // Traffic still flows, to all of them.
    let seen = spread(&scenario, 90);
    for b in ["backend-1", "backend-2", "backend-3"] {
        assert!(
            seen.iter().filter(|x| *x == b).count() >= 10,
            "{b}: {seen:?}"
        );
    }
    let metrics = fetch_metrics(&scenario);
    assert!(
        metrics.contains("xlb_vip_fail_open{vip=\"203.0.113.10:80/tcp\",vip_name=\"web\"} 1"),
        "{metrics}"
    );
}

fn fetch_metrics(s: &Scenario) -> String {
    let _inside = s.topo.lb.enter();
    let mut c = std::net::TcpStream::connect("127.0.0.1:9469").expect("metrics endpoint");
    drop(_inside);
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_removed_backend_serves_out_its_deregistration_delay() {
    let config = header() + &tcp_vip(80, &[1, 2], "deregistration_delay = \"3s\"");
    let s = Scenario::with_config(2, &config, 2);
    // A connection on backend 2.
    let mut conn = None;
    for _ in 0..50 {
        let mut c = connect(&s.topo.client, None, vip80(), Duration::from_secs(3)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut name = [0u8; 10];
        c.read_exact(&mut name).unwrap();
        if &name == b"backend-2\n" {
            conn = Some(c);
            break;
        }
    }
    let mut c = conn.expect("a connection on backend 2");
    // Stamped before the request: the daemon starts the delay when it
    // receives it, which is after this instant and before the CLI returns.
    let removed = Instant::now();
    let (code, _, err) = s
        .daemon
        .cli(&["backend", "del", "203.0.113.10:80/tcp", "198.51.100.12"]);
    assert_eq!(code, 0, "{err}");
    let st = s.daemon.status();
    assert_eq!(
        backend(&st, "198.51.100.12").state.as_str(),
        "deregistering"
    );
    // During the delay: the connection works, new ones go to backend 1.
    for i in 0..5 {
        c.write_all(b"ping\n").unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("round {i}: {e}"));
        assert!(spread(&s, 5).iter().all(|b| b == "backend-1"));
        std::thread::sleep(Duration::from_millis(300));
    }
    // After it: the backend is gone.
    s.wait_for(Duration::from_secs(6), "removal", |st| {
        st.vips[0].backends.len() == 1
    });
    let took = removed.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(4500),
        "removed after {took:?}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_health_flap_moves_only_the_failed_backends_flows() {
    let mut s = Scenario::new(3);
    let table = |s: &Scenario| {
        let m = s.maps();
        let st = s.daemon.status();
        m.read_table(m.vip(&st.vips[0].vip.key()).unwrap().unwrap().table)
            .unwrap()
    };
    let id_of = |st: &xlb::api::Snapshot, addr: &str| {
        st.vips[0]
            .backends
            .iter()
            .find(|b| b.address.to_string() == addr)
            .unwrap()
            .id
    };
    let before = table(&s);
    let down = id_of(&s.daemon.status(), "198.51.100.12");
    s.servers.remove(1);
    s.wait_for(Duration::from_secs(5), "backend 2 down", |st| {
        !backend(st, "198.51.100.12").takes_new_flows
    });
    let during = table(&s);
    let moved = before.iter().zip(&during).filter(|(a, b)| a != b).count();
    let collateral = before
        .iter()
        .zip(&during)
        .filter(|(a, b)| a != b && **a != down)
        .count();
    let owned = before.iter().filter(|&&x| x == down).count();
    assert_eq!(
        collateral, 0,
        "slots moved between the backends that stayed"
    );
    assert_eq!(moved, owned, "exactly the failed backend's slots moved");
    s.servers.insert(
        1,
        servers::echo_server(
            &s.topo.backends[1],
            "0.0.0.0:80".parse().unwrap(),
            "backend-2",
        ),
    );
    s.wait_for(Duration::from_secs(5), "backend 2 back", |st| {
        backend(st, "198.51.100.12").takes_new_flows
    });
    assert!(table(&s) == before, "the table returned exactly");
    eprintln!(
        "health flap: {moved} of {} slots moved (all backend 2's), none between the others",
        before.len()
    );
}
