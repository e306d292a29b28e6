//! The fixture lab: the balancer loaded with small maps, test-run inside a namespace whose
//! routes and neighbours are fixed, so every FIB answer (and so every output frame) is
//! known in advance.
//!
//! ```text
//!   fx0 (ingress, 198.51.100.1/24, 2001:db8:100::1/64, MAC 02:00:00:00:00:01) -- fx1
//!   fx2 (198.18.0.1/24, 2001:db8:18::1/64, MAC 02:00:00:00:00:02)            -- fx3
//!   unreachable 192.0.2.128/25, default via 198.51.100.254 / 2001:db8:100::fe (MAC
//!   02:00:00:00:00:fe); 203.0.113.40 and 2001:db8:203::20 (VIP addresses) also on lo
//! ```
//! Backends 198.51.100.N have MAC 02:00:00:00:64:NN, 2001:db8:100::N have 02:00:00:00:66:NN,
//! 198.18.0.N have 02:00:00:00:18:NN (NN = N in hex), all as permanent neighbours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BACKEND_ACTIVE, Backend, CFG_F_SOURCE_V4, CFG_F_SOURCE_V6, CFG_F_WILDCARD_VIPS,
    DataplaneConfig, PROTO_TCP, PROTO_UDP, VIP_F_HASH_SOURCE, VipInfo, VipKey, addr_to_map,
    stats::ACTIONS,
};
use xlb::dataplane::{Balancer, Limits};

use crate::{
    netns::{Netns, require_root},
    packet::{LB_MAC, Mac},
};

pub const SOURCE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const REDIRECT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
/// The lab's SNAT addresses (slot 0 and slot 16 of the pool).
pub const SNAT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const SNAT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);

/// Maglev table size used by the fixtures (the production default).
pub const M: u32 = 65_537;

/// A VIP of the fixture lab.
pub struct LabVip {
    pub name: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub flags: u32,
    pub backends: Vec<IpAddr>,
    /// `lb_common::MODE_*` of the backends.
    pub mode: u8,
    /// NAT: the targets' ports, by backend (empty: all 0).
    pub ports: Vec<u16>,
}

/// The VIPs every fixture lab has, by id (= index).
pub fn lab_vips() -> Vec<LabVip> {
    let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
    vec![
        LabVip {
            name: "web4",
            addr: v4("203.0.113.10"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![
                v4("198.51.100.21"),
                v4("198.51.100.22"),
                v4("198.51.100.23"),
            ],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "dns4",
            addr: v4("203.0.113.10"),
            port: 53,
            proto: PROTO_UDP,
            flags: 0,
            backends: vec![v4("198.51.100.24"), v4("198.51.100.25")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "web6",
            addr: v4("2001:db8:203::10"),
            port: 443,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("2001:db8:100::21"), v4("2001:db8:100::22")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "web4-over-6",
            addr: v4("203.0.113.20"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("2001:db8:100::31"), v4("2001:db8:100::32")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "any-port",
            addr: v4("203.0.113.30"),
            port: 0,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("198.51.100.41"), v4("198.51.100.42")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "affinity",
            addr: v4("203.0.113.40"),
            port: 80,
            proto: PROTO_TCP,
            flags: VIP_F_HASH_SOURCE,
            backends: vec![
                v4("198.51.100.51"),
                v4("198.51.100.52"),
                v4("198.51.100.53"),
            ],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "dns6",
            addr: v4("2001:db8:203::20"),
            port: 53,
            proto: PROTO_UDP,
            flags: 0,
            backends: vec![v4("2001:db8:100::61")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "empty",
            addr: v4("203.0.113.50"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "unroutable",
            addr: v4("203.0.113.60"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("192.0.2.200")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "other-side",
            addr: v4("203.0.113.70"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("198.18.0.5")],
            mode: 0,
            ports: vec![],
        },
        LabVip {
            name: "unresolved",
            addr: v4("203.0.113.80"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("198.51.100.99")],
            mode: 0,
            ports: vec![],
        },
        // A v6 VIP pointing at a v4 backend: the controller refuses this configuration; the
        // data plane must still not forward it if the maps ever say so.
        LabVip {
            name: "bad-family",
            addr: v4("2001:db8:203::30"),
            port: 80,
            proto: PROTO_TCP,
            flags: 0,
            backends: vec![v4("198.51.100.71")],
            mode: 0,
            ports: vec![],
        },
        // NAT: two tasks of one host (same address, two ports), full NAT.
        LabVip {
            name: "nat4",
            addr: v4("203.0.113.90"),
            port: 80,
            proto: PROTO_TCP,
            flags: lb_common::VIP_F_NAT,
            backends: vec![v4("198.51.100.31"), v4("198.51.100.31")],
            mode: lb_common::MODE_NAT,
            ports: vec![32768, 32769],
        },
        LabVip {
            name: "nat4udp",
            addr: v4("203.0.113.90"),
            port: 53,
            proto: PROTO_UDP,
            flags: lb_common::VIP_F_NAT,
            backends: vec![v4("198.51.100.32")],
            mode: lb_common::MODE_NAT,
            ports: vec![5353],
        },
        LabVip {
            name: "nat6",
            addr: v4("2001:db8:203::90"),
            port: 443,
            proto: PROTO_TCP,
            flags: lb_common::VIP_F_NAT,
            backends: vec![v4("2001:db8:100::41")],
            mode: lb_common::MODE_NAT,
            ports: vec![8443],
        },
        LabVip {
            name: "nat-client",
            addr: v4("203.0.113.91"),
            port: 80,
            proto: PROTO_TCP,
            flags: lb_common::VIP_F_NAT | lb_common::VIP_F_NAT_CLIENT,
            backends: vec![v4("198.51.100.33")],
            mode: lb_common::MODE_NAT_CLIENT,
            ports: vec![3000],
        },
        LabVip {
            name: "nat4-one",
            addr: v4("203.0.113.92"),
            port: 80,
            proto: PROTO_TCP,
            flags: lb_common::VIP_F_NAT,
            backends: vec![v4("198.51.100.34")],
            mode: lb_common::MODE_NAT,
            ports: vec![8080],
        },
    ]
}

/// Next-hop MAC the lab's neighbour table has for a backend address.
pub fn neighbour_mac(addr: IpAddr) -> Mac {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            let net = if o[0] == 198 && o[1] == 18 {
                0x18
            } else {
                0x64
            };
            [0x02, 0, 0, 0, net, o[3]]
        }
        IpAddr::V6(a) => [0x02, 0, 0, 0, 0x66, a.octets()[15]],
    }
}

/// A namespace with the balancer loaded and the lab's VIPs, backends and tables in place.
pub struct Lab {
    pub ns: Netns,
    pub lb: Balancer,
    /// Ingress interface (fx0).
    pub ifindex: u32,
    pub vips: Vec<LabVip>,
    /// Backend ids of each VIP, in `LabVip::backends` order.
    pub backend_ids: Vec<Vec<u32>>,
}

impl Lab {
    pub fn new() -> Self {
        Self::with_flow_table(4096)
    }

    /// A lab whose flow table holds `entries` flows.
    pub fn with_flow_table(entries: u32) -> Self {
        require_root();
        let ns = Netns::new("fx");
        ns.ip(&[
            "link",
            "add",
            "fx0",
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "fx1",
        ]);
        ns.ip(&[
            "link",
            "add",
            "fx2",
            "address",
            "02:00:00:00:00:02",
            "type",
            "veth",
            "peer",
            "name",
            "fx3",
        ]);
        for dev in ["fx0", "fx1", "fx2", "fx3"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "fx0"]);
        ns.ip(&["addr", "add", "2001:db8:100::1/64", "dev", "fx0", "nodad"]);
        ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "fx2"]);
        ns.ip(&["addr", "add", "2001:db8:18::1/64", "dev", "fx2", "nodad"]);
        ns.ip(&["route", "add", "unreachable", "192.0.2.128/25"]);
        // A default route towards the router, as on a real balancer (everything else,
        // client addresses included, is reached through it).
        for (gw, dev) in [("198.51.100.254", "fx0"), ("2001:db8:100::fe", "fx0")] {
            ns.ip(&[
                "neigh",
                "replace",
                gw,
                "lladdr",
                "02:00:00:00:00:fe",
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            ns.ip(&["route", "add", "default", "via", gw]);
        }
        // Two VIP addresses that are also this host's own (it serves other ports on them).
        ns.ip(&["addr", "add", "203.0.113.40/32", "dev", "lo"]);
        ns.ip(&["addr", "add", "2001:db8:203::20/128", "dev", "lo", "nodad"]);
        ns.sysctl("net.ipv4.conf.all.forwarding=1");
        ns.sysctl("net.ipv6.conf.all.forwarding=1");

        let vips = lab_vips();
        for v in &vips {
            for b in &v.backends {
                let dev = match b {
                    IpAddr::V4(a) if a.octets()[..2] == [198, 18] => "fx2",
                    IpAddr::V4(a) if a.octets()[..3] == [192, 0, 2] => continue,
                    _ => "fx0",
                };
                if *b == "198.51.100.99".parse::<IpAddr>().unwrap() {
                    continue; // deliberately unresolved
                }
                let mac = neighbour_mac(*b).map(|x| format!("{x:02x}")).join(":");
                ns.ip(&[
                    "neigh",
                    "replace",
                    &b.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ]);
            }
        }

        let limits = Limits {
            max_vips: 24,
            max_backends: 256,
            flow_table_entries: entries,
            maglev_size: M,
            nat_table_entries: entries,
        };
        let mut lb = Balancer::load(limits, None).expect("load the balancer");
        let ifindex = ns.ifindex("fx0");
        let mut cfg = DataplaneConfig {
            flags: CFG_F_SOURCE_V4 | CFG_F_SOURCE_V6,
            ..Default::default()
        };
        cfg.source_v4 = SOURCE_V4.octets();
        cfg.source_v6 = SOURCE_V6.octets();
        if vips.iter().any(|v| v.port == 0) {
            cfg.flags |= CFG_F_WILDCARD_VIPS;
        }
        cfg.snat_port_min = 1024;
        cfg.snat_port_max = 65535;
        cfg.snat_v4 = 1;
        cfg.snat_v6 = 1;
        lb.set_snat_slot(0, &addr_to_map(IpAddr::V4(SNAT_V4)).0)
            .expect("SNAT slot");
        lb.set_snat_slot(
            lb_common::SNAT_SLOTS_PER_FAMILY,
            &addr_to_map(IpAddr::V6(SNAT_V6)).0,
        )
        .expect("SNAT slot");
        lb.set_config(&cfg).expect("config");
        lb.set_interface_mac(LB_MAC).expect("interface MAC");

        let mut next_id = 1;
        let mut backend_ids = Vec::new();
        for (vid, v) in vips.iter().enumerate() {
            let mut ids = Vec::new();
            for (j, b) in v.backends.iter().enumerate() {
                let (addr, family) = addr_to_map(*b);
                let backend = Backend {
                    addr,
                    family,
                    state: BACKEND_ACTIVE,
                    generation: 1,
                    vip: vid as u16,
                    weight: 1,
                    mode: v.mode,
                    port: lb_common::port_to_map(v.ports.get(j).copied().unwrap_or(0)),
                    ..Backend::default()
                };
                lb.set_backend(next_id, &backend).expect("backend");
                ids.push(next_id);
                next_id += 1;
            }
            let key = VipKey::new(v.addr, v.port, v.proto);
            let table = 2 * vid as u32;
            lb.write_table(table, &spread(&ids)).expect("table");
            lb.set_vip(
                &key,
                &VipInfo {
                    index: vid as u32,
                    table,
                    flags: v.flags,
                    reserved: 0,
                },
            )
            .expect("vip");
            let addr_key = VipKey {
                port: 0,
                proto: 0,
                ..key
            };
            let n = vips.iter().filter(|o| o.addr == v.addr).count() as u32;
            lb.set_vip_address(&addr_key, n).expect("vip address");
            backend_ids.push(ids);
        }
        Self {
            ns,
            lb,
            ifindex,
            vips,
            backend_ids,
        }
    }

    /// The VIP called `name`: (id, key).
    pub fn vip(&self, name: &str) -> (u32, VipKey) {
        let i = self
            .vips
            .iter()
            .position(|v| v.name == name)
            .unwrap_or_else(|| panic!("no VIP {name}"));
        let v = &self.vips[i];
        (i as u32, VipKey::new(v.addr, v.port, v.proto))
    }

    /// Runs the balancer once on `frame` as received on fx0: (action, output frame).
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let _inside = self.ns.enter();
        self.lb
            .test_run(frame, self.ifindex)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// Sum over CPUs of global counter `index` (an action, or `ACTIONS + reason`).
    pub fn counter(&self, index: u32) -> u64 {
        self.lb.global_stats().expect("stats")[index as usize]
    }

    /// Switches a VIP to a new table with these backend ids (its spare table is filled
    /// first, then the VIP entry is rewritten: what the controller does).
    pub fn switch_table(&mut self, vip: &str, ids: &[u32]) {
        let (id, key) = self.vip(vip);
        let info = self.lb.vip(&key).unwrap().unwrap();
        let spare = if info.table == 2 * id {
            2 * id + 1
        } else {
            2 * id
        };
        self.lb.write_table(spare, &spread(ids)).unwrap();
        self.lb
            .set_vip(
                &key,
                &VipInfo {
                    table: spare,
                    ..info
                },
            )
            .unwrap();
    }

    /// Switches a VIP to a table of its backends without `gone` (they stay active: as after
    /// a weight change or a failed check).
    pub fn switch_table_without(&mut self, vip: &str, gone: &[u32]) {
        let (i, _) = self.vip(vip);
        let rest: Vec<u32> = self.backend_ids[i as usize]
            .iter()
            .copied()
            .filter(|b| !gone.contains(b))
            .collect();
        self.switch_table(vip, &rest);
    }

    /// Sets the state (and generation) of a backend id.
    pub fn set_backend_state(&mut self, id: u32, state: u8, generation: u32) {
        let mut b = self.lb.backend(id).unwrap();
        b.state = state;
        b.generation = generation;
        self.lb.set_backend(id, &b).unwrap();
    }

    /// The address of backend id `id`.
    pub fn backend_addr(&self, id: u32) -> IpAddr {
        self.lb
            .backend(id)
            .unwrap()
            .ip()
            .expect("backend has an address")
    }

    /// The frame the balancer must emit for `packet` sent to the backend userspace
    /// predicts, through the neighbour the lab has for it. Panics if it predicts none.
    pub fn expected_encap(&self, packet: &crate::packet::Packet) -> (u32, Vec<u8>) {
        let p = self
            .lb
            .predict(&packet.build())
            .unwrap()
            .expect("a VIP packet");
        let id = p.backend();
        assert_ne!(id, 0, "prediction: no backend");
        let backend = self.backend_addr(id);
        let source = match backend {
            IpAddr::V4(_) => IpAddr::V4(SOURCE_V4),
            IpAddr::V6(_) => IpAddr::V6(SOURCE_V6),
        };
        let src_mac = if matches!(backend, IpAddr::V4(a) if a.octets()[..2] == [198, 18]) {
            REDIRECT_MAC
        } else {
            LB_MAC
        };
        (
            id,
            packet.encapsulated(source, backend, neighbour_mac(backend), src_mac, p.hash),
        )
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A table of M entries spreading `ids` round-robin (0s when there are none). The fixtures
/// assert that the kernel indexes whatever table it is given exactly as userspace predicts,
/// so they do not depend on how Maglev fills it.
pub fn spread(ids: &[u32]) -> Vec<u32> {
    if ids.is_empty() {
        return vec![0; M as usize];
    }
    (0..M as usize).map(|i| ids[i % ids.len()]).collect()
}

/// Counter index of a reason.
pub const fn why(r: u32) -> u32 {
    ACTIONS + r
}
