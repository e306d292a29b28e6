//! Several xlb hosts behind a router that spreads flows over them by ECMP, the VIP
//! announced over BGP by real BIRD daemons:
//!
//! ```text
//!   client (192.0.2.2) -- router (BIRD, AS 65000, ECMP with L4 hashing)
//!                           |-- lb1 (198.18.1.2, BIRD AS 65001 + xlb run) --+
//!                           |-- lb2 (198.18.2.2, BIRD AS 65001 + xlb run) --+-- (XDP_TX back to the router)
//!                           +-- bebr (198.51.100.1) -- backend-1..N (DSR: decap, VIP on lo)
//! ```
//! The router has no static route for the VIP: it learns 203.0.113.10/32 from each LB
//! host whose xlb installed it in table 4242 (BIRD's kernel protocol learns it there).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::Ebpf;

use crate::{
    bird::Bird,
    daemon::Daemon,
    netns::{Netns, require_root},
    scenario::{LIMITS, VIP, backend_name},
    servers::{self, Server},
    topology::{addr, attach_pass, backend_v4, backend_v6, veth},
};

/// Address of LB host `i` (1-based) on its link to the router.
pub fn lb_v4(i: usize) -> String {
    format!("198.18.{i}.2")
}

fn router_side(i: usize) -> String {
    format!("198.18.{i}.1")
}

/// The configuration every LB host runs (`i` only changes the outer source address);
/// `vip_extra` goes into the VIP's section.
pub fn lb_config(i: usize, backends: usize, vip_extra: &str) -> String {
    let list: Vec<String> = (1..=backends)
        .map(|b| format!("{{ address = \"{}\" }}", backend_v4(b)))
        .collect();
    format!(
        "[dataplane]\ninterface = \"eth0\"\nsource_v4 = \"{}\"\n\
         flow_table_entries = {}\nmax_vips = {}\nmax_backends = {}\nmaglev_table_size = {}\nnat_table_entries = {}\n\n\
         [daemon]\nsocket = \"@SOCKET@\"\npin_dir = \"@PINS@\"\nmetrics_address = \"127.0.0.1:9469\"\n\n\
         [announce]\ntable = 4242\nprotocol = 250\nwarm_up = \"1s\"\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\n{vip_extra}\nbackends = [ {} ]\n\
         [vip.health_check]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\n\
         healthy_threshold = 2\nunhealthy_threshold = 2\njitter = \"0s\"\n",
        lb_v4(i),
        LIMITS.flow_table_entries,
        LIMITS.max_vips,
        LIMITS.max_backends,
        LIMITS.maglev_size,
        LIMITS.nat_table_entries,
        list.join(", ")
    )
}

/// BIRD on an LB host: learn table 4242 (where xlb puts the VIP routes) and announce what
/// is there to the router, exactly as `examples/bird.conf` does.
pub fn lb_bird_config(i: usize) -> String {
    let example = include_str!("../../examples/bird.conf");
    example
        .replace("198.18.0.2", &lb_v4(i))
        .replace("198.18.0.1", &router_side(i))
}

/// BIRD on the router: one eBGP session per LB host, equal paths merged into one
/// multipath kernel route.
fn router_bird_config(lbs: usize) -> String {
    let mut c = String::from(
        "router id 192.0.2.1;\nprotocol device { scan time 1; }\n\
         protocol kernel {\n  ipv4 { import none; export all; };\n  merge paths yes;\n}\n",
    );
    for i in 1..=lbs {
        c.push_str(&format!(
            "protocol bgp lb{i} {{\n  local {} as 65000;\n  neighbor {} as 65001;\n  \
             hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 2;\n  \
             ipv4 {{ import all; export none; }};\n}}\n",
            router_side(i),
            lb_v4(i)
        ));
    }
    c
}

pub struct Cluster {
    pub client: Netns,
    pub router: Netns,
    pub lbs: Vec<Netns>,
    pub backends: Vec<Netns>,
    pub router_bird: Bird,
    pub lb_birds: Vec<Bird>,
    /// HTTP servers on port 80 of every backend (`GET /bytes/N`, `GET /health`).
    pub servers: Vec<Server>,
    _xdp: Vec<Ebpf>,
}

impl Cluster {
    /// `lbs` LB hosts (BIRD running, no xlb yet) and `backends` DSR backends serving HTTP.
    pub fn new(lbs: usize, backends: usize) -> Self {
        require_root();
        let client = Netns::new("cli");
        let router = Netns::new("rtr");
        let lb_ns: Vec<Netns> = (1..=lbs).map(|i| Netns::new(&format!("lb{i}"))).collect();
        let be_ns: Vec<Netns> = (1..=backends)
            .map(|i| Netns::new(&format!("be{i}")))
            .collect();

        veth(&client, "eth0", &router, "cli");
        addr(&client, "eth0", "192.0.2.2/24", "2001:db8:c::2/64");
        addr(&router, "cli", "192.0.2.1/24", "2001:db8:c::1/64");
        client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        client.exec("ethtool", &["-K", "eth0", "tx", "off"]);
        let mut xdp = Vec::new();
        for (n, lb) in lb_ns.iter().enumerate() {
            let i = n + 1;
            let rname = format!("lb{i}");
            veth(lb, "eth0", &router, &rname);
            addr(
                &router,
                &rname,
                &format!("{}/24", router_side(i)),
                &format!("2001:db8:18:{i}::1/64"),
            );
            addr(
                lb,
                "eth0",
                &format!("{}/24", lb_v4(i)),
                &format!("2001:db8:18:{i}::2/64"),
            );
            lb.ip(&["route", "add", "default", "via", &router_side(i)]);
            for (ns, dev) in [(lb, "eth0"), (&router, rname.as_str())] {
                ns.ip(&["link", "set", dev, "mtu", "2000"]);
            }
            xdp.push(attach_pass(&router, &rname));
        }
        router.ip(&["link", "add", "bebr", "type", "bridge"]);
        router.ip(&["link", "set", "bebr", "up", "mtu", "2000"]);
        addr(&router, "bebr", "198.51.100.1/24", "2001:db8:be::1/64");
        for (n, b) in be_ns.iter().enumerate() {
            let port = format!("be{}", n + 1);
            veth(b, "eth0", &router, &port);
            router.ip(&["link", "set", &port, "master", "bebr", "mtu", "2000"]);
            b.ip(&["link", "set", "eth0", "mtu", "2000"]);
            addr(
                b,
                "eth0",
                &format!("{}/24", backend_v4(n + 1)),
                &format!("{}/64", backend_v6(n + 1)),
            );
            b.ip(&["route", "add", "default", "via", "198.51.100.1"]);
            b.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        }
        router.sysctl("net.ipv4.ip_forward=1");
        // ECMP by the 5-tuple, so the flows of one client spread over the LB hosts.
        router.sysctl("net.ipv4.fib_multipath_hash_policy=1");
        for i in 1..=backends {
            router.exec("ping", &["-c", "1", "-W", "1", &backend_v4(i).to_string()]);
        }
        for (n, lb) in lb_ns.iter().enumerate() {
            lb.exec("ping", &["-c", "1", "-W", "1", &router_side(n + 1)]);
        }
        for b in &be_ns {
            let pins = format!("/sys/fs/bpf/xlb-test-decap/{}", b.name());
            b.exec(
                &crate::daemon::xlb_bin().to_string_lossy(),
                &["decap", "--iface", "eth0", "--pin-dir", &pins],
            );
        }
        let router_bird = Bird::start(&router, &router_bird_config(lbs));
        let lb_birds = lb_ns
            .iter()
            .enumerate()
            .map(|(n, lb)| Bird::start(lb, &lb_bird_config(n + 1)))
            .collect();
        let topo_servers = be_ns
            .iter()
            .enumerate()
            .map(|(n, ns)| {
                servers::http_server(ns, "0.0.0.0:80".parse().unwrap(), &backend_name(n + 1))
            })
            .collect();
        Self {
            client,
            router,
            lbs: lb_ns,
            backends: be_ns,
            router_bird,
            lb_birds,
            servers: topo_servers,
            _xdp: xdp,
        }
    }

    /// Starts `xlb run` on every LB host with `config(i)`.
    pub fn start_daemons(&self, config: impl Fn(usize) -> String) -> Vec<Daemon> {
        self.lbs
            .iter()
            .enumerate()
            .map(|(n, lb)| Daemon::start(lb, &config(n + 1)))
            .collect()
    }

    /// The next hops of the router's route to the VIP (empty when it has none).
    pub fn vip_next_hops(&self) -> Vec<IpAddr> {
        let out = self.router.ip(&["route", "show", &format!("{VIP}/32")]);
        out.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Waits until the router's route to the VIP has `n` next hops; returns how long it
    /// took.
    pub fn wait_next_hops(&self, n: usize, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let hops = self.vip_next_hops();
            if hops.len() == n {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "the router's route to {VIP} has next hops {hops:?}, not {n}, after {within:?}:\n{}\n{}",
                self.router_bird.birdc(&["show", "protocols"]),
                self.router.ip(&["route"]),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for b in &self.backends {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xlb-test-decap/{}", b.name()));
        }
    }
}
