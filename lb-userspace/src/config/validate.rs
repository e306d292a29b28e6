//! Validation, one function per section, then the rules that relate sections
//! ([`Config::check`]). Every error names its place as data ([`Location`]).

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use super::{
    AnnounceSettings, BackendConfig, Config, ConfigError, DEFAULT_DEREGISTRATION_DELAY,
    DEFAULT_IDLE_TCP, DEFAULT_IDLE_UDP, DEFAULT_METRICS, DEFAULT_PIN_DIR, DEFAULT_SNAT_PORTS,
    DEFAULT_SOCKET, DEFAULT_WEIGHT, DaemonSettings, DataplaneSettings, HealthCheck, Location,
    MAX_WEIGHT, VipConfig, VipId,
    file::{self, File, HealthFile, Listen},
    health_defaults,
    types::{
        DEFAULT_MAGLEV_VARIANT, Forwarding, HashMode, NatSource, OnFailOpen, OnUnhealthy,
        ProbeKind, Protocol, XdpMode,
    },
};
use crate::{
    dataplane::Limits,
    maglev::{self, is_prime, next_prime},
    words::quote,
};

/// Where in the configuration a check is: turns a field name into a [`Location`].
#[derive(Clone, Copy)]
enum Scope {
    /// Top level: the field is a dotted path (`dataplane.max_vips`, `health_check.port`).
    Top,
    Vip(usize, Option<VipId>),
    Backend(usize, Option<VipId>, usize, Option<IpAddr>),
}

impl Scope {
    fn err(self, field: &str, message: impl Into<String>) -> ConfigError {
        let field = field.to_owned();
        let at = match self {
            Scope::Top => Location::Setting(field),
            Scope::Vip(index, vip) => Location::Vip { index, vip, field },
            Scope::Backend(vip_index, vip, index, address) => Location::Backend {
                vip_index,
                vip,
                index,
                address,
                field,
            },
        };
        ConfigError {
            at,
            message: message.into(),
        }
    }

    /// An integer field within `[min, max]`, `default` when absent.
    fn int_in(
        self,
        field: &str,
        v: Option<i64>,
        default: i64,
        (min, max): (i64, i64),
    ) -> Result<u32, ConfigError> {
        let v = v.unwrap_or(default);
        if v < min || v > max {
            return Err(self.err(field, format!("{v} is out of range {min}-{max}")));
        }
        Ok(v as u32)
    }
}

pub(super) fn config(f: &File) -> Result<Config, ConfigError> {
    let dataplane = dataplane(&f.dataplane)?;
    let daemon = daemon(&f.daemon)?;
    let global = f.health_check.clone().unwrap_or_default();
    if let Some(h) = &f.health_check {
        // With a placeholder port, so its own errors name `health_check.*`.
        health(Scope::Top, "health_check", h, 80)?;
    }
    let vips = f
        .vips
        .iter()
        .enumerate()
        .map(|(i, v)| vip(i, v, &global))
        .collect::<Result<Vec<_>, _>>()?;
    let announce = f.announce.as_ref().map(announce).transpose()?;
    let docker = f
        .discovery
        .iter()
        .flat_map(|d| d.docker.iter())
        .enumerate()
        .map(|(i, d)| docker(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    // A host's name owns its targets: two hosts with one name would deregister each
    // other's containers.
    for (i, d) in docker.iter().enumerate() {
        if let Some(j) = docker[..i].iter().position(|o| o.name == d.name) {
            return Err(Scope::Top.err(
                &format!("discovery.docker[{i}].name"),
                format!(
                    "{} is already the name of discovery.docker[{j}]; give each Docker host its own name",
                    quote(&d.name)
                ),
            ));
        }
    }
    let config = Config {
        dataplane,
        daemon,
        announce,
        docker,
        vips,
    };
    config.check()?;
    Ok(config)
}

fn dataplane(d: &file::DataplaneFile) -> Result<DataplaneSettings, ConfigError> {
    let top = Scope::Top;
    if let Some(i) = &d.interface
        && (i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) || i.contains(char::is_control))
    {
        return Err(top.err(
            "dataplane.interface",
            format!("{} is not a valid interface name", quote(i)),
        ));
    }
    let defaults = Limits::default();
    let limits = Limits {
        max_vips: top.int_in(
            "dataplane.max_vips",
            d.max_vips,
            i64::from(defaults.max_vips),
            (1, 4096),
        )?,
        max_backends: top.int_in(
            "dataplane.max_backends",
            d.max_backends,
            i64::from(defaults.max_backends),
            (2, 1 << 20),
        )?,
        flow_table_entries: top.int_in(
            "dataplane.flow_table_entries",
            d.flow_table_entries,
            i64::from(defaults.flow_table_entries),
            (1, 1 << 28),
        )?,
        maglev_size: top.int_in(
            "dataplane.maglev_table_size",
            d.maglev_table_size,
            i64::from(defaults.maglev_size),
            (3, 16_777_259),
        )?,
        nat_table_entries: top.int_in(
            "dataplane.nat_table_entries",
            d.nat_table_entries,
            i64::from(defaults.nat_table_entries),
            (1, 1 << 26),
        )?,
    };
    let snat_v4 = d.snat_v4.clone().map(|a| a.0).unwrap_or_default();
    let snat_v6 = d.snat_v6.clone().map(|a| a.0).unwrap_or_default();
    let pool: Vec<(&str, IpAddr)> = snat_v4
        .iter()
        .map(|a| ("dataplane.snat_v4", IpAddr::V4(*a)))
        .chain(
            snat_v6
                .iter()
                .map(|a| ("dataplane.snat_v6", IpAddr::V6(*a))),
        )
        .collect();
    let per_family = lb_common::SNAT_SLOTS_PER_FAMILY as usize;
    for (field, list) in [
        ("dataplane.snat_v4", snat_v4.len()),
        ("dataplane.snat_v6", snat_v6.len()),
    ] {
        if list > per_family {
            return Err(top.err(
                field,
                format!("{list} addresses is more than the {per_family} a family can have"),
            ));
        }
    }
    for (i, (field, a)) in pool.iter().enumerate() {
        if let Some(why) = not_a_backend(*a) {
            return Err(top.err(field, format!("{a} cannot be a SNAT address: it is {why}")));
        }
        if pool[..i].iter().any(|(_, b)| b == a) {
            return Err(top.err(field, format!("{a} is listed twice")));
        }
    }
    let m = limits.maglev_size;
    if m > maglev::MAX_TABLE_SIZE {
        return Err(top.err(
            "dataplane.maglev_table_size",
            format!(
                "{m} is above the largest supported size {}",
                maglev::MAX_TABLE_SIZE
            ),
        ));
    }
    if !is_prime(m) {
        return Err(top.err(
            "dataplane.maglev_table_size",
            format!("{m} is not prime; use {}", next_prime(m)),
        ));
    }
    if limits.maglev_ids().is_none() {
        return Err(top.err(
            "dataplane.max_vips",
            format!(
                "{} VIPs x 2 tables x {m} entries exceeds 2^32 entries; lower max_vips or maglev_table_size",
                limits.max_vips
            ),
        ));
    }
    Ok(DataplaneSettings {
        interface: d.interface.clone(),
        xdp_mode: d.xdp_mode.unwrap_or(XdpMode::Auto),
        maglev_variant: d.maglev_variant.unwrap_or(DEFAULT_MAGLEV_VARIANT),
        source_v4: d.source_v4,
        source_v6: d.source_v6,
        snat_v4,
        snat_v6,
        snat_ports: d.snat_ports.map_or(DEFAULT_SNAT_PORTS, |r| (r.0, r.1)),
        limits,
    })
}

fn daemon(d: &file::DaemonFile) -> Result<DaemonSettings, ConfigError> {
    let socket = d
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let pin_dir = d
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    for (field, path) in [("daemon.socket", &socket), ("daemon.pin_dir", &pin_dir)] {
        if !path.is_absolute() {
            return Err(Scope::Top.err(field, format!("{path:?} must be an absolute path")));
        }
    }
    let metrics_address = match d.metrics_address {
        None => Some(DEFAULT_METRICS.parse().expect("valid default")),
        Some(Listen::Off) => None,
        Some(Listen::At(a)) => Some(a),
    };
    Ok(DaemonSettings {
        socket,
        pin_dir,
        metrics_address,
    })
}

fn docker(i: usize, d: &file::DockerFile) -> Result<crate::discovery::docker::Source, ConfigError> {
    use crate::discovery::docker::{Endpoint, Source};
    let top = Scope::Top;
    let f = |k: &str| format!("discovery.docker[{i}].{k}");
    let endpoint_text = d
        .endpoint
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    let tls = (d.tls_ca.clone(), d.tls_cert.clone(), d.tls_key.clone());
    let endpoint = if let Some(path) = endpoint_text.strip_prefix("unix://") {
        Endpoint::Unix(path.into())
    } else if let Some(addr) = endpoint_text.strip_prefix("tcp://") {
        match tls {
            (Some(ca), Some(cert), Some(key)) => Endpoint::Tls {
                addr: format!("https://{addr}"),
                ca,
                cert,
                key,
            },
            _ => {
                return Err(top.err(
                    &f("endpoint"),
                    format!("{} needs tls_ca, tls_cert and tls_key (or use http:// on a trusted network)", quote(&endpoint_text)),
                ));
            }
        }
    } else if endpoint_text.starts_with("http://") {
        Endpoint::Plain(endpoint_text.clone())
    } else {
        return Err(top.err(
            &f("endpoint"),
            format!(
                "{} is not unix://PATH, tcp://HOST:PORT or http://HOST:PORT",
                quote(&endpoint_text)
            ),
        ));
    };
    let host_address = d.host_address.ok_or_else(|| {
        top.err(
            &f("host_address"),
            "missing (the address at which this host's published ports are reached)",
        )
    })?;
    let name = d.name.clone().unwrap_or_else(|| host_address.to_string());
    if !valid_name(&name) || name.len() > 50 {
        return Err(top.err(
            &f("name"),
            format!(
                "{} must be 1 to 50 printable characters without quotes",
                quote(&name)
            ),
        ));
    }
    Ok(Source {
        name,
        endpoint,
        host_address,
        network: d.network.clone(),
    })
}

fn announce(a: &file::AnnounceFile) -> Result<AnnounceSettings, ConfigError> {
    use super::announce_defaults as d;
    let top = Scope::Top;
    let table = top.int_in(
        "announce.table",
        a.table,
        i64::from(d::TABLE),
        (1, i64::from(u32::MAX)),
    )?;
    // 253-255 are the kernel's default, main and local tables.
    if (253..=255).contains(&table) {
        return Err(top.err(
            "announce.table",
            format!("{table} is one of the kernel's own tables (default, main, local); use a table of its own, such as 4242"),
        ));
    }
    let protocol = top.int_in(
        "announce.protocol",
        a.protocol,
        i64::from(d::PROTOCOL),
        (0, 255),
    )?;
    // 0-4 are the kernel's own (unspec, redirect, kernel, boot, static).
    if protocol <= 4 {
        return Err(top.err(
            "announce.protocol",
            format!("{protocol} is a protocol number the kernel and `ip route` use themselves; use one of its own, such as 250"),
        ));
    }
    Ok(AnnounceSettings {
        table,
        protocol: protocol as u8,
        warm_up: a.warm_up.unwrap_or(d::WARM_UP),
        min_serving: top.int_in(
            "announce.min_serving",
            a.min_serving,
            i64::from(d::MIN_SERVING),
            (0, 1_000_000),
        )?,
        withdraw_on_stop: a.withdraw_on_stop.unwrap_or(false),
        drain_timeout: a.drain_timeout.unwrap_or(d::DRAIN_TIMEOUT),
    })
}

/// Whether a VIP or backend name may be shown in status output and metrics labels as it is.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && !n.chars().any(|c| c.is_control() || c == '"' || c == '\\')
}

fn vip(i: usize, v: &file::VipFile, global: &HealthFile) -> Result<VipConfig, ConfigError> {
    let at = Scope::Vip(i, None);
    let address = v
        .address
        .ok_or_else(|| at.err("address", "missing (the VIP's IP address)"))?;
    if address.is_unspecified()
        || address.is_multicast()
        || address.is_loopback()
        || is_broadcast(address)
    {
        return Err(at.err(
            "address",
            format!("{address} cannot be a VIP (unspecified, loopback, broadcast or multicast)"),
        ));
    }
    let port = at.int_in("port", v.port, 0, (0, 65_535))? as u16;
    if v.port.is_none() {
        return Err(at.err("port", "missing (a port number, or 0 for every port)"));
    }
    let id = VipId {
        address,
        port,
        protocol: v.protocol.unwrap_or(Protocol::Tcp),
    };
    let at = Scope::Vip(i, Some(id));
    let name = match &v.name {
        Some(n) if !valid_name(n) => {
            return Err(at.err(
                "name",
                format!(
                    "{} must be 1 to 64 printable characters without quotes or backslashes",
                    quote(n)
                ),
            ));
        }
        Some(n) => n.clone(),
        None => id.to_string(),
    };
    let vip_health = v.health_check.clone().unwrap_or_default().over(global);
    if port == 0 && vip_health.port.is_none() && vip_health.protocol != Some(ProbeKind::None) {
        return Err(at.err(
            "health_check.port",
            "required for a VIP with port 0 (every port): which port should be probed?",
        ));
    }
    // An any-port VIP's checks need a port of their own (required above unless they are
    // off); 80 stands in where they are off.
    let check_port = if port == 0 { 80 } else { port };
    let forwarding = v.forwarding.unwrap_or(Forwarding::Dsr);
    let nat = forwarding == Forwarding::Nat;
    for (field, set) in [
        ("nat_source", v.nat_source.is_some()),
        ("idle_timeout", v.idle_timeout.is_some()),
    ] {
        if set && !nat {
            return Err(at.err(
                field,
                "applies to NAT VIPs only; set forwarding = \"nat\" (this VIP is \"dsr\")",
            ));
        }
    }
    let backends = v
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| {
            let missing = Scope::Backend(i, Some(id), j, None);
            let address = b.address.ok_or_else(|| missing.err("address", "missing"))?;
            let bat = Scope::Backend(i, Some(id), j, Some(address));
            let weight = bat.int_in(
                "weight",
                b.weight,
                i64::from(DEFAULT_WEIGHT),
                (0, i64::from(MAX_WEIGHT)),
            )?;
            let target_port = match (nat, b.port) {
                (false, Some(_)) => {
                    return Err(bat.err(
                        "port",
                        "a backend port needs forwarding = \"nat\": a DSR backend receives the VIP's own port",
                    ));
                }
                (false, None) => 0,
                (true, p) => bat.int_in("port", p, i64::from(port), (if port == 0 { 0 } else { 1 }, 65_535))? as u16,
            };
            let h = b.health_check.clone().unwrap_or_default().over(&vip_health);
            // An error in settings the backend inherits is the VIP's.
            let hat = if b.health_check.is_some() { bat } else { at };
            // A NAT target is probed on its own port unless a port is configured.
            let probe_port = if target_port != 0 { target_port } else { check_port };
            for (field, v) in [("source", &b.source), ("instance", &b.instance)] {
                if let Some(v) = v
                    && !valid_name(v)
                {
                    return Err(bat.err(
                        field,
                        format!(
                            "{} must be 1 to 64 printable characters without quotes or backslashes",
                            quote(v)
                        ),
                    ));
                }
            }
            Ok(BackendConfig {
                address,
                port: target_port,
                weight,
                health: health(hat, "health_check", &h, probe_port)?,
                source: b.source.clone(),
                instance: b.instance.clone(),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let vip_check = health(at, "health_check", &vip_health, check_port)?;
    let min_serving = v
        .min_serving
        .map(|n| at.int_in("min_serving", Some(n), 0, (0, 1_000_000)))
        .transpose()?;
    let idle_default = match id.protocol {
        Protocol::Tcp => DEFAULT_IDLE_TCP,
        Protocol::Udp => DEFAULT_IDLE_UDP,
    };
    let idle_timeout = if nat {
        v.idle_timeout.unwrap_or(idle_default)
    } else {
        Duration::ZERO
    };
    if nat && idle_timeout < Duration::from_secs(1) {
        return Err(at.err(
            "idle_timeout",
            format!("{idle_timeout:?} is shorter than the 1s minimum"),
        ));
    }
    Ok(VipConfig {
        name,
        id,
        min_serving,
        on_fail_open: v.on_fail_open.unwrap_or(OnFailOpen::StayAnnounced),
        on_unhealthy: v.on_unhealthy.unwrap_or(OnUnhealthy::Move),
        slow_start: v.slow_start.unwrap_or_default(),
        hash: v.hash.unwrap_or(HashMode::FiveTuple),
        forwarding,
        nat_source: v.nat_source.unwrap_or(NatSource::Snat),
        idle_timeout,
        deregistration_delay: v
            .deregistration_delay
            .unwrap_or(DEFAULT_DEREGISTRATION_DELAY),
        health: vip_check,
        backends,
    })
}

fn health(
    at: Scope,
    prefix: &str,
    h: &HealthFile,
    vip_port: u16,
) -> Result<HealthCheck, ConfigError> {
    use health_defaults as d;
    let f = |k: &str| format!("{prefix}.{k}");
    let port = match h.port {
        Some(p) => at.int_in(&f("port"), Some(p), 0, (1, 65_535))? as u16,
        None => vip_port,
    };
    let path = h.path.clone().unwrap_or_else(|| d::PATH.to_owned());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at.err(
            &f("path"),
            format!("{} must start with / and have no spaces", quote(&path)),
        ));
    }
    if let Some(host) = &h.host
        && (host.is_empty()
            || host.len() > 255
            || host.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(at.err(
            &f("host"),
            format!(
                "{} is not a host name (1 to 255 characters, no spaces)",
                quote(host)
            ),
        ));
    }
    let kind = h.protocol.unwrap_or(d::PROTOCOL);
    // gRPC status codes are 0-16; HTTP statuses 100-599.
    let (lo, hi, default): (u16, u16, &[(u16, u16)]) = match kind {
        ProbeKind::Grpc => (0, 16, &[(0, 0)]),
        _ => (100, 599, d::EXPECT),
    };
    let expect = h.expect.clone().map_or_else(|| default.to_vec(), |r| r.0);
    if let Some((a, b)) = expect.iter().find(|(a, b)| *a < lo || *b > hi) {
        return Err(at.err(
            &f("expect"),
            format!(
                "{a}-{b} is outside {lo}-{hi}, the {} statuses",
                if kind == ProbeKind::Grpc {
                    "gRPC"
                } else {
                    "HTTP"
                }
            ),
        ));
    }
    if let Some(ca) = &h.ca_file
        && !ca.is_absolute()
    {
        return Err(at.err(&f("ca_file"), format!("{ca:?} must be an absolute path")));
    }
    let interval = h.interval.unwrap_or(d::INTERVAL);
    let timeout = h.timeout.unwrap_or(d::TIMEOUT);
    if interval < Duration::from_millis(100) {
        return Err(at.err(
            &f("interval"),
            format!("{interval:?} is shorter than the 100ms minimum"),
        ));
    }
    if timeout.is_zero() || timeout > interval {
        return Err(at.err(
            &f("timeout"),
            format!("{timeout:?} must be above zero and at most the interval ({interval:?})"),
        ));
    }
    Ok(HealthCheck {
        kind,
        port,
        path,
        host: h.host.clone(),
        expect,
        tls_verify: h.tls_verify.unwrap_or(true),
        ca_file: h.ca_file.clone(),
        grpc_service: h.grpc_service.clone().unwrap_or_default(),
        interval,
        timeout,
        healthy_threshold: at.int_in(
            &f("healthy_threshold"),
            h.healthy_threshold,
            i64::from(d::HEALTHY_THRESHOLD),
            (1, 100),
        )?,
        unhealthy_threshold: at.int_in(
            &f("unhealthy_threshold"),
            h.unhealthy_threshold,
            i64::from(d::UNHEALTHY_THRESHOLD),
            (1, 100),
        )?,
        jitter: h.jitter.or(d::JITTER).unwrap_or(interval),
    })
}

fn is_broadcast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Why `a` cannot be a backend address, if it cannot.
fn not_a_backend(a: IpAddr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if is_broadcast(a) {
        Some("the broadcast address")
    } else if a.is_loopback() {
        Some("a loopback address: the balancer forwards to other hosts")
    } else {
        None
    }
}

impl Config {
    /// The rules that relate fields to each other: no duplicate VIP or backend, backend
    /// addresses that can take forwarded packets (not another VIP), families the data
    /// plane can encapsulate, outer source addresses for them, a Maglev table large enough,
    /// and room in the maps. Part of every validation ([`Config::from_file`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        let limits = self.dataplane.limits;
        let mut seen: BTreeMap<VipId, usize> = BTreeMap::new();
        let vip_addresses: HashSet<IpAddr> = self.vips.iter().map(|v| v.id.address).collect();
        let d = &self.dataplane;
        let snat: HashSet<IpAddr> = d
            .snat_v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(d.snat_v6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        for a in &snat {
            if vip_addresses.contains(a) {
                let field = if a.is_ipv4() {
                    "dataplane.snat_v4"
                } else {
                    "dataplane.snat_v6"
                };
                return Err(Scope::Top.err(
                    field,
                    format!("{a} cannot be a SNAT address: it is a VIP address"),
                ));
            }
        }
        let mut total_backends = 0usize;
        for (i, v) in self.vips.iter().enumerate() {
            let id = v.id;
            let at = Scope::Vip(i, Some(id));
            if let Some(first) = seen.insert(id, i) {
                return Err(at.err("address", format!("duplicate VIP {id} (also vip[{first}])")));
            }
            let mut addrs = HashSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                let baddr = b.address;
                let bat = Scope::Backend(i, Some(id), j, Some(baddr));
                if let Some(why) = not_a_backend(baddr) {
                    return Err(bat.err("address", format!("{baddr} cannot be a backend: {why}")));
                }
                if vip_addresses.contains(&baddr) {
                    return Err(bat.err(
                        "address",
                        format!("{baddr} cannot be a backend: it is a VIP address (its packets would come back here)"),
                    ));
                }
                if snat.contains(&baddr) {
                    return Err(bat.err(
                        "address",
                        format!("{baddr} cannot be a backend: it is a SNAT address of this load balancer"),
                    ));
                }
                if v.is_nat() {
                    if baddr.is_ipv4() != id.address.is_ipv4() {
                        return Err(bat.err(
                            "address",
                            format!("NAT target {baddr} must be of the family of VIP {id}: NAT does not translate between IPv4 and IPv6"),
                        ));
                    }
                    let (missing, field) = if baddr.is_ipv4() {
                        (self.dataplane.snat_v4.is_empty(), "dataplane.snat_v4")
                    } else {
                        (self.dataplane.snat_v6.is_empty(), "dataplane.snat_v6")
                    };
                    if missing && v.nat_source == NatSource::Snat {
                        return Err(bat.err(
                            "address",
                            format!("NAT target {baddr} needs {field} (the source address targets see), or nat_source = \"client\""),
                        ));
                    }
                    if !addrs.insert((baddr, b.port)) {
                        return Err(bat.err(
                            "port",
                            format!("duplicate target {} in VIP {id}", b.target()),
                        ));
                    }
                    continue;
                }
                if id.address.is_ipv6() && baddr.is_ipv4() {
                    return Err(bat.err(
                        "address",
                        format!(
                            "IPv4 backend {baddr} cannot carry IPv6 VIP {id}: IPv6-in-IPv4 encapsulation is not supported; use an IPv6 backend address"
                        ),
                    ));
                }
                match baddr {
                    IpAddr::V4(_) if self.dataplane.source_v4.is_none() => {
                        return Err(bat.err(
                            "address",
                            format!(
                                "IPv4 backend {baddr} needs dataplane.source_v4 (the outer source address)"
                            ),
                        ));
                    }
                    IpAddr::V6(_) if self.dataplane.source_v6.is_none() => {
                        return Err(bat.err(
                            "address",
                            format!(
                                "IPv6 backend {baddr} needs dataplane.source_v6 (the outer source address)"
                            ),
                        ));
                    }
                    _ => {}
                }
                if !addrs.insert((baddr, 0)) {
                    return Err(
                        bat.err("address", format!("duplicate backend {baddr} in VIP {id}"))
                    );
                }
                if b.weight > MAX_WEIGHT {
                    return Err(bat.err(
                        "weight",
                        format!("{} is out of range 0-{MAX_WEIGHT}", b.weight),
                    ));
                }
            }
            let needed = 100 * v.backends.len().max(1) as u64;
            if u64::from(limits.maglev_size) < needed {
                return Err(Scope::Top.err(
                    "dataplane.maglev_table_size",
                    format!(
                        "{} is too small for the {} backends of VIP {id}: Maglev needs at least 100 entries per backend; use {}",
                        limits.maglev_size,
                        v.backends.len(),
                        next_prime(needed as u32)
                    ),
                ));
            }
            total_backends += v.backends.len();
        }
        if self.vips.len() > limits.max_vips as usize {
            return Err(Scope::Top.err(
                "dataplane.max_vips",
                format!(
                    "{} VIPs are configured but max_vips is {}",
                    self.vips.len(),
                    limits.max_vips
                ),
            ));
        }
        if total_backends >= limits.max_backends as usize {
            return Err(Scope::Top.err(
                "dataplane.max_backends",
                format!(
                    "{total_backends} backends are configured but max_backends is {} (one id is reserved)",
                    limits.max_backends
                ),
            ));
        }
        Ok(())
    }

    /// The rules that need the host the daemon runs on: no backend may be one of its own
    /// addresses (`local`), whose packets the kernel would take for itself.
    pub fn check_host(&self, local: &[IpAddr]) -> Result<(), ConfigError> {
        for (i, v) in self.vips.iter().enumerate() {
            for (j, b) in v.backends.iter().enumerate() {
                if local.contains(&b.address) {
                    return Err(Scope::Backend(i, Some(v.id), j, Some(b.address)).err(
                        "address",
                        format!(
                            "{} cannot be a backend: it is an address of this load balancer",
                            b.address
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
