//! NAT end-to-end pieces: configuration of NAT VIPs, and the container layouts the mode is
//! for. In the bridge-mode layout (Docker/ECS "bridge") a container host has a Linux bridge
//! and task namespaces behind it, each published on a host port by nftables DNAT inside
//! the host; the targets are `host:port`. In the awsvpc layout every task has an address of
//! its own. Nothing of xlb runs on the target side in either.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::{
    netns::Netns,
    scenario::header,
    servers::Server,
    topology::{Topology, addr, veth},
};

/// The SNAT address of the scenarios, on the load balancer's interface.
pub const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The first host port tasks are published on (as Docker's dynamic ports).
pub const HOST_PORT: u16 = 32768;

/// The `[dataplane]` and `[daemon]` sections with the SNAT address.
pub fn nat_header() -> String {
    header().replacen(
        "[dataplane]\n",
        &format!("[dataplane]\nsnat_v4 = \"{SNAT}\"\n"),
        1,
    )
}

/// A NAT VIP section on `203.0.113.10:port` over `targets`, with fast TCP health checks and
/// `extra` lines (e.g. `deregistration_delay = "5s"`).
pub fn nat_vip(
    name: &str,
    port: u16,
    protocol: &str,
    targets: &[SocketAddr],
    extra: &str,
) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{}\", port = {} }}", t.ip(), t.port()))
        .collect();
    let check = if protocol == "udp" {
        "protocol = \"none\"\n".to_owned()
    } else {
        // Fast, but not so fast that a loaded test machine fails checks (a target that turns
        // unhealthy loses its connections to others, as with DSR).
        "interval = \"300ms\"\ntimeout = \"250ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 4\njitter = \"0s\"\n".to_owned()
    };
    format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"203.0.113.10\"\nport = {port}\nprotocol = \"{protocol}\"\nforwarding = \"nat\"\n{extra}\nbackends = [ {} ]\n[vip.health_check]\n{check}\n",
        list.join(", ")
    )
}

/// Prepares a topology for NAT: the SNAT address on the load balancer's interface (the
/// router finds it by ARP), and complete checksums from the backends. Their replies cross
/// the balancer's XDP program, whose `XDP_TX` frames lose a veth's checksum offload state:
/// a partial checksum (what a local stack sends over veth) would reach the client as a
/// wrong one. A real NIC completes checksums before the wire.
pub fn prepare_nat(topo: &Topology) {
    topo.lb
        .ip(&["addr", "add", &format!("{SNAT}/24"), "dev", "eth0"]);
    for b in &topo.backends {
        b.exec("ethtool", &["-K", "eth0", "tx", "off"]);
    }
}

/// A container host in bridge mode: backend `host`'s namespace (198.51.100.1x) gets a
/// bridge `cbr0` (198.18.128.1/24) and `tasks` task namespaces (198.18.128.2, ...), each
/// serving what `serve` starts; host port `HOST_PORT + k` (and `base_port + k` for each of
/// `extra_ports`) is DNATed by nftables to task `k`'s port 80 (and that extra port).
pub struct BridgeHost {
    pub tasks: Vec<Netns>,
    pub servers: Vec<Server>,
}

impl BridgeHost {
    pub fn new(
        topo: &Topology,
        host: usize,
        tasks: usize,
        extra_ports: &[(u16, u16)],
        serve: impl Fn(&Netns, usize) -> Vec<Server>,
    ) -> Self {
        let h = &topo.backends[host - 1];
        h.ip(&["link", "add", "cbr0", "type", "bridge"]);
        h.ip(&["link", "set", "cbr0", "up"]);
        h.ip(&["addr", "add", "198.18.128.1/24", "dev", "cbr0"]);
        h.sysctl("net.ipv4.ip_forward=1");
        let mut rules = String::from(
            "table ip xlbtest {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n",
        );
        let mut ns = Vec::new();
        let mut servers = Vec::new();
        for k in 0..tasks {
            let t = Netns::new(&format!("task{}", k + 1));
            let port = format!("t{}", k + 1);
            veth(&t, "eth0", h, &port);
            h.ip(&["link", "set", &port, "master", "cbr0"]);
            let a = format!("198.18.128.{}", k + 2);
            addr(
                &t,
                "eth0",
                &format!("{a}/24"),
                &format!("2001:db8:128::{}/64", k + 2),
            );
            t.ip(&["route", "add", "default", "via", "198.18.128.1"]);
            // Complete checksums (see `prepare_nat`).
            t.exec("ethtool", &["-K", "eth0", "tx", "off"]);
            rules.push_str(&format!(
                "  tcp dport {} dnat to {a}:80\n  udp dport {} dnat to {a}:80\n",
                HOST_PORT + k as u16,
                HOST_PORT + k as u16
            ));
            for (host_base, task_port) in extra_ports {
                rules.push_str(&format!(
                    "  tcp dport {} dnat to {a}:{task_port}\n",
                    host_base + k as u16
                ));
            }
            servers.extend(serve(&t, k + 1));
            ns.push(t);
        }
        rules.push_str(" }\n}\n");
        let file = std::env::temp_dir().join(format!("{}.nft", h.name()));
        std::fs::write(&file, rules).expect("nft rules");
        h.exec("nft", &["-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        Self { tasks: ns, servers }
    }
}

/// The targets of a bridge host: `host_address:first..first+n`.
pub fn host_targets(host: IpAddr, first: u16, n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|k| SocketAddr::new(host, first + k as u16))
        .collect()
}
