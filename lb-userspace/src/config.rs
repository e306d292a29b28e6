//! The configuration file: TOML, parsed into raw structs (unknown keys refused), then
//! validated whole into [`Config`]. Nothing is applied from a file that fails validation,
//! and the error is one line naming the field, the value and what is wrong.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{PROTO_TCP, PROTO_UDP, VipKey};
use serde::Deserialize;

use crate::{
    dataplane::Limits,
    maglev::{self, Variant, is_prime, next_prime},
};

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Default bpffs directory for pins (a layout-versioned subdirectory is used under it).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// Default Prometheus endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9469";

/// A configuration error: where, and what is wrong. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending field (`vip[1].backends[0].address`), or the file and
    /// line for syntax errors.
    pub field: String,
    pub message: String,
}

/// A value from the operator, quoted for an error message and cut to a readable length.
fn q(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}... ({} characters)", value.chars().count())
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Raw file format.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    health_check: Option<RawHealth>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interface: Option<String>,
    xdp_mode: Option<String>,
    source_v4: Option<String>,
    source_v6: Option<String>,
    flow_table_entries: Option<i64>,
    maglev_table_size: Option<i64>,
    max_vips: Option<i64>,
    max_backends: Option<i64>,
    maglev_variant: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<String>,
    pin_dir: Option<String>,
    metrics_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    hash: Option<String>,
    deregistration_delay: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    health_check: Option<RawHealth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    health_check: Option<RawHealth>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    protocol: Option<String>,
    port: Option<i64>,
    path: Option<String>,
    expect: Option<String>,
    host: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<i64>,
    unhealthy_threshold: Option<i64>,
    jitter: Option<String>,
}

impl RawHealth {
    /// `self` with unset fields taken from `base`.
    fn over(&self, base: &RawHealth) -> RawHealth {
        RawHealth {
            protocol: self.protocol.clone().or_else(|| base.protocol.clone()),
            port: self.port.or(base.port),
            path: self.path.clone().or_else(|| base.path.clone()),
            expect: self.expect.clone().or_else(|| base.expect.clone()),
            host: self.host.clone().or_else(|| base.host.clone()),
            interval: self.interval.clone().or_else(|| base.interval.clone()),
            timeout: self.timeout.clone().or_else(|| base.timeout.clone()),
            healthy_threshold: self.healthy_threshold.or(base.healthy_threshold),
            unhealthy_threshold: self.unhealthy_threshold.or(base.unhealthy_threshold),
            jitter: self.jitter.clone().or_else(|| base.jitter.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validated configuration.

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic with a warning.
    #[default]
    Auto,
    /// Native only: fail if the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// How Maglev tables are filled (see `crate::maglev`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaglevVariant {
    /// Lockstep: about 45% fewer flows move between the backends that stay when one leaves.
    #[default]
    Lockstep,
    /// Classic Maglev (NSDI 2016).
    Classic,
}

impl MaglevVariant {
    pub fn builder_variant(self) -> Variant {
        match self {
            MaglevVariant::Lockstep => Variant::Lockstep,
            MaglevVariant::Classic => Variant::Classic,
        }
    }
}

/// Which fields feed the flow hash.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum HashMode {
    /// Source and destination address and port, and protocol.
    #[default]
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Source address only: every connection of a client reaches the same backend.
    #[serde(rename = "source-address")]
    SourceAddress,
}

impl fmt::Display for HashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashMode::FiveTuple => "5-tuple",
            HashMode::SourceAddress => "source-address",
        })
    }
}

/// Transport protocol of a VIP.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A VIP's identity: address, port (0 = every port), protocol. Displays as
/// `203.0.113.10:80/tcp` or `[2001:db8::1]:443/tcp`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct VipId {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VipId {
    pub fn key(&self) -> VipKey {
        VipKey::new(self.address, self.port, self.protocol.number())
    }

    pub fn from_key(key: &VipKey) -> Option<Self> {
        Some(Self {
            address: key.ip(),
            port: key.port_host(),
            protocol: Protocol::from_number(key.proto)?,
        })
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

impl std::str::FromStr for VipId {
    type Err = String;

    /// Parses `ADDR:PORT/PROTO`, `[V6]:PORT/PROTO`, with `/PROTO` defaulting to tcp.
    fn from_str(s: &str) -> Result<Self, String> {
        let (hostport, proto) = match s.rsplit_once('/') {
            Some((h, p)) => (h, p),
            None => (s, "tcp"),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(format!(
                    "protocol {q_other} in {q_s} is not tcp or udp",
                    q_other = q(other),
                    q_s = q(s)
                ));
            }
        };
        let sa: SocketAddr = hostport
            .parse()
            .map_err(|_| format!("{q_s} is not ADDRESS:PORT/PROTOCOL (e.g. 203.0.113.10:80/tcp, [2001:db8::1]:443/tcp)", q_s = q(s)))?;
        Ok(Self {
            address: sa.ip(),
            port: sa.port(),
            protocol,
        })
    }
}

/// Probe kind of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connection that completes.
    Tcp,
    /// An HTTP/1.1 GET whose status is in `expect`.
    Http,
    /// No probing: the backend is always considered healthy.
    None,
}

impl HealthCheck {
    /// The defaults, probing `port`.
    pub fn default_for_port(port: u16) -> Self {
        use health_defaults as d;
        Self {
            kind: ProbeKind::Tcp,
            port,
            path: d::PATH.to_owned(),
            host: None,
            expect: vec![(200, 399)],
            interval: d::INTERVAL,
            timeout: d::TIMEOUT,
            healthy_threshold: d::HEALTHY_THRESHOLD,
            unhealthy_threshold: d::UNHEALTHY_THRESHOLD,
            jitter: d::JITTER.unwrap_or(d::INTERVAL),
        }
    }
}

/// Health-check settings of one backend (VIP defaults with its own overrides applied).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    pub kind: ProbeKind,
    /// Port probed on the backend (default: the VIP's port; required for any-port VIPs).
    pub port: u16,
    /// HTTP path.
    pub path: String,
    /// HTTP Host header (default: the backend address).
    pub host: Option<String>,
    /// Accepted HTTP status ranges, inclusive.
    pub expect: Vec<(u16, u16)>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Largest random delay before the first probe, so many backends are not probed at once.
    pub jitter: Duration,
}

/// Defaults of every health-check key (documented in the README's config reference).
pub mod health_defaults {
    use std::time::Duration;
    pub const PROTOCOL: &str = "tcp";
    pub const PATH: &str = "/";
    pub const EXPECT: &str = "200-399";
    pub const INTERVAL: Duration = Duration::from_secs(2);
    pub const TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    /// Default jitter: the whole interval.
    pub const JITTER: Option<Duration> = None;
}

/// Default deregistration delay (how long a removed backend keeps its existing flows).
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub weight: u32,
    pub health: HealthCheck,
}

/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipConfig {
    /// Name shown in status and metrics (default: the VIP id).
    pub name: String,
    pub id: VipId,
    pub hash: HashMode,
    /// How long a removed backend keeps serving its existing flows.
    pub deregistration_delay: Duration,
    /// The VIP's health check (global settings with the VIP's own on top); backends without
    /// overrides use it, and so do backends added at run time.
    pub health: HealthCheck,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataplaneConfig {
    pub interface: Option<String>,
    pub xdp_mode: XdpModeSetting,
    /// How Maglev tables are filled; every load balancer of a VIP must use the same.
    pub maglev_variant: MaglevVariant,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// `None`: no metrics endpoint.
    pub metrics_address: Option<SocketAddr>,
}

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub daemon: DaemonConfig,
    pub vips: Vec<VipConfig>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                path.display().to_string(),
                format!("cannot read the file: {e}"),
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in syntax errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let field = match line {
                Some(l) => format!("{origin}:{l}"),
                None => origin.to_owned(),
            };
            err(field, e.message().replace('\n', " "))
        })?;
        validate(raw)
    }

    /// The VIP with this id.
    pub fn vip(&self, id: &VipId) -> Option<&VipConfig> {
        self.vips.iter().find(|v| &v.id == id)
    }
}

// ---------------------------------------------------------------------------------------
// Validation.

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let d = &raw.dataplane;
    let interface = match &d.interface {
        Some(i) if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) => {
            return Err(err(
                "dataplane.interface",
                format!("{q_i} is not a valid interface name", q_i = q(i)),
            ));
        }
        other => other.clone(),
    };
    let xdp_mode = match d.xdp_mode.as_deref() {
        None | Some("auto") => XdpModeSetting::Auto,
        Some("native") => XdpModeSetting::Native,
        Some("generic") => XdpModeSetting::Generic,
        Some(o) => {
            return Err(err(
                "dataplane.xdp_mode",
                format!("{q_o} is not one of auto, native, generic", q_o = q(o)),
            ));
        }
    };
    let source_v4 = match &d.source_v4 {
        None => None,
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            err(
                "dataplane.source_v4",
                format!("{q_s} is not an IPv4 address", q_s = q(s)),
            )
        })?),
    };
    let source_v6 = match &d.source_v6 {
        None => None,
        Some(s) => Some(s.parse::<Ipv6Addr>().map_err(|_| {
            err(
                "dataplane.source_v6",
                format!("{q_s} is not an IPv6 address", q_s = q(s)),
            )
        })?),
    };
    let maglev_variant = match d.maglev_variant.as_deref() {
        None | Some("lockstep") => MaglevVariant::Lockstep,
        Some("classic") => MaglevVariant::Classic,
        Some(o) => {
            return Err(err(
                "dataplane.maglev_variant",
                format!("{} is not \"lockstep\" or \"classic\"", q(o)),
            ));
        }
    };
    let defaults = Limits::default();
    let limits = Limits {
        max_vips: int_in(
            "dataplane.max_vips",
            d.max_vips,
            i64::from(defaults.max_vips),
            1,
            4096,
        )?,
        max_backends: int_in(
            "dataplane.max_backends",
            d.max_backends,
            i64::from(defaults.max_backends),
            2,
            1 << 20,
        )?,
        flow_table_entries: int_in(
            "dataplane.flow_table_entries",
            d.flow_table_entries,
            i64::from(defaults.flow_table_entries),
            1,
            1 << 28,
        )?,
        maglev_size: int_in(
            "dataplane.maglev_table_size",
            d.maglev_table_size,
            i64::from(defaults.maglev_size),
            3,
            16_777_259,
        )?,
    };
    if limits.maglev_size > maglev::MAX_TABLE_SIZE {
        return Err(err(
            "dataplane.maglev_table_size",
            format!(
                "{} is above the largest supported size {}",
                limits.maglev_size,
                maglev::MAX_TABLE_SIZE
            ),
        ));
    }
    if !is_prime(limits.maglev_size) {
        return Err(err(
            "dataplane.maglev_table_size",
            format!(
                "{} is not prime; use {}",
                limits.maglev_size,
                next_prime(limits.maglev_size)
            ),
        ));
    }
    if limits.maglev_ids().is_none() {
        return Err(err(
            "dataplane.max_vips",
            format!(
                "{} VIPs x 2 tables x {} entries exceeds 2^32 entries; lower max_vips or maglev_table_size",
                limits.max_vips, limits.maglev_size
            ),
        ));
    }

    let daemon = DaemonConfig {
        socket: PathBuf::from(
            raw.daemon
                .socket
                .clone()
                .unwrap_or_else(|| DEFAULT_SOCKET.to_owned()),
        ),
        pin_dir: PathBuf::from(
            raw.daemon
                .pin_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_PIN_DIR.to_owned()),
        ),
        metrics_address: match raw.daemon.metrics_address.as_deref() {
            None => Some(DEFAULT_METRICS.parse().expect("valid default")),
            Some("" | "off" | "none") => None,
            Some(s) => Some(s.parse().map_err(|_| {
                err(
                    "daemon.metrics_address",
                    format!(
                        "{q_s} is not ADDRESS:PORT (e.g. 127.0.0.1:9469), or \"off\"",
                        q_s = q(s)
                    ),
                )
            })?),
        },
    };
    if !daemon.socket.is_absolute() {
        return Err(err(
            "daemon.socket",
            format!("{:?} must be an absolute path", daemon.socket),
        ));
    }
    if !daemon.pin_dir.is_absolute() {
        return Err(err(
            "daemon.pin_dir",
            format!("{:?} must be an absolute path", daemon.pin_dir),
        ));
    }

    let global_health = raw.health_check.clone().unwrap_or_default();
    if let Some(h) = &raw.health_check {
        // Validated here with a placeholder port so its errors name `health_check.*`.
        health("health_check", &h.over(&RawHealth::default()), 80)?;
    }
    let mut vips = Vec::new();
    for (i, v) in raw.vip.iter().enumerate() {
        let at = |f: &str| format!("vip[{i}].{f}");
        let address_s = v
            .address
            .as_deref()
            .ok_or_else(|| err(at("address"), "missing (the VIP's IP address)"))?;
        let address: IpAddr = address_s.parse().map_err(|_| {
            err(
                at("address"),
                format!(
                    "{q_address_s} is not an IP address",
                    q_address_s = q(address_s)
                ),
            )
        })?;
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            return Err(err(
                at("address"),
                format!("{address} cannot be a VIP (unspecified, loopback or multicast)"),
            ));
        }
        let port = int_in(&at("port"), v.port, 0, 0, 65_535)? as u16;
        if v.port.is_none() {
            return Err(err(
                at("port"),
                "missing (a port number, or 0 for every port)",
            ));
        }
        let protocol = match v.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(o) => {
                return Err(err(
                    at("protocol"),
                    format!("{q_o} is not tcp or udp", q_o = q(o)),
                ));
            }
        };
        let id = VipId {
            address,
            port,
            protocol,
        };
        let hash = match v.hash.as_deref() {
            None | Some("5-tuple") => HashMode::FiveTuple,
            Some("source-address") => HashMode::SourceAddress,
            Some(o) => {
                return Err(err(
                    at("hash"),
                    format!("{q_o} is not \"5-tuple\" or \"source-address\"", q_o = q(o)),
                ));
            }
        };
        let deregistration_delay = match &v.deregistration_delay {
            None => DEFAULT_DEREGISTRATION_DELAY,
            Some(s) => duration(&at("deregistration_delay"), s)?,
        };
        let name = match &v.name {
            Some(n)
                if n.is_empty()
                    || n.len() > 64
                    || n.chars().any(|c| c.is_control() || c == '"') =>
            {
                return Err(err(
                    at("name"),
                    format!(
                        "{q_n} must be 1 to 64 printable characters without quotes",
                        q_n = q(n)
                    ),
                ));
            }
            Some(n) => n.clone(),
            None => id.to_string(),
        };
        let vip_health = v
            .health_check
            .clone()
            .unwrap_or_default()
            .over(&global_health);
        if port == 0
            && vip_health.port.is_none()
            && !matches!(vip_health.protocol.as_deref(), Some("none"))
        {
            return Err(err(
                at("health_check.port"),
                "required for a VIP with port 0 (every port): which port should be probed?",
            ));
        }
        let mut backends = Vec::new();
        for (j, b) in v.backends.iter().enumerate() {
            let bat = |f: &str| format!("vip[{i}].backends[{j}].{f}");
            let s = b
                .address
                .as_deref()
                .ok_or_else(|| err(bat("address"), "missing"))?;
            let baddr: IpAddr = s.parse().map_err(|_| {
                err(
                    bat("address"),
                    format!("{q_s} is not an IP address", q_s = q(s)),
                )
            })?;
            let weight = int_in(
                &bat("weight"),
                b.weight,
                i64::from(DEFAULT_WEIGHT),
                0,
                i64::from(MAX_WEIGHT),
            )?;
            let h = b.health_check.clone().unwrap_or_default().over(&vip_health);
            let hat = if b.health_check.is_some() {
                bat("health_check")
            } else {
                at("health_check")
            };
            backends.push(BackendConfig {
                address: baddr,
                weight,
                health: health(&hat, &h, port)?,
            });
        }
        let vip_check = health(
            &at("health_check"),
            &vip_health,
            if port == 0 { 80 } else { port },
        )?;
        vips.push(VipConfig {
            name,
            id,
            hash,
            deregistration_delay,
            health: vip_check,
            backends,
        });
    }
    let config = Config {
        dataplane: DataplaneConfig {
            interface,
            xdp_mode,
            maglev_variant,
            source_v4,
            source_v6,
            limits,
        },
        daemon,
        vips,
    };
    config.check()?;
    Ok(config)
}

impl Config {
    /// The rules that relate fields to each other: no duplicate VIP or backend, backend
    /// families the data plane can encapsulate, outer source addresses for them, a Maglev
    /// table large enough, and room in the maps. Run on every configuration, whether it
    /// comes from a file or from runtime changes through the API.
    pub fn check(&self) -> Result<(), ConfigError> {
        let limits = self.dataplane.limits;
        let mut seen: BTreeMap<VipId, usize> = BTreeMap::new();
        let mut total_backends = 0usize;
        for (i, v) in self.vips.iter().enumerate() {
            let id = v.id;
            if let Some(first) = seen.insert(id, i) {
                return Err(err(
                    format!("vip[{i}].address"),
                    format!("duplicate VIP {id} (also vip[{first}])"),
                ));
            }
            let mut addrs = HashSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                let bat = format!("vip[{i}].backends[{j}].address");
                let baddr = b.address;
                if baddr.is_unspecified() || baddr.is_multicast() {
                    return Err(err(bat, format!("{baddr} cannot be a backend")));
                }
                if id.address.is_ipv6() && baddr.is_ipv4() {
                    return Err(err(
                        bat,
                        format!(
                            "IPv4 backend {baddr} cannot carry IPv6 VIP {id}: IPv6-in-IPv4 encapsulation is not supported; use an IPv6 backend address"
                        ),
                    ));
                }
                match baddr {
                    IpAddr::V4(_) if self.dataplane.source_v4.is_none() => {
                        return Err(err(
                            bat,
                            format!(
                                "IPv4 backend {baddr} needs dataplane.source_v4 (the outer source address)"
                            ),
                        ));
                    }
                    IpAddr::V6(_) if self.dataplane.source_v6.is_none() => {
                        return Err(err(
                            bat,
                            format!(
                                "IPv6 backend {baddr} needs dataplane.source_v6 (the outer source address)"
                            ),
                        ));
                    }
                    _ => {}
                }
                if !addrs.insert(baddr) {
                    return Err(err(bat, format!("duplicate backend {baddr} in VIP {id}")));
                }
                if b.weight > MAX_WEIGHT {
                    return Err(err(
                        format!("vip[{i}].backends[{j}].weight"),
                        format!("{} is out of range 0-{MAX_WEIGHT}", b.weight),
                    ));
                }
            }
            let needed = 100 * v.backends.len().max(1) as u64;
            if u64::from(limits.maglev_size) < needed {
                return Err(err(
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
            return Err(err(
                "dataplane.max_vips",
                format!(
                    "{} VIPs are configured but max_vips is {}",
                    self.vips.len(),
                    limits.max_vips
                ),
            ));
        }
        if total_backends >= limits.max_backends as usize {
            return Err(err(
                "dataplane.max_backends",
                format!(
                    "{total_backends} backends are configured but max_backends is {} (one id is reserved)",
                    limits.max_backends
                ),
            ));
        }
        Ok(())
    }
}

/// An integer field within `[min, max]`, `default` when absent.
fn int_in(
    field: &str,
    v: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<u32, ConfigError> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(err(field, format!("{v} is out of range {min}-{max}")));
    }
    Ok(v as u32)
}

/// Parses a duration: an integer with unit `ms`, `s`, `m` or `h` (`"2s"`, `"500ms"`).
pub fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        err(
            field,
            format!(
                "{q_s} is not a duration like \"500ms\", \"2s\", \"1m\"",
                q_s = q(s)
            ),
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if d > Duration::from_secs(24 * 3600) {
        return Err(err(
            field,
            format!("{q_s} is longer than a day", q_s = q(s)),
        ));
    }
    Ok(d)
}

/// Parses HTTP status ranges: `"200-299,302"`.
fn status_ranges(field: &str, s: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    let bad = |part: &str| {
        err(
            field,
            format!(
                "{q_part} in {q_s} is not a status code or range like 200-299",
                q_part = q(part),
                q_s = q(s)
            ),
        )
    };
    let code = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    s.split(',')
        .map(|part| {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (
                    code(a).ok_or_else(|| bad(part))?,
                    code(b).ok_or_else(|| bad(part))?,
                ),
                None => {
                    let c = code(part).ok_or_else(|| bad(part))?;
                    (c, c)
                }
            };
            if a > b {
                return Err(bad(part));
            }
            Ok((a, b))
        })
        .collect()
}

fn health(at: &str, h: &RawHealth, vip_port: u16) -> Result<HealthCheck, ConfigError> {
    use health_defaults as d;
    let f = |k: &str| format!("{at}.{k}");
    let kind = match h.protocol.as_deref().unwrap_or(d::PROTOCOL) {
        "tcp" => ProbeKind::Tcp,
        "http" => ProbeKind::Http,
        "none" => ProbeKind::None,
        o => {
            return Err(err(
                f("protocol"),
                format!("{q_o} is not tcp, http or none", q_o = q(o)),
            ));
        }
    };
    let port = match h.port {
        Some(p) => int_in(&f("port"), Some(p), 0, 1, 65_535)? as u16,
        None => vip_port,
    };
    let path = h.path.clone().unwrap_or_else(|| d::PATH.to_owned());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            f("path"),
            format!(
                "{q_path} must start with / and have no spaces",
                q_path = q(&path)
            ),
        ));
    }
    let expect = status_ranges(&f("expect"), h.expect.as_deref().unwrap_or(d::EXPECT))?;
    let interval = match &h.interval {
        Some(s) => duration(&f("interval"), s)?,
        None => d::INTERVAL,
    };
    let timeout = match &h.timeout {
        Some(s) => duration(&f("timeout"), s)?,
        None => d::TIMEOUT,
    };
    if interval < Duration::from_millis(100) {
        return Err(err(
            f("interval"),
            format!("{interval:?} is shorter than the 100ms minimum"),
        ));
    }
    if timeout.is_zero() || timeout > interval {
        return Err(err(
            f("timeout"),
            format!("{timeout:?} must be above zero and at most the interval ({interval:?})"),
        ));
    }
    let jitter = match &h.jitter {
        Some(s) => duration(&f("jitter"), s)?,
        None => d::JITTER.unwrap_or(interval),
    };
    let healthy_threshold = int_in(
        &f("healthy_threshold"),
        h.healthy_threshold,
        i64::from(d::HEALTHY_THRESHOLD),
        1,
        100,
    )?;
    let unhealthy_threshold = int_in(
        &f("unhealthy_threshold"),
        h.unhealthy_threshold,
        i64::from(d::UNHEALTHY_THRESHOLD),
        1,
        100,
    )?;
    Ok(HealthCheck {
        kind,
        port,
        path,
        host: h.host.clone(),
        expect,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        jitter,
    })
}

#[cfg(test)]
mod tests;
