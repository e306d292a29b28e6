//! The daemon against hostile local users and bad input: idle connections cannot make it
//! deaf or fail its health checks, directories others can write are refused, a start
//! that cannot serve leaves nothing behind, every request gets a one-line answer, and
//! what operators change shows in the log and the status.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    time::{Duration, Instant},
};

use xlb::engine::Health;
use xlb_tests::{
    daemon::Daemon,
    scenario::{Scenario, VIP, header, tcp_vip},
    topology::Topology,
};

/// `GET /metrics` inside the LB namespace, answered within `within`.
fn scrape(s: &Scenario, within: Duration) -> Result<String, String> {
    let mut c = {
        let _inside = s.topo.lb.enter();
        TcpStream::connect("127.0.0.1:9469").map_err(|e| e.to_string())?
    };
    c.set_read_timeout(Some(within)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    c.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.1 200") {
        Ok(out)
    } else {
        Err(out)
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn idle_clients_cannot_make_the_daemon_deaf_or_fail_its_checks() {
    let mut s = Scenario::new(2);
    // The limit the daemon met in the field: 1,024 open files, which it cannot raise.
    s.daemon.nofile = Some(1024);
    s.daemon.restart();
    s.wait_healthy(2, Duration::from_secs(10));
    let log_before = s.daemon.log().lines().count();

    // 1,100 idle connections to the metrics port: any local user can make them.
    let idle: Vec<TcpStream> = {
        let _inside = s.topo.lb.enter();
        (0..1100)
            .filter_map(|_| TcpStream::connect("127.0.0.1:9469").ok())
            .collect()
    };
    assert!(idle.len() > 1000, "{} connections made", idle.len());
    // And 30 API connections, each sending 6 MiB of a request line without its end.
    let rss_before = rss_kib(s.daemon.pid());
    let half_lines: Vec<UnixStream> = (0..30)
        .filter_map(|_| {
            let mut c = UnixStream::connect(&s.daemon.socket).ok()?;
            c.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
            let _ = c.write_all(&vec![b'x'; 6 << 20]);
            Some(c)
        })
        .collect();
    assert!(!half_lines.is_empty());

    // The API and a scrape still answer within a second.
    let t = Instant::now();
    let st = s.daemon.status();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "API took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    scrape(&s, Duration::from_secs(1)).expect("a scrape under 1,100 idle connections");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "scrape took {:?}",
        t.elapsed()
    );

    // Health checks go on (300 ms interval, 2 failures to fail): none fails for the
    // daemon's own want of file descriptors.
    std::thread::sleep(Duration::from_secs(2));
    let st2 = s.daemon.status();
    for v in [&st, &st2] {
        for b in &v.vips[0].backends {
            assert_eq!(
                b.health,
                Health::Healthy,
                "{}: {}",
                b.address,
                b.health_reason
            );
        }
        assert!(!v.vips[0].fail_open);
    }
    // Memory stays bounded (16 connections of at most 4 MiB each), and the log does not
    // fill with accept errors.
    let grown = rss_kib(s.daemon.pid()).saturating_sub(rss_before);
    assert!(grown < 80 * 1024, "RSS grew by {grown} KiB");
    let log = s.daemon.log();
    let new_lines = log.lines().count() - log_before;
    assert!(new_lines < 50, "{new_lines} new log lines:\n{log}");
    assert!(
        !log.contains("Too many open files") || log.matches("accept failed").count() < 5,
        "{log}"
    );
    drop(idle);
    drop(half_lines);
    // Forwarding was never affected.
    xlb_tests::servers::tcp_request(
        &s.topo.client,
        None,
        format!("{VIP}:80").parse().unwrap(),
        b"x",
    )
    .expect("still forwarding");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_start_that_cannot_serve_leaves_nothing_behind() {
    let topo = Topology::new(1);
    // Something else holds the metrics port.
    let _squatter = {
        let _inside = topo.lb.enter();
        std::net::TcpListener::bind("127.0.0.1:9469").unwrap()
    };
    let config = header() + &tcp_vip(80, &[1], "");
    let (code, log) = Daemon::start_failing(&topo.lb, &config);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("daemon.metrics_address: cannot listen on 127.0.0.1:9469"),
        "{log}"
    );
    assert_eq!(
        log.trim().lines().filter(|l| l.contains("xlb:")).count(),
        1,
        "{log}"
    );
    let link = topo.lb.ip(&["link", "show", "dev", "eth0"]);
    assert!(!link.contains("xdp"), "nothing attached: {link}");
    let pins = format!("/sys/fs/bpf/xlb-test/{}", topo.lb.name());
    assert!(
        !std::path::Path::new(&pins).exists(),
        "no pins left at {pins}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn directories_other_users_can_write_are_refused() {
    let topo = Topology::new(1);
    let base = std::path::PathBuf::from("/run/xlb-test-dirs").join(topo.lb.name());
    std::fs::create_dir_all(&base).unwrap();
    let their_pins = format!("/sys/fs/bpf/xlb-test-theirs-{}", topo.lb.name());
    /// Removes what the test made, also when it fails.
    struct Remove(Vec<std::path::PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let _remove = Remove(vec![base.clone(), their_pins.clone().into()]);
    let victim = base.join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let chown = |p: &std::path::Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: chown on a path we created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    };
    // A socket directory that belongs to another user, with a symlink planted where the
    // daemon writes its state.
    let theirs = base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs);
    std::os::unix::fs::symlink(&victim, theirs.join("xlb.sock.state.toml.tmp")).unwrap();
    // A world-writable one, like /tmp.
    let shared = base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // A pin directory another user made first (bpffs's root is writable by everyone).
    std::fs::create_dir_all(&their_pins).unwrap();
    chown(std::path::Path::new(&their_pins));

    let with = |socket: &str, pins: &str| {
        header().replace("@SOCKET@", socket).replace("@PINS@", pins) + &tcp_vip(80, &[1], "")
    };
    let good_pins = format!("/sys/fs/bpf/xlb-test/{}", topo.lb.name());
    let cases = [
        (
            with(theirs.join("xlb.sock").to_str().unwrap(), &good_pins),
            "belongs to uid 65534, not root",
        ),
        (
            with(shared.join("xlb.sock").to_str().unwrap(), &good_pins),
            "is writable by other users (mode 1777)",
        ),
        (
            with(base.join("xlb.sock").to_str().unwrap(), &their_pins),
            "daemon.pin_dir: ",
        ),
    ];
    for (config, want) in &cases {
        let (code, log) = Daemon::start_failing(&topo.lb, config);
        assert_eq!(code, 1, "{log}");
        assert!(log.contains(want), "want {want:?}: {log}");
        // `xlb check` refuses the same paths.
        let path = base.join("check.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(xlb_tests::daemon::xlb_bin())
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared directory's mode was not changed");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn backends_that_cannot_take_forwarded_packets_are_refused() {
    let s = Scenario::new(1);
    let before = s.daemon.status();
    for (addr, why) in [
        ("255.255.255.255", "the broadcast address"),
        ("127.0.0.1", "a loopback address"),
        ("198.18.0.2", "an address of this load balancer"),
        (VIP, "it is a VIP address"),
        ("0.0.0.0", "the unspecified address"),
    ] {
        let (code, _, err) = s
            .daemon
            .cli(&["backend", "add", "203.0.113.10:80/tcp", addr]);
        assert_eq!(code, 1, "{addr} was accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "VIP 203.0.113.10:80/tcp backend {addr}: {addr} cannot be a backend"
            )) && err.contains(why),
            "{addr}: {err}"
        );
    }
    let after = s.daemon.status();
    assert_eq!(before.vips[0].backends.len(), after.vips[0].backends.len());
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn changes_show_in_replies_events_and_the_log() {
    let s = Scenario::new(2);
    let good = std::fs::read_to_string(&s.daemon.config_path).unwrap();
    // Only a health-check setting changes: probes change, so this is a change.
    let path = s.daemon.dir.join("checks.toml");
    std::fs::write(
        &path,
        good.replace("interval = \"300ms\"", "interval = \"400ms\""),
    )
    .unwrap();
    let (code, out, err) = s.daemon.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("health-check settings changed"), "{out}");
    assert!(!out.contains("no changes"), "{out}");
    // A weight changed by SIGHUP shows in the events with where it came from.
    s.daemon.write_config(&good.replacen(
        "address = \"198.51.100.12\" }",
        "address = \"198.51.100.12\", weight = 40 }",
        1,
    ));
    s.daemon.sighup();
    s.wait_for(Duration::from_secs(5), "the reload's event", |st| {
        st.events
            .iter()
            .any(|e| e.message == "weight 100 -> 40" && e.origin == "reload")
    });
    assert!(s.daemon.log().contains("weight 100 -> 40"));
    // A backend added while the others are healthy never serves; removing it is
    // immediate, not a deregistration delay.
    let (code, _, err) = s
        .daemon
        .cli(&["backend", "add", "203.0.113.10:80/tcp", "198.51.100.99"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        s.daemon
            .cli(&["backend", "del", "203.0.113.10:80/tcp", "198.51.100.99"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("it had never been healthy"), "{out}");
    assert!(!out.contains("draining"), "{out}");
    // The status shows where each recent change came from.
    let st = s.daemon.status();
    let text = xlb::stats::status_text(&st);
    assert!(
        text.contains("[xlb command]") || text.contains("[reload]"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn every_request_gets_a_one_line_answer() {
    let s = Scenario::new(1);
    let mut c = UnixStream::connect(&s.daemon.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"{\"op\":\"status\xff\xfe\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    let r: xlb::api::Response = serde_json::from_str(&line).unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("not UTF-8"));
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn when_every_check_fails_at_once_the_host_is_blamed() {
    let s = Scenario::new(2);
    s.topo.lb.ip(&["link", "set", "eth0", "down"]);
    s.wait_for(Duration::from_secs(10), "every check failing", |st| {
        st.all_checks_failing
    });
    let text = xlb::stats::status_text(&s.daemon.status());
    assert!(text.contains("the likely cause is this host"), "{text}");
    assert!(
        scrape(&s, Duration::from_secs(2))
            .unwrap()
            .contains("xlb_all_health_checks_failing 1")
    );
    s.topo.lb.ip(&["link", "set", "eth0", "up"]);
    s.topo
        .lb
        .ip(&["route", "replace", "default", "via", "198.18.0.1"]);
    s.wait_for(Duration::from_secs(10), "checks passing again", |st| {
        !st.all_checks_failing
    });
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn teardown_leaves_no_empty_layout_directory() {
    let s = Scenario::new(1);
    let layout = s
        .daemon
        .pin_dir
        .join(format!("v{}", xlb::daemon::LAYOUT_VERSION));
    assert!(layout.exists());
    let (code, _, err) = s.daemon.cli(&["teardown"]);
    assert_eq!(code, 0, "{err}");
    let t = Instant::now();
    while layout.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!layout.exists(), "{} is left", layout.display());
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_non_root_start_says_so_and_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let topo = Topology::new(1);
    let dir = std::env::temp_dir().join(format!("xlb-nonroot-{}", topo.lb.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pins = format!("/sys/fs/bpf/xlb-test-nonroot-{}", topo.lb.name());
    let config = header()
        .replace("@SOCKET@", dir.join("xlb.sock").to_str().unwrap())
        .replace("@PINS@", &pins)
        + &tcp_vip(80, &[1], "");
    let path = dir.join("xlb.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(xlb_tests::daemon::xlb_bin())
        .args(["run", "--config", path.to_str().unwrap(), "--iface", "lo"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("xlb run needs root"), "{err}");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} was created");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn frames_the_driver_drops_after_the_balancer_are_shown() {
    let mut s = Scenario::new(1);
    let counters = |s: &Scenario| -> u64 {
        s.daemon
            .status()
            .xdp_transmit_errors
            .iter()
            .map(|c| c.value)
            .sum()
    };
    assert!(
        !s.daemon.status().xdp_transmit_errors.is_empty(),
        "veth has XDP transmit-error counters"
    );
    let before = counters(&s);
    // Without an XDP program on the router's side, veth drops what the balancer sends.
    s.topo.detach_router_xdp();
    let vip = format!("{VIP}:80").parse().unwrap();
    for _ in 0..3 {
        let _ = xlb_tests::servers::connect(&s.topo.client, None, vip, Duration::from_millis(300));
    }
    let lost = counters(&s) - before;
    assert!(lost > 0, "the driver's drops are counted");
    let (_, stats, _) = s.daemon.cli(&["stats"]);
    assert!(
        stats.contains("lost by the eth0 driver after the balancer"),
        "{stats}"
    );
    assert!(
        scrape(&s, Duration::from_secs(2))
            .unwrap()
            .contains("xlb_interface_xdp_transmit_errors_total{interface=\"eth0\",counter=\"rx_queue_0_xdp_tx_errors\"}"),
    );
}
