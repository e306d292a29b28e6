//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads it from
//! a lab daemon, the rendered DOM lists every target with its health, a target that fails
//! is shown unhealthy within the health-check bound, and a screenshot is kept
//! (target/status-page.png).

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use xlb_tests::{netns::Netns, scenario::Scenario};

const URL: &str = "http://127.0.0.1:9469/";

/// Runs headless Chromium inside `ns` with `args` (its own empty profile; no background
/// network, which this machine's closed network would refuse); returns stdout.
fn chromium(ns: &Netns, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("xlb-chromium-{}", ns.name()));
    let _ = std::fs::remove_dir_all(&profile);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (Debian package chromium; cargo xtask setup installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The health the rendered page shows for `target`.
fn shown_health(dom: &str, target: &str) -> Option<String> {
    let at = dom.find(&format!("data-target=\"{target}\""))?;
    let rest = &dom[at..];
    let h = rest.find("data-health=\"")? + "data-health=\"".len();
    Some(rest[h..].split('"').next()?.to_owned())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_status_page_shows_every_target_and_a_failure_within_the_check_bound() {
    let mut s = Scenario::new(3);
    for _ in 0..30 {
        let _ = xlb_tests::servers::tcp_request(
            &s.topo.client,
            None,
            "203.0.113.10:80".parse().unwrap(),
            b"x",
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    let dom = chromium(&s.topo.lb, &["--dump-dom", URL]);
    assert!(dom.contains("<h1>xlb on eth0</h1>"), "{dom}");
    assert!(dom.contains("data-vip=\"203.0.113.10:80/tcp\""), "{dom}");
    for i in 1..=3 {
        assert_eq!(
            shown_health(&dom, &format!("198.51.100.1{i}")).as_deref(),
            Some("healthy"),
            "{dom}"
        );
    }
    assert!(dom.contains("<polyline"), "a sparkline: {dom}");

    // Backend 1's server stops: its check (300 ms interval, 2 failures, 200 ms timeout)
    // fails within about a second, and the page shows it.
    let stopped = Instant::now();
    drop(s.servers.remove(0));
    let bound = Duration::from_millis(2 * 300 + 200) + Duration::from_millis(800);
    let mut shown = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        let dom = chromium(&s.topo.lb, &["--dump-dom", URL]);
        if shown_health(&dom, "198.51.100.11").as_deref() == Some("unhealthy") {
            assert!(
                dom.contains("consecutive failed checks"),
                "the reason is shown"
            );
            shown = Some(stopped.elapsed());
            break;
        }
    }
    let shown = shown.expect("the failed target is shown unhealthy");
    eprintln!("the page showed backend 1 unhealthy {shown:?} after its server stopped");
    assert!(
        shown < bound + Duration::from_secs(2),
        "{shown:?} (check bound {bound:?} plus a browser start)"
    );

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(&s.topo.lb, &[&arg, URL]);
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false)
    );
    // Read-only: nothing but GET.
    let (code, _, _) = s.daemon.cli(&["status"]);
    assert_eq!(code, 0);
}
