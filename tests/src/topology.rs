//! The end-to-end topology, built from network namespaces unique to each test and removed
//! when the value is dropped (also when the test fails):
//!
//! ```text
//!   client (192.0.2.2, 2001:db8:c::2) --eth0 -- cli-- router --lb-- eth0-- lb (198.18.0.2, 2001:db8:18::2)
//!                                                  |  (VIPs 203.0.113.0/24 and 2001:db8:203::/64 routed to lb)
//!                                                  +--bebr (198.51.100.1, 2001:db8:be::1)
//!                                                       |-- be1 -- eth0 backend-1 (198.51.100.11, 2001:db8:be::11)
//!                                                       |-- be2 -- eth0 backend-2 (198.51.100.12, ...)
//!                                                       ...
//! ```
//! The load balancer transmits encapsulated packets back to the router (XDP_TX), which
//! routes them to the backends; backends decapsulate (`xlb decap`), answer from the VIP on
//! their loopback, and reply to the client directly through the router.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{Ebpf, programs::Xdp};

use crate::netns::{Netns, run};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);

/// Address of backend `i` (1-based).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Namespaces and links of one test.
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    /// The XDP_PASS program on the router's side of the LB link (veth delivers XDP_TX frames
    /// only to a peer that has an XDP program). Dropping it detaches.
    router_xdp: Option<Ebpf>,
}

impl Topology {
    /// Builds the topology with `n` backends. The VIPs are routed to the LB; nothing runs yet.
    pub fn new(n: usize) -> Self {
        Self::with_lb_mtu(n, 2000)
    }

    /// As `new`, with the MTU of the LB-to-backend side (LB, router, backends) set to `mtu`.
    pub fn with_lb_mtu(n: usize, mtu: u16) -> Self {
        let mtu = mtu.to_string();
        crate::netns::require_root();
        let client = Netns::new("cli");
        let router = Netns::new("rtr");
        let lb = Netns::new("lb");
        let backends: Vec<Netns> = (1..=n).map(|i| Netns::new(&format!("be{i}"))).collect();

        veth(&client, "eth0", &router, "cli");
        veth(&lb, "eth0", &router, "lb");
        router.ip(&["link", "add", "bebr", "type", "bridge"]);
        router.ip(&["link", "set", "bebr", "up"]);
        for (i, b) in backends.iter().enumerate() {
            let port = format!("be{}", i + 1);
            veth(b, "eth0", &router, &port);
            router.ip(&["link", "set", &port, "master", "bebr"]);
        }

        addr(&client, "eth0", "192.0.2.2/24", "2001:db8:c::2/64");
        addr(&router, "cli", "192.0.2.1/24", "2001:db8:c::1/64");
        addr(&router, "lb", "198.18.0.1/24", "2001:db8:18::1/64");
        addr(&lb, "eth0", "198.18.0.2/24", "2001:db8:18::2/64");
        addr(&router, "bebr", "198.51.100.1/24", "2001:db8:be::1/64");
        for (i, b) in backends.iter().enumerate() {
            let v4 = format!("{}/24", backend_v4(i + 1));
            let v6 = format!("{}/64", backend_v6(i + 1));
            addr(b, "eth0", &v4, &v6);
            b.ip(&["route", "add", "default", "via", "198.51.100.1"]);
            b.ip(&["-6", "route", "add", "default", "via", "2001:db8:be::1"]);
        }
        client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8:c::1"]);
        lb.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        lb.ip(&["-6", "route", "add", "default", "via", "2001:db8:18::1"]);
        router.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.0.2"]);
        router.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:203::/64",
            "via",
            "2001:db8:18::2",
        ]);
        // The LB-to-backend side carries encapsulated packets, 20 or 40 bytes larger than
        // what clients send: a larger MTU there, as in a real deployment, so full-size client
        // segments fit. (Native XDP on veth refuses MTUs above about 3.5 KB.)
        for (ns, dev) in [(&lb, "eth0"), (&router, "lb"), (&router, "bebr")] {
            ns.ip(&["link", "set", dev, "mtu", &mtu]);
        }
        for (i, b) in backends.iter().enumerate() {
            router.ip(&["link", "set", &format!("be{}", i + 1), "mtu", &mtu]);
            b.ip(&["link", "set", "eth0", "mtu", &mtu]);
        }
        router.sysctl("net.ipv4.ip_forward=1");
        router.sysctl("net.ipv6.conf.all.forwarding=1");

        // Encapsulated packets must carry complete checksums: a veth passes partial ones
        // (checksum offload), which a real NIC would have completed.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"]);

        // Fill neighbour caches up front so the first packets are not lost to ARP/ND.
        router.exec("ping", &["-c", "1", "-W", "1", "198.18.0.2"]);
        for i in 1..=n {
            router.exec("ping", &["-c", "1", "-W", "1", &backend_v4(i).to_string()]);
        }
        lb.exec("ping", &["-c", "1", "-W", "1", "198.18.0.1"]);
        let _ = lb
            .command("ping")
            .args(["-6", "-c", "1", "-W", "1", "2001:db8:18::1"])
            .output();
        let _ = client
            .command("ping")
            .args(["-c", "1", "-W", "1", "192.0.2.1"])
            .output();

        let router_xdp = attach_pass(&router, "lb");
        Self {
            client,
            router,
            lb,
            backends,
            router_xdp: Some(router_xdp),
        }
    }

    /// Detaches the router's XDP program from the LB link: the balancer's `XDP_TX` frames
    /// are then dropped by the veth driver (as on a real host whose veth peer has none).
    pub fn detach_router_xdp(&mut self) {
        self.router_xdp = None;
    }

    /// Puts `vip` on every backend's loopback (so they accept its packets).
    pub fn add_vip_on_backends(&self, vip: IpAddr) {
        for b in &self.backends {
            let prefix = if vip.is_ipv4() {
                format!("{vip}/32")
            } else {
                format!("{vip}/128")
            };
            b.ip(&["addr", "add", &prefix, "dev", "lo"]);
        }
    }

    /// Runs `xlb decap` on every backend (pins under a directory unique to this test).
    pub fn start_decap(&self) {
        for b in &self.backends {
            let pins = format!("/sys/fs/bpf/xlb-test-decap/{}", b.name());
            b.exec(
                &crate::daemon::xlb_bin().to_string_lossy(),
                &["decap", "--iface", "eth0", "--pin-dir", &pins],
            );
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for b in &self.backends {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xlb-test-decap/{}", b.name()));
        }
    }
}

/// Attaches the `XDP_PASS` reference program to `dev` in `ns` (veth delivers `XDP_TX`
/// frames only to a peer with an XDP program). Dropping the value detaches it.
pub fn attach_pass(ns: &Netns, dev: &str) -> Ebpf {
    attach_reference(ns, dev, "xlb_pass")
}

/// Attaches the reference program `name` (`lb-ebpf/src/bin/reference.rs`) to `dev` in `ns`,
/// in driver mode. Dropping the value detaches it.
pub fn attach_reference(ns: &Netns, dev: &str, name: &str) -> Ebpf {
    let _inside = ns.enter();
    let mut e = Ebpf::load(xlb::programs::REFERENCE).expect("load reference programs");
    let p: &mut Xdp = e
        .program_mut(name)
        .unwrap_or_else(|| panic!("no reference program {name}"))
        .try_into()
        .expect("xdp");
    p.load().unwrap_or_else(|e| panic!("load {name}: {e}"));
    let idx = ns.ifindex(dev);
    p.attach_to_if_index(idx, aya::programs::XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach {name} to {dev} in {}: {e}", ns.name()));
    e
}

/// A veth pair between two namespaces, both ends up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    run(
        "ip",
        &[
            "link",
            "add",
            a_name,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b.name(),
        ],
    );
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// An IPv4 and an IPv6 address on `dev` (the IPv6 one without duplicate detection).
pub fn addr(ns: &Netns, dev: &str, v4: &str, v6: &str) {
    ns.ip(&["addr", "add", v4, "dev", dev]);
    ns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
}
