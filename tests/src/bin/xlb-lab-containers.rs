//! `xlb-lab-containers`: the container lab behind `cargo xtask demo containers`.
//!
//! A client, a router, a load balancer and a Docker host in network namespaces; a real
//! Docker daemon on that host; `xlb run` with a NAT VIP that has no configured target and
//! finds the host's labelled containers. Starts three tasks, scales up to four (slow
//! start), scales down to three under load (deregistration), showing where requests went
//! and what the table holds at each step; removes everything at the end (also on Ctrl-C).

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

use xlb::engine::Health;
use xlb_tests::{
    daemon::Daemon,
    docker::{DockerHost, WEB_IMAGE},
    nat_scenario::{nat_header, prepare_nat},
    netns::Netns,
    servers::connect,
    topology::{Topology, backend_v4},
};

const VIP: &str = "203.0.113.10:80";
const REQUESTS: usize = 300;

fn step(msg: &str) {
    println!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn main() {
    xlb_tests::netns::cleanup_on_signal();
    let started = Instant::now();
    step("building the lab: client, router, load balancer and a Docker host (network namespaces)");
    let topo = Topology::new(1);
    prepare_nat(&topo);
    let docker = DockerHost::start(&topo.backends[0]);
    docker.import_web_image();
    println!(
        "    dockerd (Debian's docker.io) runs in the host namespace 198.51.100.11, with its own\n    \
         data root and socket; image {WEB_IMAGE} is made locally from busybox (no registry)"
    );
    let config = nat_header()
        + &format!(
            "[[vip]]\nname = \"tasks\"\naddress = \"203.0.113.10\"\nport = 80\nforwarding = \"nat\"\n\
             deregistration_delay = \"10s\"\nslow_start = \"6s\"\nbackends = []\n\
             [vip.health_check]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"300ms\"\n\
             timeout = \"250ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 3\n\n\
             [[discovery.docker]]\nname = \"host-1\"\nendpoint = \"unix://{}\"\nhost_address = \"{}\"\n",
            docker.socket.display(),
            backend_v4(1)
        );
    step(
        "starting `xlb run` with a NAT VIP 203.0.113.10:80 that has no targets, and [[discovery.docker]]",
    );
    for line in config.lines().skip_while(|l| !l.starts_with("[[vip]]")) {
        println!("    {line}");
    }
    let daemon = Daemon::start(&topo.lb, &config);

    step("three tasks: docker run -d -p 0:80 --label xlb.vip=203.0.113.10:80/tcp ...");
    for n in 1..=3 {
        run_task(&docker, n);
    }
    let t = Instant::now();
    wait(&daemon, "3 healthy targets", |s| healthy(s) == 3);
    println!(
        "    all three are targets, healthy, {:.1}s later:",
        t.elapsed().as_secs_f64()
    );
    print_list(&daemon);
    println!(
        "    (the first to pass its check took the table at once; the others came up while it\n    \
         served, so they start slowly too, as in an ALB target group: waiting for them)"
    );
    wait(&daemon, "the slow starts over", |s| {
        s.vips[0]
            .backends
            .iter()
            .all(|b| b.slow_start_percent.is_none())
    });
    step(&format!("{REQUESTS} HTTP requests to {VIP}"));
    show(&traffic(&topo.client, REQUESTS));

    step("scale up: task-4 starts; it takes a growing share over its 6 s slow start");
    let t = Instant::now();
    run_task(&docker, 4);
    wait(&daemon, "task-4 healthy", |s| healthy(s) == 4);
    println!(
        "    task-4 healthy {:.1}s after `docker run`",
        t.elapsed().as_secs_f64()
    );
    for _ in 0..4 {
        let st = daemon.status();
        let b = st.vips[0]
            .backends
            .iter()
            .find(|b| b.instance.as_deref().unwrap_or("").starts_with("task-4"));
        let pct = b.and_then(|b| b.slow_start_percent);
        let seen = traffic(&topo.client, 100);
        println!(
            "    slow start at {:>3}% of its weight: task-4 answered {:>2} of 100 requests",
            pct.unwrap_or(100),
            seen.get("task-4").copied().unwrap_or(0)
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    show(&traffic(&topo.client, REQUESTS));

    step("scale down under load: docker stop task-2 (its connections drain, it gets no new one)");
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(BTreeMap::<String, usize>::new());
    let failed = Mutex::new(0usize);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                match get(&topo.client) {
                    Some(who) => *seen.lock().unwrap().entry(who).or_default() += 1,
                    None => *failed.lock().unwrap() += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let stopper = scope.spawn(|| docker.docker(&["stop", "-t", "15", "task-2"]));
        wait(&daemon, "task-2 deregistering", |s| {
            s.vips[0].backends.iter().any(|b| {
                b.instance.as_deref().unwrap_or("").starts_with("task-2")
                    && b.state.to_string() == "deregistering"
            })
        });
        println!(
            "    task-2 deregistered {:.2}s after `docker stop`; its container exits when its\n    \
             requests are done",
            t.elapsed().as_secs_f64()
        );
        seen.lock().unwrap().clear();
        stopper.join().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
    });
    let seen = seen.into_inner().unwrap();
    let total: usize = seen.values().sum();
    println!(
        "    after the stop: {total} requests, {} to task-2, {} failed in the whole scale-down",
        seen.get("task-2").copied().unwrap_or(0),
        failed.into_inner().unwrap()
    );
    print_list(&daemon);

    step("`xlb status` (excerpt)");
    let status = daemon.cli(&["status"]).1;
    for line in status.lines().filter(|l| !l.trim().is_empty()).take(14) {
        println!("    {line}");
    }
    drop(daemon);
    drop(docker);
    drop(topo);
    step(&format!(
        "done in {:.0}s; containers, dockerd, namespaces, programs and pins removed",
        started.elapsed().as_secs_f64()
    ));
}

fn run_task(docker: &DockerHost, n: usize) {
    let name = format!("task-{n}");
    docker.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--hostname",
        &name,
        "-p",
        "0:80",
        "--label",
        "xlb.vip=203.0.113.10:80/tcp",
        WEB_IMAGE,
    ]);
    let port = docker.docker(&["port", &name, "80/tcp"]);
    println!(
        "    {name}: published on {}",
        port.lines().next().unwrap_or("?").trim()
    );
}

fn healthy(s: &xlb::api::Snapshot) -> usize {
    s.vips[0]
        .backends
        .iter()
        .filter(|b| b.health == Health::Healthy && b.takes_new_flows)
        .count()
}

fn print_list(d: &Daemon) {
    for line in d.cli(&["backend", "list"]).1.lines() {
        println!("    {line}");
    }
}

/// One GET through the VIP: the task's hostname, or None on failure.
fn get(client: &Netns) -> Option<String> {
    let mut s = connect(
        client,
        None,
        VIP.parse::<SocketAddr>().ok()?,
        Duration::from_secs(3),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (out.split_whitespace().nth(1) == Some("200"))
        .then(|| out.lines().last().unwrap_or("").trim().to_owned())
}

fn traffic(client: &Netns, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = get(client).unwrap_or_else(|| "NO ANSWER".to_owned());
        *seen.entry(who).or_default() += 1;
    }
    seen
}

fn show(seen: &BTreeMap<String, usize>) {
    let total: usize = seen.values().sum();
    for (who, n) in seen {
        let bar = "#".repeat(n * 40 / total.max(1));
        println!("    {who:<10} {n:>5} {bar}");
    }
}

/// Polls the status until `f` holds (at most 30 s).
fn wait(d: &Daemon, what: &str, f: impl Fn(&xlb::api::Snapshot) -> bool) {
    d.wait_for(Duration::from_secs(30), what, f);
}
