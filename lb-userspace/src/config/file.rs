//! The file format: what operators write, what `xlb check -o json` prints and what the
//! daemon saves as its running state. Values are typed here (addresses, enums, durations,
//! status ranges); numbers stay wide so range errors can name the value; only the health
//! check keeps every key optional, because its settings layer (global, VIP, backend).
//! `super::validate` turns a [`File`] into a [`super::Config`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::types::{
    Forwarding, HashMode, MaglevVariant, NatSource, OnFailOpen, OnUnhealthy, ProbeKind, Protocol,
    XdpMode,
};
use crate::words::{invalid, quote};

/// A whole configuration file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub dataplane: DataplaneFile,
    #[serde(default)]
    pub daemon: DaemonFile,
    /// Health-check settings of every VIP (each VIP's own go on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthFile>,
    /// Announcing VIP routes to a routing daemon (several hosts behind ECMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceFile>,
    /// Where targets are found by themselves (Docker hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryFile>,
    #[serde(default, rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipFile>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker: Vec<DockerFile>,
}

/// One `[[discovery.docker]]` host.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `unix:///var/run/docker.sock`, `tcp://host:2376` (with the tls_* keys), or
    /// `http://host:2375`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub host_address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<i64>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_serving: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdraw_on_stop: Option<bool>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<XdpMode>,
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub source_v4: Option<Ipv4Addr>,
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub source_v6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_table_entries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vips: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backends: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_variant: Option<MaglevVariant>,
    /// SNAT addresses of full-NAT VIPs: one address or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_v4: Option<Addresses<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_v6: Option<Addresses<Ipv6Addr>>,
    /// SNAT ports, `"MIN-MAX"`.
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_table_entries: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<Listen>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<NatSource>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub deregistration_delay: Option<Duration>,
    /// With `[announce]`: backends that must serve for the VIP to be announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_serving: Option<i64>,
    /// How long a newly healthy target's share of new flows ramps up to its weight.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Duration>,
    /// With `[announce]`: whether a VIP that fails open stays announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_fail_open: Option<OnFailOpen>,
    /// Whether a target that fails its checks keeps its flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unhealthy: Option<OnUnhealthy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthFile>,
    #[serde(default)]
    pub backends: Vec<BackendFile>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// NAT VIPs: the target's port (default: the VIP's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthFile>,
    /// Who registered the target at run time (`xlb backend add --source`, `docker:<host>`
    /// for discovered containers); none for targets of the configuration file. Registered
    /// targets outlive reloads of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What the target is to its source (a container's name and id), for status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Health-check settings as written: every key optional, layered global < VIP < backend.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProbeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, with = "parsed", skip_serializing_if = "Option::is_none")]
    pub expect: Option<StatusRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTPS: verify the backend's certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// HTTPS: PEM file of the certificate authorities to trust (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// gRPC: the service named in `grpc.health.v1.Health/Check` (default "", the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
}

impl HealthFile {
    /// `self` with unset keys taken from `base`.
    pub fn over(&self, base: &HealthFile) -> HealthFile {
        HealthFile {
            protocol: self.protocol.or(base.protocol),
            port: self.port.or(base.port),
            path: self.path.clone().or_else(|| base.path.clone()),
            expect: self.expect.clone().or_else(|| base.expect.clone()),
            host: self.host.clone().or_else(|| base.host.clone()),
            tls_verify: self.tls_verify.or(base.tls_verify),
            ca_file: self.ca_file.clone().or_else(|| base.ca_file.clone()),
            grpc_service: self
                .grpc_service
                .clone()
                .or_else(|| base.grpc_service.clone()),
            interval: self.interval.or(base.interval),
            timeout: self.timeout.or(base.timeout),
            healthy_threshold: self.healthy_threshold.or(base.healthy_threshold),
            unhealthy_threshold: self.unhealthy_threshold.or(base.unhealthy_threshold),
            jitter: self.jitter.or(base.jitter),
        }
    }
}

/// `daemon.metrics_address`: an address and port, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::At(a) => a.fmt(f),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "off" | "none" => Ok(Listen::Off),
            _ => s.parse().map(Listen::At).map_err(|_| {
                format!(
                    "{} is not ADDRESS:PORT (e.g. 127.0.0.1:9469), or \"off\"",
                    quote(s)
                )
            }),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(invalid)
    }
}

/// One address or a list of them (`"198.51.100.1"` or `["198.51.100.1", "198.51.100.2"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses<T>(pub Vec<T>);

impl<T: fmt::Display> Serialize for Addresses<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [one] = &self.0[..] {
            return s.collect_str(one);
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        list.serialize(s)
    }
}

impl<'de, T: Noun> Deserialize<'de> for Addresses<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(d)
            .map_err(|_| invalid("is not an address or a list of addresses"))?
        {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        };
        texts
            .iter()
            .map(|t| t.parse::<T>().map_err(|e| invalid(T::not_one(t, e))))
            .collect::<Result<_, _>>()
            .map(Addresses)
    }
}

/// An inclusive port range, written `"1024-65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{} is not a port range like \"1024-65535\"", quote(s));
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (a, b) = (
            a.trim().parse::<u16>().map_err(|_| bad())?,
            b.trim().parse::<u16>().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(format!(
                "{} must run from a port of 1 or more to one at least as high",
                quote(s)
            ));
        }
        Ok(PortRange(a, b))
    }
}

impl Noun for PortRange {
    fn not_one(_: &str, err: String) -> String {
        err
    }
}

/// Accepted statuses: inclusive ranges, written `"200-299,302"` (HTTP) or `"0"` (gRPC
/// status codes); which numbers a check takes is checked with its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for StatusRanges {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!(
                "{} in {} is not a status code or range like 200-299",
                quote(part),
                quote(s)
            )
        };
        let code = |p: &str| p.trim().parse::<u16>().ok().filter(|c| *c <= 599);
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
            .collect::<Result<_, _>>()
            .map(StatusRanges)
    }
}

/// What a value parsed from a string is, for the error when it does not parse.
pub trait Noun: FromStr + fmt::Display {
    /// The error for `text`.
    fn not_one(text: &str, err: Self::Err) -> String;
}

macro_rules! noun {
    ($t:ty, $what:literal) => {
        impl Noun for $t {
            fn not_one(text: &str, _: Self::Err) -> String {
                format!("{} is not {}", quote(text), $what)
            }
        }
    };
}
noun!(IpAddr, "an IP address");
noun!(Ipv4Addr, "an IPv4 address");
noun!(Ipv6Addr, "an IPv6 address");

impl Noun for StatusRanges {
    fn not_one(_: &str, err: String) -> String {
        err
    }
}

/// serde for an `Option<T>` written as a string and parsed with `T::from_str`.
pub mod parsed {
    use super::*;

    pub fn serialize<S: Serializer, T: fmt::Display>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Noun>(d: D) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        match text.parse::<T>() {
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(invalid(T::not_one(&text, e))),
        }
    }
}

/// The longest duration a setting takes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration: an integer with unit `ms`, `s`, `m` or `h` (`"2s"`, `"500ms"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{} is not a duration like \"500ms\", \"2s\", \"1m\"",
            quote(s)
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d > MAX_DURATION {
        return Err(format!("{} is longer than a day", quote(s)));
    }
    Ok(d)
}

/// A duration as [`parse_duration`] reads it, in the largest unit that shows it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms != 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// serde for an `Option<Duration>` written like `"2s"`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Some).map_err(invalid)
    }
}
