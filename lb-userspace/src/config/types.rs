//! One type per concept of the configuration: each is parsed, shown, serialised and
//! offered on the command line from the same words.

use std::{fmt, net::SocketAddr, str::FromStr};

use lb_common::{PROTO_TCP, PROTO_UDP, VipKey};

use crate::words::{quote, words};

words! {
    /// How the XDP program is attached.
    pub enum XdpMode expecting "one of auto, native, generic" {
        /// Native (driver) mode, falling back to generic with a warning.
        Auto = "auto",
        /// Native only: fail if the driver has no XDP support.
        Native = "native",
        /// Generic (skb) mode: works everywhere, slower.
        Generic = "generic",
    }
}

words! {
    /// Which fields feed the flow hash.
    pub enum HashMode expecting "\"5-tuple\" or \"source-address\"" {
        /// Source and destination address and port, and protocol.
        FiveTuple = "5-tuple",
        /// Source address only: every connection of a client reaches the same backend.
        SourceAddress = "source-address",
    }
}

words! {
    /// How a VIP's packets reach its backends.
    pub enum Forwarding expecting "\"dsr\" or \"nat\"" {
        /// Direct server return: encapsulated to the backend (which runs `xlb decap` and
        /// has the VIP on loopback) and answered by it directly.
        Dsr = "dsr",
        /// NAT: rewritten to the target's address and port; replies come back through
        /// this host. Nothing is installed on the targets.
        Nat = "nat",
    }
}

words! {
    /// The source address a NAT VIP's targets see.
    pub enum NatSource expecting "\"snat\" or \"client\"" {
        /// A SNAT address of this host and an allocated port (full NAT): targets need
        /// only a route to the SNAT addresses.
        Snat = "snat",
        /// The client's own address and port: targets must route their replies through
        /// this host (it is their gateway).
        Client = "client",
    }
}

words! {
    /// Transport protocol of a VIP.
    pub enum Protocol expecting "tcp or udp" {
        Tcp = "tcp",
        Udp = "udp",
    }
}

words! {
    /// Probe kind of a health check.
    pub enum ProbeKind expecting "tcp, http, https, grpc or none" {
        /// A TCP connection that completes.
        Tcp = "tcp",
        /// An HTTP/1.1 GET whose status is in `expect`.
        Http = "http",
        /// The same over TLS (SNI = `host`; the certificate verified unless
        /// `tls_verify = false`).
        Https = "https",
        /// `grpc.health.v1.Health/Check`: a gRPC status in `expect` (default 0) and SERVING.
        Grpc = "grpc",
        /// No probing: the backend is always considered healthy.
        None = "none",
    }
}

words! {
    /// With `[announce]`: what a VIP whose backends all fail their checks does. A single
    /// host stays announced and sends to all of them (fail-open); in a group of hosts
    /// behind ECMP, withdrawing lets the others take the traffic.
    pub enum OnFailOpen expecting "\"stay-announced\" or \"withdraw\"" {
        StayAnnounced = "stay-announced",
        Withdraw = "withdraw",
    }
}

words! {
    /// What happens to the flows of a target that fails its health checks.
    pub enum OnUnhealthy expecting "\"move\" or \"keep\"" {
        /// They move to healthy targets: UDP flows go on there, TCP connections are reset
        /// by their new target at once rather than hanging on a dead one.
        Move = "move",
        /// They stay with it and it takes no new ones (NLB's connection termination off):
        /// for targets that fail their checks on purpose to drain, such as an HAProxy or
        /// Envoy stopping gracefully.
        Keep = "keep",
    }
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

impl Forwarding {
    /// The `Backend::mode` of a VIP's backends.
    pub fn backend_mode(self, source: NatSource) -> u8 {
        match (self, source) {
            (Forwarding::Dsr, _) => lb_common::MODE_DSR,
            (Forwarding::Nat, NatSource::Snat) => lb_common::MODE_NAT,
            (Forwarding::Nat, NatSource::Client) => lb_common::MODE_NAT_CLIENT,
        }
    }

    /// The forwarding and NAT source a `Backend::mode` says.
    pub fn from_backend_mode(mode: u8) -> (Self, NatSource) {
        match mode {
            lb_common::MODE_NAT => (Forwarding::Nat, NatSource::Snat),
            lb_common::MODE_NAT_CLIENT => (Forwarding::Nat, NatSource::Client),
            _ => (Forwarding::Dsr, NatSource::Snat),
        }
    }
}

/// A backend as a VIP knows it: an address, and for NAT VIPs the target's port (0: the
/// VIP's own port for a DSR backend, the packet's port for an any-port NAT VIP). Displays
/// as `198.51.100.20` (port 0), `198.51.100.20:32768` or `[2001:db8::20]:32768`; that is
/// also how it is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: std::net::IpAddr,
    pub port: u16,
}

impl Target {
    pub fn new(address: std::net::IpAddr, port: u16) -> Self {
        Self { address, port }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 {
            f.pad(&self.address.to_string())
        } else {
            f.pad(&SocketAddr::new(self.address, self.port).to_string())
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// Parses `ADDR`, `ADDR:PORT` or `[V6]:PORT` (a bare IPv6 address has no port).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<std::net::IpAddr>() {
            return Ok(Self::new(a, 0));
        }
        s.parse::<SocketAddr>()
            .map(|sa| Self::new(sa.ip(), sa.port()))
            .map_err(|_| {
                format!(
                    "{} is not ADDRESS or ADDRESS:PORT (e.g. 198.51.100.20, 198.51.100.20:32768, [2001:db8::20]:32768)",
                    quote(s)
                )
            })
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl HashMode {
    /// The `VipInfo::flags` bits of the mode.
    pub fn vip_flags(self) -> u32 {
        match self {
            HashMode::FiveTuple => 0,
            HashMode::SourceAddress => lb_common::VIP_F_HASH_SOURCE,
        }
    }

    /// The mode a VIP entry's flags say.
    pub fn from_vip_flags(flags: u32) -> Self {
        if flags & lb_common::VIP_F_HASH_SOURCE != 0 {
            HashMode::SourceAddress
        } else {
            HashMode::FiveTuple
        }
    }
}

/// The Maglev variant every table is built with; see `crate::maglev::Variant`. Its
/// default for configurations is lockstep (the builder's own shorthand is classic, the
/// published algorithm).
pub use crate::maglev::Variant as MaglevVariant;

/// The variant a configuration uses when it names none.
pub const DEFAULT_MAGLEV_VARIANT: MaglevVariant = MaglevVariant::Lockstep;

/// A VIP: address, port (0 = every port), protocol. Displays as `203.0.113.10:80/tcp` or
/// `[2001:db8::1]:443/tcp`; that is also how it is written on the command line. (Its slot
/// in the maps is its *index*, `VipInfo::index`.)
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct VipId {
    pub address: std::net::IpAddr,
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
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.protocol
        )
    }
}

impl FromStr for VipId {
    type Err = String;

    /// Parses `ADDR:PORT/PROTO`, `[V6]:PORT/PROTO`, with `/PROTO` defaulting to tcp.
    fn from_str(s: &str) -> Result<Self, String> {
        let (hostport, proto) = s.rsplit_once('/').unwrap_or((s, "tcp"));
        let protocol = proto.parse::<Protocol>().map_err(|_| {
            format!(
                "protocol {} in {} is not tcp or udp",
                quote(proto),
                quote(s)
            )
        })?;
        let sa: SocketAddr = hostport.parse().map_err(|_| {
            format!(
                "{} is not ADDRESS:PORT/PROTOCOL (e.g. 203.0.113.10:80/tcp, [2001:db8::1]:443/tcp)",
                quote(s)
            )
        })?;
        Ok(Self {
            address: sa.ip(),
            port: sa.port(),
            protocol,
        })
    }
}
