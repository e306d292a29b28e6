//! The local API between the daemon and the `xlb` command: one JSON request per line on a
//! unix socket, one JSON response per line back.
//!
//! The socket is created mode 0600 in a 0700 directory: only root can use it. Every
//! change is validated whole before anything is written; a refused request changes
//! nothing and its error is one line.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use lb_common::stats::{Kind, Reason};

use crate::{
    config::{Forwarding, HashMode, NatSource, Target, VipId, XdpMode},
    engine::{BackendState, Event, Health},
};

/// A request from the command line to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Everything: VIPs, backends, health, counters.
    Status,
    /// Apply a whole configuration (TOML text); `origin` names it in errors.
    Apply {
        config: String,
        origin: String,
    },
    /// Re-read the daemon's configuration file and apply it (what SIGHUP does).
    Reload,
    VipAdd {
        vip: VipId,
        name: Option<String>,
        hash: HashMode,
        #[serde(default)]
        forwarding: Option<Forwarding>,
        #[serde(default)]
        nat_source: Option<NatSource>,
    },
    VipDel {
        vip: VipId,
    },
    BackendAdd {
        vip: VipId,
        address: Target,
        weight: Option<u32>,
        /// Register it for this owner: it outlives reloads of the file, and adding it again
        /// for the same owner updates it (as AWS RegisterTargets does).
        #[serde(default)]
        source: Option<String>,
    },
    BackendDel {
        vip: VipId,
        address: Target,
    },
    BackendDrain {
        vip: VipId,
        address: Target,
    },
    BackendUndrain {
        vip: VipId,
        address: Target,
    },
    BackendWeight {
        vip: VipId,
        address: Target,
        weight: u32,
    },
    /// Detach the balancer, remove every pin, and stop the daemon.
    Teardown,
    /// Withdraw every VIP from the routers (drain this host); forwarding goes on for the
    /// flows that still arrive.
    AnnounceWithdraw,
    /// Announce the VIPs again (each as its own state allows).
    AnnounceRestore,
    /// Trace the packets `filter` matches: the answer is a line saying the trace is on,
    /// then one line per packet (`Response::trace`) until `count` packets or the client
    /// hangs up, then a last line saying how many were shown. One trace at a time.
    Trace {
        #[serde(default)]
        filter: crate::trace::Filter,
        #[serde(default)]
        count: Option<u64>,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// One line, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What changed (apply and the runtime operations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// For `Status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Snapshot>,
    /// For `Trace`: one traced packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::Record>,
}

impl Response {
    pub fn ok(changes: Vec<String>) -> Self {
        Self {
            ok: true,
            error: None,
            changes,
            status: None,
            trace: None,
        }
    }

    pub fn error(message: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(message.to_string().replace('\n', " ")),
            changes: Vec::new(),
            status: None,
            trace: None,
        }
    }
}

/// Counters of a VIP or backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// NAT: replies from targets sent back to clients.
    #[serde(default)]
    pub reply_packets: u64,
    #[serde(default)]
    pub reply_bytes: u64,
}

/// The state of one backend as `xlb status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend's address, with the target's port for NAT (`198.51.100.20:32768`).
    pub address: Target,
    pub id: u32,
    pub weight: u32,
    pub health: Health,
    /// Why the health is what it is.
    pub health_reason: String,
    /// Seconds since the health last changed.
    pub health_since_secs: u64,
    /// Active, drained, deregistering (removed, serving out its delay), or down.
    pub state: BackendState,
    /// In the Maglev table: takes new flows.
    pub takes_new_flows: bool,
    /// Seconds left of the deregistration delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistration_left_secs: Option<u64>,
    /// Who registered it (none: the configuration file; `docker:<host>` for a discovered
    /// container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What it is to its source (a container's name and id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// In slow start: the share of its weight it takes now, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u8>,
    pub counters: Counters,
}

/// The state of one VIP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub vip: VipId,
    pub hash: HashMode,
    #[serde(default = "dsr")]
    pub forwarding: Forwarding,
    /// NAT: what source targets see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<NatSource>,
    /// NAT connections being tracked (reverse entries at the sweeper's last pass).
    #[serde(default)]
    pub nat_connections: u64,
    /// Every backend is unhealthy and all of them take traffic.
    pub fail_open: bool,
    pub counters: Counters,
    pub flow_hits: u64,
    pub flow_misses: u64,
    /// TCP packets without SYN that found no flow entry (evicted, or begun elsewhere).
    #[serde(default)]
    pub midflow_misses: u64,
    pub backends: Vec<BackendStatus>,
    /// Fingerprint of the VIP's Maglev table (hex): equal on hosts that pick the same
    /// backends for the same flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_fingerprint: Option<String>,
    /// With `[announce]`: whether this host announces the VIP, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::Why>,
}

fn dsr() -> Forwarding {
    Forwarding::Dsr
}

/// The use of one SNAT address, as the sweeper last counted it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnatStatus {
    pub address: IpAddr,
    /// Connections using it (one port each, per target).
    pub ports_in_use: u64,
    /// Ports it can give each target (`dataplane.snat_ports`).
    pub ports_per_target: u64,
    /// The most ports it uses towards one target, and which.
    pub busiest_target: Option<Target>,
    pub busiest_ports: u64,
}

/// A named global counter (packets by XDP action).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamedCount {
    pub name: String,
    pub value: u64,
}

/// Packets counted under one reason. In JSON: `{"name", "value", "kind"}`, the kind being
/// `forward`, `pass`, `drop` or `reply` (what happened to the packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: Reason,
    pub value: u64,
}

impl ReasonCount {
    pub fn kind(&self) -> Kind {
        self.reason.kind()
    }
}

#[derive(Serialize, Deserialize)]
struct ReasonCountJson {
    name: String,
    value: u64,
    #[serde(default)]
    kind: String,
}

impl Serialize for ReasonCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReasonCountJson {
            name: self.reason.name().to_owned(),
            value: self.value,
            kind: self.reason.kind().name().to_owned(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ReasonCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ReasonCountJson::deserialize(d)?;
        let reason = Reason::ALL
            .into_iter()
            .find(|r| r.name() == j.name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {:?}", j.name)))?;
        Ok(Self {
            reason,
            value: j.value,
        })
    }
}

/// How the balancer is attached, in JSON: `native`, `generic`, or (when an earlier run
/// attached it and the mode is unknown) `as attached by an earlier run`.
mod attached {
    use super::*;
    const UNKNOWN: &str = "as attached by an earlier run";

    pub fn serialize<S: serde::Serializer>(m: &Option<XdpMode>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.map_or(UNKNOWN, |m| m.as_str()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<XdpMode>, D::Error> {
        Ok(String::deserialize(d)?.parse().ok())
    }
}

/// Everything the daemon knows, read at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch when it was taken (for rates).
    pub taken_at_ms: u64,
    pub interface: String,
    /// `Native` or `Generic`; `None` when an earlier run attached it (mode unknown).
    #[serde(with = "attached")]
    pub xdp_mode: Option<XdpMode>,
    pub vips: Vec<VipStatus>,
    /// Packets by XDP action.
    pub actions: Vec<NamedCount>,
    /// Packets by reason (forwarded, and every pass/drop reason).
    pub reasons: Vec<ReasonCount>,
    /// Recent transitions, oldest first.
    pub events: Vec<Event>,
    /// The interface driver's counters of XDP frames it could not transmit (`XDP_TX` and
    /// redirects dropped at its ring; the balancer's own counters cannot see these).
    #[serde(default)]
    pub xdp_transmit_errors: Vec<NamedCount>,
    /// The flow table's size and each CPU's share of it.
    #[serde(default)]
    pub flow_table: FlowTableStatus,
    /// With `[announce]`: the routing table and what is installed in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
    /// Every health check of every VIP fails at once: probably this host's fault.
    #[serde(default)]
    pub all_checks_failing: bool,
    /// Health checks this host could not make (out of file descriptors, memory or local
    /// ports), since the daemon started; they count neither for nor against backends.
    #[serde(default)]
    pub health_check_local_errors: u64,
    /// SNAT addresses and their use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<SnatStatus>,
}

/// The flow table's capacity. Its LRU lists are per CPU (`BPF_F_NO_COMMON_LRU`, so that
/// inserts on different CPUs do not contend): the entries are split evenly between the
/// possible CPUs, and a CPU's new flows evict the least recently used of its own share.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// `dataplane.flow_table_entries`: the flows it holds when they arrive on every CPU.
    pub entries: u32,
    /// The possible CPUs it is split between.
    pub cpus: u32,
    /// What one CPU holds: the capacity when every new flow arrives on one CPU.
    pub per_cpu: u32,
}

/// The host's announcing, as `xlb status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    pub protocol: u8,
    /// `xlb announce withdraw` is in force.
    pub withdrawn: bool,
    /// The addresses (VIPs' and SNAT) whose route is installed now.
    pub installed: Vec<IpAddr>,
    /// Each SNAT address, and why it is announced or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<SnatAnnounce>,
}

/// A SNAT address's announcement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnatAnnounce {
    pub address: IpAddr,
    pub why: crate::announce::SnatWhy,
}

/// Errors of talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the xlb daemon at {path}: {source} (is `xlb run` running? use --socket if it listens elsewhere)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the xlb daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the xlb daemon sent an answer this xlb does not understand: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Starts a trace (`Request::Trace`): returns the daemon's first answer and, if it is ok,
/// the stream of the answers that follow, one per line (read without a timeout: a trace
/// waits for packets).
pub fn trace(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<
    (
        Response,
        impl Iterator<Item = Result<Response, ClientError>>,
    ),
    ClientError,
> {
    let (first, reader) = send(socket, request, timeout)?;
    reader.get_ref().set_read_timeout(None)?;
    let rest = reader.lines().map(|l| Ok(serde_json::from_str(&l?)?));
    Ok((first, rest))
}

/// Sends one request and waits for the answer (up to `timeout`).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    Ok(send(socket, request, timeout)?.0)
}

/// Connects, sends `request` and reads the first answer (each step within `timeout`);
/// returns it with the connection, for the answers that may follow.
fn send(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(Response, BufReader<UnixStream>), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    Ok((serde_json::from_str(&answer)?, reader))
}
