//! Ready-made pieces for end-to-end scenarios: the standard configuration, servers on every
//! backend, and predictions read from the daemon's pinned maps.

use std::net::{IpAddr, SocketAddr};

use xlb::dataplane::{Balancer, Limits};

use crate::{
    daemon::Daemon,
    servers::{self, Server},
    topology::{Topology, backend_v4},
};

pub const VIP: &str = "203.0.113.10";
pub const VIP6: &str = "2001:db8:203::10";

/// Limits used by scenario configurations (small maps: many tests run at once).
pub const LIMITS: Limits = Limits {
    max_vips: 8,
    max_backends: 64,
    flow_table_entries: 65_536,
    maglev_size: 65_537,
    nat_table_entries: 65_536,
};

/// The `[dataplane]` and `[daemon]` sections of scenario configurations.
pub fn header() -> String {
    format!(
        "[dataplane]\ninterface = \"eth0\"\nsource_v4 = \"198.18.0.2\"\nsource_v6 = \"2001:db8:18::2\"\n\
         flow_table_entries = {}\nmax_vips = {}\nmax_backends = {}\nmaglev_table_size = {}\nnat_table_entries = {}\n\n\
         [daemon]\nsocket = \"@SOCKET@\"\npin_dir = \"@PINS@\"\nmetrics_address = \"127.0.0.1:9469\"\n\n",
        LIMITS.flow_table_entries,
        LIMITS.max_vips,
        LIMITS.max_backends,
        LIMITS.maglev_size,
        LIMITS.nat_table_entries
    )
}

/// A TCP VIP section on `VIP:port` with the given backends (indexes, 1-based) and fast
/// health checks.
pub fn tcp_vip(port: u16, backends: &[usize], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|i| format!("{{ address = \"{}\" }}", backend_v4(*i)))
        .collect();
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\n{extra}\nbackends = [ {} ]\n\
         [vip.health_check]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\njitter = \"0s\"\n\n",
        list.join(", ")
    )
}

/// Name of backend `i` as its servers report it.
pub fn backend_name(i: usize) -> String {
    format!("backend-{i}")
}

/// Starts a server made by `make(ns, addr, name)` on every backend at `0.0.0.0:port`.
pub fn on_every_backend(
    topo: &Topology,
    port: u16,
    make: impl Fn(&crate::netns::Netns, SocketAddr, &str) -> Server,
) -> Vec<Server> {
    topo.backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            make(
                ns,
                SocketAddr::new("0.0.0.0".parse().unwrap(), port),
                &backend_name(i + 1),
            )
        })
        .collect()
}

/// The standard scenario: `n` backends with TCP echo servers on port 80, decapsulation,
/// the VIP on their loopback, and a daemon balancing `VIP:80` over all of them.
pub struct Scenario {
    pub topo: Topology,
    pub daemon: Daemon,
    /// The echo servers on port 80, one per backend.
    pub servers: Vec<Server>,
    /// Servers a test started before the daemon (see `with_servers`).
    pub extra: Vec<Server>,
}

impl Scenario {
    /// `n` backends, all of them behind the VIP.
    pub fn new(n: usize) -> Self {
        let all: Vec<usize> = (1..=n).collect();
        Self::with_config(n, &(header() + &tcp_vip(80, &all, "")), n)
    }

    /// `n` backends with servers; the daemon runs `config`; waits for `healthy` backends.
    pub fn with_config(n: usize, config: &str, healthy: usize) -> Self {
        Self::with_servers(n, config, healthy, |_| Vec::new())
    }

    /// As `with_config`, with more servers started by `extra` before the daemon.
    pub fn with_servers(
        n: usize,
        config: &str,
        healthy: usize,
        extra: impl FnOnce(&Topology) -> Vec<Server>,
    ) -> Self {
        Self::on(Topology::new(n), config, healthy, extra)
    }

    /// As `with_servers`, on a topology built by the caller.
    pub fn on(
        topo: Topology,
        config: &str,
        healthy: usize,
        extra: impl FnOnce(&Topology) -> Vec<Server>,
    ) -> Self {
        topo.add_vip_on_backends(VIP.parse().unwrap());
        topo.add_vip_on_backends(VIP6.parse().unwrap());
        topo.start_decap();
        let servers = on_every_backend(&topo, 80, servers::echo_server);
        let extra = extra(&topo);
        let daemon = Daemon::start(&topo.lb, config);
        let s = Self {
            topo,
            daemon,
            servers,
            extra,
        };
        s.wait_healthy(healthy, std::time::Duration::from_secs(10));
        s
    }

    /// Waits until `n` backends of the first VIP are healthy.
    pub fn wait_healthy(&self, n: usize, within: std::time::Duration) {
        self.wait_for(within, &format!("{n} healthy backends"), |s| {
            s.vips[0]
                .backends
                .iter()
                .filter(|b| b.health == xlb::engine::Health::Healthy)
                .count()
                == n
        });
    }

    /// Polls the daemon's status until `done` holds (`Daemon::wait_for`).
    pub fn wait_for(
        &self,
        within: std::time::Duration,
        what: &str,
        done: impl Fn(&xlb::api::Snapshot) -> bool,
    ) -> std::time::Duration {
        self.daemon.wait_for(within, what, done)
    }

    /// The daemon's maps, opened from their pins (for predictions).
    pub fn maps(&self) -> Balancer {
        self.maps_with(LIMITS)
    }

    /// The daemon's maps, when its configuration sized them other than `LIMITS`.
    pub fn maps_with(&self, limits: xlb::dataplane::Limits) -> Balancer {
        Balancer::load(
            limits,
            Some(&xlb::daemon::pin_path(&self.daemon.pin_dir, "eth0")),
        )
        .expect("open pinned maps")
    }
}

/// The backend id -> backend index map of a VIP, from the daemon's status.
pub fn backend_index_by_id(
    status: &xlb::api::Snapshot,
    vip: usize,
) -> std::collections::HashMap<u32, usize> {
    status.vips[vip]
        .backends
        .iter()
        .map(|b| {
            let IpAddr::V4(a) = b.address.address else {
                panic!("v4 backends")
            };
            (b.id, usize::from(a.octets()[3]) - 10)
        })
        .collect()
}
