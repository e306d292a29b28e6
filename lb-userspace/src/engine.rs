//! The controller's model of the running load balancer, and every change to it.
//!
//! [`Engine`] owns the loaded [`Balancer`] and knows, for each VIP, its backends with their
//! ids, weights, health and administrative state. Every change goes through [`Engine::apply`]
//! (a whole desired configuration, diffed against what runs) or through the runtime
//! operations built on it, and ends in [`Engine::sync_vip`], which decides which backends
//! take new flows, writes a new Maglev table into the VIP's spare slot and switches to it
//! with one map write, then updates the backends' states in an order that never lets the
//! data plane see a table naming a backend it cannot use.
//!
//! Everything needed to rebuild this model lives in the maps themselves (`VIPS`, and the
//! controller's fields of `BACKENDS`), so a restarted daemon adopts the pinned state with
//! [`Engine::adopt`] and changes nothing that its configuration does not change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use lb_common::{
    ADMIN_F_DRAINED, ADMIN_F_REMOVING, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING,
    BACKEND_UNUSED, Backend, CFG_F_SOURCE_V4, CFG_F_SOURCE_V6, CFG_F_WILDCARD_VIPS,
    DataplaneConfig as MapConfig, VIP_F_HASH_SOURCE, VipInfo, VipKey, addr_to_map,
};

use crate::{
    config::{BackendConfig, Config, ConfigError, HashMode, HealthCheck, VipConfig, VipId},
    dataplane::{Balancer, DataplaneError, Limits},
    maglev,
};

/// Seed of every Maglev table: fixed, so every host builds the same tables.
pub const MAGLEV_SEED: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no VIP {0}")]
    NoSuchVip(VipId),
    #[error("VIP {vip} has no backend {backend}")]
    NoSuchBackend { vip: VipId, backend: IpAddr },
    #[error(
        "{what} cannot change while running ({from} -> {to}); restart the daemon after `xlb teardown` (this drops remembered flows)"
    )]
    Immutable {
        what: &'static str,
        from: String,
        to: String,
    },
    #[error("building the Maglev table of VIP {vip} failed: {message}")]
    Maglev { vip: VipId, message: String },
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What the health checks say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No verdict yet (just added). Takes traffic only while no backend of its VIP is
    /// healthy.
    Unknown,
    Healthy,
    Unhealthy,
}

/// The controller's view of one backend of one VIP.
#[derive(Clone, Debug)]
pub struct BackendState {
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
    /// The state last written to the data plane (`BACKEND_*`).
    pub dataplane_state: u8,
}

impl BackendState {
    /// Administratively allowed to take new flows (neither drained nor being removed).
    pub fn admin_active(&self) -> bool {
        !self.drained && self.removing.is_none()
    }
}

/// The controller's view of one VIP.
#[derive(Clone, Debug)]
pub struct VipState {
    /// The VIP as configured. Its `backends` are the configured ones; `backends` below
    /// also holds removed ones serving out their deregistration delay.
    pub config: VipConfig,
    /// VIP id (index of `VIP_STATS`, owner of tables `2 id` and `2 id + 1`).
    pub id: u32,
    /// The table in use.
    pub table: u32,
    pub backends: BTreeMap<IpAddr, BackendState>,
    /// Every eligible backend is unhealthy, so all of them take traffic (fail-open).
    pub fail_open: bool,
    /// Rebuilt from the maps and not yet matched with a configuration (its name,
    /// deregistration delay and health settings are placeholders until then).
    pub adopted: bool,
}

/// One line of the transition log (`xlb status` shows the recent ones).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub at: SystemTime,
    pub vip: String,
    pub backend: Option<IpAddr>,
    pub message: String,
}

/// Events kept for `xlb status`.
const EVENTS_KEPT: usize = 200;

/// The running load balancer as the controller sees it.
pub struct Engine {
    lb: Balancer,
    dataplane: crate::config::DataplaneConfig,
    vips: BTreeMap<VipId, VipState>,
    /// Generation last used by each backend id (index = id).
    generations: Vec<u32>,
    /// Backend ids in use.
    backend_ids: BTreeSet<u32>,
    /// VIP ids in use.
    vip_ids: BTreeSet<u32>,
    events: std::collections::VecDeque<Event>,
}

impl Engine {
    /// An engine over a freshly loaded (or re-opened) balancer, with no VIP yet.
    pub fn new(lb: Balancer, dataplane: crate::config::DataplaneConfig) -> Self {
        let n = lb.limits().max_backends as usize;
        Self {
            lb,
            dataplane,
            vips: BTreeMap::new(),
            generations: vec![0; n],
            backend_ids: BTreeSet::new(),
            vip_ids: BTreeSet::new(),
            events: std::collections::VecDeque::new(),
        }
    }

    pub fn balancer(&self) -> &Balancer {
        &self.lb
    }

    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.lb
    }

    pub fn vips(&self) -> &BTreeMap<VipId, VipState> {
        &self.vips
    }

    pub fn dataplane_config(&self) -> &crate::config::DataplaneConfig {
        &self.dataplane
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// The configuration that describes what runs now (runtime changes included; removed
    /// backends still draining are not in it).
    pub fn desired(&self, daemon: &crate::config::DaemonConfig) -> Config {
        Config {
            dataplane: self.dataplane.clone(),
            daemon: daemon.clone(),
            vips: self.vips.values().map(|v| v.config.clone()).collect(),
        }
    }

    fn event(&mut self, vip: &VipConfig, backend: Option<IpAddr>, message: String) {
        match backend {
            Some(b) => tracing::info!(vip = %vip.name, backend = %b, "{message}"),
            None => tracing::info!(vip = %vip.name, "{message}"),
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: SystemTime::now(),
            vip: vip.name.clone(),
            backend,
            message,
        });
    }

    /// Reads the VIPs and backends already in the (pinned) maps, so that the following
    /// [`Engine::apply`] changes only what the configuration changes.
    pub fn adopt(&mut self) -> Result<usize> {
        let limits = self.lb.limits();
        let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for id in 1..limits.max_backends {
            let b = self.lb.backend(id)?;
            self.generations[id as usize] = b.generation;
            if b.state != BACKEND_UNUSED {
                by_vip.entry(b.vip).or_default().push((id, b));
            }
        }
        let mut adopted = 0;
        for (key, info) in self.lb.vips()? {
            let Some(vid) = VipId::from_key(&key) else {
                continue;
            };
            let hash = if info.flags & VIP_F_HASH_SOURCE != 0 {
                HashMode::SourceAddress
            } else {
                HashMode::FiveTuple
            };
            let mut config = VipConfig {
                name: vid.to_string(),
                id: vid,
                hash,
                deregistration_delay: crate::config::DEFAULT_DEREGISTRATION_DELAY,
                health: HealthCheck::default_for_port(if vid.port == 0 { 80 } else { vid.port }),
                backends: Vec::new(),
            };
            let mut backends = BTreeMap::new();
            for (id, b) in by_vip.remove(&info.index).unwrap_or_default() {
                let Some(addr) = b.ip() else { continue };
                let bc = BackendConfig {
                    address: addr,
                    weight: b.weight,
                    health: config.health.clone(),
                };
                let removing = b.admin & ADMIN_F_REMOVING != 0;
                if !removing {
                    config.backends.push(bc.clone());
                }
                self.backend_ids.insert(id);
                backends.insert(
                    addr,
                    BackendState {
                        config: bc,
                        id,
                        generation: b.generation,
                        health: if b.state == BACKEND_DOWN {
                            Health::Unhealthy
                        } else {
                            Health::Healthy
                        },
                        health_reason: "state before the daemon restarted".to_owned(),
                        health_since: SystemTime::now(),
                        drained: b.admin & ADMIN_F_DRAINED != 0,
                        removing: removing.then(|| Instant::now() + config.deregistration_delay),
                        in_table: false,
                        dataplane_state: b.state,
                    },
                );
            }
            self.vip_ids.insert(info.index);
            let mut vip = VipState {
                config,
                id: info.index,
                table: info.table,
                backends,
                fail_open: false,
                adopted: true,
            };
            // Which backends the live table names.
            let table = self.lb.read_table(info.table)?;
            let named: BTreeSet<u32> = table.iter().copied().collect();
            for b in vip.backends.values_mut() {
                b.in_table = named.contains(&b.id);
            }
            vip.fail_open = vip
                .backends
                .values()
                .any(|b| b.in_table && b.health == Health::Unhealthy);
            self.vips.insert(vid, vip);
            adopted += 1;
        }
        // Backends whose VIP is gone (a crash between two writes): free them.
        for (_, orphans) in by_vip {
            for (id, mut b) in orphans {
                b.state = BACKEND_UNUSED;
                b.admin = 0;
                self.lb.set_backend(id, &b)?;
            }
        }
        // VIP_ADDRS (and the address filter that follows it) after a crash between a VIP's
        // entry and its address count: recounted from the VIPs, stale addresses dropped.
        let mut addresses: std::collections::BTreeSet<IpAddr> =
            self.vips.keys().map(|v| v.address).collect();
        for (key, _) in self.lb.vip_addresses()? {
            addresses.insert(key.ip());
        }
        for addr in addresses {
            self.update_vip_address(addr)?;
        }
        Ok(adopted)
    }

    /// Makes the running state match `config`: VIPs added, removed or changed, backends
    /// added (health unknown until checked), removed (serving out their deregistration
    /// delay) or reweighted. VIPs that do not change keep their tables and flows.
    /// Validates everything first: on error nothing has changed.
    pub fn apply(&mut self, config: &Config) -> Result<Vec<String>> {
        self.check(config)?;
        let mut changes = Vec::new();
        let now = Instant::now();

        // Outer source addresses and the wildcard flag.
        let mut cfg = MapConfig::default();
        if let Some(a) = config.dataplane.source_v4 {
            cfg.source_v4 = a.octets();
            cfg.flags |= CFG_F_SOURCE_V4;
        }
        if let Some(a) = config.dataplane.source_v6 {
            cfg.source_v6 = a.octets();
            cfg.flags |= CFG_F_SOURCE_V6;
        }
        // Set before any port-0 VIP is added; cleared after the last one is removed.
        let wildcard_after = config.vips.iter().any(|v| v.id.port == 0);
        let wildcard_now = self.vips.keys().any(|v| v.port == 0);
        if wildcard_after || wildcard_now {
            cfg.flags |= CFG_F_WILDCARD_VIPS;
        }
        if self.lb.config()? != cfg {
            self.lb.set_config(&cfg)?;
            if self.dataplane.source_v4 != config.dataplane.source_v4
                || self.dataplane.source_v6 != config.dataplane.source_v6
            {
                changes.push("outer source addresses updated".to_owned());
            }
        }
        self.dataplane = config.dataplane.clone();

        let wanted: BTreeSet<VipId> = config.vips.iter().map(|v| v.id).collect();
        let gone: Vec<VipId> = self
            .vips
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for id in gone {
            self.remove_vip(&id)?;
            changes.push(format!("VIP {id} removed"));
        }
        for vc in &config.vips {
            match self.vips.contains_key(&vc.id) {
                false => {
                    self.add_vip(vc, now)?;
                    changes.push(format!(
                        "VIP {} added with {} backends",
                        vc.id,
                        vc.backends.len()
                    ));
                }
                true => changes.extend(self.update_vip(vc, now)?),
            }
        }
        if !wildcard_after && wildcard_now {
            cfg.flags &= !CFG_F_WILDCARD_VIPS;
            self.lb.set_config(&cfg)?;
        }
        Ok(changes)
    }

    /// Validation that needs the running state: capacity for the new ids, and settings that
    /// cannot change without new maps.
    fn check(&self, config: &Config) -> Result<()> {
        config.check()?;
        let cur = &self.dataplane;
        let limits: Limits = config.dataplane.limits;
        for (what, from, to) in [
            (
                "dataplane.maglev_table_size",
                cur.limits.maglev_size,
                limits.maglev_size,
            ),
            (
                "dataplane.flow_table_entries",
                cur.limits.flow_table_entries,
                limits.flow_table_entries,
            ),
            ("dataplane.max_vips", cur.limits.max_vips, limits.max_vips),
            (
                "dataplane.max_backends",
                cur.limits.max_backends,
                limits.max_backends,
            ),
        ] {
            if from != to {
                return Err(EngineError::Immutable {
                    what,
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
        }
        if let (Some(from), Some(to)) = (&cur.interface, &config.dataplane.interface)
            && from != to
        {
            return Err(EngineError::Immutable {
                what: "dataplane.interface",
                from: from.clone(),
                to: to.clone(),
            });
        }
        // Backend ids: every configured backend, plus removed ones still draining.
        let mut needed = 0usize;
        for vc in &config.vips {
            let configured: BTreeSet<IpAddr> = vc.backends.iter().map(|b| b.address).collect();
            needed += configured.len();
            if let Some(v) = self.vips.get(&vc.id) {
                needed += v
                    .backends
                    .keys()
                    .filter(|a| !configured.contains(a))
                    .count();
            }
        }
        if needed >= limits.max_backends as usize {
            return Err(ConfigError {
                field: "dataplane.max_backends".to_owned(),
                message: format!(
                    "{needed} backends (including removed ones still draining) need ids but max_backends is {}",
                    limits.max_backends
                ),
            }
            .into());
        }
        Ok(())
    }

    fn alloc_vip_id(&mut self) -> u32 {
        let id = (0..)
            .find(|i| !self.vip_ids.contains(i))
            .expect("checked against max_vips");
        self.vip_ids.insert(id);
        id
    }

    fn alloc_backend_id(&mut self) -> (u32, u32) {
        let id = (1..)
            .find(|i| !self.backend_ids.contains(i))
            .expect("checked against max_backends");
        self.backend_ids.insert(id);
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        (id, generation)
    }

    fn new_backend(&mut self, bc: &BackendConfig, health: Health) -> Result<BackendState> {
        let (id, generation) = self.alloc_backend_id();
        self.lb.reset_backend_stats(id)?;
        Ok(BackendState {
            config: bc.clone(),
            id,
            generation,
            health,
            health_reason: match health {
                Health::Healthy => "no health check".to_owned(),
                _ => "added; waiting for the first health check".to_owned(),
            },
            health_since: SystemTime::now(),
            drained: false,
            removing: None,
            in_table: false,
            dataplane_state: BACKEND_UNUSED,
        })
    }

    fn add_vip(&mut self, vc: &VipConfig, _now: Instant) -> Result<()> {
        let id = self.alloc_vip_id();
        self.lb.reset_vip_stats(id)?;
        let mut backends = BTreeMap::new();
        for bc in &vc.backends {
            let health = initial_health(&bc.health);
            backends.insert(bc.address, self.new_backend(bc, health)?);
        }
        let vip = VipState {
            config: vc.clone(),
            id,
            table: 2 * id,
            backends,
            fail_open: false,
            adopted: false,
        };
        self.vips.insert(vc.id, vip);
        // The table is written before the VIP entry exists, so the first packet finds it.
        self.sync_vip(&vc.id)?;
        let key = vc.id.key();
        let table = self.vips[&vc.id].table;
        self.lb.set_vip(
            &key,
            &VipInfo {
                index: id,
                table,
                flags: vip_flags(vc),
                reserved: 0,
            },
        )?;
        self.update_vip_address(vc.id.address)?;
        let n = vc.backends.len();
        self.event(vc, None, format!("VIP added with {n} backends"));
        Ok(())
    }

    fn remove_vip(&mut self, id: &VipId) -> Result<()> {
        let vip = self.vips.remove(id).expect("caller checked");
        self.lb.remove_vip(&id.key())?;
        // Released at once: remembered flows are found by their backend, before any VIP
        // lookup, so a released id is what stops them.
        for b in vip.backends.values() {
            self.release_backend(b)?;
        }
        self.update_vip_address(id.address)?;
        self.vip_ids.remove(&vip.id);
        self.event(&vip.config, None, "VIP removed".to_owned());
        Ok(())
    }

    /// Marks a backend id unused and frees it.
    fn release_backend(&mut self, b: &BackendState) -> Result<()> {
        let mut entry = self.lb.backend(b.id)?;
        entry.state = BACKEND_UNUSED;
        entry.admin = 0;
        self.lb.set_backend(b.id, &entry)?;
        self.backend_ids.remove(&b.id);
        Ok(())
    }

    /// Keeps `VIP_ADDRS` (how many VIPs each address has) right for `addr`.
    fn update_vip_address(&mut self, addr: IpAddr) -> Result<()> {
        let n = self.vips.keys().filter(|v| v.address == addr).count() as u32;
        let (a, family) = addr_to_map(addr);
        self.lb.set_vip_address(
            &VipKey {
                addr: a,
                port: 0,
                proto: 0,
                family,
            },
            n,
        )?;
        Ok(())
    }

    fn update_vip(&mut self, vc: &VipConfig, now: Instant) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        let old = self.vips[&vc.id].config.clone();
        if old.hash != vc.hash {
            let key = vc.id.key();
            let info = self.lb.vip(&key)?.unwrap_or_default();
            self.lb.set_vip(
                &key,
                &VipInfo {
                    flags: vip_flags(vc),
                    ..info
                },
            )?;
            changes.push(format!("VIP {}: hash {} -> {}", vc.id, old.hash, vc.hash));
        }
        let configured: BTreeMap<IpAddr, &BackendConfig> =
            vc.backends.iter().map(|b| (b.address, b)).collect();
        let existing: Vec<IpAddr> = self.vips[&vc.id].backends.keys().copied().collect();
        // Removed from the configuration: serve out the deregistration delay.
        for addr in &existing {
            if !configured.contains_key(addr) {
                let vip = self.vips.get_mut(&vc.id).expect("exists");
                let b = vip.backends.get_mut(addr).expect("exists");
                if b.removing.is_none() {
                    b.removing = Some(now + vc.deregistration_delay);
                    changes.push(format!(
                        "VIP {}: backend {addr} removed; draining for {:?}",
                        vc.id, vc.deregistration_delay
                    ));
                    let msg = format!(
                        "deregistering: existing flows stay for up to {:?}",
                        vc.deregistration_delay
                    );
                    self.event(vc, Some(*addr), msg);
                }
            }
        }
        for (addr, bc) in &configured {
            let vip = self.vips.get_mut(&vc.id).expect("exists");
            match vip.backends.get_mut(addr) {
                Some(b) => {
                    if b.removing.take().is_some() {
                        changes.push(format!("VIP {}: backend {addr} re-added", vc.id));
                    }
                    if b.config.weight != bc.weight {
                        changes.push(format!(
                            "VIP {}: backend {addr} weight {} -> {}",
                            vc.id, b.config.weight, bc.weight
                        ));
                    }
                    if b.config.health != bc.health
                        && bc.health.kind == crate::config::ProbeKind::None
                    {
                        b.health = Health::Healthy;
                        b.health_reason = "no health check".to_owned();
                    }
                    b.config = (*bc).clone();
                }
                None => {
                    let health = initial_health(&bc.health);
                    let b = self.new_backend(bc, health)?;
                    self.vips
                        .get_mut(&vc.id)
                        .expect("exists")
                        .backends
                        .insert(*addr, b);
                    changes.push(format!("VIP {}: backend {addr} added", vc.id));
                    self.event(vc, Some(*addr), "backend added".to_owned());
                }
            }
        }
        let vip = self.vips.get_mut(&vc.id).expect("exists");
        if !vip.adopted
            && (vip.config.name != vc.name
                || vip.config.deregistration_delay != vc.deregistration_delay)
        {
            changes.push(format!("VIP {}: settings updated", vc.id));
        }
        vip.adopted = false;
        vip.config = vc.clone();
        self.sync_vip(&vc.id)?;
        Ok(changes)
    }

    /// Removes backends whose deregistration delay is over. Returns what it removed.
    pub fn tick(&mut self, now: Instant) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for (vid, vip) in &self.vips {
            for (addr, b) in &vip.backends {
                if b.removing.is_some_and(|d| d <= now) {
                    done.push((*vid, *addr));
                }
            }
        }
        let mut out = Vec::new();
        for (vid, addr) in done {
            let b = self
                .vips
                .get_mut(&vid)
                .expect("exists")
                .backends
                .remove(&addr)
                .expect("exists");
            self.release_backend(&b)?;
            let vc = self.vips[&vid].config.clone();
            self.event(
                &vc,
                Some(addr),
                "deregistration delay over: backend removed".to_owned(),
            );
            out.push(format!("VIP {vid}: backend {addr} removed"));
        }
        Ok(out)
    }

    /// The VIP's configuration and one of its backends, for a change to that backend.
    fn backend_mut(
        &mut self,
        vid: &VipId,
        addr: IpAddr,
    ) -> Result<(&VipConfig, &mut BackendState)> {
        let vip = self.vips.get_mut(vid).ok_or(EngineError::NoSuchVip(*vid))?;
        let b = vip
            .backends
            .get_mut(&addr)
            .ok_or(EngineError::NoSuchBackend {
                vip: *vid,
                backend: addr,
            })?;
        Ok((&vip.config, b))
    }

    /// Records a health verdict; moves the backend in or out of the table if needed.
    pub fn set_health(
        &mut self,
        vid: &VipId,
        addr: IpAddr,
        health: Health,
        reason: &str,
    ) -> Result<()> {
        let (config, b) = self.backend_mut(vid, addr)?;
        if b.health == health {
            return Ok(());
        }
        let from = b.health;
        b.health = health;
        b.health_reason = reason.to_owned();
        b.health_since = SystemTime::now();
        let vc = config.clone();
        self.event(
            &vc,
            Some(addr),
            format!("{} -> {}: {reason}", health_name(from), health_name(health)),
        );
        self.sync_vip(vid)
    }

    /// Drains (`true`) or undrains a backend: no new flows while drained, existing flows
    /// stay. The mark survives daemon restarts.
    pub fn set_drained(&mut self, vid: &VipId, addr: IpAddr, drained: bool) -> Result<bool> {
        let (config, b) = self.backend_mut(vid, addr)?;
        if b.drained == drained {
            return Ok(false);
        }
        b.drained = drained;
        let vc = config.clone();
        let what = if drained {
            "drained: no new flows, existing flows stay"
        } else {
            "undrained: takes new flows again"
        };
        self.event(&vc, Some(addr), what.to_owned());
        self.sync_vip(vid)?;
        Ok(true)
    }

    /// Decides which backends take new flows, switches the VIP to a new table if that set
    /// changed, and writes every backend's data-plane state.
    ///
    /// Order: backends that must keep or take flows are written first, then the table, then
    /// the backends that leave; so the data plane never follows a table or a flow entry to
    /// a backend entry that is not ready.
    pub fn sync_vip(&mut self, vid: &VipId) -> Result<()> {
        let m = self.lb.limits().maglev_size;
        let variant = self.dataplane.maglev_variant.builder_variant();
        let vip = self.vips.get_mut(vid).ok_or(EngineError::NoSuchVip(*vid))?;
        // The anchor: every configured backend with a weight, whatever its health or drain.
        // The table is built over it, then only the slots of backends that do not serve are
        // handed to those that do: a backend going down or being drained moves its own
        // flows and nobody else's, and coming back restores the very same table.
        let anchor: Vec<&BackendState> = vip
            .backends
            .values()
            .filter(|b| b.removing.is_none() && b.config.weight > 0)
            .collect();
        let eligible: Vec<&BackendState> = anchor.iter().copied().filter(|b| !b.drained).collect();
        let healthy: Vec<&BackendState> = eligible
            .iter()
            .copied()
            .filter(|b| b.health == Health::Healthy)
            .collect();
        let unknown: Vec<&BackendState> = eligible
            .iter()
            .copied()
            .filter(|b| b.health == Health::Unknown)
            .collect();
        let (serving, fail_open) = if !healthy.is_empty() {
            (healthy, false)
        } else if !unknown.is_empty() {
            (unknown, false)
        } else {
            (eligible.clone(), !eligible.is_empty())
        };
        let serving_ids: BTreeSet<u32> = serving.iter().map(|b| b.id).collect();
        let entries: Vec<maglev::Entry> = anchor
            .iter()
            .map(|b| maglev::Entry {
                key: maglev::BackendKey {
                    addr: b.config.address,
                    port: 0,
                },
                weight: b.config.weight,
                id: b.id,
            })
            .collect();
        let table = if serving_ids.is_empty() {
            vec![0; m as usize]
        } else {
            maglev::Builder::new(m, MAGLEV_SEED)
                .variant(variant)
                .build_anchored(&entries, |e| serving_ids.contains(&e.id))
                .map_err(|e| EngineError::Maglev {
                    vip: *vid,
                    message: e.to_string(),
                })?
        };
        let fail_open_changed = vip.fail_open != fail_open;
        vip.fail_open = fail_open;

        // New data-plane state of each backend.
        let mut plan: Vec<(u32, Backend, bool)> = Vec::new();
        for b in vip.backends.values_mut() {
            let usable = b.health != Health::Unhealthy || fail_open;
            let state = if !usable {
                BACKEND_DOWN
            } else if b.admin_active() {
                BACKEND_ACTIVE
            } else {
                BACKEND_DRAINING
            };
            let (addr, family) = addr_to_map(b.config.address);
            let mut admin = 0;
            if b.drained {
                admin |= ADMIN_F_DRAINED;
            }
            if b.removing.is_some() {
                admin |= ADMIN_F_REMOVING;
            }
            let entry = Backend {
                addr,
                family,
                state,
                admin,
                reserved: 0,
                generation: b.generation,
                vip: vip.id,
                weight: b.config.weight,
            };
            let leaving = state == BACKEND_DOWN;
            plan.push((b.id, entry, leaving));
            b.dataplane_state = state;
            b.in_table = serving_ids.contains(&b.id);
        }
        let (vip_id, active, flags) = (vip.id, vip.table, vip_flags(&vip.config));
        let name = vip.config.clone();

        for (id, entry, leaving) in &plan {
            if !leaving && self.lb.backend(*id)? != *entry {
                self.lb.set_backend(*id, entry)?;
            }
        }
        if self.lb.read_table(active)? != table {
            let spare = if active == 2 * vip_id {
                2 * vip_id + 1
            } else {
                2 * vip_id
            };
            self.lb.write_table(spare, &table)?;
            let key = vid.key();
            if self.lb.vip(&key)?.is_some() {
                self.lb.set_vip(
                    &key,
                    &VipInfo {
                        index: vip_id,
                        table: spare,
                        flags,
                        reserved: 0,
                    },
                )?;
            }
            self.vips.get_mut(vid).expect("exists").table = spare;
        }
        for (id, entry, leaving) in &plan {
            if *leaving && self.lb.backend(*id)? != *entry {
                self.lb.set_backend(*id, entry)?;
            }
        }
        if fail_open_changed {
            if fail_open {
                tracing::warn!(vip = %name.name, "every backend is unhealthy: failing open, sending to all of them");
                self.event(
                    &name,
                    None,
                    "FAIL-OPEN: every backend is unhealthy; traffic goes to all of them".to_owned(),
                );
            } else {
                self.event(
                    &name,
                    None,
                    "fail-open over: a backend is healthy again".to_owned(),
                );
            }
        }
        Ok(())
    }
}

/// `VipInfo::flags` of a VIP.
fn vip_flags(vc: &VipConfig) -> u32 {
    match vc.hash {
        HashMode::FiveTuple => 0,
        HashMode::SourceAddress => VIP_F_HASH_SOURCE,
    }
}

/// Health of a new backend: healthy if it is not checked, unknown until its first verdict
/// otherwise.
fn initial_health(h: &HealthCheck) -> Health {
    if h.kind == crate::config::ProbeKind::None {
        Health::Healthy
    } else {
        Health::Unknown
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// How long ago, for display.
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
