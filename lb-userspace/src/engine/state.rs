//! What the controller knows about the running balancer: what the maps hold (as written
//! or adopted) and the facts that live only in the controller (health verdicts, drain
//! marks, deregistration deadlines).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::{Instant, SystemTime},
};

use lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, Backend};

use crate::{
    config::{BackendConfig, Target, VipConfig, VipId},
    dataplane::Limits,
    words::words,
};

words! {
    /// What the health checks say about a backend.
    pub enum Health expecting "unknown, healthy or unhealthy" {
        /// No verdict yet (just added). Takes traffic only while no backend of its VIP is
        /// healthy.
        Unknown = "unknown",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
    }
}

words! {
    /// A backend's state as operators see it (`xlb status`, `xlb_backend_state`).
    pub enum BackendState expecting "active, drained, deregistering, failing or down" {
        /// Takes new flows (when healthy) and keeps its flows.
        Active = "active",
        /// Drained by an operator: keeps its flows, takes no new ones.
        Drained = "drained",
        /// Removed: keeps its flows until its deregistration delay ends.
        Deregistering = "deregistering",
        /// Unhealthy on a VIP with `on_unhealthy = "keep"`: keeps its flows, takes no new
        /// ones.
        Failing = "failing",
        /// Down (unhealthy): its flows move to other backends.
        Down = "down",
    }
}

/// The controller's view of one backend of one VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRecord {
    pub config: BackendConfig,
    /// Backend id (index of `BACKENDS` and `BACKEND_STATS`).
    pub id: u32,
    pub generation: u32,
    pub health: Health,
    /// Why the health last changed ("3 consecutive timeouts").
    pub health_reason: String,
    pub health_since: SystemTime,
    /// Drained by an operator: no new flows until undrained.
    pub drained: bool,
    /// Removed: serves its existing flows until this deadline, then is deleted.
    pub removing: Option<Instant>,
    /// Whether it is in the VIP's current Maglev table.
    pub in_table: bool,
    /// Whether it has been in a table since it got its id (so it may have flows).
    pub ever_served: bool,
    /// What `BACKENDS[id]` holds.
    pub entry: Backend,
    /// In slow start: its share of new flows ramps up (see [`Ramp`]).
    pub ramp: Option<Ramp>,
    /// One of the backends its VIP started with (created with it, or found at a daemon
    /// start): their first verdicts all arrive together, so none of them starts slowly.
    pub initial: bool,
}

/// Slow start of a newly healthy backend: its weight in the table grows in
/// [`RAMP_STEPS`] steps from a tenth to all of it over the VIP's `slow_start`, one table
/// rebuild per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ramp {
    pub started: Instant,
    /// Tenths of the weight in the table now (1 to RAMP_STEPS - 1).
    pub step: u8,
}

/// Steps of a slow start.
pub const RAMP_STEPS: u8 = 10;

impl Ramp {
    /// The step at `now` of a ramp of `length` that began at `started`; `RAMP_STEPS` when
    /// it is over.
    pub fn step_at(started: Instant, length: std::time::Duration, now: Instant) -> u8 {
        if length.is_zero() {
            return RAMP_STEPS;
        }
        let done = now.saturating_duration_since(started).as_secs_f64() / length.as_secs_f64();
        ((done * f64::from(RAMP_STEPS)).floor() as u8).clamp(1, RAMP_STEPS)
    }
}

impl BackendRecord {
    /// Administratively allowed to take new flows (neither drained nor being removed).
    pub fn admin_active(&self) -> bool {
        !self.drained && self.removing.is_none()
    }

    /// The state shown to operators.
    pub fn state(&self) -> BackendState {
        if self.removing.is_some() {
            BackendState::Deregistering
        } else if self.drained {
            BackendState::Drained
        } else if self.entry.state == BACKEND_DOWN {
            BackendState::Down
        } else if self.health == Health::Unhealthy && !self.in_table {
            // Out of the table but still in the data plane: its flows stay.
            if self.entry.state == BACKEND_DRAINING {
                BackendState::Failing
            } else {
                BackendState::Down
            }
        } else {
            BackendState::Active
        }
    }

    /// The weight it has in the table now: its configured weight, or in slow start the
    /// share the ramp has reached.
    pub fn table_weight(&self) -> u32 {
        match self.ramp {
            Some(r) => ((u64::from(self.config.weight) * u64::from(r.step) / u64::from(RAMP_STEPS))
                as u32)
                .max(1),
            None => self.config.weight,
        }
    }

    /// In slow start: the share of its weight it takes now, in percent.
    pub fn ramp_percent(&self) -> Option<u8> {
        self.ramp.map(|r| r.step * (100 / RAMP_STEPS))
    }

    /// Whether the data plane keeps (and, in the table, takes) flows for it.
    pub fn forwards(&self) -> bool {
        matches!(self.entry.state, BACKEND_ACTIVE | BACKEND_DRAINING)
    }
}

/// The controller's view of one VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct VipRecord {
    /// The VIP as configured. Its `backends` are the configured ones; `backends` below
    /// also holds removed ones serving out their deregistration delay.
    pub config: VipConfig,
    /// VIP index (slot of `VIP_STATS`, owner of tables `2 index` and `2 index + 1`).
    pub index: u32,
    /// The table in use.
    pub table: u32,
    /// Fingerprint of the table in use (see [`fingerprint`]); `None` when unknown (a new
    /// VIP's table slot may hold an earlier VIP's table).
    pub fingerprint: Option<u64>,
    /// `VipInfo::flags` as written.
    pub flags_written: u32,
    pub backends: BTreeMap<Target, BackendRecord>,
    /// Every eligible backend is unhealthy, so all of them take traffic (fail-open).
    pub fail_open: bool,
    /// Rebuilt from the maps and not yet matched with a configuration (its name,
    /// deregistration delay and health settings are placeholders until then).
    pub adopted: bool,
}

/// The whole model: every VIP, and per backend id the generation it last had.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub limits: Limits,
    /// The `CONFIG` map's value.
    pub map_config: lb_common::DataplaneConfig,
    pub vips: BTreeMap<VipId, VipRecord>,
    /// Generation last used by each backend id (index = id).
    pub generations: Vec<u32>,
    /// Every health-checked backend of every VIP fails its checks (and there are at least
    /// two): the likely cause is this host, not the backends.
    pub all_checks_failing: bool,
    /// What `SNAT_POOL` holds, by slot (`None`: empty).
    pub snat: Vec<Option<IpAddr>>,
}

impl State {
    /// Nothing written yet, for maps of these sizes.
    pub fn empty(limits: Limits) -> Self {
        Self {
            limits,
            map_config: lb_common::DataplaneConfig::default(),
            vips: BTreeMap::new(),
            generations: vec![0; limits.max_backends as usize],
            all_checks_failing: false,
            snat: vec![None; lb_common::SNAT_SLOTS as usize],
        }
    }

    /// Backend ids in use (by configured and deregistering backends).
    pub fn backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| v.backends.values().map(|b| b.id))
            .collect()
    }

    /// VIP indexes in use.
    pub fn vip_indexes(&self) -> BTreeSet<u32> {
        self.vips.values().map(|v| v.index).collect()
    }

    /// How many VIPs use `addr` (the `VIP_ADDRS` count).
    pub fn vips_on(&self, addr: IpAddr) -> u32 {
        self.vips.keys().filter(|v| v.address == addr).count() as u32
    }
}

/// A fingerprint of a Maglev table that is the same on every host that serves the same
/// backends the same way: a hash (FNV-1a, stable across builds) of the backend address in
/// every slot, so it does not depend on the backend ids a host happened to give.
pub fn fingerprint(table: &[u32], address_of: impl Fn(u32) -> Option<Target>) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
        }
    };
    let mut last: Option<(u32, [u8; 16], u16)> = None;
    for &id in table {
        let (bytes, port) = match last {
            Some((i, b, p)) if i == id => (b, p),
            _ => {
                let t = address_of(id);
                let b = match t.map(|t| t.address) {
                    Some(IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
                    Some(IpAddr::V6(a)) => a.octets(),
                    None => [0; 16],
                };
                let p = t.map_or(0, |t| t.port);
                last = Some((id, b, p));
                (b, p)
            }
        };
        eat(&bytes);
        // A NAT target's port too (DSR backends have none: their fingerprints are as
        // before ports existed).
        if port != 0 {
            eat(&port.to_be_bytes());
        }
    }
    h
}

/// One line of the transition log (`xlb status` shows the recent ones).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub at: SystemTime,
    pub vip: String,
    pub backend: Option<Target>,
    pub message: String,
    /// What made the change: "SIGHUP", "xlb apply", "health check", ...
    #[serde(default)]
    pub origin: String,
}

/// A change the controller made, for the log, events and replies.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The outer source addresses of encapsulated packets.
    Sources,
    /// The SNAT addresses or ports of NAT VIPs.
    Snat,
    /// A VIP's forwarding (DSR, NAT) or NAT settings changed.
    Forwarding {
        vip: VipId,
    },
    VipAdded {
        vip: VipId,
        backends: usize,
    },
    VipRemoved {
        vip: VipId,
    },
    HashChanged {
        vip: VipId,
        from: crate::config::HashMode,
        to: crate::config::HashMode,
    },
    /// Name or deregistration delay.
    VipSettings {
        vip: VipId,
    },
    BackendAdded {
        vip: VipId,
        backend: Target,
    },
    /// Removed from the configuration: keeps its flows for `delay`.
    BackendDeregistering {
        vip: VipId,
        backend: Target,
        delay: std::time::Duration,
    },
    /// Removed, and gone at once: it had never been healthy, so it had no flows to keep.
    BackendRemovedAtOnce {
        vip: VipId,
        backend: Target,
    },
    BackendReadded {
        vip: VipId,
        backend: Target,
    },
    /// The deregistration delay is over.
    BackendRemoved {
        vip: VipId,
        backend: Target,
    },
    Weight {
        vip: VipId,
        backend: Target,
        from: u32,
        to: u32,
    },
    /// The health-check settings of a backend changed (probes restart with them).
    HealthCheck {
        vip: VipId,
        backend: Target,
    },
    Health {
        vip: VipId,
        backend: Target,
        from: Health,
        to: Health,
        reason: String,
    },
    Drained {
        vip: VipId,
        backend: Target,
        drained: bool,
    },
    FailOpen {
        vip: VipId,
        on: bool,
    },
    /// Every health check of every VIP fails, or no longer does.
    AllChecksFailing {
        on: bool,
    },
}

impl Change {
    /// The VIP and backend it is about.
    pub fn subject(&self) -> (Option<VipId>, Option<Target>) {
        use Change::*;
        match self {
            Sources | Snat | AllChecksFailing { .. } => (None, None),
            Forwarding { vip } => (Some(*vip), None),
            VipAdded { vip, .. }
            | VipRemoved { vip }
            | HashChanged { vip, .. }
            | VipSettings { vip }
            | FailOpen { vip, .. } => (Some(*vip), None),
            BackendAdded { vip, backend }
            | BackendDeregistering { vip, backend, .. }
            | BackendRemovedAtOnce { vip, backend }
            | BackendReadded { vip, backend }
            | BackendRemoved { vip, backend }
            | Weight { vip, backend, .. }
            | HealthCheck { vip, backend }
            | Health { vip, backend, .. }
            | Drained { vip, backend, .. } => (Some(*vip), Some(*backend)),
        }
    }

    /// The change as the event log words it (the VIP and backend are shown beside it).
    pub fn event_text(&self) -> String {
        use Change::*;
        match self {
            Sources => "outer source addresses updated".to_owned(),
            Snat => "SNAT addresses or ports updated".to_owned(),
            Forwarding { .. } => "forwarding settings updated".to_owned(),
            VipAdded { backends, .. } => format!("VIP added with {backends} backends"),
            VipRemoved { .. } => "VIP removed".to_owned(),
            HashChanged { from, to, .. } => format!("hash {from} -> {to}"),
            VipSettings { .. } => "settings updated".to_owned(),
            BackendAdded { .. } => "backend added".to_owned(),
            BackendDeregistering { delay, .. } => {
                format!("deregistering: existing flows stay for up to {delay:?}")
            }
            BackendRemovedAtOnce { .. } => {
                "removed at once: it had never been healthy, so it had no flows to keep".to_owned()
            }
            BackendReadded { .. } => "re-added".to_owned(),
            BackendRemoved { .. } => "deregistration delay over: backend removed".to_owned(),
            Weight { from, to, .. } => format!("weight {from} -> {to}"),
            HealthCheck { .. } => "health-check settings changed; probes restart".to_owned(),
            Health {
                from, to, reason, ..
            } => format!("{from} -> {to}: {reason}"),
            Drained { drained: true, .. } => {
                "drained: no new flows, existing flows stay".to_owned()
            }
            Drained { drained: false, .. } => "undrained: takes new flows again".to_owned(),
            FailOpen { on: true, .. } => {
                "FAIL-OPEN: every backend is unhealthy; traffic goes to all of them".to_owned()
            }
            FailOpen { on: false, .. } => "fail-open over: a backend is healthy again".to_owned(),
            AllChecksFailing { on: true } => "every health check of every VIP fails at once: \
                the likely cause is this host (its link, its routes, its open-file limit), not the backends"
                .to_owned(),
            AllChecksFailing { on: false } => "health checks pass again on some backend".to_owned(),
        }
    }
}

/// The change as one line for a reply (`VIP 203.0.113.10:80/tcp: backend ... added`).
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Change::*;
        match self {
            Sources => f.write_str("outer source addresses updated"),
            Snat => f.write_str("SNAT addresses or ports updated"),
            Forwarding { vip } => write!(f, "VIP {vip}: forwarding settings updated"),
            VipAdded { vip, backends } => write!(f, "VIP {vip} added with {backends} backends"),
            VipRemoved { vip } => write!(f, "VIP {vip} removed"),
            HashChanged { vip, from, to } => write!(f, "VIP {vip}: hash {from} -> {to}"),
            VipSettings { vip } => write!(f, "VIP {vip}: settings updated"),
            BackendAdded { vip, backend } => write!(f, "VIP {vip}: backend {backend} added"),
            BackendDeregistering {
                vip,
                backend,
                delay,
            } => write!(
                f,
                "VIP {vip}: backend {backend} removed; draining for {delay:?}"
            ),
            BackendRemovedAtOnce { vip, backend } => write!(
                f,
                "VIP {vip}: backend {backend} removed (it had never been healthy: no flows to drain)"
            ),
            BackendReadded { vip, backend } => write!(f, "VIP {vip}: backend {backend} re-added"),
            BackendRemoved { vip, backend } => write!(f, "VIP {vip}: backend {backend} removed"),
            Weight {
                vip,
                backend,
                from,
                to,
            } => write!(f, "VIP {vip}: backend {backend} weight {from} -> {to}"),
            HealthCheck { vip, backend } => write!(
                f,
                "VIP {vip}: backend {backend} health-check settings changed"
            ),
            Health {
                vip,
                backend,
                from,
                to,
                reason,
            } => write!(f, "VIP {vip}: backend {backend} {from} -> {to}: {reason}"),
            Drained {
                vip,
                backend,
                drained,
            } => write!(
                f,
                "VIP {vip}: backend {backend} {}",
                if *drained { "drained" } else { "undrained" }
            ),
            FailOpen { vip, on } => write!(
                f,
                "VIP {vip}: {}",
                if *on { "fail-open" } else { "fail-open over" }
            ),
            AllChecksFailing { .. } => f.write_str(&self.event_text()),
        }
    }
}
