//! The configuration: TOML in the schema of [`file::File`] (unknown keys refused, values
//! typed as they are read), validated section by section into [`Config`]. Every way a
//! configuration arrives — a file, `xlb apply`, a run-time command, the daemon's saved
//! state — goes through the same validation, and nothing is applied from one that fails;
//! the error is one line naming the field, the value and what is wrong.

pub mod file;
mod types;
mod validate;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

pub use file::File;

fn move_flows() -> OnUnhealthy {
    OnUnhealthy::Move
}
pub use types::*;

use crate::dataplane::Limits;

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Default bpffs directory for pins (a layout-versioned subdirectory is used under it).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// Default Prometheus endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9469";
/// Default deregistration delay (how long a removed backend keeps its existing flows).
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(30);
/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Default idle timeout of a NAT VIP's TCP connections (as AWS NLB).
pub const DEFAULT_IDLE_TCP: Duration = Duration::from_secs(350);
/// Default idle timeout of a NAT VIP's UDP flows (as AWS NLB).
pub const DEFAULT_IDLE_UDP: Duration = Duration::from_secs(120);
/// Default SNAT port range.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 65535);

/// Where a configuration error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line of a text (syntax errors, unknown keys, values of the wrong type).
    Line { origin: String, line: Option<usize> },
    /// A setting outside the VIPs, or one named by its path in the file
    /// (`dataplane.maglev_table_size`, `vip[2].address`).
    Setting(String),
    /// A setting of the `index`th VIP, which is `vip` once its address is known.
    Vip {
        index: usize,
        vip: Option<VipId>,
        field: String,
    },
    /// A setting of the `index`th backend of the `vip_index`th VIP.
    Backend {
        vip_index: usize,
        vip: Option<VipId>,
        index: usize,
        address: Option<IpAddr>,
        field: String,
    },
}

/// A configuration error: where, and what is wrong. Displays as one line, naming the
/// field as in the file (`vip[1].backends[0].weight: ...`); [`ConfigError::for_operator`]
/// names VIPs and backends by their addresses instead, for changes made at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Location::Line {
                origin,
                line: Some(l),
            } => write!(f, "{origin}:{l}")?,
            Location::Line { origin, line: None } => f.write_str(origin)?,
            Location::Setting(s) => f.write_str(s)?,
            Location::Vip { index, field, .. } => write!(f, "vip[{index}].{field}")?,
            Location::Backend {
                vip_index,
                index,
                field,
                ..
            } => write!(f, "vip[{vip_index}].backends[{index}].{field}")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub(crate) fn setting(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: Location::Setting(path.into()),
            message: message.into(),
        }
    }

    /// The error as one line for a change made at run time, where list positions mean
    /// nothing to the operator: `VIP 203.0.113.10:80/tcp backend 198.51.100.21 weight: ...`.
    pub fn for_operator(&self) -> String {
        let (vip, backend, field) = match &self.at {
            Location::Vip {
                vip: Some(v),
                field,
                ..
            } => (v, None, field),
            Location::Backend {
                vip: Some(v),
                address,
                field,
                ..
            } => (v, *address, field),
            _ => return self.to_string(),
        };
        let mut out = format!("VIP {vip}");
        if let Some(b) = backend {
            out.push_str(&format!(" backend {b}"));
        }
        if field != "address" {
            out.push_str(&format!(" {field}"));
        }
        format!("{out}: {}", self.message)
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
    /// HTTP Host header and TLS server name (default: the backend address).
    pub host: Option<String>,
    /// Accepted HTTP status ranges, inclusive (gRPC: status codes).
    pub expect: Vec<(u16, u16)>,
    /// HTTPS: verify the backend's certificate.
    pub tls_verify: bool,
    /// HTTPS: the certificate authorities to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// gRPC: the service to ask about ("" = the whole server).
    pub grpc_service: String,
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
    pub const PROTOCOL: super::ProbeKind = super::ProbeKind::Tcp;
    pub const PATH: &str = "/";
    pub const EXPECT: &[(u16, u16)] = &[(200, 399)];
    pub const INTERVAL: Duration = Duration::from_secs(2);
    pub const TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    /// Default jitter: the whole interval.
    pub const JITTER: Option<Duration> = None;
}

impl HealthCheck {
    /// The defaults, probing `port`.
    pub fn default_for_port(port: u16) -> Self {
        use health_defaults as d;
        Self {
            kind: d::PROTOCOL,
            port,
            path: d::PATH.to_owned(),
            host: None,
            expect: d::EXPECT.to_vec(),
            tls_verify: true,
            ca_file: None,
            grpc_service: String::new(),
            interval: d::INTERVAL,
            timeout: d::TIMEOUT,
            healthy_threshold: d::HEALTHY_THRESHOLD,
            unhealthy_threshold: d::UNHEALTHY_THRESHOLD,
            jitter: d::JITTER.unwrap_or(d::INTERVAL),
        }
    }

    /// The settings as written in a file: every key explicit (port 0, "no port of its
    /// own" for an unchecked any-port VIP, is left out).
    pub fn to_file(&self) -> file::HealthFile {
        file::HealthFile {
            protocol: Some(self.kind),
            port: (self.port != 0).then_some(i64::from(self.port)),
            path: Some(self.path.clone()),
            expect: Some(file::StatusRanges(self.expect.clone())),
            host: self.host.clone(),
            tls_verify: Some(self.tls_verify),
            ca_file: self.ca_file.clone(),
            grpc_service: (self.kind == ProbeKind::Grpc).then(|| self.grpc_service.clone()),
            interval: Some(self.interval),
            timeout: Some(self.timeout),
            healthy_threshold: Some(i64::from(self.healthy_threshold)),
            unhealthy_threshold: Some(i64::from(self.unhealthy_threshold)),
            jitter: Some(self.jitter),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// NAT: the target's port (0: the packet's own, for an any-port VIP). Always 0 for DSR.
    #[serde(default)]
    pub port: u16,
    pub weight: u32,
    pub health: HealthCheck,
    /// Who registered it at run time (none: the configuration file).
    #[serde(default)]
    pub source: Option<String>,
    /// What it is to its source (a container's name and id).
    #[serde(default)]
    pub instance: Option<String>,
}

impl BackendConfig {
    /// The backend's identity within its VIP: address and port.
    pub fn target(&self) -> Target {
        Target::new(self.address, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipConfig {
    /// Name shown in status and metrics (default: the VIP id).
    pub name: String,
    pub id: VipId,
    pub hash: HashMode,
    /// DSR or NAT.
    #[serde(default = "dsr")]
    pub forwarding: Forwarding,
    /// NAT: what source targets see.
    #[serde(default = "snat")]
    pub nat_source: NatSource,
    /// NAT: how long a connection may be idle before its entries are removed.
    #[serde(default)]
    pub idle_timeout: Duration,
    /// How long a removed backend keeps serving its existing flows.
    pub deregistration_delay: Duration,
    /// The VIP's health check (global settings with the VIP's own on top); backends without
    /// overrides use it, and so do backends added at run time.
    pub health: HealthCheck,
    pub backends: Vec<BackendConfig>,
    /// With `[announce]`: backends that must serve for the VIP to be announced (`None`:
    /// `announce.min_serving`).
    pub min_serving: Option<u32>,
    pub on_fail_open: OnFailOpen,
    /// Whether a target that fails its checks keeps its flows.
    #[serde(default = "move_flows")]
    pub on_unhealthy: OnUnhealthy,
    /// How long a newly healthy target's share of new flows ramps up to its full weight
    /// (zero: at once).
    #[serde(default)]
    pub slow_start: Duration,
}

/// The `[announce]` section: VIP routes installed into a kernel routing table of their
/// own, for a routing daemon (BIRD, FRR) to announce.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnnounceSettings {
    /// The kernel routing table the routes go into.
    pub table: u32,
    /// The route protocol number that marks xlb's routes; nothing else in the table is
    /// touched.
    pub protocol: u8,
    /// How long after start nothing is announced (health checks get their first verdicts).
    pub warm_up: Duration,
    /// Backends that must serve for a VIP to be announced.
    pub min_serving: u32,
    /// Whether SIGTERM withdraws every VIP and waits for traffic to stop before exiting.
    pub withdraw_on_stop: bool,
    /// How long a stop or `xlb announce withdraw --wait` waits for traffic to stop.
    pub drain_timeout: Duration,
}

/// Defaults of `[announce]` (documented in the README).
pub mod announce_defaults {
    use std::time::Duration;
    pub const TABLE: u32 = 4242;
    pub const PROTOCOL: u8 = 250;
    pub const WARM_UP: Duration = Duration::from_secs(5);
    pub const MIN_SERVING: u32 = 1;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
}

/// The `[dataplane]` section, validated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataplaneSettings {
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// How Maglev tables are filled; every load balancer of a VIP must use the same.
    pub maglev_variant: MaglevVariant,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
    /// SNAT addresses of full-NAT VIPs, in slot order (only ever appended to at run time).
    #[serde(default)]
    pub snat_v4: Vec<Ipv4Addr>,
    #[serde(default)]
    pub snat_v6: Vec<Ipv6Addr>,
    /// SNAT ports, inclusive.
    #[serde(default = "default_snat_ports")]
    pub snat_ports: (u16, u16),
    pub limits: Limits,
}

fn dsr() -> Forwarding {
    Forwarding::Dsr
}

fn snat() -> NatSource {
    NatSource::Snat
}

fn default_snat_ports() -> (u16, u16) {
    DEFAULT_SNAT_PORTS
}

impl VipConfig {
    /// Whether the VIP forwards by NAT.
    pub fn is_nat(&self) -> bool {
        self.forwarding == Forwarding::Nat
    }

    /// The `Backend::mode` of its backends.
    pub fn backend_mode(&self) -> u8 {
        self.forwarding.backend_mode(self.nat_source)
    }

    /// The `VipInfo::flags` of the VIP.
    pub fn vip_flags(&self) -> u32 {
        let mut f = self.hash.vip_flags();
        if self.is_nat() {
            f |= lb_common::VIP_F_NAT;
            if self.nat_source == NatSource::Client {
                f |= lb_common::VIP_F_NAT_CLIENT;
            }
        }
        f
    }
}

/// The `[daemon]` section, validated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonSettings {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// `None`: no metrics endpoint.
    pub metrics_address: Option<SocketAddr>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            metrics_address: Some(DEFAULT_METRICS.parse().expect("valid default")),
        }
    }
}

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub dataplane: DataplaneSettings,
    pub daemon: DaemonSettings,
    pub announce: Option<AnnounceSettings>,
    /// `[[discovery.docker]]`: Docker hosts whose labelled containers become targets.
    #[serde(skip)]
    pub docker: Vec<crate::discovery::docker::Source>,
    pub vips: Vec<VipConfig>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            at: Location::Line {
                origin: path.display().to_string(),
                line: None,
            },
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in syntax errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::from_file(&File::parse(text, origin)?)
    }

    /// Validates a configuration in the file schema.
    pub fn from_file(file: &File) -> Result<Self, ConfigError> {
        validate::config(file)
    }

    /// The configuration in the file schema: what [`Config::from_file`] turns back into
    /// this configuration. Health checks are written out whole for every VIP, and for a
    /// backend when its own differs.
    pub fn to_file(&self) -> File {
        let d = &self.dataplane;
        let l = &d.limits;
        File {
            dataplane: file::DataplaneFile {
                interface: d.interface.clone(),
                xdp_mode: Some(d.xdp_mode),
                source_v4: d.source_v4,
                source_v6: d.source_v6,
                flow_table_entries: Some(i64::from(l.flow_table_entries)),
                maglev_table_size: Some(i64::from(l.maglev_size)),
                max_vips: Some(i64::from(l.max_vips)),
                max_backends: Some(i64::from(l.max_backends)),
                maglev_variant: Some(d.maglev_variant),
                snat_v4: (!d.snat_v4.is_empty()).then(|| file::Addresses(d.snat_v4.clone())),
                snat_v6: (!d.snat_v6.is_empty()).then(|| file::Addresses(d.snat_v6.clone())),
                snat_ports: Some(file::PortRange(d.snat_ports.0, d.snat_ports.1)),
                nat_table_entries: Some(i64::from(l.nat_table_entries)),
            },
            daemon: file::DaemonFile {
                socket: Some(self.daemon.socket.clone()),
                pin_dir: Some(self.daemon.pin_dir.clone()),
                metrics_address: Some(match self.daemon.metrics_address {
                    Some(a) => file::Listen::At(a),
                    None => file::Listen::Off,
                }),
            },
            health_check: None,
            announce: self.announce.as_ref().map(|a| file::AnnounceFile {
                table: Some(i64::from(a.table)),
                protocol: Some(i64::from(a.protocol)),
                warm_up: Some(a.warm_up),
                min_serving: Some(i64::from(a.min_serving)),
                withdraw_on_stop: Some(a.withdraw_on_stop),
                drain_timeout: Some(a.drain_timeout),
            }),
            discovery: (!self.docker.is_empty()).then(|| file::DiscoveryFile {
                docker: self
                    .docker
                    .iter()
                    .map(crate::discovery::docker::Source::to_file)
                    .collect(),
            }),
            vips: self.vips.iter().map(VipConfig::to_file).collect(),
        }
    }

    /// The configuration as TOML in the file schema.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_file()).expect("a configuration always serialises")
    }

    /// The VIP with this id.
    pub fn vip(&self, id: &VipId) -> Option<&VipConfig> {
        self.vips.iter().find(|v| &v.id == id)
    }
}

impl VipConfig {
    /// The VIP in the file schema.
    pub fn to_file(&self) -> file::VipFile {
        file::VipFile {
            name: Some(self.name.clone()),
            address: Some(self.id.address),
            port: Some(i64::from(self.id.port)),
            protocol: Some(self.id.protocol),
            hash: Some(self.hash),
            forwarding: Some(self.forwarding),
            nat_source: self.is_nat().then_some(self.nat_source),
            idle_timeout: self.is_nat().then_some(self.idle_timeout),
            deregistration_delay: Some(self.deregistration_delay),
            min_serving: self.min_serving.map(i64::from),
            slow_start: (!self.slow_start.is_zero()).then_some(self.slow_start),
            on_fail_open: Some(self.on_fail_open),
            on_unhealthy: Some(self.on_unhealthy),
            // A NAT VIP's checks probe each target's own port unless a port is configured:
            // the VIP's default (its own port) is left implicit, so targets added later
            // (run-time commands, discovery) are probed on their ports too.
            health_check: Some({
                let mut h = self.health.to_file();
                if self.is_nat() && self.health.port == self.id.port {
                    h.port = None;
                }
                h
            }),
            backends: self
                .backends
                .iter()
                .map(|b| file::BackendFile {
                    address: Some(b.address),
                    port: self.is_nat().then_some(i64::from(b.port)),
                    weight: Some(i64::from(b.weight)),
                    source: b.source.clone(),
                    instance: b.instance.clone(),
                    health_check: if b.health == self.health {
                        None
                    } else if b.health
                        == (HealthCheck {
                            port: b.health.port,
                            ..self.health.clone()
                        })
                    {
                        // Only the port differs (a NAT target's own port is probed).
                        Some(file::HealthFile {
                            port: Some(i64::from(b.health.port)),
                            ..file::HealthFile::default()
                        })
                    } else {
                        Some(b.health.to_file())
                    },
                })
                .collect(),
        }
    }
}

impl File {
    /// Parses TOML text in the file schema (no validation beyond the types of values).
    /// Errors in a value name its path (`vip[0].protocol: "sctp" is not tcp or udp`);
    /// syntax errors, unknown keys and wrong types name the line (`f.toml:3: ...`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            let message = inner.message().replace('\n', " ");
            if let Some(ours) = message.strip_prefix(crate::words::INVALID) {
                return ConfigError::setting(e.path().to_string(), ours);
            }
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = match message.trim() {
                "" => "invalid TOML here".to_owned(),
                m => m.to_owned(),
            };
            ConfigError {
                at: Location::Line {
                    origin: origin.to_owned(),
                    line,
                },
                message,
            }
        })
    }
}

#[cfg(test)]
mod tests;
