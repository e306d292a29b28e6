//! `xlb-lab`: the self-contained lab behind `cargo xtask demo`.
//!
//! Builds a client, a router, a load balancer and three backends in network namespaces,
//! runs the real `xlb run` with `examples/lab.toml`, sends real HTTP connections and UDP
//! queries through the VIP, shows where they went and what `xlb stats` counted, stops one
//! backend and brings it back, and removes everything at the end (also on Ctrl-C).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use xlb::engine::Health;
use xlb_tests::{
    daemon::Daemon,
    scenario::on_every_backend,
    servers::{self, tcp_request, udp_request},
    topology::Topology,
};

const VIP: &str = "203.0.113.10";
const NAT_VIP: &str = "203.0.113.20";
const CONNECTIONS: usize = 300;

fn step(msg: &str) {
    println!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn main() {
    let config = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.toml"));
    xlb_tests::netns::cleanup_on_signal();
    let started = Instant::now();

    step(
        "building the lab: client, router, load balancer, 3 backends, a container host (network namespaces)",
    );
    let mut topo = Topology::new(4);
    // The fourth backend namespace is the container host of the NAT VIP: nothing of xlb
    // runs there, so it leaves the DSR preparation of the others.
    let host = topo.backends.pop().expect("4 backends");
    topo.add_vip_on_backends(VIP.parse().unwrap());
    topo.start_decap();
    topo.backends.push(host);
    xlb_tests::nat_scenario::prepare_nat(&topo);
    println!(
        "    backends 1-3 run `xlb decap --iface eth0` and have {VIP} on loopback (direct server return)"
    );
    let mut web = on_every_backend(&topo, 80, servers::http_server);
    web.truncate(3);
    let _dns = on_every_backend(&topo, 53, servers::udp_identity_server);
    println!("    each backend serves HTTP on :80 and UDP on :53, answering with its name");
    let mut tasks = xlb_tests::nat_scenario::BridgeHost::new(&topo, 4, 3, &[], |ns, k| {
        vec![servers::http_server(
            ns,
            "0.0.0.0:80".parse().unwrap(),
            &format!("task-{k}"),
        )]
    });
    println!(
        "    container host 198.51.100.14 (bridge mode, like Docker/ECS): tasks 1-3 serve HTTP on :80,\n    \
         published on host ports 32768-32770 by nftables DNAT; nothing of xlb runs there"
    );

    step(&format!(
        "starting `xlb run --config {}` on the load balancer",
        config.display()
    ));
    let daemon = Daemon::start_file(&topo.lb, &config);
    wait(&daemon, "all backends healthy", |s| {
        s.vips
            .iter()
            .all(|v| v.backends.iter().all(|b| b.health == Health::Healthy))
    });
    print!("{}", daemon.cli(&["status"]).1);

    step(&format!(
        "{CONNECTIONS} HTTP connections and 90 UDP queries from the client to {VIP}"
    ));
    show(&traffic(&topo));
    step("what xlb counted (`xlb stats`)");
    print!("{}", daemon.cli(&["stats"]).1);

    step("stopping backend-2's web server (its health check starts failing)");
    let stopped = Instant::now();
    drop(web.remove(1));
    wait(&daemon, "backend-2 leaving the Maglev table", |s| {
        !web_backend(s, 1).takes_new_flows
    });
    println!(
        "    backend-2 stopped taking new flows {:.1}s after its server stopped",
        stopped.elapsed().as_secs_f64()
    );
    show(&traffic(&topo));

    step("starting backend-2's web server again");
    let restarted = Instant::now();
    web.insert(
        1,
        servers::http_server(
            &topo.backends[1],
            "0.0.0.0:80".parse().unwrap(),
            "backend-2",
        ),
    );
    wait(&daemon, "backend-2 healthy again", |s| {
        web_backend(s, 1).takes_new_flows
    });
    println!(
        "    backend-2 back in the table {:.1}s later",
        restarted.elapsed().as_secs_f64()
    );
    show(&traffic(&topo));

    step(&format!(
        "NAT VIP {NAT_VIP}: {CONNECTIONS} HTTP connections to tasks behind host ports (full NAT from 198.18.0.10)"
    ));
    show(&nat_traffic(&topo));
    step("stopping task-2 (its health check fails), then draining task-3 (`xlb backend drain`)");
    drop(tasks.servers.remove(1));
    wait(&daemon, "task-2 leaving the table", |s| {
        !nat_target(s, 1).takes_new_flows
    });
    let (code, out, err) = daemon.cli(&[
        "backend",
        "drain",
        &format!("{NAT_VIP}:80/tcp"),
        "198.51.100.14:32770",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    print!("    {out}");
    show(&nat_traffic(&topo));
    step("SNAT ports in use (`xlb status`)");
    let status = daemon.cli(&["status"]).1;
    for line in status.lines().filter(|l| {
        l.starts_with("SNAT ")
            || l.contains("forwarding=nat")
            || l.trim_start().starts_with("198.51.100.14:")
    }) {
        println!("    {line}");
    }

    step("recent events (`xlb status`)");
    let status = daemon.cli(&["status"]).1;
    for line in status
        .lines()
        .skip_while(|l| !l.starts_with("recent events"))
    {
        println!("{line}");
    }
    step("final counters (`xlb stats`)");
    print!("{}", daemon.cli(&["stats"]).1);
    step("what Prometheus scrapes from http://127.0.0.1:9469/metrics (excerpt)");
    for line in metrics(&topo)
        .lines()
        .filter(|l| l.contains("vip_name=\"web\"") && !l.starts_with('#'))
        .take(12)
    {
        println!("    {line}");
    }

    drop(daemon);
    drop(web);
    drop(tasks);
    drop(topo);
    step(&format!(
        "done in {:.0}s; namespaces, programs and pins removed",
        started.elapsed().as_secs_f64()
    ));
}

/// The metrics text, fetched inside the load balancer's namespace.
fn metrics(topo: &Topology) -> String {
    use std::io::{Read, Write};
    let mut c = {
        let _inside = topo.lb.enter();
        std::net::TcpStream::connect("127.0.0.1:9469").expect("metrics endpoint")
    };
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Backend `i` (0-based) of the VIP named "web".
fn web_backend(s: &xlb::api::Snapshot, i: usize) -> &xlb::api::BackendStatus {
    let web = s
        .vips
        .iter()
        .find(|v| v.name == "web")
        .expect("the lab config has a VIP named web");
    &web.backends[i]
}

/// Target `i` (0-based) of the VIP named "tasks".
fn nat_target(s: &xlb::api::Snapshot, i: usize) -> &xlb::api::BackendStatus {
    let v = s
        .vips
        .iter()
        .find(|v| v.name == "tasks")
        .expect("the lab config has a VIP named tasks");
    &v.backends[i]
}

/// HTTP connections to the NAT VIP; answers per task.
fn nat_traffic(topo: &Topology) -> BTreeMap<String, (usize, usize)> {
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let vip: SocketAddr = format!("{NAT_VIP}:80").parse().unwrap();
    for i in 0..CONNECTIONS {
        let req = format!("GET /n/{i} HTTP/1.1\r\nHost: {NAT_VIP}\r\nConnection: close\r\n\r\n");
        let who = match tcp_request(&topo.client, None, vip, req.as_bytes()) {
            Ok(r) => String::from_utf8_lossy(&r)
                .lines()
                .last()
                .unwrap_or("?")
                .to_owned(),
            Err(_) => "NO ANSWER".to_owned(),
        };
        seen.entry(who).or_default().0 += 1;
    }
    seen
}

/// Polls the status until `f` holds (at most 30 s).
fn wait(d: &Daemon, what: &str, f: impl Fn(&xlb::api::Snapshot) -> bool) {
    d.wait_for(Duration::from_secs(30), what, f);
}

/// Sends the connections and queries; counts answers per backend (and failures).
fn traffic(topo: &Topology) -> BTreeMap<String, (usize, usize)> {
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    for i in 0..CONNECTIONS {
        let req = format!("GET /hello/{i} HTTP/1.1\r\nHost: {VIP}\r\nConnection: close\r\n\r\n");
        let who = match tcp_request(&topo.client, None, vip, req.as_bytes()) {
            Ok(r) => String::from_utf8_lossy(&r)
                .lines()
                .last()
                .unwrap_or("?")
                .to_owned(),
            Err(_) => "NO ANSWER".to_owned(),
        };
        seen.entry(who).or_default().0 += 1;
    }
    let dns: SocketAddr = format!("{VIP}:53").parse().unwrap();
    for i in 0..90 {
        let who = match udp_request(&topo.client, dns, format!("query {i}").as_bytes()) {
            Ok(r) => String::from_utf8_lossy(&r).into_owned(),
            Err(_) => "NO ANSWER".to_owned(),
        };
        seen.entry(who).or_default().1 += 1;
    }
    seen
}

fn show(seen: &BTreeMap<String, (usize, usize)>) {
    println!(
        "    {:<12} {:>6} {:<40} {:>6}",
        "backend", "HTTP", "", "UDP"
    );
    for (who, (http, udp)) in seen {
        let bar = "#".repeat(http * 40 / CONNECTIONS);
        println!("    {who:<12} {http:>6} {bar:<40} {udp:>6}");
    }
}
