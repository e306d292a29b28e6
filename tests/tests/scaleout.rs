//! Scale-out: two xlb hosts behind a router that spreads flows by ECMP, the VIP announced
//! over BGP by real BIRD daemons. Flows land on the backend Maglev names whichever host
//! they cross; a host that dies or is drained takes no connection with it; a VIP whose
//! backends all fail is withdrawn where so configured.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use xlb_tests::{
    cluster::{Cluster, lb_config, lb_v4},
    packet::{Packet, SYN},
    scenario::{LIMITS, VIP, backend_index_by_id, backend_name},
    servers::{connect, pattern},
};

const CLIENT: &str = "192.0.2.2";

fn vip80() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

/// One HTTP GET through the VIP from `sport` (0: any); returns (backend, body).
fn get(
    c: &Cluster,
    sport: u16,
    path: &str,
    read_pause: Duration,
) -> std::io::Result<(String, Vec<u8>)> {
    let src = (sport != 0).then(|| SocketAddr::new(CLIENT.parse().unwrap(), sport));
    let mut s = connect(&c.client, src, vip80(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if !read_pause.is_zero() {
            std::thread::sleep(read_pause);
        }
    }
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let backend = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Backend: "))
        .unwrap_or("")
        .to_owned();
    Ok((backend, out[at + 4..].to_vec()))
}

fn vip_packets(d: &xlb_tests::daemon::Daemon) -> u64 {
    d.status().vips[0].counters.packets
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn flows_spread_over_both_hosts_and_land_where_maglev_says() {
    let c = Cluster::new(2, 3);
    let daemons = c.start_daemons(|i| lb_config(i, 3, ""));
    let took = c.wait_next_hops(2, Duration::from_secs(30));
    eprintln!("the router learned the VIP from both hosts {took:?} after start");
    let hops = c.vip_next_hops();
    assert!(
        hops.contains(&lb_v4(1).parse::<IpAddr>().unwrap())
            && hops.contains(&lb_v4(2).parse().unwrap()),
        "{hops:?}"
    );
    // Both hosts build the same table.
    let prints: Vec<_> = daemons
        .iter()
        .map(|d| {
            d.status().vips[0]
                .table_fingerprint
                .clone()
                .expect("a fingerprint")
        })
        .collect();
    assert_eq!(prints[0], prints[1], "table fingerprints");
    let maps = xlb::dataplane::Balancer::load(
        LIMITS,
        Some(&xlb::daemon::pin_path(&daemons[0].pin_dir, "eth0")),
    )
    .unwrap();
    let ids = backend_index_by_id(&daemons[0].status(), 0);
    let before: Vec<u64> = daemons.iter().map(vip_packets).collect();
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for sport in 30_000..30_500u16 {
        let (got, _) = get(&c, sport, "/", Duration::ZERO)
            .unwrap_or_else(|e| panic!("connection from port {sport}: {e}"));
        let frame = Packet::tcp(
            CLIENT.parse().unwrap(),
            sport,
            VIP.parse().unwrap(),
            80,
            SYN,
        )
        .build();
        let want = maps
            .predict(&frame)
            .unwrap()
            .expect("a VIP packet")
            .maglev_backend;
        assert_eq!(
            got,
            backend_name(ids[&want]),
            "connection from port {sport}"
        );
        *per_backend.entry(got).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    let crossed: Vec<u64> = daemons
        .iter()
        .zip(&before)
        .map(|(d, b)| vip_packets(d) - b)
        .collect();
    eprintln!("packets through each host: {crossed:?}; per backend {per_backend:?}");
    assert!(
        crossed.iter().all(|n| *n > 0),
        "both hosts carried traffic: {crossed:?}"
    );
}

/// Kills a process at once (SIGKILL), leaving its reaping to its owner.
fn kill9(pid: u32) {
    // SAFETY: kill(2) on a child of this process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_host_that_dies_takes_no_download_with_it() {
    let c = Cluster::new(2, 3);
    let daemons = c.start_daemons(|i| lb_config(i, 3, ""));
    c.wait_next_hops(2, Duration::from_secs(30));
    const SIZE: usize = 4 << 20;
    let want = format!("{:x}", Sha256::digest(pattern(SIZE)));
    let before: Vec<u64> = daemons.iter().map(vip_packets).collect();
    let (results, withdrawn, carried) = std::thread::scope(|scope| {
        let c = &c;
        let downloads: Vec<_> = (0..20u16)
            .map(|i| {
                let sport = 40_000 + i;
                // Read slowly, 64 KiB every 50 ms: about 3 s for the whole file.
                scope.spawn(move || {
                    (
                        sport,
                        get(
                            c,
                            sport,
                            &format!("/bytes/{SIZE}"),
                            Duration::from_millis(50),
                        ),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1000));
        // Host 1 dies: BIRD and xlb killed, its link down (the XDP program is pinned, so
        // only the link stops it forwarding).
        let carried = vip_packets(&daemons[0]) - before[0];
        let killed = Instant::now();
        kill9(c.lb_birds[0].pid());
        kill9(daemons[0].pid());
        c.lbs[0].ip(&["link", "set", "eth0", "down"]);
        c.wait_next_hops(1, Duration::from_secs(15));
        let withdrawn = killed.elapsed();
        let results: Vec<_> = downloads.into_iter().map(|h| h.join().unwrap()).collect();
        (results, withdrawn, carried)
    });
    eprintln!("the router withdrew the dead host's route {withdrawn:?} after it died");
    assert!(withdrawn < Duration::from_secs(6), "{withdrawn:?}");
    let mut per_host_crossing = 0;
    for (sport, r) in &results {
        let (backend, body) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("download from port {sport}: {e}"));
        assert_eq!(
            body.len(),
            SIZE,
            "download from port {sport} from {backend}"
        );
        assert_eq!(
            format!("{:x}", Sha256::digest(body)),
            want,
            "download from port {sport}"
        );
        per_host_crossing += 1;
    }
    assert_eq!(per_host_crossing, 20);
    // ECMP spread the 20 flows over both hosts: the dead one had carried some of them.
    assert!(carried > 0, "no download crossed the host that died");
    eprintln!("20/20 downloads intact; the dead host had carried {carried} of their packets");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_drained_host_fails_no_request_and_its_traffic_stops() {
    let c = Cluster::new(2, 3);
    let daemons = c.start_daemons(|i| lb_config(i, 3, ""));
    c.wait_next_hops(2, Duration::from_secs(30));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (failures, requests, drained) = std::thread::scope(|scope| {
        let _stop_on_panic = xlb_tests::servers::StopOnDrop(&stop);
        let c = &c;
        let stop = &stop;
        let load = scope.spawn(move || {
            let (mut failed, mut done) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get(c, 0, "/", Duration::ZERO) {
                    Ok((b, _)) if !b.is_empty() => {}
                    Ok(_) | Err(_) => failed += 1,
                }
                done += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (failed, done)
        });
        std::thread::sleep(Duration::from_millis(800));
        let t = Instant::now();
        let (code, out, err) = daemons[0].cli(&["announce", "withdraw", "--wait", "20"]);
        let drained = t.elapsed();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("traffic to this host's VIPs stopped"), "{out}");
        c.wait_next_hops(1, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (failed, done) = load.join().unwrap();
        (failed, done, drained)
    });
    eprintln!("drained in {drained:?}: {requests} requests under way, {failures} failed");
    assert_eq!(failures, 0, "{requests} requests");
    // Nothing reaches the drained host any more; the other takes it all.
    let (a, b) = (vip_packets(&daemons[0]), vip_packets(&daemons[1]));
    for _ in 0..20 {
        get(&c, 0, "/", Duration::ZERO).unwrap();
    }
    assert_eq!(vip_packets(&daemons[0]), a, "the drained host got traffic");
    assert!(vip_packets(&daemons[1]) > b);
    let st = daemons[0].status();
    assert!(st.announce.as_ref().unwrap().withdrawn);
    assert_eq!(
        st.vips[0].announce,
        Some(xlb::announce::Why::WithdrawnByOperator)
    );
    // Restored, it takes traffic again.
    let (code, _, err) = daemons[0].cli(&["announce", "restore"]);
    assert_eq!(code, 0, "{err}");
    c.wait_next_hops(2, Duration::from_secs(10));
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_vip_whose_backends_all_fail_is_withdrawn_where_configured() {
    let mut c = Cluster::new(2, 2);
    // Host 1 withdraws a VIP that fails open; host 2 stays (the single-host default).
    let daemons = c.start_daemons(|i| {
        lb_config(
            i,
            2,
            if i == 1 {
                "on_fail_open = \"withdraw\""
            } else {
                ""
            },
        )
    });
    c.wait_next_hops(2, Duration::from_secs(30));
    let servers: Vec<_> = c.servers.drain(..).collect();
    drop(servers);
    let t = Instant::now();
    c.wait_next_hops(1, Duration::from_secs(15));
    eprintln!("withdrawn {:?} after every backend stopped", t.elapsed());
    assert_eq!(c.vip_next_hops(), vec![lb_v4(2).parse::<IpAddr>().unwrap()]);
    let st = daemons[0].status();
    assert_eq!(
        st.vips[0].announce,
        Some(xlb::announce::Why::FailedOpenWithdrawn)
    );
    // Host 2's own checks fail on their own schedule; it stays announced, failing open.
    let t = Instant::now();
    while daemons[1].status().vips[0].announce != Some(xlb::announce::Why::FailingOpen) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "host 2: {:?}",
            daemons[1].status().vips[0].announce
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The metrics say so too.
    let metrics = {
        let _inside = c.lbs[0].enter();
        let mut s = std::net::TcpStream::connect("127.0.0.1:9469").unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        metrics.contains("xlb_vip_announced{vip=\"203.0.113.10:80/tcp\",vip_name=\"web\"} 0"),
        "{metrics}"
    );
    // The backends come back: announced again.
    c.servers = c
        .backends
        .iter()
        .enumerate()
        .map(|(n, ns)| {
            xlb_tests::servers::http_server(ns, "0.0.0.0:80".parse().unwrap(), &backend_name(n + 1))
        })
        .collect();
    let t = Instant::now();
    c.wait_next_hops(2, Duration::from_secs(15));
    eprintln!(
        "announced again {:?} after the backends came back",
        t.elapsed()
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_hung_host_is_withdrawn_by_the_hold_timer() {
    let c = Cluster::new(2, 1);
    let _daemons = c.start_daemons(|i| lb_config(i, 1, ""));
    c.wait_next_hops(2, Duration::from_secs(30));
    // A hung host: its BIRD stops (SIGSTOP) with its session open and its link up, so no
    // FIN tells the router; only BGP's hold time (3 s) does. (A killed BIRD's socket is
    // closed by the kernel and the session ends at once.)
    let t = Instant::now();
    // SAFETY: kill(2) on a child of this process.
    unsafe { libc::kill(c.lb_birds[0].pid() as i32, libc::SIGSTOP) };
    c.wait_next_hops(1, Duration::from_secs(10));
    let took = t.elapsed();
    eprintln!("withdrawn {took:?} after host 1 hung (hold time 3 s)");
    // BIRD starts its hold timer at 3 s less up to a quarter (RFC 4271's jitter, so 2.25 s
    // or more) from the last keepalive, which left up to 1 s before the stop: the withdrawal
    // comes 1.25-3 s after it. Sooner would mean something other than the hold timer acted.
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(6),
        "{took:?}"
    );
}
