//! The planner: from the current [`State`] and what is wanted (a configuration, a health
//! verdict, a drain, the passing of time) to the ordered writes that get there and the
//! state they leave. Pure: it reads no map and writes none, so every decision of the
//! controller is tested with plain `cargo test`.
//!
//! The order of the writes is what keeps the data plane consistent at every step: a
//! backend entry is written before a table names it, a table before its VIP switches to
//! it, a backend leaves (down or unused) only after no table names it, a VIP's address is
//! counted (and let through the address filter) only once the VIP is whole, and the
//! wildcard flag is set before a port-0 VIP exists and cleared after the last one is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use lb_common::{
    ADMIN_F_DRAINED, ADMIN_F_FAILING, ADMIN_F_REMOVING, BACKEND_ACTIVE, BACKEND_DOWN,
    BACKEND_DRAINING, BACKEND_UNUSED, Backend, CFG_F_SOURCE_V4, CFG_F_SOURCE_V6,
    CFG_F_WILDCARD_VIPS, DataplaneConfig as MapConfig, SNAT_SLOTS_PER_FAMILY, VipInfo, addr_to_map,
};

use super::{
    EngineError,
    execute::Step,
    state::{BackendRecord, Change, Health, RAMP_STEPS, Ramp, State, VipRecord, fingerprint},
};
use crate::{
    config::{
        BackendConfig, Config, ConfigError, DataplaneSettings, HealthCheck, OnUnhealthy, ProbeKind,
        Target, VipConfig, VipId,
    },
    maglev,
};

/// Seed of every Maglev table: fixed, so every host builds the same tables.
pub const MAGLEV_SEED: u64 = 0;

/// Writes to make, the state they leave, and what changed.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub state: State,
    pub changes: Vec<Change>,
}

/// Makes the running state match `to`: VIPs added, removed or changed, backends added
/// (health unknown until checked), removed (serving out their deregistration delay) or
/// reweighted. VIPs that do not change keep their tables and flows. `from` is the
/// configuration running now (its limits and interface cannot change). On error nothing
/// is planned.
pub fn apply(state: &State, from: &Config, to: &Config, now: Instant) -> Result<Plan, EngineError> {
    check(state, from, to)?;
    let mut p = Planner::new(state, &to.dataplane, now);

    let wildcard_now = state.vips.keys().any(|v| v.port == 0);
    let wildcard_after = to.vips.iter().any(|v| v.id.port == 0);
    let mut cfg = map_config(&to.dataplane);
    // Set before any port-0 VIP is added; cleared after the last one is removed.
    if wildcard_now || wildcard_after {
        cfg.flags |= CFG_F_WILDCARD_VIPS;
    }
    // New SNAT addresses are in their slots (and the address filter) before the
    // configuration counts them, so a connection never names an empty slot.
    let slots = snat_slots(&to.dataplane);
    let mut snat_changed = false;
    for (i, (have, want)) in state.snat.iter().zip(&slots).enumerate() {
        if have != want {
            let addr = want.map_or([0; 16], |a| addr_to_map(a).0);
            p.steps.push(Step::SetSnat(i as u32, addr));
            snat_changed = true;
        }
    }
    p.state.snat = slots;
    if p.state.map_config != cfg {
        snat_changed |= from.dataplane.snat_ports != to.dataplane.snat_ports;
        p.set_config(cfg);
        if (from.dataplane.source_v4, from.dataplane.source_v6)
            != (to.dataplane.source_v4, to.dataplane.source_v6)
        {
            p.changes.push(Change::Sources);
        }
    }
    if snat_changed {
        p.changes.push(Change::Snat);
    }

    let wanted: BTreeSet<VipId> = to.vips.iter().map(|v| v.id).collect();
    let gone: Vec<VipId> = p
        .state
        .vips
        .keys()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    for vid in gone {
        p.remove_vip(&vid);
    }
    for vc in &to.vips {
        if p.state.vips.contains_key(&vc.id) {
            p.update_vip(vc, now)?;
        } else {
            p.add_vip(vc)?;
        }
    }
    if wildcard_now && !wildcard_after {
        cfg.flags &= !CFG_F_WILDCARD_VIPS;
        p.set_config(cfg);
    }
    Ok(p.finish())
}

/// A health check's verdict on one backend, and when it was reached.
#[derive(Clone, Copy, Debug)]
pub struct Verdict<'a> {
    pub health: Health,
    pub reason: &'a str,
    pub at: SystemTime,
}

/// Records a health verdict; moves the backend in or out of the table if needed.
pub fn set_health(
    state: &State,
    config: &Config,
    vid: &VipId,
    addr: Target,
    verdict: Verdict<'_>,
    now: Instant,
) -> Result<Plan, EngineError> {
    let Verdict { health, reason, at } = verdict;
    let mut p = Planner::new(state, &config.dataplane, now);
    let b = p.backend_mut(vid, addr)?;
    if b.health != health {
        let from = b.health;
        b.health = health;
        b.health_reason = reason.to_owned();
        b.health_since = at;
        if health == Health::Healthy {
            // A first verdict of a backend the VIP started with is no newcomer's.
            if !(from == Health::Unknown && b.initial) {
                p.start_ramp(vid, addr);
            }
        } else {
            b.ramp = None;
        }
        p.changes.push(Change::Health {
            vip: *vid,
            backend: addr,
            from,
            to: health,
            reason: reason.to_owned(),
        });
        p.sync_vip(vid)?;
    }
    Ok(p.finish())
}

/// Drains (`true`) or undrains a backend: no new flows while drained, existing flows
/// stay. The mark is kept in the backend's entry, so it survives daemon restarts.
pub fn set_drained(
    state: &State,
    config: &Config,
    vid: &VipId,
    addr: Target,
    drained: bool,
) -> Result<Plan, EngineError> {
    let mut p = Planner::new(state, &config.dataplane, Instant::now());
    let b = p.backend_mut(vid, addr)?;
    if b.drained != drained {
        b.drained = drained;
        p.changes.push(Change::Drained {
            vip: *vid,
            backend: addr,
            drained,
        });
        p.sync_vip(vid)?;
    }
    Ok(p.finish())
}

/// Removes the backends whose deregistration delay is over at `now`.
pub fn expire(state: &State, config: &Config, now: Instant) -> Plan {
    let mut p = Planner::new(state, &config.dataplane, now);
    p.advance_ramps();
    let done: Vec<(VipId, Target)> = p
        .state
        .vips
        .iter()
        .flat_map(|(vid, v)| {
            v.backends
                .iter()
                .filter(|(_, b)| b.removing.is_some_and(|d| d <= now))
                .map(|(a, _)| (*vid, *a))
        })
        .collect();
    for (vid, addr) in done {
        let b = p
            .state
            .vips
            .get_mut(&vid)
            .and_then(|v| v.backends.remove(&addr))
            .expect("listed above");
        p.release(&b);
        p.changes.push(Change::BackendRemoved {
            vip: vid,
            backend: addr,
        });
    }
    p.finish()
}

/// The `CONFIG` map value for the settings (without the wildcard flag).
pub fn map_config(d: &DataplaneSettings) -> MapConfig {
    let mut cfg = MapConfig::default();
    if let Some(a) = d.source_v4 {
        cfg.source_v4 = a.octets();
        cfg.flags |= CFG_F_SOURCE_V4;
    }
    if let Some(a) = d.source_v6 {
        cfg.source_v6 = a.octets();
        cfg.flags |= CFG_F_SOURCE_V6;
    }
    cfg.snat_port_min = d.snat_ports.0;
    cfg.snat_port_max = d.snat_ports.1;
    cfg.snat_v4 = d.snat_v4.len() as u8;
    cfg.snat_v6 = d.snat_v6.len() as u8;
    cfg
}

/// The SNAT pool's slots for the settings: IPv4 addresses from slot 0, IPv6 ones from
/// `SNAT_SLOTS_PER_FAMILY`.
pub fn snat_slots(d: &DataplaneSettings) -> Vec<Option<IpAddr>> {
    let per = SNAT_SLOTS_PER_FAMILY as usize;
    let mut slots = vec![None; 2 * per];
    for (i, a) in d.snat_v4.iter().enumerate() {
        slots[i] = Some(IpAddr::V4(*a));
    }
    for (i, a) in d.snat_v6.iter().enumerate() {
        slots[per + i] = Some(IpAddr::V6(*a));
    }
    slots
}

/// Health of a new backend: healthy if it is not checked, unknown until its first verdict
/// otherwise.
pub fn initial_health(h: &HealthCheck) -> Health {
    if h.kind == ProbeKind::None {
        Health::Healthy
    } else {
        Health::Unknown
    }
}

/// Validation that needs the running state: settings that cannot change without new maps,
/// and room for the backend ids (removed backends still draining keep theirs).
fn check(state: &State, from: &Config, to: &Config) -> Result<(), EngineError> {
    to.check()?;
    let (cur, new) = (&from.dataplane.limits, &to.dataplane.limits);
    for (what, a, b) in [
        (
            "dataplane.maglev_table_size",
            cur.maglev_size,
            new.maglev_size,
        ),
        (
            "dataplane.flow_table_entries",
            cur.flow_table_entries,
            new.flow_table_entries,
        ),
        ("dataplane.max_vips", cur.max_vips, new.max_vips),
        ("dataplane.max_backends", cur.max_backends, new.max_backends),
        (
            "dataplane.nat_table_entries",
            cur.nat_table_entries,
            new.nat_table_entries,
        ),
    ] {
        if a != b {
            return Err(EngineError::Immutable {
                what,
                from: a.to_string(),
                to: b.to_string(),
            });
        }
    }
    if let (Some(a), Some(b)) = (&from.dataplane.interface, &to.dataplane.interface)
        && a != b
    {
        return Err(EngineError::Immutable {
            what: "dataplane.interface",
            from: a.clone(),
            to: b.clone(),
        });
    }
    // SNAT addresses may be appended; one that connections may name stays in its slot.
    for (i, (have, want)) in state.snat.iter().zip(snat_slots(&to.dataplane)).enumerate() {
        if let Some(h) = have
            && Some(*h) != want
        {
            let family = if i < SNAT_SLOTS_PER_FAMILY as usize {
                "dataplane.snat_v4"
            } else {
                "dataplane.snat_v6"
            };
            return Err(EngineError::Immutable {
                what: family,
                from: format!("{h} in place {}", i % SNAT_SLOTS_PER_FAMILY as usize),
                to: want.map_or("nothing".to_owned(), |w| w.to_string()),
            });
        }
    }
    let mut needed = 0usize;
    for vc in &to.vips {
        let configured: BTreeSet<Target> = vc.backends.iter().map(BackendConfig::target).collect();
        needed += configured.len();
        if let Some(v) = state.vips.get(&vc.id) {
            needed += v
                .backends
                .keys()
                .filter(|a| !configured.contains(a))
                .count();
        }
    }
    if needed >= new.max_backends as usize {
        return Err(ConfigError::setting(
            "dataplane.max_backends",
            format!(
                "{needed} backends (including removed ones still draining) need ids but max_backends is {}",
                new.max_backends
            ),
        )
        .into());
    }
    Ok(())
}

/// A plan being made: a copy of the state that changes as steps are added.
struct Planner<'a> {
    state: State,
    settings: &'a DataplaneSettings,
    steps: Vec<Step>,
    changes: Vec<Change>,
    /// The time of the plan (slow starts begin and advance by it).
    now: Instant,
}

impl<'a> Planner<'a> {
    fn new(state: &State, settings: &'a DataplaneSettings, now: Instant) -> Self {
        Self {
            state: state.clone(),
            now,
            settings,
            steps: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn finish(mut self) -> Plan {
        let checked: Vec<Health> = self
            .state
            .vips
            .values()
            .flat_map(|v| v.backends.values())
            .filter(|b| b.removing.is_none() && b.config.health.kind != ProbeKind::None)
            .map(|b| b.health)
            .collect();
        let failing = checked.len() >= 2 && checked.iter().all(|h| *h == Health::Unhealthy);
        if failing != self.state.all_checks_failing {
            self.state.all_checks_failing = failing;
            self.changes.push(Change::AllChecksFailing { on: failing });
        }
        Plan {
            steps: self.steps,
            state: self.state,
            changes: self.changes,
        }
    }

    fn set_config(&mut self, cfg: MapConfig) {
        if self.state.map_config != cfg {
            self.state.map_config = cfg;
            self.steps.push(Step::SetConfig(cfg));
        }
    }

    fn backend_mut(
        &mut self,
        vid: &VipId,
        addr: Target,
    ) -> Result<&mut BackendRecord, EngineError> {
        let vip = self
            .state
            .vips
            .get_mut(vid)
            .ok_or(EngineError::NoSuchVip(*vid))?;
        vip.backends
            .get_mut(&addr)
            .ok_or(EngineError::NoSuchBackend {
                vip: *vid,
                backend: addr,
            })
    }

    /// A new backend id (the lowest free), with its counters zeroed.
    fn new_backend(&mut self, bc: &BackendConfig, taken: &BTreeSet<u32>) -> BackendRecord {
        let id = (1..self.state.limits.max_backends)
            .find(|i| !taken.contains(i))
            .expect("checked against max_backends");
        let generation = self.state.generations[id as usize].wrapping_add(1);
        self.state.generations[id as usize] = generation;
        self.steps.push(Step::ResetBackendStats(id));
        let health = initial_health(&bc.health);
        BackendRecord {
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
            ever_served: false,
            entry: Backend::default(),
            ramp: None,
            initial: false,
        }
    }

    /// Starts the slow start of a backend that just became healthy, when its VIP has one
    /// and some other backend serves at full weight (a lone backend takes everything at
    /// once: there is nobody to share with).
    fn start_ramp(&mut self, vid: &VipId, addr: Target) {
        let now = self.now;
        let Some(vip) = self.state.vips.get_mut(vid) else {
            return;
        };
        let length = vip.config.slow_start;
        if length.is_zero() {
            return;
        }
        let others = vip.backends.iter().any(|(a, b)| {
            *a != addr
                && b.in_table
                && b.ramp.is_none()
                && b.health == Health::Healthy
                && b.admin_active()
        });
        if let Some(b) = vip.backends.get_mut(&addr)
            && others
        {
            b.ramp = Some(Ramp {
                started: now,
                step: Ramp::step_at(now, length, now),
            });
        }
    }

    /// Moves every slow start on to the step it has reached, rebuilding the tables of the
    /// VIPs where a step changed (so at most `RAMP_STEPS` rebuilds per slow start).
    fn advance_ramps(&mut self) {
        let now = self.now;
        let mut changed = Vec::new();
        for (vid, v) in &mut self.state.vips {
            let length = v.config.slow_start;
            for b in v.backends.values_mut() {
                let Some(r) = b.ramp else { continue };
                let step = Ramp::step_at(r.started, length, now);
                if step != r.step {
                    b.ramp = (step < RAMP_STEPS).then_some(Ramp { step, ..r });
                    changed.push(*vid);
                }
            }
        }
        changed.dedup();
        for vid in changed {
            let _ = self.sync_vip(&vid);
        }
    }

    fn add_vip(&mut self, vc: &VipConfig) -> Result<(), EngineError> {
        let used = self.state.vip_indexes();
        let index = (0..)
            .find(|i| !used.contains(i))
            .expect("checked against max_vips");
        self.steps.push(Step::ResetVipStats(index));
        let mut taken = self.state.backend_ids();
        let mut backends = BTreeMap::new();
        for bc in &vc.backends {
            let mut b = self.new_backend(bc, &taken);
            b.initial = true;
            taken.insert(b.id);
            backends.insert(bc.target(), b);
        }
        self.state.vips.insert(
            vc.id,
            VipRecord {
                config: vc.clone(),
                index,
                table: 2 * index,
                fingerprint: None,
                flags_written: vc.vip_flags(),
                backends,
                fail_open: false,
                adopted: false,
            },
        );
        // Backends and table first, then the VIP entry, so its first packet finds them.
        self.sync_vip_entry(&vc.id, false)?;
        let vip = &self.state.vips[&vc.id];
        self.steps.push(Step::SetVip(
            vc.id.key(),
            VipInfo {
                index,
                table: vip.table,
                flags: vc.vip_flags(),
                reserved: 0,
            },
        ));
        let n = self.state.vips_on(vc.id.address);
        self.steps.push(Step::SetVipAddress(vc.id.address, n));
        self.changes.push(Change::VipAdded {
            vip: vc.id,
            backends: vc.backends.len(),
        });
        Ok(())
    }

    fn remove_vip(&mut self, vid: &VipId) {
        let vip = self.state.vips.remove(vid).expect("caller checked");
        self.steps.push(Step::RemoveVip(vid.key()));
        // Released at once: remembered flows are found by their backend, before any VIP
        // lookup, so a released id is what stops them.
        for b in vip.backends.values() {
            self.release(b);
        }
        let n = self.state.vips_on(vid.address);
        self.steps.push(Step::SetVipAddress(vid.address, n));
        self.changes.push(Change::VipRemoved { vip: *vid });
    }

    /// Marks a backend's id unused (its generation stays, so its flows are never taken
    /// for the next owner's).
    fn release(&mut self, b: &BackendRecord) {
        let entry = Backend {
            state: BACKEND_UNUSED,
            admin: 0,
            ..b.entry
        };
        self.steps.push(Step::SetBackend(b.id, entry));
    }

    fn update_vip(&mut self, vc: &VipConfig, now: Instant) -> Result<(), EngineError> {
        let vid = vc.id;
        let old = self.state.vips[&vid].config.clone();
        if old.hash != vc.hash {
            self.changes.push(Change::HashChanged {
                vip: vid,
                from: old.hash,
                to: vc.hash,
            });
        }
        let configured: BTreeMap<Target, &BackendConfig> =
            vc.backends.iter().map(|b| (b.target(), b)).collect();
        let existing: Vec<Target> = self.state.vips[&vid].backends.keys().copied().collect();
        // Removed from the configuration: serve out the deregistration delay, unless the
        // backend never took a flow.
        for addr in &existing {
            if configured.contains_key(addr) {
                continue;
            }
            let vip = self.state.vips.get_mut(&vid).expect("exists");
            let b = vip.backends.get_mut(addr).expect("exists");
            if b.removing.is_some() {
                continue;
            }
            if !b.ever_served {
                let b = vip.backends.remove(addr).expect("exists");
                self.release(&b);
                self.changes.push(Change::BackendRemovedAtOnce {
                    vip: vid,
                    backend: *addr,
                });
            } else {
                b.removing = Some(now + vc.deregistration_delay);
                self.changes.push(Change::BackendDeregistering {
                    vip: vid,
                    backend: *addr,
                    delay: vc.deregistration_delay,
                });
            }
        }
        let mut taken = self.state.backend_ids();
        let mut added = Vec::new();
        for (addr, bc) in &configured {
            let vip = self.state.vips.get_mut(&vid).expect("exists");
            match vip.backends.get_mut(addr) {
                Some(b) => {
                    if b.removing.take().is_some() {
                        self.changes.push(Change::BackendReadded {
                            vip: vid,
                            backend: *addr,
                        });
                    }
                    if b.config.weight != bc.weight {
                        self.changes.push(Change::Weight {
                            vip: vid,
                            backend: *addr,
                            from: b.config.weight,
                            to: bc.weight,
                        });
                    }
                    if b.config.health != bc.health && !vip.adopted {
                        self.changes.push(Change::HealthCheck {
                            vip: vid,
                            backend: *addr,
                        });
                    }
                    if b.config.health != bc.health && bc.health.kind == ProbeKind::None {
                        b.health = Health::Healthy;
                        b.health_reason = "no health check".to_owned();
                    } else if b.config.health.kind == ProbeKind::None
                        && bc.health.kind != ProbeKind::None
                    {
                        // Checked from now on: healthy until the checks say otherwise.
                        b.health_reason = "health check enabled; healthy until it fails".to_owned();
                    }
                    b.config = (*bc).clone();
                }
                None => {
                    let b = self.new_backend(bc, &taken);
                    taken.insert(b.id);
                    self.state
                        .vips
                        .get_mut(&vid)
                        .expect("exists")
                        .backends
                        .insert(*addr, b);
                    added.push(*addr);
                    self.changes.push(Change::BackendAdded {
                        vip: vid,
                        backend: *addr,
                    });
                }
            }
        }
        let vip = self.state.vips.get_mut(&vid).expect("exists");
        if !vip.adopted
            && (old.name != vc.name
                || old.deregistration_delay != vc.deregistration_delay
                || old.min_serving != vc.min_serving
                || old.on_fail_open != vc.on_fail_open
                || old.on_unhealthy != vc.on_unhealthy
                || old.idle_timeout != vc.idle_timeout)
        {
            self.changes.push(Change::VipSettings { vip: vid });
        }
        if old.forwarding != vc.forwarding || old.nat_source != vc.nat_source {
            self.changes.push(Change::Forwarding { vip: vid });
        }
        vip.adopted = false;
        vip.config = vc.clone();
        // Targets added already healthy (unchecked) start slowly like newly healthy ones.
        for addr in added {
            if self.state.vips[&vid].backends[&addr].health == Health::Healthy {
                self.start_ramp(&vid, addr);
            }
        }
        self.sync_vip(&vid)
    }

    fn sync_vip(&mut self, vid: &VipId) -> Result<(), EngineError> {
        self.sync_vip_entry(vid, true)
    }

    /// Decides which backends take new flows, switches the VIP to a new table if that set
    /// changed, and writes every backend's data-plane state. `present`: the VIP's entry
    /// exists (a VIP being added gets its entry after this).
    ///
    /// Order: backends that must keep or take flows are written first, then the table and
    /// the switch to it, then the backends that leave.
    fn sync_vip_entry(&mut self, vid: &VipId, present: bool) -> Result<(), EngineError> {
        let m = self.state.limits.maglev_size;
        let variant = self.settings.maglev_variant;
        let vip = self
            .state
            .vips
            .get_mut(vid)
            .ok_or(EngineError::NoSuchVip(*vid))?;
        // The anchor: every configured backend with a weight, whatever its health or drain.
        // The table is built over it, then only the slots of backends that do not serve
        // are handed to those that do: a backend going down or being drained moves its own
        // flows and nobody else's, and coming back restores the very same table.
        let anchor: Vec<&BackendRecord> = vip
            .backends
            .values()
            .filter(|b| b.removing.is_none() && b.config.weight > 0)
            .collect();
        let eligible: Vec<&BackendRecord> = anchor.iter().copied().filter(|b| !b.drained).collect();
        let with = |h: Health| -> Vec<&BackendRecord> {
            eligible.iter().copied().filter(|b| b.health == h).collect()
        };
        let (healthy, unknown) = (with(Health::Healthy), with(Health::Unknown));
        let (serving, fail_open) = if !healthy.is_empty() {
            (healthy, false)
        } else if !unknown.is_empty() {
            (unknown, false)
        } else {
            (eligible.clone(), !eligible.is_empty())
        };
        let serving: BTreeSet<u32> = serving.iter().map(|b| b.id).collect();
        let entries: Vec<maglev::Entry> = anchor
            .iter()
            .map(|b| maglev::Entry {
                key: maglev::BackendKey {
                    addr: b.config.address,
                    port: b.config.port,
                },
                weight: b.table_weight(),
                id: b.id,
            })
            .collect();
        let table = if serving.is_empty() {
            vec![0; m as usize]
        } else {
            maglev::Builder::new(m, MAGLEV_SEED)
                .variant(variant)
                .build_anchored(&entries, |e| serving.contains(&e.id))
                .map_err(|e| EngineError::Maglev {
                    vip: *vid,
                    message: e.to_string(),
                })?
        };
        let addresses: BTreeMap<u32, Target> = vip
            .backends
            .values()
            .map(|b| (b.id, b.config.target()))
            .collect();
        let print = fingerprint(&table, |id| addresses.get(&id).copied());

        let (index, flags, mode) = (vip.index, vip.config.vip_flags(), vip.config.backend_mode());
        let keep = vip.config.on_unhealthy == OnUnhealthy::Keep;
        let mut leaving = Vec::new();
        for b in vip.backends.values_mut() {
            let usable = b.health != Health::Unhealthy || fail_open;
            // Unhealthy and keeping its flows: the data plane's draining state (flows kept,
            // no new ones); without admin flags, which is how a restart tells it apart.
            let state = if !usable && keep {
                BACKEND_DRAINING
            } else if !usable {
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
            if !usable {
                admin |= ADMIN_F_FAILING;
            }
            let entry = Backend {
                addr,
                family,
                state,
                admin,
                mode,
                generation: b.generation,
                vip: index as u16,
                weight: b.config.weight,
                port: lb_common::port_to_map(b.config.port),
            };
            b.in_table = serving.contains(&b.id);
            b.ever_served |= b.in_table;
            if entry != b.entry {
                b.entry = entry;
                if state == BACKEND_DOWN {
                    leaving.push((b.id, entry));
                } else {
                    self.steps.push(Step::SetBackend(b.id, entry));
                }
            }
        }
        if vip.fingerprint != Some(print) {
            let spare = if vip.table == 2 * index {
                2 * index + 1
            } else {
                2 * index
            };
            self.steps.push(Step::WriteTable(spare, Arc::new(table)));
            vip.table = spare;
            vip.fingerprint = Some(print);
            if present {
                self.steps.push(Step::SetVip(
                    vid.key(),
                    VipInfo {
                        index,
                        table: spare,
                        flags,
                        reserved: 0,
                    },
                ));
            }
        } else if present && vip.flags_written != flags {
            self.steps.push(Step::SetVip(
                vid.key(),
                VipInfo {
                    index,
                    table: vip.table,
                    flags,
                    reserved: 0,
                },
            ));
        }
        vip.flags_written = flags;
        for (id, entry) in leaving {
            self.steps.push(Step::SetBackend(id, entry));
        }
        if vip.fail_open != fail_open {
            vip.fail_open = fail_open;
            self.changes.push(Change::FailOpen {
                vip: *vid,
                on: fail_open,
            });
        }
        Ok(())
    }
}
