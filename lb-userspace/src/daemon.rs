//! `xlb run`: the daemon.
//!
//! Start-up: mount bpffs if needed, open (or create) the maps pinned under
//! `<pin_dir>/v<layout>/<interface>/`, adopt the state they hold, apply the configuration
//! (or, after a crash, the exact state that ran before), and attach the balancer: a fresh
//! attachment is pinned as a BPF link, and a restart swaps the new program into that link
//! atomically, so forwarding never stops. Then serve the API and the metrics, run health
//! checks, finish deregistrations, and reload on SIGHUP. Stopping the daemon leaves the data
//! plane running; `xlb teardown` removes it.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
};

use crate::{
    api::{Request, Response},
    config::{
        BackendConfig, Config, ConfigError, DEFAULT_WEIGHT, HealthCheck, ProbeKind, VipConfig,
        XdpModeSetting,
    },
    dataplane::Balancer,
    engine::{Engine, EngineError},
    health::{Supervisor, Target, Verdict},
    stats,
};

/// Version of the layout of pinned maps; part of the pin path. Bump it with any change to
/// a map's key, value or meaning, so a new daemon never misreads old pins.
// xlb-dataplane: 2 = CONFIG holds the interface MAC, new reasons in GLOBAL_STATS.
pub const LAYOUT_VERSION: u32 = 2;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Command-line settings of `xlb run` that override the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: Option<String>,
    pub xdp_mode: Option<XdpModeSetting>,
}

/// The pin directory of an interface: `<pin_dir>/v<layout>/<interface>`.
pub fn pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}")).join(iface)
}

/// Where the daemon keeps the state it runs (next to its socket).
pub fn state_file(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".state.json");
    PathBuf::from(s)
}

/// What the daemon saves after every change, to restart into exactly the same state.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    /// Hash of the configuration file the state derives from: if the file has changed
    /// since, the file wins at the next start.
    file_hash: u64,
    xdp_mode: String,
    config: Config,
}

fn file_hash(text: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Interface index of `name` in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Mounts bpffs on /sys/fs/bpf if `dir` lives there and it is not mounted.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    // SAFETY: statfs fills the zeroed struct we pass for a NUL-terminated path.
    let mounted = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    };
    if mounted {
        return Ok(());
    }
    tracing::info!("mounting bpffs on /sys/fs/bpf (needed to pin maps and the XDP link)");
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "cannot mount bpffs on /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Refuses pins left by another layout version for this interface.
fn check_layouts(pin_dir: &Path, iface: &str) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != format!("v{LAYOUT_VERSION}")
            && name.starts_with('v')
            && e.path().join(iface).exists()
        {
            bail!(
                "{} holds pinned state of an incompatible xlb version (layout {name}, this xlb uses v{LAYOUT_VERSION}); \
                 run `xlb teardown --iface {iface}` to remove it (remembered flows are lost) and start again",
                e.path().join(iface).display()
            );
        }
    }
    Ok(())
}

/// Turns on forwarding on the interface: the kernel's FIB lookup, which the balancer uses
/// to find next hops, answers only for interfaces that forward.
fn enable_forwarding(iface: &str) {
    for path in [
        format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
        format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
    ] {
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            _ => match std::fs::write(&path, "1") {
                Ok(()) => tracing::info!(
                    "enabled forwarding ({path}): the FIB lookup for backends needs it"
                ),
                Err(e) => tracing::warn!(
                    "cannot enable forwarding ({path}): {e}; packets may be dropped as forwarding_disabled"
                ),
            },
        }
    }
}

struct Daemon {
    engine: Mutex<Engine>,
    health: Mutex<Supervisor>,
    config_path: PathBuf,
    config: Mutex<Config>,
    iface: String,
    pins: PathBuf,
    xdp_mode: String,
    shutdown: Notify,
    teardown: std::sync::atomic::AtomicBool,
    /// Hash of the configuration file the running state derives from.
    file_hash: Mutex<u64>,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(opts, config, text, iface, ifidx))
}

async fn serve(
    opts: RunOptions,
    config: Config,
    text: String,
    iface: String,
    ifidx: u32,
) -> anyhow::Result<()> {
    let d = &config.daemon;
    ensure_bpffs(&d.pin_dir)?;
    check_layouts(&d.pin_dir, &iface)?;
    let pins = pin_path(&d.pin_dir, &iface);
    std::fs::create_dir_all(&pins).with_context(|| format!("cannot create {}", pins.display()))?;
    let warm = pins.join("link").exists();
    let mut lb = Balancer::load(config.dataplane.limits, Some(&pins))?;
    // xlb-dataplane: neighbour resolution for the data plane, and the interface MAC it
    // checks frames against (set now, before the program is attached; re-checked each second).
    let neighbours = crate::neighbour::prepare(&mut lb, &iface)?;
    let mut engine = Engine::new(lb, config.dataplane.clone());
    let adopted = engine.adopt()?;

    // After a crash or restart with an unchanged file, run exactly what ran before.
    let saved_path = state_file(&d.socket);
    let saved: Option<SavedState> = std::fs::read(&saved_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let saved_mode = saved.as_ref().filter(|_| warm).map(|s| s.xdp_mode.clone());
    let (desired, resumed) = match saved {
        Some(s) if warm && s.file_hash == file_hash(&text) => {
            let mut c = s.config;
            c.daemon = config.daemon.clone();
            c.dataplane.interface = Some(iface.clone());
            (c, true)
        }
        _ => (config.clone(), false),
    };
    let changes = engine.apply(&desired)?;
    if warm {
        tracing::info!(
            adopted,
            resumed_runtime_state = resumed,
            "re-opened the pinned state: flows, tables and counters continue"
        );
    }
    for c in &changes {
        tracing::info!("{c}");
    }

    enable_forwarding(&iface);
    let xdp_mode = match attach(&mut engine, &pins, ifidx, &iface, config.dataplane.xdp_mode)? {
        Some(fresh) => fresh,
        None => saved_mode.unwrap_or_else(|| "as attached by an earlier run".to_owned()),
    };

    let (tx, mut verdicts) = mpsc::channel::<Verdict>(1024);
    let daemon = Arc::new(Daemon {
        engine: Mutex::new(engine),
        health: Mutex::new(Supervisor::new(tx)),
        config_path: opts.config.clone(),
        config: Mutex::new(desired),
        iface: iface.clone(),
        pins: pins.clone(),
        xdp_mode,
        shutdown: Notify::new(),
        teardown: std::sync::atomic::AtomicBool::new(false),
        file_hash: Mutex::new(0),
    });
    daemon.after_change(file_hash(&text));

    // API socket: root only.
    if let Some(dir) = d.socket.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&d.socket);
    let api = UnixListener::bind(&d.socket)
        .with_context(|| format!("cannot listen on {}", d.socket.display()))?;
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %d.socket.display(), "API listening");
    {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                match api.accept().await {
                    Ok((s, _)) => {
                        let daemon = daemon.clone();
                        tokio::spawn(async move { daemon.serve_api(s).await });
                    }
                    Err(e) => tracing::warn!("API accept failed: {e}"),
                }
            }
        });
    }
    if let Some(addr) = d.metrics_address {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("daemon.metrics_address: cannot listen on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    let daemon = daemon.clone();
                    tokio::spawn(async move { daemon.serve_metrics(s).await });
                }
            }
        });
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
                    Ok(()) => daemon.after_change_keep_hash(),
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
                    Ok(v) if !v.is_empty() => daemon.after_change_keep_hash(),
                    Ok(_) => {}
                    Err(e) => tracing::error!("finishing deregistrations failed: {e}"),
                }
            }
        });
    }
    tokio::spawn(neighbours.run()); // xlb-dataplane
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(interface = %iface, mode = %daemon.xdp_mode, "xlb is balancing");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", daemon.config_path.display());
                let r = daemon.handle(Request::Reload);
                if let Some(e) = r.error { tracing::error!("reload refused, nothing changed: {e}"); }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = daemon.shutdown.notified() => break,
        }
    }
    if daemon.teardown.load(std::sync::atomic::Ordering::SeqCst) {
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

/// Attaches the balancer, or swaps it into the link pinned by a previous run. Returns the
/// XDP mode of a fresh attachment, `None` when an existing link was reused.
fn attach(
    engine: &mut Engine,
    pins: &Path,
    ifidx: u32,
    iface: &str,
    mode: XdpModeSetting,
) -> anyhow::Result<Option<String>> {
    let link_pin = pins.join("link");
    let prog = engine.balancer_mut().program_mut();
    if link_pin.exists() {
        let replaced = PinnedLink::from_pin(&link_pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(XdpLink::try_from(FdLink::from(p))?))
            .and_then(|l| Ok(prog.attach_to_link(l)?));
        match replaced {
            Ok(_) => {
                tracing::info!("replaced the program in the pinned XDP link atomically");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!("the pinned XDP link is unusable ({e}); attaching afresh");
                let _ = std::fs::remove_file(&link_pin);
            }
        }
    }
    let (id, used) = match mode {
        XdpModeSetting::Native => (
            prog.attach_to_if_index(ifidx, XdpMode::Driver).with_context(|| {
                format!("attaching in native mode to {iface} failed; its driver may lack XDP support (set dataplane.xdp_mode = \"auto\" or \"generic\")")
            })?,
            "native",
        ),
        XdpModeSetting::Generic => (prog.attach_to_if_index(ifidx, XdpMode::Skb)?, "generic"),
        XdpModeSetting::Auto => match prog.attach_to_if_index(ifidx, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                tracing::warn!("native XDP on {iface} failed ({e}); falling back to generic XDP, which is much slower");
                (prog.attach_to_if_index(ifidx, XdpMode::Skb)?, "generic")
            }
        },
    };
    let link = FdLink::try_from(prog.take_link(id)?)
        .context("the XDP attachment is not a BPF link (kernel older than 5.9?)")?;
    link.pin(&link_pin)
        .with_context(|| format!("cannot pin the XDP link at {}", link_pin.display()))?;
    Ok(Some(used.to_owned()))
}

impl Daemon {
    /// Saves the running state and restarts health checks for what changed.
    fn after_change(&self, hash: u64) {
        let (desired, targets) = {
            let engine = self.engine.lock().expect("engine lock");
            let daemon_cfg = self.config.lock().expect("config lock").daemon.clone();
            let desired = engine.desired(&daemon_cfg);
            let targets: Vec<Target> = engine
                .vips()
                .iter()
                .flat_map(|(vid, v)| {
                    v.backends.values().map(|b| Target {
                        vip: *vid,
                        backend: b.config.address,
                        check: b.config.health.clone(),
                        current: b.health,
                    })
                })
                .collect();
            (desired, targets)
        };
        self.health.lock().expect("health lock").reconcile(targets);
        let saved = SavedState {
            file_hash: hash,
            xdp_mode: self.xdp_mode.clone(),
            config: desired.clone(),
        };
        *self.config.lock().expect("config lock") = desired;
        let path = state_file(&saved.config.daemon.socket);
        let tmp = path.with_extension("tmp");
        let write = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = write {
            tracing::warn!("cannot save the running state to {}: {e}", path.display());
        }
        *self.file_hash.lock().expect("hash lock") = hash;
    }

    fn after_change_keep_hash(&self) {
        let h = *self.file_hash.lock().expect("hash lock");
        self.after_change(h);
    }

    async fn serve_api(&self, s: UnixStream) {
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r.take(16 << 20)).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let teardown = matches!(req, Request::Teardown);
                    let r = self.handle(req);
                    if teardown && r.ok {
                        let _ = write_response(&mut w, &r).await;
                        self.shutdown.notify_one();
                        return;
                    }
                    r
                }
                Err(e) => Response::error(format!("malformed request: {e}")),
            };
            if write_response(&mut w, &response).await.is_err() {
                return;
            }
        }
    }

    /// Handles one request. Every change is validated whole first; on error nothing changed.
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => {
                let engine = self.engine.lock().expect("engine lock");
                match stats::snapshot(&engine, &self.iface, &self.xdp_mode) {
                    Ok(s) => Response {
                        status: Some(s),
                        ..Response::ok(Vec::new())
                    },
                    Err(e) => Response::error(e),
                }
            }
            Request::Apply { config, origin } => match Config::parse(&config, &origin) {
                Ok(c) => self.apply(c, file_hash_of(&self.config_path)),
                Err(e) => Response::error(e),
            },
            Request::Reload => match std::fs::read_to_string(&self.config_path) {
                Ok(text) => match Config::parse(&text, &self.config_path.display().to_string()) {
                    Ok(c) => self.apply(c, file_hash(&text)),
                    Err(e) => Response::error(e),
                },
                Err(e) => {
                    Response::error(format!("cannot read {}: {e}", self.config_path.display()))
                }
            },
            Request::Teardown => match self.do_teardown() {
                Ok(()) => Response::ok(vec![
                    "balancer detached, pins removed, daemon stopping".to_owned(),
                ]),
                Err(e) => Response::error(e),
            },
            Request::BackendDrain { vip, address } | Request::BackendUndrain { vip, address } => {
                let drain = matches!(req, Request::BackendDrain { .. });
                let r = self
                    .engine
                    .lock()
                    .expect("engine lock")
                    .set_drained(&vip, address, drain);
                match r {
                    Ok(changed) => {
                        self.after_change_keep_hash();
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
            other => {
                let mut c = self.config.lock().expect("config lock").clone();
                if let Err(e) = edit(&mut c, other) {
                    return Response::error(e);
                }
                let h = *self.file_hash.lock().expect("hash lock");
                self.apply(c, h)
            }
        }
    }

    fn apply(&self, mut c: Config, hash: u64) -> Response {
        match &c.dataplane.interface {
            Some(i) if ifindex(i).is_none() => {
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
        c.daemon = self.config.lock().expect("config lock").daemon.clone();
        let r = self.engine.lock().expect("engine lock").apply(&c);
        match r {
            Ok(changes) => {
                self.after_change(hash);
                Response::ok(if changes.is_empty() {
                    vec!["no changes".to_owned()]
                } else {
                    changes
                })
            }
            Err(EngineError::Config(e)) => Response::error(humanize(&e, &c)),
            Err(e) => Response::error(e),
        }
    }

    fn do_teardown(&self) -> anyhow::Result<()> {
        self.teardown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        teardown_pins(&self.pins)?;
        let socket = self
            .config
            .lock()
            .expect("config lock")
            .daemon
            .socket
            .clone();
        let _ = std::fs::remove_file(state_file(&socket));
        Ok(())
    }

    async fn serve_metrics(&self, mut s: tokio::net::TcpStream) {
        let mut buf = vec![0u8; 8192];
        let mut n = 0;
        while n < buf.len() {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..])).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                Ok(Ok(r)) => n += r,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let (status, ctype, body) =
            if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                let snap = {
                    let engine = self.engine.lock().expect("engine lock");
                    stats::snapshot(&engine, &self.iface, &self.xdp_mode)
                };
                match snap {
                    Ok(s) => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        crate::metrics::render(&s),
                    ),
                    Err(e) => (
                        "500 Internal Server Error",
                        "text/plain",
                        format!("reading the counters failed: {e}\n"),
                    ),
                }
            } else if head.starts_with("GET ") {
                (
                    "404 Not Found",
                    "text/plain",
                    "only /metrics is served here\n".to_owned(),
                )
            } else {
                (
                    "405 Method Not Allowed",
                    "text/plain",
                    "read-only: GET /metrics\n".to_owned(),
                )
            };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes()).await;
    }
}

fn file_hash_of(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .map(|t| file_hash(&t))
        .unwrap_or(0)
}

async fn write_response(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

/// Applies a runtime operation to a copy of the running configuration.
fn edit(c: &mut Config, req: Request) -> Result<(), String> {
    let find = |c: &mut Config, vip| -> Result<usize, String> {
        c.vips
            .iter()
            .position(|v| v.id == vip)
            .ok_or_else(|| format!("no VIP {vip}"))
    };
    match req {
        Request::VipAdd { vip, name, hash } => {
            if c.vip(&vip).is_some() {
                return Err(format!("VIP {vip} already exists"));
            }
            let health = if vip.port == 0 {
                HealthCheck {
                    kind: ProbeKind::None,
                    ..HealthCheck::default_for_port(80)
                }
            } else {
                HealthCheck::default_for_port(vip.port)
            };
            c.vips.push(VipConfig {
                name: name.unwrap_or_else(|| vip.to_string()),
                id: vip,
                hash,
                deregistration_delay: crate::config::DEFAULT_DEREGISTRATION_DELAY,
                health,
                backends: Vec::new(),
            });
        }
        Request::VipDel { vip } => {
            let i = find(c, vip)?;
            c.vips.remove(i);
        }
        Request::BackendAdd {
            vip,
            address,
            weight,
        } => {
            let i = find(c, vip)?;
            let v = &mut c.vips[i];
            if v.backends.iter().any(|b| b.address == address) {
                return Err(format!("VIP {vip} already has backend {address}"));
            }
            v.backends.push(BackendConfig {
                address,
                weight: weight.unwrap_or(DEFAULT_WEIGHT),
                health: v.health.clone(),
            });
        }
        Request::BackendDel { vip, address } => {
            let i = find(c, vip)?;
            let v = &mut c.vips[i];
            let j = v
                .backends
                .iter()
                .position(|b| b.address == address)
                .ok_or_else(|| format!("VIP {vip} has no backend {address}"))?;
            v.backends.remove(j);
        }
        Request::BackendWeight {
            vip,
            address,
            weight,
        } => {
            let i = find(c, vip)?;
            let b = c.vips[i]
                .backends
                .iter_mut()
                .find(|b| b.address == address)
                .ok_or_else(|| format!("VIP {vip} has no backend {address}"))?;
            b.weight = weight;
        }
        _ => unreachable!("handled by the caller"),
    }
    Ok(())
}

/// Rewrites `vip[i].backends[j].x` into `VIP 203.0.113.10:80/tcp backend 198.51.100.21 x`
/// for errors about runtime changes, where indexes mean nothing to the operator.
fn humanize(e: &ConfigError, c: &Config) -> String {
    let f = &e.field;
    let Some(rest) = f.strip_prefix("vip[") else {
        return e.to_string();
    };
    let Some((i, rest)) = rest.split_once(']') else {
        return e.to_string();
    };
    let Some(v) = i.parse::<usize>().ok().and_then(|i| c.vips.get(i)) else {
        return e.to_string();
    };
    let mut out = format!("VIP {}", v.id);
    let rest = rest.trim_start_matches('.');
    if let Some(b) = rest.strip_prefix("backends[")
        && let Some((j, field)) = b.split_once(']')
        && let Some(be) = j.parse::<usize>().ok().and_then(|j| v.backends.get(j))
    {
        out.push_str(&format!(" backend {}", be.address));
        let field = field.trim_start_matches('.');
        if !field.is_empty() && field != "address" {
            out.push_str(&format!(" {field}"));
        }
    } else if !rest.is_empty() && rest != "address" {
        out.push_str(&format!(" {rest}"));
    }
    format!("{out}: {}", e.message)
}

/// Detaches the balancer (removing the link pin detaches it once no process holds it) and
/// removes every pinned map.
pub fn teardown_pins(pins: &Path) -> anyhow::Result<()> {
    if !pins.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(pins)?.flatten() {
        std::fs::remove_file(e.path())
            .with_context(|| format!("cannot remove {}", e.path().display()))?;
    }
    std::fs::remove_dir(pins).with_context(|| format!("cannot remove {}", pins.display()))?;
    Ok(())
}

/// Removes pins of every layout version for an interface (used by `xlb teardown` when no
/// daemon runs).
pub fn teardown_all_layouts(pin_dir: &Path, iface: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(removed);
    };
    for e in entries.flatten() {
        let p = e.path().join(iface);
        if p.exists() {
            teardown_pins(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Used by tests and the CLI: whether the string is an address.
pub fn parse_addr(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}
