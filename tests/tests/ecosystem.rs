//! What ships around the binary: the systemd unit is valid, every metric the Grafana
//! dashboard queries is one the daemon exports, completions and man pages are generated,
//! and `xlb trace` shows where a known connection's packets went.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    path::PathBuf,
    process::Command,
};

use xlb_tests::{
    daemon::{Daemon, xlb_bin},
    scenario::{Scenario, VIP, backend_name},
    servers,
    topology::{CLIENT_V4, backend_v4},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here: not verified");
        return;
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("xlb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(root().join("examples/xlb.service")).unwrap();
    // The unit names the installed binary; verify it against the one built here.
    let path = dir.join("xlb.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/xlb", xlb_bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needed in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "CAP_BPF",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
}

/// The metric names a PromQL expression uses.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("xlb_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_owned());
        i = end;
    }
    out
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/grafana/xlb.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            queried.extend(names_in(t["expr"].as_str().unwrap()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            queried.extend(names_in(q));
        }
    }
    assert!(queried.len() > 15, "{queried:?}");
    // What the daemon exports: every `# TYPE` family (counters get `_total`, info `_info`).
    let s = Scenario::new(1);
    let mut c = {
        let _inside = s.topo.lb.enter();
        std::net::TcpStream::connect("127.0.0.1:9469").unwrap()
    };
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let mut exported = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            exported.insert(name.to_owned());
            match kind {
                "counter" => exported.insert(format!("{name}_total")),
                "info" => exported.insert(format!("{name}_info")),
                _ => false,
            };
        }
    }
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not exported:\n{text}"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(xlb_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("announce") && text.contains("backend"),
            "{shell}: {text}"
        );
    }
    let dir = std::env::temp_dir().join(format!("xlb-man-{}", std::process::id()));
    let out = Command::new(xlb_bin())
        .args(["man", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "xlb.1",
        "xlb-run.1",
        "xlb-backend-add.1",
        "xlb-announce-withdraw.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `xlb trace` as a child process, started and seen to be tracing.
struct Tracer {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Kept open: the command reports on it when it ends.
    _stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Tracer {
    fn start(d: &Daemon, args: &[&str]) -> Self {
        let mut child = Command::new(xlb_bin())
            .env("XLB_SOCKET", &d.socket)
            .arg("trace")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run xlb trace");
        let mut first = String::new();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
        assert!(first.starts_with("tracing "), "xlb trace said {first:?}");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdout,
            _stderr: stderr,
        }
    }

    /// The next record (`-o json`), waiting at most 5 s.
    fn next(&mut self) -> serde_json::Value {
        let start = std::time::Instant::now();
        let mut line = String::new();
        // The child exits after its count; the read then returns the lines it printed.
        while line.is_empty() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "no trace record"
            );
            std::io::BufRead::read_line(&mut self.stdout, &mut line).unwrap();
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn trace_shows_where_each_packet_of_a_connection_went_and_why() {
    let s = Scenario::new(3);
    let (client, vip) = (CLIENT_V4.to_string(), format!("{VIP}:80"));
    let mut t = Tracer::start(
        &s.daemon,
        &[
            "--vip", &vip, "--client", &client, "--count", "3", "-o", "json",
        ],
    );
    // A connection from a known source port: its SYN, then its packets on the flow entry.
    let src = std::net::SocketAddr::new(CLIENT_V4.into(), 41_234);
    let got = servers::tcp_request(&s.topo.client, Some(src), vip.parse().unwrap(), b"x").unwrap();
    let served_by = String::from_utf8_lossy(&got);
    let n: usize = (1..=3)
        .find(|i| served_by.starts_with(&format!("{}\n", backend_name(*i))))
        .unwrap_or_else(|| panic!("answered by {served_by:?}"));
    let backend = backend_v4(n).to_string();
    let syn = t.next();
    assert_eq!(syn["from"], src.to_string(), "{syn}");
    assert_eq!(syn["to"], vip);
    assert_eq!(syn["path"], "vip");
    assert_eq!(syn["vip"], format!("web ({VIP}:80/tcp)"));
    assert_eq!(syn["flow"], "new", "{syn}");
    assert!(syn["maglev_slot"].as_u64().unwrap() < 65_537);
    assert_eq!(
        syn["backend"], backend,
        "the trace names the backend that answered"
    );
    assert_eq!(
        (syn["action"].as_str(), syn["reason"].as_str()),
        (Some("tx"), Some("forwarded"))
    );
    for _ in 0..2 {
        let r = t.next();
        assert_eq!(r["from"], src.to_string());
        assert_eq!(r["flow"], "hit", "{r}");
        assert_eq!(r["backend"], backend);
        assert!(r.get("maglev_slot").is_none());
    }
    let status = t.child.wait().unwrap();
    assert!(status.success(), "xlb trace ends after --count packets");

    // Packets of no VIP are traced too, with what was done to them.
    let mut t = Tracer::start(
        &s.daemon,
        &["--client", &client, "--count", "1", "-o", "json"],
    );
    let other = std::net::SocketAddr::new(VIP.parse().unwrap(), 81);
    let _ = servers::connect(
        &s.topo.client,
        None,
        other,
        std::time::Duration::from_millis(300),
    );
    let r = t.next();
    assert_eq!(r["to"], other.to_string());
    assert_eq!(r["path"], "other");
    assert_eq!(
        (r["action"].as_str(), r["reason"].as_str()),
        (Some("drop"), Some("not_vip_port"))
    );
    drop(t);

    // One trace at a time; a client that is killed ends its trace.
    let first = Tracer::start(&s.daemon, &[]);
    let (code, _, err) = s.daemon.cli(&["trace", "--count", "1"]);
    assert_eq!(
        (code, err.trim()),
        (1, "xlb: a trace is already running; only one at a time")
    );
    drop(first);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(Tracer::start(&s.daemon, &["--client", "192.0.2.99"]));

    // Bad input: one line, nothing started.
    let (code, _, err) = s.daemon.cli(&["trace", "--vip", "203.0.113.99:80"]);
    assert_eq!(
        (code, err.trim()),
        (1, "xlb: no VIP at 203.0.113.99:80; `xlb status` lists them")
    );
    let (code, _, err) = s.daemon.cli(&["trace", "--vip", "web"]);
    assert_eq!(code, 2, "{err}");
}
