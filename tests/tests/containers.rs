//! Container targets found by themselves: a real Docker daemon in the container host's
//! namespace (backend-1 of the topology), labelled containers discovered by `xlb run`,
//! balanced over through a NAT VIP at their dynamic host ports, drained when stopped.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use xlb::engine::Health;
use xlb_tests::{
    daemon::Daemon,
    docker::{DockerHost, WEB_IMAGE},
    nat_scenario::{nat_header, nat_vip, prepare_nat},
    netns::Netns,
    servers::{HttpWait, connect, http_get, http_server},
    topology::{Topology, backend_v4},
};

const VIP: &str = "203.0.113.10:80";

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

/// One GET through the VIP: (the task's hostname or the body, the body).
fn get(client: &Netns, path: &str, pause: Duration) -> std::io::Result<(String, Vec<u8>)> {
    let wait = HttpWait {
        connect: Duration::from_secs(3),
        read: Duration::from_secs(10),
        pause,
    };
    let (head, body) = http_get(client, vip(), path, "vip", wait)?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head));
    }
    Ok((String::from_utf8_lossy(&body).trim().to_owned(), body))
}

/// The lab: a topology whose backend-1 is a Docker host, and an `xlb run` with a NAT VIP
/// that has no configured target and discovers that host's labelled containers.
struct Lab {
    topo: Topology,
    docker: DockerHost,
    daemon: Daemon,
}

fn lab(vip_extra: &str) -> Lab {
    let topo = Topology::new(1);
    prepare_nat(&topo);
    let docker = DockerHost::start(&topo.backends[0]);
    docker.import_web_image();
    let config = nat_header()
        + &nat_vip(
            "tasks",
            80,
            "tcp",
            &[],
            &format!("deregistration_delay = \"20s\"\n{vip_extra}"),
        )
        .replace(
            "[vip.health_check]\n",
            "[vip.health_check]\nprotocol = \"http\"\npath = \"/health\"\n",
        )
        + &format!(
            "[[discovery.docker]]\nname = \"host-1\"\nendpoint = \"unix://{}\"\nhost_address = \"{}\"\n",
            docker.socket.display(),
            backend_v4(1)
        );
    let daemon = Daemon::start(&topo.lb, &config);
    Lab {
        topo,
        docker,
        daemon,
    }
}

impl Lab {
    /// Starts a labelled task with a dynamic host port; returns its id.
    fn task(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "-p",
            "0:80",
            "--label",
            "xlb.vip=203.0.113.10:80/tcp",
        ];
        args.extend_from_slice(extra);
        args.push(WEB_IMAGE);
        self.docker.docker(&args).trim().to_owned()
    }

    /// The discovered targets: instance -> (health, state).
    fn targets(&self) -> BTreeMap<String, (Health, String)> {
        targets(&self.daemon.status())
    }

    fn wait(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&BTreeMap<String, (Health, String)>) -> bool,
    ) -> Duration {
        self.daemon.wait_for(within, what, |st| done(&targets(st)))
    }
}

/// The discovered targets in a status: instance -> (health, state).
fn targets(st: &xlb::api::Snapshot) -> BTreeMap<String, (Health, String)> {
    st.vips[0]
        .backends
        .iter()
        .filter(|b| b.source.as_deref() == Some("docker:host-1"))
        .map(|b| {
            (
                b.instance.clone().unwrap_or_default(),
                (b.health, b.state.to_string()),
            )
        })
        .collect()
}

fn active_healthy(t: &BTreeMap<String, (Health, String)>, name: &str) -> bool {
    t.iter().any(|(i, (h, s))| {
        i.starts_with(&format!("{name} (")) && *h == Health::Healthy && s == "active"
    })
}

/// A steady load: sequential requests, each on a new connection, counting who answered
/// and every failure, until `stop`.
fn load(
    client: &Netns,
    stop: &AtomicBool,
    seen: &Mutex<BTreeMap<String, usize>>,
) -> (usize, Vec<String>) {
    let (mut done, mut failed) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        match get(client, "/", Duration::ZERO) {
            Ok((who, _)) => *seen.lock().unwrap().entry(who).or_default() += 1,
            Err(e) => failed.push(e.to_string()),
        }
        done += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    (done, failed)
}

fn take(seen: &Mutex<BTreeMap<String, usize>>) -> BTreeMap<String, usize> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn labelled_containers_are_found_balanced_and_drained_when_stopped() {
    let l = lab("");
    // A label naming no VIP of the configuration is ignored, never creates one.
    l.docker.docker(&[
        "run",
        "-d",
        "--name",
        "stray",
        "-p",
        "0:80",
        "--label",
        "xlb.vip=203.0.113.99:80/tcp",
        WEB_IMAGE,
    ]);
    let started = Instant::now();
    for n in ["task-1", "task-2", "task-3"] {
        l.task(n, &[]);
    }
    l.wait(Duration::from_secs(20), "three healthy targets", |t| {
        ["task-1", "task-2", "task-3"]
            .iter()
            .all(|n| active_healthy(t, n))
    });
    eprintln!(
        "3 containers: `docker run` to all healthy targets in {:?}",
        started.elapsed()
    );
    assert_eq!(
        l.daemon.status().vips.len(),
        1,
        "no VIP was created from a label"
    );
    // They share the traffic.
    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..150 {
        let (who, _) = get(&l.topo.client, "/", Duration::ZERO).expect("a request through the VIP");
        *share.entry(who).or_default() += 1;
    }
    assert_eq!(share.len(), 3, "{share:?}");
    assert!(share.values().all(|n| *n >= 20), "{share:?}");
    // The status says where each target comes from.
    let st = l.daemon.status();
    let b = &st.vips[0].backends[0];
    assert_eq!(b.source.as_deref(), Some("docker:host-1"));
    assert!(b.instance.as_deref().unwrap().starts_with("task-"), "{b:?}");
    let (_, list, _) = l
        .daemon
        .cli(&["backend", "list", "--source", "docker:host-1"]);
    assert_eq!(list.lines().count(), 4, "{list}");

    // Under load: a fourth task takes traffic within the health-check bound; a stopped one
    // gets no new connection, finishes its downloads, and no request fails.
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(BTreeMap::new());
    let want = format!("{:x}", Sha256::digest(vec![0u8; 8 << 20]));
    let client = &l.topo.client;
    let (requests, failed) = std::thread::scope(|scope| {
        let _stop_on_panic = xlb_tests::servers::StopOnDrop(&stop);
        let load = scope.spawn(|| load(client, &stop, &seen));
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        l.task("task-4", &[]);
        while !take(&seen).contains_key("task-4") {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "task-4 served nothing"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "task-4: `docker run` to first request served in {:?}",
            t.elapsed()
        );
        // Long downloads in flight (8 MiB read slowly, about 2 s), some from task-2.
        let downloads: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| get(client, "/bytes", Duration::from_millis(15))))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let stopped = Instant::now();
        let stopper = scope.spawn(|| l.docker.docker(&["stop", "-t", "20", "task-2"]));
        let deregistered = l.wait(Duration::from_secs(10), "task-2 deregistering", |t| {
            t.iter()
                .any(|(i, (_, s))| i.starts_with("task-2 (") && s == "deregistering")
        });
        eprintln!("task-2: `docker stop` to deregistered in {deregistered:?}");
        // A request is recorded when it ends: one that connected to task-2 just before the
        // deregistration may still end after it. Let it, then start counting.
        std::thread::sleep(Duration::from_millis(300));
        let _ = take(&seen);
        std::thread::sleep(Duration::from_secs(2));
        let after = take(&seen);
        assert!(
            !after.contains_key("task-2"),
            "task-2 got new connections after its stop: {after:?}"
        );
        for d in downloads {
            let (who, body) = d.join().unwrap().expect("a download in flight finishes");
            assert_eq!(body.len(), 8 << 20, "from {who}");
            assert_eq!(format!("{:x}", Sha256::digest(&body)), want);
        }
        stopper.join().unwrap();
        eprintln!("task-2 stopped {:?} after `docker stop`", stopped.elapsed());
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    eprintln!(
        "{requests} requests during scale-up and scale-down, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn docker_going_away_keeps_the_targets_and_a_restart_reconciles() {
    let mut l = lab("");
    for n in ["task-1", "task-2"] {
        l.task(n, &[]);
    }
    l.wait(Duration::from_secs(20), "two healthy targets", |t| {
        active_healthy(t, "task-1") && active_healthy(t, "task-2")
    });
    let pid = l
        .docker
        .docker(&["inspect", "-f", "{{.State.Pid}}", "task-2"]);
    let pid: i32 = pid.trim().parse().unwrap();
    // dockerd dies; its containers go on (live restore): traffic still flows to both.
    l.docker.kill9();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let (who, _) =
            get(&l.topo.client, "/", Duration::ZERO).expect("served while Docker is down");
        *seen.entry(who).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(l.targets().len(), 2, "the last known targets are kept");
    // task-2 dies while nobody watches; dockerd comes back and the daemon reconciles.
    // SAFETY: kill(2) on the container's process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    l.docker.restart();
    let took = l.wait(
        Duration::from_secs(45),
        "task-2 removed after the reconnect",
        |t| {
            !t.keys().any(|i| i.starts_with("task-2 ("))
                || t.iter()
                    .any(|(i, (_, s))| i.starts_with("task-2 (") && s == "deregistering")
        },
    );
    eprintln!("reconciled {took:?} after dockerd came back");
    assert!(
        l.daemon.log().contains("Docker unreachable"),
        "the outage is logged"
    );
    for _ in 0..30 {
        let (who, _) = get(&l.topo.client, "/", Duration::ZERO).unwrap();
        assert_eq!(who, "task-1");
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn slow_start_ramps_a_new_container_up() {
    let l = lab("slow_start = \"8s\"");
    for n in ["task-1", "task-2"] {
        l.task(n, &[]);
    }
    l.wait(Duration::from_secs(20), "two healthy targets", |t| {
        active_healthy(t, "task-1") && active_healthy(t, "task-2")
    });
    // task-2 came up while task-1 served, so it ramps too: wait until both are whole.
    let t = Instant::now();
    while l.daemon.status().vips[0]
        .backends
        .iter()
        .any(|b| b.slow_start_percent.is_some())
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "task-2's slow start ends"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    l.task("task-3", &[]);
    let t = Instant::now();
    l.wait(Duration::from_secs(20), "task-3 healthy", |t| {
        t.iter()
            .any(|(i, (h, _))| i.starts_with("task-3 (") && *h == Health::Healthy)
    });
    let healthy_after = t.elapsed();
    // Its share of the table (what new flows get) at the start, the middle and the end,
    // read with the percent the daemon reports: a table read before and after the status
    // that did not change pairs the two.
    let maps = xlb::dataplane::Balancer::load(
        xlb_tests::scenario::LIMITS,
        Some(&xlb::daemon::pin_path(&l.daemon.pin_dir, "eth0")),
    )
    .unwrap();
    let vk = xlb::config::VipId {
        address: "203.0.113.10".parse().unwrap(),
        port: 80,
        protocol: xlb::config::Protocol::Tcp,
    }
    .key();
    let table = || {
        maps.read_table(maps.vip(&vk).unwrap().unwrap().table)
            .unwrap()
    };
    let share = || -> (f64, Option<u8>) {
        loop {
            let before = table();
            let st = l.daemon.status();
            if table() != before {
                continue;
            }
            let b = st.vips[0]
                .backends
                .iter()
                .find(|b| b.instance.as_deref().unwrap_or("").starts_with("task-3 ("))
                .unwrap();
            let n = before.iter().filter(|&&id| id == b.id).count();
            return (n as f64 / before.len() as f64, b.slow_start_percent);
        }
    };
    // Equal weights: a fraction f of one weight against two whole ones takes f / (2 + f)
    // of the slots, exactly up to rounding.
    let expected = |(s, p): (f64, Option<u8>)| {
        let f = f64::from(p.unwrap_or(100)) / 100.0;
        assert!((s - f / (2.0 + f)).abs() < 0.005, "share {s} at {p:?}%");
    };
    let at_start = share();
    let ramp_began = Instant::now();
    std::thread::sleep(Duration::from_secs(4).saturating_sub(ramp_began.elapsed()));
    let middle = share();
    std::thread::sleep(Duration::from_secs(9).saturating_sub(ramp_began.elapsed()));
    let end = share();
    eprintln!(
        "task-3 healthy {healthy_after:?} after start; share of new flows: {at_start:?} at once, \
         {middle:?} at 4 s, {end:?} at 9 s (slow start 8 s)"
    );
    for s in [at_start, middle, end] {
        expected(s);
    }
    // The ramp is linear from 10% over the 8 s: read at once (how soon depends on the
    // machine's load: 10-20% on a quiet one, 30% seen on a loaded one), and 4 s later about
    // 45 points more.
    let (first, then) = (
        at_start.1.expect("ramping when healthy"),
        middle.1.expect("still ramping 4 s later"),
    );
    assert!((10..=50).contains(&first), "{at_start:?}");
    assert!(
        (25..=65).contains(&(then - first)),
        "{at_start:?}, then {middle:?} 4 s later"
    );
    assert_eq!(end.1, None, "slow start over");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_container_on_a_routed_network_is_reached_at_its_own_address() {
    let l = lab("");
    // A macvlan network on the container host's link: tasks have addresses of their own on
    // it (the awsvpc picture) and publish nothing.
    l.docker.docker(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "198.51.100.0/24",
        "--gateway",
        "198.51.100.1",
        "--ip-range",
        "198.51.100.48/29",
        "-o",
        "parent=eth0",
        "tasks",
    ]);
    l.docker.docker(&[
        "run",
        "-d",
        "--name",
        "own-1",
        "--hostname",
        "own-1",
        "--network",
        "tasks",
        "--label",
        "xlb.vip=203.0.113.10:80/tcp",
        "--label",
        "xlb.port=80",
        WEB_IMAGE,
    ]);
    l.wait(Duration::from_secs(20), "own-1 healthy", |t| {
        active_healthy(t, "own-1")
    });
    let st = l.daemon.status();
    let b = &st.vips[0].backends[0];
    let addr = b.address.to_string();
    assert!(
        addr.starts_with("198.51.100.")
            && addr.ends_with(":80")
            && !addr.starts_with("198.51.100.11:"),
        "{addr}"
    );
    let (who, _) = get(&l.topo.client, "/", Duration::ZERO).unwrap();
    assert_eq!(who, "own-1");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn registered_targets_keep_their_owner_across_reloads_and_restarts() {
    // RegisterTargets without Docker: an orchestrator registers targets by `--source`.
    let topo = Topology::new(2);
    prepare_nat(&topo);
    let target = |i: usize| SocketAddr::new(backend_v4(i).into(), 8080);
    let _servers: Vec<_> = (1..=2)
        .map(|i| http_server(&topo.backends[i - 1], target(i), &format!("be{i}")))
        .collect();
    let config = nat_header() + &nat_vip("svc", 80, "tcp", &[], "deregistration_delay = \"3s\"\n");
    let mut d = Daemon::start(&topo.lb, &config);
    let register = |d: &Daemon, i: usize, weight: &str| {
        let (rc, _, err) = d.cli(&[
            "backend",
            "add",
            "203.0.113.10:80/tcp",
            &target(i).to_string(),
            "--weight",
            weight,
            "--source",
            "deployer",
        ]);
        assert_eq!(rc, 0, "{err}");
    };
    register(&d, 1, "100");
    register(&d, 2, "300");
    // Someone else cannot take a registered target over.
    let (rc, _, err) = d.cli(&[
        "backend",
        "add",
        "203.0.113.10:80/tcp",
        &target(2).to_string(),
        "--source",
        "other",
    ]);
    assert_ne!(rc, 0);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let healthy = |d: &Daemon| {
        let st = d.status();
        st.vips[0].backends.len() == 2
            && st.vips[0]
                .backends
                .iter()
                .all(|b| b.health == Health::Healthy)
    };
    let wait_healthy = |d: &Daemon| {
        let t = Instant::now();
        while !healthy(d) {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{:?}",
                d.status().vips[0].backends
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let shares = || {
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..200 {
            let (who, _) = get(&topo.client, "/", Duration::ZERO).expect("served");
            *seen.entry(who).or_default() += 1;
        }
        seen
    };
    wait_healthy(&d);
    let s = shares();
    assert!((30..=75).contains(&s["be1"]), "weights 100 and 300: {s:?}");

    // A reload of the unchanged file and a restart of the daemon keep both, with owners.
    d.sighup();
    std::thread::sleep(Duration::from_millis(500));
    d.restart();
    wait_healthy(&d);
    let (_, list, _) = d.cli(&["backend", "list", "--source", "deployer"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    let (_, list, _) = d.cli(&["backend", "list", "--source", "config"]);
    assert_eq!(list.lines().count(), 1, "the file has none: {list}");
    // An edited file wins at a restart, but not over the registered targets: they are
    // not the file's.
    d.write_config(&(config.clone() + "# edited\n"));
    d.restart();
    wait_healthy(&d);
    let (_, list, _) = d.cli(&["backend", "list", "--source", "deployer"]);
    assert_eq!(
        list.lines().count(),
        3,
        "after a restart with an edited file: {list}"
    );
    // Registering again for the same owner updates the weight.
    register(&d, 2, "100");
    let s = shares();
    assert!((70..=130).contains(&s["be1"]), "equal weights: {s:?}");

    // Deregistration honours the delay: connections open before it finish on be2, new
    // ones never reach it, and it is gone once the delay is over.
    let open: Vec<_> = (0..12)
        .map(|_| connect(&topo.client, None, vip(), Duration::from_secs(3)).unwrap())
        .collect();
    let t = Instant::now();
    let (rc, _, err) = d.cli(&[
        "backend",
        "del",
        "203.0.113.10:80/tcp",
        &target(2).to_string(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let mut old = BTreeMap::<String, usize>::new();
    for mut s in open {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        *old.entry(out.lines().last().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    assert!(
        old.contains_key("be2"),
        "an open connection on be2 finished: {old:?}"
    );
    let s = shares();
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["be1"],
        "no new connection to be2: {s:?}"
    );
    let st = d.status();
    let b2 = st.vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == target(2).to_string());
    if t.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            b2.map(|b| b.state.to_string()).as_deref(),
            Some("deregistering")
        );
    }
    while d.status().vips[0].backends.len() > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "removed after the delay"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "be2 gone {:?} after `xlb backend del` (delay 3 s); old connections {old:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "not before the delay"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn docker_health_and_labels_decide_what_is_registered_and_how() {
    let l = lab("");
    // A Docker HEALTHCHECK that fails until the task says it is ready: not registered
    // before Docker calls it healthy.
    l.task(
        "gated",
        &[
            "--health-cmd",
            "cat /www/ready",
            "--health-interval",
            "500ms",
            "--health-retries",
            "1",
        ],
    );
    // Labels: a weight, and a health path of its own that does not exist (so xlb's check
    // fails for it alone); a wrong label is refused for that container only.
    l.task("heavy", &["--label", "xlb.weight=300"]);
    l.task("sick", &["--label", "xlb.health.path=/missing"]);
    l.task("typo", &["--label", "xlb.weight=lots"]);
    l.wait(
        Duration::from_secs(20),
        "heavy healthy, sick unhealthy",
        |t| {
            active_healthy(t, "heavy")
                && t.iter()
                    .any(|(i, (h, _))| i.starts_with("sick (") && *h == Health::Unhealthy)
        },
    );
    // Docker has had time for several checks; "gated" is still not a target.
    std::thread::sleep(Duration::from_secs(2));
    let t = l.targets();
    assert!(!t.keys().any(|i| i.starts_with("gated (")), "{t:?}");
    assert!(!t.keys().any(|i| i.starts_with("typo (")), "{t:?}");
    assert!(
        l.daemon.log().contains("xlb.weight=\"lots\""),
        "the bad label is logged:\n{}",
        l.daemon.log()
    );
    let st = l.daemon.status();
    let heavy = st.vips[0]
        .backends
        .iter()
        .find(|b| b.instance.as_deref().unwrap_or("").starts_with("heavy ("))
        .unwrap();
    assert_eq!(heavy.weight, 300);
    for _ in 0..20 {
        let (who, _) = get(&l.topo.client, "/", Duration::ZERO).unwrap();
        assert_eq!(who, "heavy", "the sick one takes nothing");
    }
    // Ready: Docker says healthy, then xlb's own check passes, then it serves.
    let t0 = Instant::now();
    l.docker
        .docker(&["exec", "gated", "sh", "-c", "echo ok > /www/ready"]);
    let took = l.wait(Duration::from_secs(20), "gated healthy", |t| {
        active_healthy(t, "gated")
    });
    eprintln!("gated: Docker healthy to an xlb target in {took:?}");
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let (who, _) = get(&l.topo.client, "/", Duration::ZERO).unwrap();
        *seen.entry(who).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["gated", "heavy"],
        "{seen:?} after {:?}",
        t0.elapsed()
    );
}
