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
    maps.predict(&frame)
        .unwrap()
        .expect("a VIP packet")
        .maglev_backend
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
        let got = String::from_utf8_lossy(&reply)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let want = backend_name(ids[&predicted(&maps, sport)]);
        assert_eq!(got, want, "connection from port {sport}");
        *per_backend.entry(got).or_default() += 1;
    }
    // 300 connections over 3 equal backends: each gets a fair share (binomial, 6 sigma).
    for (b, n) in &per_backend {
        assert!(
            (60..=140).contains(n),
            "{b} got {n} of 300: {per_backend:?}"
        );
    }
    assert_eq!(per_backend.len(), 3);
}

/// A long-lived echo stream through the VIP: a writer sends a pattern in small chunks, a
/// reader checks every echoed byte and records the longest silence.
struct Stream {
    backend: String,
    /// The client's end of the connection.
    local: SocketAddr,
    writer: std::thread::JoinHandle<std::io::Result<usize>>,
    reader: std::thread::JoinHandle<Result<(usize, Duration), String>>,
}

impl Stream {
    fn open(s: &Scenario, duration: Duration) -> Self {
        let conn =
            xlb_tests::servers::connect(&s.topo.client, None, vip80(), Duration::from_secs(3))
                .expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let local = conn.local_addr().unwrap();
        let mut r = conn.try_clone().unwrap();
        let mut w = conn;
        // The server's first line names it.
        let mut name = Vec::new();
        let mut b = [0u8; 1];
        while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            name.push(b[0]);
        }
        let data = xlb_tests::servers::pattern(4 << 20);
        let total = data.len();
        let writer = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            while started.elapsed() < duration && sent < data.len() {
                let n = 2048.min(data.len() - sent);
                w.write_all(&data[sent..sent + n])?;
                sent += n;
                std::thread::sleep(Duration::from_millis(2));
            }
            w.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        });
        let reader = std::thread::spawn(move || {
            let expect = xlb_tests::servers::pattern(total);
            let mut got = 0usize;
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut buf = vec![0u8; 65536];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Ok((got, longest)),
                    Ok(n) => {
                        if buf[..n] != expect[got..got + n] {
                            return Err(format!("echo differs at byte {got}"));
                        }
                        got += n;
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(e) => return Err(format!("read failed after {got} bytes: {e}")),
                }
            }
        });
        Self {
            backend: String::from_utf8(name).unwrap(),
            local,
            writer,
            reader,
        }
    }

    /// Waits for the end: (bytes sent, bytes echoed back intact, longest silence).
    fn finish(self) -> (usize, usize, Duration) {
        let sent = self.writer.join().unwrap().expect("writer");
        let (got, longest) = self.reader.join().unwrap().expect("reader");
        (sent, got, longest)
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn sigkill_and_restart_lose_nothing() {
    let mut s = Scenario::new(3);
    let stream = Stream::open(&s, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1500));
    let before = s.daemon.status();
    let table_before = {
        let m = s.maps();
        m.read_table(m.vip(&before.vips[0].vip.key()).unwrap().unwrap().table)
            .unwrap()
    };
    s.daemon.kill9();
    std::thread::sleep(Duration::from_millis(500));
    s.daemon.restart();
    let after = s.daemon.status();
    let (backend, local) = (stream.backend.clone(), stream.local);
    let (sent, echoed, longest) = stream.finish();
    assert_eq!(echoed, sent, "every byte echoed back intact");
    assert!(sent > 1 << 20, "the stream ran ({sent} bytes)");
    assert!(
        longest < Duration::from_secs(1),
        "the stream stalled for {longest:?}"
    );
    eprintln!("sigkill/restart: {sent} bytes echoed intact, longest silence {longest:?}");
    // Same backend: the echo came from one connection that was never reset, and its
    // flow-table entry still names the backend the stream started on.
    let frame = Packet::tcp(
        local.ip(),
        local.port(),
        VIP.parse().unwrap(),
        80,
        xlb_tests::packet::ACK,
    )
    .build();
    let p = s.maps().predict(&frame).unwrap().expect("VIP packet");
    let ids = backend_index_by_id(&after, 0);
    let remembered = p.remembered.expect("the stream's flow is remembered");
    assert_eq!(backend_name(ids[&remembered.backend]), backend);
    // Counters kept counting from where they were; the table did not change.
    let (b, a) = (&before.vips[0], &after.vips[0]);
    assert!(a.counters.packets > b.counters.packets && a.counters.bytes > b.counters.bytes);
    for (x, y) in b.backends.iter().zip(&a.backends) {
        assert_eq!(x.address, y.address);
        assert!(
            y.counters.packets >= x.counters.packets,
            "backend {} counters went back",
            x.address
        );
        assert_eq!(
            y.health, x.health,
            "health of {} changed across the restart",
            x.address
        );
    }
    let m = s.maps();
    let table_after = m
        .read_table(m.vip(&a.vip.key()).unwrap().unwrap().table)
        .unwrap();
    assert!(
        table_before == table_after,
        "the Maglev table changed across the restart"
    );
    assert!(
        s.daemon.log().contains("re-opened the pinned state"),
        "{}",
        s.daemon.log()
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn refused_applies_change_nothing() {
    let s = Scenario::new(2);
    let before = s.daemon.status();
    let good = std::fs::read_to_string(&s.daemon.config_path).unwrap();
    let cases = [
        (
            "port = 80",
            "port = 70000",
            "vip[0].port: 70000 is out of range 0-65535",
        ),
        (
            "interface = \"eth0\"",
            "interface = \"eth9\"",
            "dataplane.interface: no interface named \"eth9\"; nothing was changed",
        ),
        (
            "maglev_table_size = 65537",
            "maglev_table_size = 65539",
            "dataplane.maglev_table_size cannot change while running (65537 -> 65539)",
        ),
        (
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nfoo = 1",
            "unknown field `foo`",
        ),
        (
            "address = \"198.51.100.12\"",
            "address = \"2001:db8:be::12\"",
            "needs dataplane.source_v6",
        ),
    ];
    for (from, to, want) in cases {
        let mut bad = good.replacen(from, to, 1);
        if want.contains("source_v6") {
            bad = bad.replace("source_v6 = \"2001:db8:18::2\"\n", "");
        }
        assert_ne!(bad, good, "{from} not in the config");
        let path = s.daemon.dir.join("bad.toml");
        std::fs::write(&path, &bad).unwrap();
        let (code, out, err) = s.daemon.cli(&["apply", "-f", path.to_str().unwrap()]);
        assert_eq!(
            code, 1,
            "exit code for {to:?}: stdout {out:?} stderr {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(want), "{to:?}: {err:?}");
        assert!(out.is_empty(), "{out:?}");
    }
    // `xlb check` says the same without a daemon.
    let path = s.daemon.dir.join("bad.toml");
    std::fs::write(&path, good.replacen("port = 80", "port = 70000", 1)).unwrap();
    let (code, _, err) = s.daemon.cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(
        (code, err.trim_end()),
        (1, "xlb: vip[0].port: 70000 is out of range 0-65535")
    );
    // Nothing changed: same VIPs, backends, ids, tables; forwarding still works.
    let after = s.daemon.status();
    type Shape = Vec<(String, Vec<(IpAddr, u32, u32)>)>;
    let shape = |st: &xlb::api::Snapshot| -> Shape {
        st.vips
            .iter()
            .map(|v| {
                (
                    v.vip.to_string(),
                    v.backends
                        .iter()
                        .map(|b| (b.address.address, b.id, b.weight))
                        .collect(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&before), shape(&after));
    let reply = tcp_request(&s.topo.client, None, vip80(), b"ping").expect("still forwarding");
    assert!(String::from_utf8_lossy(&reply).starts_with("backend-"));
    // A good apply through the same path works and reports what changed.
    let path = s.daemon.dir.join("good.toml");
    std::fs::write(
        &path,
        good.replacen(
            "address = \"198.51.100.12\" }",
            "address = \"198.51.100.12\", weight = 50 }",
            1,
        ),
    )
    .unwrap();
    let (code, out, err) = s.daemon.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("backend 198.51.100.12 weight 100 -> 50"),
        "{out}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn adding_a_backend_under_load_keeps_established_connections() {
    // Three backends exist; the VIP starts with backends 1 and 2.
    let two = xlb_tests::scenario::header() + &xlb_tests::scenario::tcp_vip(80, &[1, 2], "");
    let s = Scenario::with_config(3, &two, 2);
    // 60 established connections, each knowing its backend.
    let mut conns = Vec::new();
    for _ in 0..60 {
        let mut c =
            xlb_tests::servers::connect(&s.topo.client, None, vip80(), Duration::from_secs(3))
                .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        let mut b = [0u8; 1];
        while c.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        assert!(line == "backend-1" || line == "backend-2", "{line}");
        conns.push((c, line));
    }
    // Traffic keeps flowing on them while backend 3 is added.
    let (code, out, err) =
        s.daemon
            .cli(&["backend", "add", "203.0.113.10:80/tcp", "198.51.100.13"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend 198.51.100.13 added"), "{out}");
    s.wait_for(
        Duration::from_secs(10),
        "backend 3 taking new flows",
        |st| {
            st.vips[0]
                .backends
                .iter()
                .any(|b| b.address.to_string() == "198.51.100.13" && b.takes_new_flows)
        },
    );
    // Every established connection still reaches its backend: the echo comes back.
    for (i, (c, _)) in conns.iter_mut().enumerate() {
        let msg = format!("message {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i} lost after the add: {e}"));
        assert_eq!(back, msg.as_bytes());
    }
    // New connections now reach backend 3 too.
    let mut seen3 = 0;
    for _ in 0..60 {
        let r = tcp_request(&s.topo.client, None, vip80(), b"").unwrap();
        seen3 += usize::from(String::from_utf8_lossy(&r).starts_with("backend-3"));
    }
    assert!(seen3 >= 5, "backend 3 took {seen3} of 60 new connections");
}
