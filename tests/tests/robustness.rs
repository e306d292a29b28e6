//! Faults and hostile input, end to end: a flow table that fills up, an interface that
//! goes down, a backend host that vanishes, a daemon killed in the middle of applies, and
//! malformed or unauthorised requests. Nothing may be lost that need not be, and nothing
//! may be left half-changed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    os::unix::{net::UnixStream, process::CommandExt},
    time::Duration,
};

use xlb_tests::{
    scenario::{Scenario, VIP, header, on_every_backend, tcp_vip},
    servers::{self, connect, tcp_request, udp_request},
    topology::backend_v4,
};

fn vip80() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

/// An echo connection through the VIP, past the server's name line.
fn echo_conn(s: &Scenario) -> std::net::TcpStream {
    let mut c = connect(&s.topo.client, None, vip80(), Duration::from_secs(3)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut name = [0u8; 10];
    c.read_exact(&mut name).unwrap();
    c
}

fn echo_once(c: &mut std::net::TcpStream, msg: &str) -> std::io::Result<()> {
    c.write_all(msg.as_bytes())?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)?;
    assert_eq!(back, msg.as_bytes());
    Ok(())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_full_flow_table_keeps_forwarding_and_counts_evictions() {
    let backends: Vec<String> = (1..=2)
        .map(|i| format!("{{ address = \"{}\" }}", backend_v4(i)))
        .collect();
    let config = (header() + &tcp_vip(80, &[1, 2], ""))
        .replace("flow_table_entries = 65536", "flow_table_entries = 256")
        + &format!(
            "[[vip]]\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nbackends = [ {} ]\nhealth_check = {{ protocol = \"none\" }}\n",
            backends.join(", ")
        );
    let s = Scenario::with_servers(2, &config, 2, |topo| {
        on_every_backend(topo, 53, servers::udp_identity_server)
    });
    // Every packet this thread sends is balanced on the CPU it runs on (veth hands frames
    // to the peer's XDP on the sending CPU): pinned, all new flows take one CPU's share.
    pin_to_one_cpu();
    let mut conns: Vec<_> = (0..8).map(|_| echo_conn(&s)).collect();
    // A flood of new flows, many times the table: every datagram is still answered.
    let dns: SocketAddr = format!("{VIP}:53").parse().unwrap();
    for i in 0..2000 {
        udp_request(&s.topo.client, dns, b"q")
            .unwrap_or_else(|e| panic!("datagram {i} unanswered: {e}"));
    }
    // The long-lived connections lost their entries, and still work: Maglev gives them
    // the same backends while the table is unchanged.
    for (i, c) in conns.iter_mut().enumerate() {
        echo_once(c, &format!("still here {i}\n"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    let st = s.daemon.status();
    let tcp = st.vips.iter().find(|v| v.vip.port == 80).unwrap();
    let udp = st.vips.iter().find(|v| v.vip.port == 53).unwrap();
    // What status says one CPU holds is what the table holds after a flood on one CPU.
    let f = st.flow_table;
    assert_eq!(f.entries, 256, "{f:?}");
    assert_eq!(f.per_cpu, 256u32.div_ceil(f.cpus), "{f:?}");
    let limits = xlb::dataplane::Limits {
        flow_table_entries: 256,
        ..xlb_tests::scenario::LIMITS
    };
    let held = s
        .maps_with(limits)
        .flows()
        .expect("read the flow table")
        .len() as u32;
    assert!(
        (f.per_cpu / 2..=f.per_cpu + 8).contains(&held),
        "{held} flows held, {} per CPU",
        f.per_cpu
    );
    let text = xlb::stats::status_text(&st);
    assert!(
        text.contains(&format!("flow table: 256 entries, {} per CPU", f.per_cpu)),
        "{text}"
    );
    // Most datagrams were new flows (an ephemeral port used twice finds its entry).
    assert!(udp.counters.new_flows >= 1500, "{}", udp.counters.new_flows);
    assert!(
        tcp.midflow_misses >= 1,
        "evictions show as mid-flow misses: {}",
        tcp.midflow_misses
    );
    eprintln!(
        "flow table of 256 ({} per CPU): 2000 UDP flows on one CPU, {held} held, {} mid-flow misses on the 8 TCP connections",
        f.per_cpu, tcp.midflow_misses
    );
}

/// Pins the calling thread to the first CPU it may run on.
fn pin_to_one_cpu() {
    // SAFETY: sched_getaffinity/sched_setaffinity on the calling thread with cpu sets we
    // own, zeroed before use.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed),
            0,
            "sched_getaffinity"
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &allowed))
            .expect("a CPU to run on");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_interface_going_down_and_up_loses_no_connection() {
    let s = Scenario::new(2);
    let mut c = echo_conn(&s);
    echo_once(&mut c, "before\n").unwrap();
    s.topo.lb.ip(&["link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_millis(800));
    s.topo.lb.ip(&["link", "set", "eth0", "up"]);
    // Link down flushed the routes through it; bring them back as a routing daemon would.
    s.topo
        .lb
        .ip(&["route", "replace", "default", "via", "198.18.0.1"]);
    // TCP retransmits what was lost meanwhile; the balancer is still attached.
    echo_once(&mut c, "after\n").unwrap();
    let out = s.topo.lb.ip(&["link", "show", "eth0"]);
    assert!(out.contains("xlb_balancer"), "{out}");
    for _ in 0..20 {
        tcp_request(&s.topo.client, None, vip80(), b"x").expect("new connections after the flap");
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_backend_host_that_vanishes_is_routed_around() {
    let s = Scenario::new(3);
    // Backend 2's link is cut: no RST, no FIN, just silence.
    s.topo.router.ip(&["link", "set", "be2", "down"]);
    let backend2 = |st: &xlb::api::Snapshot| {
        st.vips[0]
            .backends
            .iter()
            .find(|b| b.address.to_string() == "198.51.100.12")
            .cloned()
            .unwrap()
    };
    let took = s.wait_for(
        Duration::from_secs(5),
        "backend 2 leaving the table",
        |st| !backend2(st).takes_new_flows,
    );
    let reason = backend2(&s.daemon.status()).health_reason;
    assert!(reason.contains("timeout"), "{reason}");
    eprintln!("vanished backend out of the table after {took:?}");
    for i in 0..60 {
        let r = tcp_request(&s.topo.client, None, vip80(), b"x")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(!r.starts_with(b"backend-2"));
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_daemon_killed_during_applies_restarts_into_one_consistent_version() {
    // Version A: one VIP on backends 1-2. Version B: backends 2-3 with weights, and a
    // second VIP. The file on disk stays A; B is applied through the API.
    let a = header() + &tcp_vip(80, &[1, 2], "");
    let b = header()
        + &tcp_vip(80, &[2, 3], "").replace(
            "{ address = \"198.51.100.13\" }",
            "{ address = \"198.51.100.13\", weight = 300 }",
        )
        + &tcp_vip(81, &[1], "").replace("name = \"web\"", "name = \"web81\"");
    let mut s = Scenario::with_config(3, &a, 2);
    let b_path = s.daemon.dir.join("b.toml");
    let b_text = b
        .replace("@SOCKET@", &s.daemon.socket.to_string_lossy())
        .replace("@PINS@", &s.daemon.pin_dir.to_string_lossy());
    std::fs::write(&b_path, &b_text).unwrap();
    let shape = |st: &xlb::api::Snapshot| -> Vec<(String, Vec<(String, u32)>)> {
        st.vips
            .iter()
            .map(|v| {
                (
                    v.vip.to_string(),
                    v.backends
                        .iter()
                        .filter(|b| b.state.as_str() != "deregistering")
                        .map(|b| (b.address.to_string(), b.weight))
                        .collect(),
                )
            })
            .collect()
    };
    let want_a = shape(&s.daemon.status());
    let mut seen = [0usize; 2];
    for round in 0..8u64 {
        // Back to A through the file, then B through the API, killed after 0-24 ms.
        let (code, _, err) = s
            .daemon
            .cli(&["apply", "-f", s.daemon.config_path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let mut apply = std::process::Command::new(xlb_tests::daemon::xlb_bin())
            .args(["apply", "-f", b_path.to_str().unwrap()])
            .arg("--socket")
            .arg(&s.daemon.socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(
            [0, 5, 10, 20, 40, 80, 160, 320][round as usize],
        ));
        s.daemon.kill9();
        let _ = apply.wait();
        s.daemon.restart();
        let st = s.daemon.status();
        let got = shape(&st);
        let is_a = got == want_a;
        let is_b = got.len() == 2
            && got[0].1
                == vec![
                    ("198.51.100.12".to_owned(), 100),
                    ("198.51.100.13".to_owned(), 300),
                ];
        assert!(is_a || is_b, "round {round}: a mix of versions: {got:?}");
        seen[usize::from(is_b)] += 1;
        // The data plane agrees: every table names only backends of its VIP that take flows.
        let maps = s.maps();
        for v in &st.vips {
            let info = maps.vip(&v.vip.key()).unwrap().expect("VIP in the map");
            let ids: std::collections::BTreeSet<u32> =
                maps.read_table(info.table).unwrap().into_iter().collect();
            let expected: std::collections::BTreeSet<u32> = v
                .backends
                .iter()
                .filter(|b| b.takes_new_flows)
                .map(|b| b.id)
                .collect();
            assert_eq!(ids, expected, "round {round}: table of {}", v.vip);
        }
        // And it forwards.
        tcp_request(&s.topo.client, None, vip80(), b"x")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    eprintln!(
        "killed mid-apply 8 times: restarted into version A {} times, B {} times",
        seen[0], seen[1]
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn malformed_and_invalid_requests_change_nothing() {
    let s = Scenario::new(2);
    let before = serde_json::to_value(s.daemon.status().vips).unwrap();
    let requests = [
        "not json at all".to_owned(),
        "{".to_owned(),
        "{\"op\":\"vip_add\"}".to_owned(),
        "{\"op\":\"self_destruct\"}".to_owned(),
        "{\"op\":\"vip_add\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"tcp\"},\"name\":null,\"hash\":\"5-tuple\"}".to_owned(),
        "{\"op\":\"vip_del\",\"vip\":{\"address\":\"203.0.113.99\",\"port\":80,\"protocol\":\"tcp\"}}".to_owned(),
        "{\"op\":\"backend_add\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"tcp\"},\"address\":\"198.51.100.11\",\"weight\":null}".to_owned(),
        "{\"op\":\"backend_add\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"tcp\"},\"address\":\"0.0.0.0\",\"weight\":null}".to_owned(),
        "{\"op\":\"backend_weight\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"tcp\"},\"address\":\"198.51.100.11\",\"weight\":4000000000}".to_owned(),
        "{\"op\":\"backend_del\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"tcp\"},\"address\":\"198.51.100.99\"}".to_owned(),
        "{\"op\":\"backend_drain\",\"vip\":{\"address\":\"203.0.113.10\",\"port\":80,\"protocol\":\"udp\"},\"address\":\"198.51.100.11\"}".to_owned(),
        "{\"op\":\"vip_add\",\"vip\":{\"address\":\"2001:db8:203::99\",\"port\":80,\"protocol\":\"tcp\"},\"name\":null,\"hash\":\"5-tuple\"}".to_owned()
            + "\n{\"op\":\"backend_add\",\"vip\":{\"address\":\"2001:db8:203::99\",\"port\":80,\"protocol\":\"tcp\"},\"address\":\"198.51.100.11\",\"weight\":null}",
        format!("{{\"op\":\"apply\",\"config\":\"{}\",\"origin\":\"x\"}}", "a".repeat(1 << 20)),
        format!("{{\"op\":\"apply\",\"config\":\"[[vip]]\\naddress = \\\"{}\\\"\",\"origin\":\"x\"}}", "9".repeat(5000)),
    ];
    let mut added_v6 = false;
    for (i, r) in requests.iter().enumerate() {
        let mut sock = UnixStream::connect(&s.daemon.socket).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(r.as_bytes()).unwrap();
        sock.write_all(b"\n").unwrap();
        let mut reader = BufReader::new(sock);
        for line_no in 0..r.lines().count() {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let resp: xlb::api::Response =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("request {i}: {e}: {line}"));
            if i == 11 && line_no == 0 {
                // The v6 VIP itself is valid; its IPv4 backend is not.
                assert!(resp.ok, "{line}");
                added_v6 = true;
                continue;
            }
            assert!(!resp.ok, "request {i} was accepted: {line}");
            let err = resp.error.unwrap();
            assert!(
                !err.is_empty() && !err.contains('\n') && err.len() < 400,
                "request {i}: {err:?}"
            );
        }
    }
    assert!(added_v6);
    let (code, _, err) = s.daemon.cli(&["vip", "del", "[2001:db8:203::99]:80/tcp"]);
    assert_eq!(code, 0, "{err}");
    // What a request could have changed: every VIP's backends, ids, weights and states.
    let shape = |vips: &[xlb::api::VipStatus]| {
        vips.iter()
            .map(|v| {
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| (b.address, b.id, b.weight, b.state))
                    .collect();
                (v.vip, backends)
            })
            .collect::<Vec<_>>()
    };
    let after = shape(&s.daemon.status().vips);
    let was = shape(&serde_json::from_value::<Vec<xlb::api::VipStatus>>(before).unwrap());
    assert_eq!(after, was);
    tcp_request(&s.topo.client, None, vip80(), b"x").expect("still forwarding");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn only_root_may_use_the_socket_and_metrics_are_read_only() {
    let s = Scenario::new(1);
    let meta = std::fs::metadata(&s.daemon.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // As user "nobody" the command cannot connect.
    let out = std::process::Command::new(xlb_tests::daemon::xlb_bin())
        .arg("status")
        .arg("--socket")
        .arg(&s.daemon.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // The metrics endpoint listens on loopback and answers only GET /metrics.
    let mut c = {
        let _inside = s.topo.lb.enter();
        std::net::TcpStream::connect("127.0.0.1:9469").unwrap()
    };
    c.write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let listening = s.topo.lb.exec("ss", &["-ltn"]);
    assert!(
        listening.contains("127.0.0.1:9469") && !listening.contains("0.0.0.0:9469"),
        "{listening}"
    );
}
