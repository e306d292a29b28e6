//! `xlb run`: the daemon.
//!
//! Start-up: bind the API socket and the metrics listener (so a start that cannot serve
//! fails before it touches the data plane), mount bpffs if needed, open (or create) the maps
//! pinned under `<pin_dir>/v<layout>/<interface>/`, adopt the state they hold, apply the
//! configuration (or, after a crash or restart with an unchanged file, the exact state that
//! ran before), and attach the balancer: a fresh attachment is pinned as a BPF link, and a
//! restart swaps the new program into that link atomically, so forwarding never stops. Then
//! serve the API and the metrics, run health checks, finish deregistrations, and reload on
//! SIGHUP. Stopping the daemon leaves the data plane running; `xlb teardown` removes it.
//!
//! The parts: `pins` (bpffs, pins, attach), `host` (interfaces, sysctls), `saved` (the
//! saved running state), `commands` (what each request does), `api_server` and
//! `metrics_server`.

mod announce;
mod api_server;
mod commands;
pub mod host;
mod metrics_server;
mod page;
pub mod pins;
pub mod saved;
mod slots;
pub mod sweeper;
mod trace;
pub use slots::Throttled;

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
};

pub use host::ifindex;
pub use pins::{LAYOUT_VERSION, ensure_bpffs, pin_path, teardown_all_layouts, teardown_pins};
pub use saved::state_file;

use crate::{
    api::Request,
    config::{Config, XdpMode},
    dataplane::Balancer,
    engine::{Engine, EngineError},
    health::{HealthChange, Probe, Supervisor},
};
use saved::{Saved, file_hash};

/// Command-line settings of `xlb run` that override the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub xdp_mode: Option<XdpMode>,
}

/// What the daemon's tasks share.
struct Daemon {
    engine: Mutex<Engine>,
    health: Mutex<Supervisor>,
    config_path: PathBuf,
    iface: String,
    pins: PathBuf,
    /// How the balancer is attached (`None`: by an earlier run, mode unknown).
    xdp_mode: Option<XdpMode>,
    shutdown: Notify,
    teardown: std::sync::atomic::AtomicBool,
    /// Hash of the configuration file the running state derives from.
    file_hash: Mutex<u64>,
    state_path: PathBuf,
    /// With `[announce]`: the routes this host announces.
    announcer: Option<Arc<announce::Announcer>>,
    /// Counters sampled every two seconds, for the status page's rates and sparklines.
    history: Mutex<page::History>,
    /// The configuration's VIPs, for the discovery watchers (labels must name one).
    discovery_vips: tokio::sync::watch::Sender<std::collections::BTreeSet<crate::config::VipId>>,
    /// What the NAT sweeper last counted.
    nat_use: Mutex<crate::stats::NatUse>,
    /// Held while a change of the running configuration is made (`commands::one_change`).
    changes: Mutex<()>,
    /// Where the data plane's trace records go (`xlb trace`).
    trace_sink: crate::trace::Sink,
}

/// Runs the daemon until SIGTERM/SIGINT (data plane left running) or `xlb teardown`.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read the configuration {}", opts.config.display()))?;
    let mut config = Config::parse(&text, &opts.config.display().to_string())?;
    if let Some(i) = &opts.iface {
        config.dataplane.interface = Some(i.clone());
    }
    if let Some(m) = opts.xdp_mode {
        config.dataplane.xdp_mode = m;
    }
    let iface =
        config.dataplane.interface.clone().context(
            "no interface: set dataplane.interface in the configuration or pass --iface",
        )?;
    let ifidx = ifindex(&iface)
        .with_context(|| format!("dataplane.interface: no interface named {iface:?}"))?;
    host::check_privileges()?;
    host::check_paths(&config)?;
    host::raise_fd_limit(config.dataplane.limits.max_backends);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let socket = config.daemon.socket.clone();
    let r = rt.block_on(serve(opts, config, text, iface, ifidx));
    if r.is_err() {
        // A start that failed leaves no socket behind for clients to hang on.
        let _ = std::fs::remove_file(&socket);
    }
    r
}

/// Creates a directory the daemon owns (0700), or checks that an existing one is safe
/// (owned by root, writable by nobody else); never changes one it did not make.
fn private_dir(dir: &Path, setting: &str) -> anyhow::Result<()> {
    host::check_private_dir(dir, setting)?;
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{setting}: cannot create {}", parent.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("{setting}: cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// The API socket: root only (a 0700 directory, a 0600 socket). Refuses to take over the
/// socket of a daemon that still answers on it.
async fn bind_api(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        private_dir(dir, "daemon.socket")?;
    }
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!(
            "another xlb daemon answers on {}; stop it first (or use another daemon.socket)",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(socket);
    let api = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(api)
}

async fn serve(
    opts: RunOptions,
    config: Config,
    text: String,
    iface: String,
    ifidx: u32,
) -> anyhow::Result<()> {
    let d = &config.daemon;
    // Listeners first: a daemon that cannot serve must not touch the data plane.
    let api = bind_api(&d.socket).await?;
    let metrics = match d.metrics_address {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("daemon.metrics_address: cannot listen on {addr}"))?,
        ),
        None => None,
    };

    ensure_bpffs(&d.pin_dir)?;
    private_dir(&d.pin_dir, "daemon.pin_dir")?;
    pins::check_layouts(&d.pin_dir, &iface)?;
    let pins = pin_path(&d.pin_dir, &iface);
    for dir in [pins.parent().expect("a layout directory"), &pins] {
        private_dir(dir, "daemon.pin_dir")?;
    }
    let warm = pins.join("link").exists();
    let mut lb = Balancer::load(config.dataplane.limits, Some(&pins))?;
    // Neighbour resolution for the data plane, and the interface MAC it checks frames
    // against (set now, before the program is attached; re-checked every second).
    let neighbours = crate::neighbour::prepare(&mut lb, &iface)?;
    let trace_sink = crate::trace::Sink::default();
    tokio::spawn(crate::trace::run(lb.take_trace_logger(trace_sink.clone())?));
    let mut engine = Engine::new(lb, config.dataplane.clone());
    let adopted = engine.adopt()?;

    // After a crash or restart with an unchanged file, run exactly what ran before.
    let state_path = state_file(&d.socket);
    let saved = Saved::load(&state_path);
    let saved_mode = saved.as_ref().filter(|_| warm).and_then(|s| s.xdp_mode);
    let (desired, resumed) = match saved {
        Some(s) if warm && s.file_hash == file_hash(&text) => {
            let mut c = s.config;
            c.daemon = config.daemon.clone();
            c.dataplane.interface = Some(iface.clone());
            (c, true)
        }
        // An edited file wins, but the targets registered at run time (`--source`,
        // discovery) are not the file's to drop, as on a reload.
        Some(s) => {
            let mut c = config.clone();
            commands::keep_registrations(&mut c, &s.config);
            (c, false)
        }
        None => (config.clone(), false),
    };
    if let Err(e) = engine.apply_from(&desired, if resumed { "saved state" } else { "start-up" }) {
        if resumed || desired == config {
            return Err(e.into());
        }
        tracing::warn!(
            "the targets registered before the restart do not fit the edited file ({e}); starting with the file's alone"
        );
        engine.apply_from(&config, "start-up")?;
    }
    for v in &engine.config().vips {
        tracing::info!(
            vip = %v.id,
            name = %v.name,
            hash = %v.hash,
            backends = v.backends.len(),
            "serving VIP"
        );
    }
    if warm {
        tracing::info!(
            adopted,
            resumed_runtime_state = resumed,
            "re-opened the pinned state: flows, tables and counters continue"
        );
    }

    host::enable_forwarding(&iface);
    let xdp_mode = pins::attach(
        engine.maps_mut(),
        &pins,
        ifidx,
        &iface,
        config.dataplane.xdp_mode,
    )?
    .or(saved_mode);

    let (tx, mut verdicts) = mpsc::channel::<HealthChange>(1024);
    let daemon = Arc::new(Daemon {
        engine: Mutex::new(engine),
        health: Mutex::new(Supervisor::new(tx)),
        config_path: opts.config.clone(),
        iface: iface.clone(),
        pins: pins.clone(),
        xdp_mode,
        shutdown: Notify::new(),
        teardown: std::sync::atomic::AtomicBool::new(false),
        file_hash: Mutex::new(0),
        state_path,
        announcer: desired
            .announce
            .clone()
            .map(|a| Arc::new(announce::Announcer::new(a))),
        history: Mutex::new(page::History::default()),
        discovery_vips: tokio::sync::watch::channel(Default::default()).0,
        nat_use: Mutex::new(crate::stats::NatUse::default()),
        changes: Mutex::new(()),
        trace_sink,
    });
    daemon.after_change(Some(file_hash(&text)));

    tracing::info!(socket = %d.socket.display(), "API listening");
    tokio::spawn(api_server::serve(daemon.clone(), api));
    if let Some(listener) = metrics {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        tokio::spawn(metrics_server::serve(daemon.clone(), listener));
    }
    {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            while let Some(v) = verdicts.recv().await {
                let r = daemon
                    .engine
                    .lock()
                    .expect("engine lock")
                    .set_health(&v.vip, v.backend, v.health, &v.reason);
                match r {
                    Ok(()) => daemon.after_change(None),
                    Err(EngineError::NoSuchVip(_) | EngineError::NoSuchBackend { .. }) => {}
                    Err(e) => tracing::error!("applying a health verdict failed: {e}"),
                }
            }
        });
    }
    {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let done = daemon
                    .engine
                    .lock()
                    .expect("engine lock")
                    .tick(Instant::now());
                match done {
                    Ok(v) if !v.is_empty() => daemon.after_change(None),
                    Ok(_) => {}
                    Err(e) => tracing::error!("finishing deregistrations failed: {e}"),
                }
            }
        });
    }
    tokio::spawn(neighbours.run());
    {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if let Ok(s) = daemon.snapshot() {
                    daemon.history.lock().expect("history lock").record(&s);
                }
            }
        });
    }
    let announcing = daemon
        .announcer
        .as_ref()
        .map(|a| tokio::spawn(announce::run(daemon.clone(), a.clone())));
    let sources = daemon
        .engine
        .lock()
        .expect("engine lock")
        .config()
        .docker
        .clone();
    if !sources.is_empty() {
        let (tx, mut rx) = mpsc::channel(16);
        for src in sources {
            tracing::info!(docker = %src.name, "discovering labelled containers");
            tokio::spawn(crate::discovery::docker::watch(
                src,
                daemon.discovery_vips.subscribe(),
                tx.clone(),
            ));
        }
        let daemon = daemon.clone();
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                let d = daemon.clone();
                // Applying builds tables: off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || d.apply_discovered(update)).await;
            }
        });
    }
    tokio::spawn(sweeper::run(daemon.clone()));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mode = xdp_mode.map_or("as attached by an earlier run", |m| m.as_str());
    tracing::info!(interface = %iface, mode, "xlb is balancing");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", daemon.config_path.display());
                let r = daemon.handle(Request::Reload);
                if let Some(e) = r.error { tracing::error!("reload refused, nothing changed: {e}"); }
            }
            _ = term.recv() => { daemon.withdraw_before_stop().await; break }
            _ = int.recv() => { daemon.withdraw_before_stop().await; break }
            _ = daemon.shutdown.notified() => break,
        }
    }
    if daemon.teardown.load(std::sync::atomic::Ordering::SeqCst) {
        // Stopped first, or its next round could install a route again.
        if let Some(task) = &announcing {
            task.abort();
        }
        if let Some(a) = &daemon.announcer
            && let Err(e) = announce::remove_all(&a.settings).await
        {
            tracing::warn!("removing the announced routes failed: {e}");
        }
        tracing::info!("torn down: balancer detached, pins removed");
    } else {
        tracing::info!(
            "stopping; the data plane keeps forwarding (pinned in {})",
            pins.display()
        );
    }
    let _ = std::fs::remove_file(&d.socket);
    Ok(())
}

impl Daemon {
    /// The status snapshot, with what the announcer knows.
    fn snapshot(&self) -> Result<crate::api::Snapshot, crate::dataplane::DataplaneError> {
        let mut s = {
            let engine = self.engine.lock().expect("engine lock");
            crate::stats::snapshot(
                &engine,
                &self.iface,
                self.xdp_mode,
                &self.nat_use.lock().expect("nat lock"),
            )?
        };
        if let Some(a) = &self.announcer {
            let decisions = a.decisions.lock().expect("decisions lock").clone();
            for v in &mut s.vips {
                v.announce = decisions.get(&v.vip).copied();
            }
            s.announce = Some(crate::api::AnnounceStatus {
                table: a.settings.table,
                protocol: a.settings.protocol,
                withdrawn: a.withdrawn.load(std::sync::atomic::Ordering::SeqCst),
                snat: a
                    .snat
                    .lock()
                    .expect("snat lock")
                    .iter()
                    .map(|(address, why)| crate::api::SnatAnnounce {
                        address: *address,
                        why: *why,
                    })
                    .collect(),
                installed: a
                    .installed
                    .lock()
                    .expect("installed lock")
                    .iter()
                    .copied()
                    .collect(),
            });
        }
        Ok(s)
    }

    /// With `withdraw_on_stop`: withdraws every VIP, then waits until traffic to them has
    /// stopped (no VIP packet for two seconds) or the drain timeout passes.
    async fn withdraw_before_stop(&self) {
        let Some(a) = self
            .announcer
            .as_ref()
            .filter(|a| a.settings.withdraw_on_stop)
        else {
            return;
        };
        tracing::info!("stopping: withdrawing every VIP first");
        let reconciled = a.reconciled.notified();
        a.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        a.wake();
        let _ = tokio::time::timeout(Duration::from_secs(5), reconciled).await;
        match self.wait_for_quiet(a.settings.drain_timeout).await {
            Some(t) => tracing::info!(
                "traffic to the VIPs stopped {:.1}s after the withdrawal",
                t.as_secs_f64()
            ),
            None => tracing::warn!(
                "traffic to the VIPs still arrives after {:?}; stopping anyway (forwarding goes on)",
                a.settings.drain_timeout
            ),
        }
        // The SNAT routes go once their NAT connections have ended or the drain timeout
        // (counted from the withdrawal) has passed: the announcer decides, this waits.
        let limit = Instant::now() + a.settings.drain_timeout + Duration::from_secs(5);
        while a.snat_announced() && Instant::now() < limit {
            let reconciled = a.reconciled.notified();
            let _ = tokio::time::timeout(Duration::from_secs(2), reconciled).await;
        }
    }

    /// Waits until no VIP packet has been forwarded for two seconds; `None` if `limit`
    /// passes first. Returns how long the traffic took to stop.
    async fn wait_for_quiet(&self, limit: Duration) -> Option<Duration> {
        const QUIET: Duration = Duration::from_secs(2);
        let start = Instant::now();
        let total = |d: &Self| -> u64 {
            d.snapshot()
                .map(|s| s.vips.iter().map(|v| v.counters.packets).sum())
                .unwrap_or(0)
        };
        let (mut last, mut since) = (total(self), Instant::now());
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = total(self);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= QUIET {
                return Some(since.duration_since(start));
            }
        }
        None
    }

    /// Saves the running state and restarts health checks for what changed; `hash` is the
    /// configuration file's, when the change came from the file.
    fn after_change(&self, hash: Option<u64>) {
        let (config, probes) = {
            let engine = self.engine.lock().expect("engine lock");
            let probes: Vec<Probe> = engine
                .vips()
                .iter()
                .flat_map(|(vid, v)| {
                    v.backends.values().map(|b| Probe {
                        vip: *vid,
                        backend: b.config.target(),
                        check: b.config.health.clone(),
                        current: b.health,
                    })
                })
                .collect();
            (engine.config().clone(), probes)
        };
        self.health.lock().expect("health lock").reconcile(probes);
        let file_hash = {
            let mut h = self.file_hash.lock().expect("hash lock");
            if let Some(new) = hash {
                *h = new;
            }
            *h
        };
        let saved = Saved {
            file_hash,
            xdp_mode: self.xdp_mode,
            config,
        };
        if let Some(a) = &self.announcer {
            a.wake();
        }
        let vips: std::collections::BTreeSet<_> = saved.config.vips.iter().map(|v| v.id).collect();
        self.discovery_vips.send_if_modified(|v| {
            let changed = *v != vips;
            *v = vips;
            changed
        });
        if let Err(e) = saved.save(&self.state_path) {
            tracing::warn!(
                "cannot save the running state to {}: {e}",
                self.state_path.display()
            );
        }
    }

    /// The hash of the configuration file as it is now.
    fn config_file_hash(&self) -> u64 {
        std::fs::read_to_string(&self.config_path)
            .map(|t| file_hash(&t))
            .unwrap_or(0)
    }

    fn teardown(&self) -> anyhow::Result<()> {
        self.teardown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        teardown_pins(&self.pins)?;
        // The layout directory goes with its last interface.
        if let Some(layout) = self.pins.parent() {
            let _ = std::fs::remove_dir(layout);
        }
        let _ = std::fs::remove_file(&self.state_path);
        Ok(())
    }
}
