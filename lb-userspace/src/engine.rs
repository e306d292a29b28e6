//! The controller's model of the running load balancer, and every change to it.
//!
//! Deciding and doing are apart: [`plan`] is a pure function from the current [`State`]
//! and what is wanted (a configuration, a health verdict, a drain, the passing of time) to
//! an ordered list of writes and the state they leave; [`execute`] carries such a list out
//! against the maps and is the only code that writes them; [`adopt`] reads the (pinned)
//! maps back into a state, so a restarted daemon changes only what its configuration
//! changes. [`Engine`] ties them together and owns the running configuration: the one
//! copy the daemon, the API and the saved state read.

pub mod adopt;
pub mod execute;
pub mod plan;
pub mod state;

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

pub use execute::{Maps, MemoryMaps, Step};
pub use plan::{MAGLEV_SEED, Plan};
pub use state::{BackendRecord, BackendState, Change, Event, Health, State, VipRecord};

use crate::{
    config::{Config, ConfigError, DaemonSettings, DataplaneSettings, Target, VipId},
    dataplane::Balancer,
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Writing or reading the maps failed (the state was re-read from them).
    #[error(transparent)]
    Maps(Box<dyn std::error::Error + Send + Sync>),
    #[error("no VIP {0}")]
    NoSuchVip(VipId),
    #[error("VIP {vip} has no backend {backend}")]
    NoSuchBackend { vip: VipId, backend: Target },
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

/// Events kept for `xlb status`.
const EVENTS_KEPT: usize = 200;

/// The running load balancer as the controller sees it, over maps `M` (the loaded
/// [`Balancer`], or [`MemoryMaps`] in tests).
pub struct Engine<M: Maps = Balancer> {
    maps: M,
    config: Config,
    state: State,
    events: VecDeque<Event>,
}

impl<M: Maps> Engine<M> {
    /// An engine over freshly loaded (or re-opened) maps, with no VIP yet; `dataplane` is
    /// what the maps were made for.
    pub fn new(maps: M, dataplane: DataplaneSettings) -> Self {
        let state = State::empty(maps.limits());
        Self {
            maps,
            config: Config {
                dataplane,
                daemon: DaemonSettings::default(),
                announce: None,
                docker: Vec::new(),
                vips: Vec::new(),
            },
            state,
            events: VecDeque::new(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The configuration that runs (run-time changes included; removed backends still
    /// draining are not in it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn vips(&self) -> &BTreeMap<VipId, VipRecord> {
        &self.state.vips
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Reads the VIPs and backends already in the maps, so that the following
    /// [`Engine::apply`] changes only what the configuration changes. Returns how many
    /// VIPs it found.
    pub fn adopt(&mut self) -> Result<usize> {
        let (state, fixes) = adopt::adopt(&self.maps).map_err(boxed)?;
        execute::execute(&mut self.maps, &fixes).map_err(boxed)?;
        self.config.vips = state.vips.values().map(|v| v.config.clone()).collect();
        self.state = state;
        Ok(self.state.vips.len())
    }

    /// Makes the running state match `config` (see [`plan::apply`]); `origin` says where
    /// it came from in the log and the events ("SIGHUP", "xlb apply", ...). Validates
    /// everything first: on error nothing has changed.
    pub fn apply_from(&mut self, config: &Config, origin: &str) -> Result<Vec<Change>> {
        let plan = plan::apply(&self.state, &self.config, config, Instant::now())?;
        let changes = self.run(plan, origin)?;
        self.config = config.clone();
        Ok(changes)
    }

    /// [`Engine::apply_from`] with origin "configuration".
    pub fn apply(&mut self, config: &Config) -> Result<Vec<Change>> {
        self.apply_from(config, "configuration")
    }

    /// Records a health verdict; moves the backend in or out of the table if needed.
    pub fn set_health(
        &mut self,
        vid: &VipId,
        addr: Target,
        health: Health,
        reason: &str,
    ) -> Result<()> {
        let plan = plan::set_health(
            &self.state,
            &self.config,
            vid,
            addr,
            plan::Verdict {
                health,
                reason,
                at: SystemTime::now(),
            },
            Instant::now(),
        )?;
        self.run(plan, "health check").map(drop)
    }

    /// Drains (`true`) or undrains a backend; false if it already was.
    pub fn set_drained(&mut self, vid: &VipId, addr: Target, drained: bool) -> Result<bool> {
        let plan = plan::set_drained(&self.state, &self.config, vid, addr, drained)?;
        Ok(!self.run(plan, "xlb backend")?.is_empty())
    }

    /// Removes backends whose deregistration delay is over. Returns what it removed.
    pub fn tick(&mut self, now: Instant) -> Result<Vec<Change>> {
        let plan = plan::expire(&self.state, &self.config, now);
        self.run(plan, "deregistration delay")
    }

    /// Writes a plan. On success its state becomes the engine's and its changes are logged;
    /// if a write fails, the state is read back from the maps (keeping the controller's own
    /// facts: health, deadlines) and the error returned.
    fn run(&mut self, plan: Plan, origin: &str) -> Result<Vec<Change>> {
        if let Err(e) = execute::execute(&mut self.maps, &plan.steps) {
            tracing::error!("writing the maps failed: {e}; re-reading them");
            self.resync();
            return Err(boxed(e));
        }
        self.state = plan.state;
        for c in &plan.changes {
            self.event(c, origin);
        }
        Ok(plan.changes)
    }

    /// Re-reads the state from the maps after a failed write, keeping what only the
    /// controller knows about the backends it finds again.
    fn resync(&mut self) {
        let Ok((mut fresh, _)) = adopt::adopt(&self.maps) else {
            return;
        };
        for (vid, v) in &mut fresh.vips {
            let Some(old) = self.state.vips.get(vid) else {
                continue;
            };
            v.config = old.config.clone();
            v.adopted = false;
            for (addr, b) in &mut v.backends {
                if let Some(o) = old.backends.get(addr)
                    && o.id == b.id
                {
                    b.config = o.config.clone();
                    b.health = o.health;
                    b.health_reason = o.health_reason.clone();
                    b.health_since = o.health_since;
                    b.removing = o.removing;
                    b.ever_served = o.ever_served;
                }
            }
        }
        self.state = fresh;
    }

    fn event(&mut self, c: &Change, origin: &str) {
        let (vip, backend) = c.subject();
        let name = vip
            .map(|v| {
                self.state
                    .vips
                    .get(&v)
                    .map_or_else(|| v.to_string(), |r| r.config.name.clone())
            })
            .unwrap_or_default();
        let message = c.event_text();
        match (&vip, backend) {
            (Some(v), Some(b)) => tracing::info!(vip = %v, name, backend = %b, origin, "{message}"),
            (Some(v), None) => tracing::info!(vip = %v, name, origin, "{message}"),
            _ => tracing::info!(origin, "{message}"),
        }
        if matches!(c, Change::AllChecksFailing { on: true }) {
            tracing::warn!("{message}");
        }
        if matches!(c, Change::FailOpen { on: true, .. }) {
            tracing::warn!(vip = %vip.map(|v| v.to_string()).unwrap_or_default(), "every backend is unhealthy: failing open, sending to all of them");
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: SystemTime::now(),
            vip: name,
            backend,
            message,
            origin: origin.to_owned(),
        });
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> EngineError {
    EngineError::Maps(Box::new(e))
}

/// How long ago, for display.
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

#[cfg(test)]
mod tests;
