//! What ships around the binary: the systemd unit is valid, every metric the Grafana
//! dashboard queries is one the daemon exports, completions and man pages are generated.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    path::PathBuf,
    process::Command,
};

use xlb_tests::{daemon::xlb_bin, scenario::Scenario};

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
