//! What each API request does. A change is made to a copy of the running configuration
//! in the file schema, validated whole like a file, then applied; a refused request changes
//! nothing and its error is one line.

use crate::{
    api::{Request, Response},
    config::{
        Config, File, ProbeKind, Target,
        file::{BackendFile, HealthFile, VipFile},
    },
    engine::{Change, EngineError},
};

use super::{Daemon, host, saved::file_hash};

/// Where a configuration came from, for the log and for how its errors are worded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `xlb apply -f FILE`: errors name fields as in the file.
    Apply,
    /// SIGHUP or `Request::Reload`: the daemon's own file.
    Reload,
    /// A run-time command: errors name VIPs and backends by address.
    Command,
    /// Targets found by discovery (a Docker host's containers).
    Discovery,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Apply => "xlb apply",
            Origin::Reload => "reload",
            Origin::Command => "xlb command",
            Origin::Discovery => "docker discovery",
        }
    }
}

impl Daemon {
    /// Serialises the changes of the running configuration (see `handle`).
    fn one_change(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one request. Every change is validated whole first; on error nothing changed.
    pub(super) fn handle(&self, req: Request) -> Response {
        // Changes are made to a copy of the running configuration and applied whole: one at
        // a time, or one made meanwhile (by discovery, a command, a reload) would be undone.
        let _one_change =
            (!matches!(req, Request::Status | Request::Trace { .. })).then(|| self.one_change());
        match req {
            // Served as a stream by the API server (`trace::session`), never here.
            Request::Trace { .. } => Response::error("a trace needs its own connection"),
            Request::Status => match self.snapshot() {
                Ok(s) => Response {
                    status: Some(s),
                    ..Response::ok(Vec::new())
                },
                Err(e) => Response::error(e),
            },
            Request::Apply { config, origin } => match Config::parse(&config, &origin) {
                Ok(c) => self.apply(c, self.config_file_hash(), Origin::Apply),
                Err(e) => Response::error(e),
            },
            Request::Reload => match std::fs::read_to_string(&self.config_path) {
                Ok(text) => match Config::parse(&text, &self.config_path.display().to_string()) {
                    Ok(c) => self.apply(c, file_hash(&text), Origin::Reload),
                    Err(e) => Response::error(e),
                },
                Err(e) => {
                    Response::error(format!("cannot read {}: {e}", self.config_path.display()))
                }
            },
            Request::AnnounceWithdraw | Request::AnnounceRestore => {
                let withdraw = matches!(req, Request::AnnounceWithdraw);
                let Some(a) = &self.announcer else {
                    return Response::error(
                        "announcing is off: there is no [announce] section in the configuration",
                    );
                };
                let was = a
                    .withdrawn
                    .swap(withdraw, std::sync::atomic::Ordering::SeqCst);
                a.wake();
                let msg = match (withdraw, was == withdraw) {
                    (true, true) => "the VIPs were already withdrawn",
                    (true, false) => {
                        tracing::info!("xlb announce withdraw: withdrawing every VIP");
                        "withdrawing every VIP; forwarding goes on for the flows that still arrive"
                    }
                    (false, true) => "the VIPs were not withdrawn",
                    (false, false) => {
                        tracing::info!("xlb announce restore: announcing the VIPs again");
                        "announcing the VIPs again, each as its state allows"
                    }
                };
                Response::ok(vec![msg.to_owned()])
            }
            Request::Teardown => match self.teardown() {
                Ok(()) => Response::ok(vec![
                    "balancer detached, pins removed, daemon stopping".to_owned(),
                ]),
                Err(e) => Response::error(e),
            },
            Request::BackendDrain { vip, address } | Request::BackendUndrain { vip, address } => {
                let drain = matches!(req, Request::BackendDrain { .. });
                let r = {
                    let mut engine = self.engine.lock().expect("engine lock");
                    let address = resolve_target(engine.vips().get(&vip), address);
                    engine.set_drained(&vip, address, drain)
                };
                match r {
                    Ok(changed) => {
                        self.after_change(None);
                        let word = if drain { "drained" } else { "undrained" };
                        let msg = if changed {
                            format!("VIP {vip}: backend {address} {word}")
                        } else {
                            format!("VIP {vip}: backend {address} was already {word}")
                        };
                        Response::ok(vec![msg])
                    }
                    Err(e) => Response::error(e),
                }
            }
            edit => {
                let mut file = self.engine.lock().expect("engine lock").config().to_file();
                if let Err(e) = apply_edit(&mut file, edit) {
                    return Response::error(e);
                }
                match Config::from_file(&file) {
                    Ok(c) => self.apply(c, None, Origin::Command),
                    Err(e) => Response::error(e.for_operator()),
                }
            }
        }
    }

    /// Applies a validated configuration; `hash` is the file hash it derives from (`None`:
    /// a run-time change, which keeps the current one).
    fn apply(&self, mut c: Config, hash: impl Into<Option<u64>>, origin: Origin) -> Response {
        match &c.dataplane.interface {
            Some(i) if host::ifindex(i).is_none() => {
                return Response::error(format!(
                    "dataplane.interface: no interface named {i:?}; nothing was changed"
                ));
            }
            Some(i) if *i != self.iface => {
                return Response::error(format!(
                    "dataplane.interface: {i:?} differs from the running interface {:?}; changing it needs a restart; nothing was changed",
                    self.iface
                ));
            }
            _ => c.dataplane.interface = Some(self.iface.clone()),
        }
        let word = |e: &crate::config::ConfigError| match origin {
            Origin::Command | Origin::Discovery => e.for_operator(),
            _ => e.to_string(),
        };
        if let Err(e) = c.check_host(&host::addresses(None)) {
            return Response::error(word(&e));
        }
        let r = {
            let mut engine = self.engine.lock().expect("engine lock");
            c.daemon = engine.config().daemon.clone();
            if c.announce != engine.config().announce {
                return Response::error(
                    "announce: the [announce] section cannot change while running; restart the daemon (flows are kept); nothing was changed",
                );
            }
            if c.docker != engine.config().docker {
                return Response::error(
                    "discovery.docker: Docker hosts cannot change while running; restart the daemon (flows are kept); nothing was changed",
                );
            }
            if matches!(origin, Origin::Apply | Origin::Reload) {
                keep_registrations(&mut c, engine.config());
            }
            engine.apply_from(&c, origin.as_str())
        };
        match r {
            Ok(changes) => {
                self.after_change(hash.into());
                Response::ok(if changes.is_empty() {
                    vec!["no changes".to_owned()]
                } else {
                    changes.iter().map(Change::to_string).collect()
                })
            }
            Err(EngineError::Config(e)) => Response::error(word(&e)),
            Err(e) => Response::error(e),
        }
    }
}

/// Whether a backend of the running configuration (file schema: NAT backends have their
/// port) is `t`; a target without a port names the backend of that address on the VIP's
/// port, or its only one.
fn same(b: &BackendFile, t: Target) -> bool {
    b.address == Some(t.address) && (t.port == 0 || b.port == Some(i64::from(t.port)))
}

/// The backend of a VIP that `t` names (see `same`): `t` itself, or for a target given
/// without a port the VIP's only backend with that address.
fn resolve_target(vip: Option<&crate::engine::VipRecord>, t: Target) -> Target {
    let Some(v) = vip else { return t };
    if t.port != 0 || v.backends.contains_key(&t) {
        return t;
    }
    let mut same = v.backends.keys().filter(|k| k.address == t.address);
    match (same.next(), same.next()) {
        (Some(only), None) => *only,
        _ => t,
    }
}

/// A new configuration from a file keeps the targets registered at run time (by `xlb
/// backend add --source` or discovery) on the VIPs it still has: the file owns its own
/// targets, not theirs.
pub fn keep_registrations(new: &mut Config, running: &Config) {
    for v in &mut new.vips {
        let Some(old) = running.vip(&v.id) else {
            continue;
        };
        for b in &old.backends {
            if b.source.is_some() && !v.backends.iter().any(|n| n.target() == b.target()) {
                v.backends.push(b.clone());
            }
        }
    }
}

impl Daemon {
    /// Makes the targets of `owner` exactly `targets`: new ones registered, changed ones
    /// updated, gone ones deregistered (they serve out their VIP's deregistration delay).
    /// A target the configuration refuses (a port on a DSR VIP, a duplicate of another
    /// owner's) is left out and logged.
    pub(super) fn apply_discovered(&self, update: crate::discovery::docker::Update) {
        let _one_change = self.one_change();
        let owner = update.owner;
        let mut file = self.engine.lock().expect("engine lock").config().to_file();
        let id_of = |v: &VipFile| -> Option<crate::config::VipId> {
            Some(crate::config::VipId {
                address: v.address?,
                port: u16::try_from(v.port?).ok()?,
                protocol: v.protocol.unwrap_or(crate::config::Protocol::Tcp),
            })
        };
        for v in &mut file.vips {
            let Some(id) = id_of(v) else { continue };
            v.backends.retain(|b| {
                b.source.as_deref() != Some(owner.as_str()) || {
                    let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                    b.address.is_some_and(|a| {
                        update.targets.keys().any(|(vip, t)| {
                            *vip == id && t.ip() == a && (port == 0 || t.port() == port)
                        })
                    })
                }
            });
        }
        for ((vip, target), found) in &update.targets {
            let Some(v) = file.vips.iter_mut().find(|v| id_of(v) == Some(*vip)) else {
                continue;
            };
            let health =
                (found.health_path.is_some() || found.health_port.is_some()).then(|| HealthFile {
                    path: found.health_path.clone(),
                    port: found.health_port.map(i64::from),
                    ..HealthFile::default()
                });
            let existing = v.backends.iter_mut().find(|b| {
                b.address == Some(target.ip())
                    && b.port.is_none_or(|p| p == i64::from(target.port()))
            });
            match existing {
                Some(b) if b.source.as_deref() == Some(owner.as_str()) => {
                    b.weight = found.weight.map(i64::from);
                    b.instance = Some(found.container.clone());
                    b.health_check = health;
                }
                Some(_) => tracing::warn!(
                    vip = %vip, target = %target,
                    "{owner}: container {} is already a target from elsewhere; left as it is",
                    found.container
                ),
                None => v.backends.push(BackendFile {
                    address: Some(target.ip()),
                    port: Some(i64::from(target.port())),
                    weight: found.weight.map(i64::from),
                    health_check: health,
                    source: Some(owner.clone()),
                    instance: Some(found.container.clone()),
                }),
            }
        }
        // Leave out what the configuration refuses, one target at a time.
        for _ in 0..64 {
            match Config::from_file(&file) {
                Ok(c) => {
                    let r = self.apply(c, None, Origin::Discovery);
                    if let Some(e) = r.error {
                        tracing::warn!("{owner}: applying the discovered targets failed: {e}");
                    }
                    return;
                }
                Err(e) => {
                    let crate::config::Location::Backend {
                        vip_index, index, ..
                    } = e.at
                    else {
                        tracing::warn!(
                            "{owner}: the discovered targets are refused: {}",
                            e.for_operator()
                        );
                        return;
                    };
                    let b = &file.vips[vip_index].backends[index];
                    if b.source.as_deref() != Some(owner.as_str()) {
                        tracing::warn!(
                            "{owner}: the configuration is refused: {}",
                            e.for_operator()
                        );
                        return;
                    }
                    tracing::warn!(
                        "{owner}: leaving out container {}: {}",
                        b.instance.as_deref().unwrap_or("?"),
                        e.for_operator()
                    );
                    file.vips[vip_index].backends.remove(index);
                }
            }
        }
        tracing::warn!("{owner}: more than 64 discovered targets refused; this update is dropped");
    }
}

/// Makes a run-time change to the running configuration (in the file schema).
fn apply_edit(f: &mut File, req: Request) -> Result<(), String> {
    // The running configuration in the file schema names every VIP's address, port and
    // protocol explicitly (`Config::to_file`).
    let find = |f: &File, vip: crate::config::VipId| -> Result<usize, String> {
        f.vips
            .iter()
            .position(|v| {
                v.address == Some(vip.address)
                    && v.port == Some(i64::from(vip.port))
                    && v.protocol == Some(vip.protocol)
            })
            .ok_or_else(|| format!("no VIP {vip}"))
    };
    match req {
        Request::VipAdd {
            vip,
            name,
            hash,
            forwarding,
            nat_source,
        } => {
            if find(f, vip).is_ok() {
                return Err(format!("VIP {vip} already exists"));
            }
            f.vips.push(VipFile {
                name,
                address: Some(vip.address),
                port: Some(i64::from(vip.port)),
                protocol: Some(vip.protocol),
                hash: Some(hash),
                forwarding,
                nat_source,
                // An any-port VIP has no port to probe until one is configured.
                health_check: (vip.port == 0).then(|| HealthFile {
                    protocol: Some(ProbeKind::None),
                    ..HealthFile::default()
                }),
                ..VipFile::default()
            });
        }
        Request::VipDel { vip } => {
            let i = find(f, vip)?;
            f.vips.remove(i);
        }
        Request::BackendAdd {
            vip,
            address,
            weight,
            source,
        } => {
            let i = find(f, vip)?;
            let v = &mut f.vips[i];
            if let Some(b) = v.backends.iter_mut().find(|b| same(b, address)) {
                // Registering again for the same owner updates the registration.
                if source.is_some() && b.source == source {
                    if let Some(w) = weight {
                        b.weight = Some(i64::from(w));
                    }
                    return Ok(());
                }
                return Err(format!("VIP {vip} already has backend {address}"));
            }
            v.backends.push(BackendFile {
                address: Some(address.address),
                port: (address.port != 0).then_some(i64::from(address.port)),
                weight: weight.map(i64::from),
                health_check: None,
                source,
                instance: None,
            });
        }
        Request::BackendDel { vip, address } => {
            let i = find(f, vip)?;
            let v = &mut f.vips[i];
            let j = v
                .backends
                .iter()
                .position(|b| same(b, address))
                .ok_or_else(|| format!("VIP {vip} has no backend {address}"))?;
            v.backends.remove(j);
        }
        Request::BackendWeight {
            vip,
            address,
            weight,
        } => {
            let i = find(f, vip)?;
            let b = f.vips[i]
                .backends
                .iter_mut()
                .find(|b| same(b, address))
                .ok_or_else(|| format!("VIP {vip} has no backend {address}"))?;
            b.weight = Some(i64::from(weight));
        }
        _ => unreachable!("handled by the caller"),
    }
    Ok(())
}
