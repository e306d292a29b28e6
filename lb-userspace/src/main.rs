//! `xlb`: the command line. `xlb run` is the daemon; `check` and `decap` work alone; every
//! other command is a client of the daemon's local API.
//!
//! Exit codes: 0 success; 1 the operation was refused or failed (the message says why,
//! nothing was changed); 2 bad command line; 3 the daemon could not be reached.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use xlb::{
    api::{self, ClientError, Request, Response},
    config::{self, Config, Forwarding, HashMode, NatSource, Target, VipId, XdpMode},
    daemon, decap, stats,
};

const EXAMPLES: &str = "Examples:
  xlb run --config /etc/xlb/xlb.toml            start the daemon (foreground)
  xlb check -c /etc/xlb/xlb.toml                validate a configuration
  xlb apply -f /etc/xlb/xlb.toml                apply a changed configuration
  xlb status                                    VIPs, backends, health, counters
  xlb stats --watch 1                           counters with rates, refreshed every second
  xlb backend drain 203.0.113.10:80/tcp 198.51.100.21
  xlb vip add 203.0.113.20:443/tcp --hash source-address
  xlb decap --iface eth0                        on a backend: decapsulate what balancers send

Exit codes: 0 ok, 1 refused or failed (nothing changed), 2 bad usage, 3 daemon unreachable.";

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP L4 load balancer with Maglev consistent hashing", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a client command reaches the daemon.
#[derive(Args, Clone)]
struct Conn {
    /// The daemon's API socket (as daemon.socket in its configuration).
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// How a command prints what it reports.
#[derive(Args, Clone, Copy)]
struct Out {
    /// Output format: text for people, json for programs.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

impl Out {
    fn json(self) -> bool {
        self.output == Output::Json
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground: attach the balancer, apply the configuration, serve
    /// the API and metrics, check health. Stopping it leaves the data plane forwarding.
    #[command(
        after_help = "Example:\n  xlb run --config /etc/xlb/xlb.toml --iface eth0\n\nSIGHUP reloads the configuration file; SIGTERM stops the daemon (forwarding continues)."
    )]
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The interface to attach to (overrides dataplane.interface).
        #[arg(long)]
        iface: Option<String>,
        /// XDP attachment mode (overrides dataplane.xdp_mode).
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// Log lines as text (coloured only on a terminal) or one JSON object each, for log
        /// shippers. The level comes from XLB_LOG (default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration file without applying it.
    #[command(after_help = "Example:\n  xlb check -c /etc/xlb/xlb.toml")]
    Check {
        /// The configuration file to validate.
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        out: Out,
    },
    /// Apply a configuration file to the running daemon: VIPs and backends are added,
    /// removed or changed; unchanged VIPs keep their tables and flows.
    #[command(after_help = "Example:\n  xlb apply -f /etc/xlb/xlb.toml")]
    Apply {
        /// The configuration file to apply (validated here first, then by the daemon).
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Add, remove or list VIPs.
    Vip {
        #[command(subcommand)]
        cmd: VipCommand,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Add, remove, drain, undrain or reweight backends.
    Backend {
        #[command(subcommand)]
        cmd: BackendCommand,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// VIPs and backends with weight, health, state and counters.
    Status {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Counters per VIP and backend, with rates.
    #[command(after_help = "Example:\n  xlb stats --watch 2")]
    Stats {
        /// Refresh every INTERVAL seconds (default 1) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "INTERVAL")]
        watch: Option<f64>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Show where packets go and why: each matching packet's decision as the data plane made
    /// it (flow table, VIP, Maglev slot, backend, NAT, action and reason), until COUNT
    /// packets or Ctrl-C. Only one trace runs at a time.
    #[command(
        after_help = "Examples:\n  xlb trace --vip 203.0.113.10:80 --count 10\n  xlb trace --client 192.0.2.50 -o json"
    )]
    Trace {
        /// Only packets to this VIP: ADDRESS, or ADDRESS:PORT ([2001:db8::1]:443).
        #[arg(long, value_parser = parse_vip_filter)]
        vip: Option<std::net::SocketAddr>,
        /// Only packets from this client address (and NAT replies to it).
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// Stop after this many packets (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// On a backend: decapsulate packets that balancers send to this host's addresses.
    #[command(
        after_help = "Examples:\n  xlb decap --iface eth0\n  xlb decap --iface eth0 --address 198.51.100.21\n  xlb decap --iface eth0 --detach"
    )]
    Decap(DecapArgs),
    /// Withdraw this host's VIPs from the routers (drain it) or announce them again.
    Announce {
        #[command(subcommand)]
        cmd: AnnounceCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Detach the balancer and remove its pinned maps (remembered flows and counters are lost).
    #[command(
        after_help = "Examples:\n  xlb teardown                   ask the running daemon to tear down and stop\n  xlb teardown --iface eth0      without a daemon: remove the pins for eth0"
    )]
    Teardown {
        /// Interface whose pins to remove when no daemon is running.
        #[arg(long)]
        iface: Option<String>,
        /// Pin directory (as in daemon.pin_dir).
        #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print shell completions for xlb.
    #[command(after_help = "Example:\n  xlb completions bash > /etc/bash_completion.d/xlb")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (xlb.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum VipCommand {
    /// Add a VIP (ADDRESS:PORT/PROTOCOL; port 0 takes every port).
    #[command(after_help = "Example:\n  xlb vip add 203.0.113.10:80/tcp --name web")]
    Add {
        /// The VIP: ADDRESS:PORT/PROTOCOL (203.0.113.10:80/tcp, [2001:db8::1]:443/tcp).
        vip: VipId,
        /// Name shown in status and metrics (1-64 printable characters; default the VIP).
        #[arg(long)]
        name: Option<String>,
        /// What the flow hash covers: the 5-tuple, or the source address (affinity).
        #[arg(long, value_enum, default_value_t = HashMode::FiveTuple)]
        hash: HashMode,
        /// dsr (backends run `xlb decap`) or nat (targets as ADDRESS:PORT, nothing on them).
        #[arg(long, value_enum)]
        forwarding: Option<Forwarding>,
        /// NAT: snat (a SNAT address of this host) or client (the client's own address).
        #[arg(long, value_enum)]
        nat_source: Option<NatSource>,
    },
    /// Remove a VIP (its connections end).
    Del {
        /// The VIP: ADDRESS:PORT/PROTOCOL.
        vip: VipId,
    },
    /// List VIPs.
    List,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend to a VIP; it takes traffic once its health check passes. A NAT VIP's
    /// target is ADDRESS:PORT (`198.51.100.20:32768`, `[2001:db8::20]:3000`; the port
    /// defaults to the VIP's).
    #[command(
        after_help = "Examples:\n  xlb backend add 203.0.113.10:80/tcp 198.51.100.23 --weight 50\n  xlb backend add 203.0.113.20:80/tcp 198.51.100.20:32768"
    )]
    Add {
        #[command(flatten)]
        which: Which,
        /// Share of new flows, 0-1000000 (default 100; 0 takes no new flows).
        #[arg(long)]
        weight: Option<u32>,
        /// Register the target for this owner (an orchestrator, a deploy tool): it outlives
        /// reloads of the configuration file, and adding it again for the same owner updates
        /// its weight.
        #[arg(long)]
        source: Option<String>,
    },
    /// List backends with their owner: the configuration file, a `--source`, or a Docker
    /// host and container.
    #[command(after_help = "Example:\n  xlb backend list --source docker:host-a")]
    List {
        /// Only this VIP's.
        #[arg(long)]
        vip: Option<VipId>,
        /// Only those registered by this owner (`config` for the file's).
        #[arg(long)]
        source: Option<String>,
    },
    /// Remove a backend: it keeps its existing flows for the VIP's deregistration delay.
    Del {
        #[command(flatten)]
        which: Which,
    },
    /// Stop sending new flows to a backend; existing flows stay. Survives daemon restarts.
    Drain {
        #[command(flatten)]
        which: Which,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        #[command(flatten)]
        which: Which,
    },
    /// Change a backend's weight (0: no new flows).
    Weight {
        #[command(flatten)]
        which: Which,
        /// The new weight, 0-1000000.
        weight: u32,
    },
}

/// A backend of a VIP, as the backend commands name it.
#[derive(Args)]
struct Which {
    /// The VIP: ADDRESS:PORT/PROTOCOL (203.0.113.10:80/tcp).
    vip: VipId,
    /// The backend: ADDRESS, or ADDRESS:PORT for a NAT VIP's target (198.51.100.20:32768,
    /// [2001:db8::20]:3000).
    address: Target,
}

#[derive(Subcommand)]
enum AnnounceCommand {
    /// Withdraw every VIP (needs [announce]); forwarding goes on for the flows that still
    /// arrive, so a host can be drained for maintenance without failing a request.
    #[command(
        after_help = "Examples:\n  xlb announce withdraw\n  xlb announce withdraw --wait 60    report when traffic has stopped"
    )]
    Withdraw {
        /// Wait until no packet reaches this host's VIPs for 2 seconds (at most SECS,
        /// default 60), and say how long that took.
        #[arg(long, num_args = 0..=1, default_missing_value = "60", value_name = "SECS")]
        wait: Option<f64>,
    },
    /// Announce the VIPs again, each as its state allows.
    Restore,
}

/// `xlb decap --hook`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DecapHook {
    Tc,
    Xdp,
}

#[derive(Args)]
struct DecapArgs {
    /// The backend's interface that receives encapsulated packets.
    #[arg(long)]
    iface: String,
    /// Decapsulate for these addresses (default: every address of the interface).
    #[arg(long)]
    address: Vec<IpAddr>,
    /// Remove the decapsulator from the interface.
    #[arg(long)]
    detach: bool,
    /// Where it runs: tc (ingress, after GRO: the interface keeps its offloads) or xdp
    /// (every frame, before the kernel builds a socket buffer).
    #[arg(long, value_enum, default_value_t = DecapHook::Tc)]
    hook: DecapHook,
    /// XDP attachment mode (with --hook xdp).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// Pin directory.
    #[arg(long, default_value = "/sys/fs/bpf/xlb-decap")]
    pin_dir: PathBuf,
    #[command(flatten)]
    out: Out,
}

/// A failure with its exit code.
struct Failure(u8, String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } => Failure(3, e.to_string()),
            other => Failure(1, other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("xlb: {msg}");
            ExitCode::from(code)
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// `xlb trace --vip`: ADDRESS or ADDRESS:PORT (port 0: any).
fn parse_vip_filter(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 0))
        .map_err(|_| {
            format!("{s:?} is not ADDRESS or ADDRESS:PORT (203.0.113.10:80, [2001:db8::1]:443)")
        })
}

/// Prints `v` as pretty JSON (`-o json`).
fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    use Command as C;
    let (socket, json) = match &cli.command {
        C::Apply { conn, out, .. }
        | C::Vip { conn, out, .. }
        | C::Backend { conn, out, .. }
        | C::Status { conn, out }
        | C::Stats { conn, out, .. }
        | C::Trace { conn, out, .. } => (conn.socket.clone(), out.json()),
        C::Announce { conn, .. } | C::Teardown { conn, .. } => (conn.socket.clone(), false),
        C::Check { out, .. } => (PathBuf::new(), out.json()),
        C::Decap(d) => (PathBuf::new(), d.out.json()),
        C::Run { .. } | C::Completions { .. } | C::Man { .. } => (PathBuf::new(), false),
    };
    let request = |req: Request| -> Result<Response, Failure> {
        let r = api::call(&socket, &req, TIMEOUT)?;
        if r.ok {
            Ok(r)
        } else {
            Err(Failure(1, r.error.unwrap_or_else(|| "refused".to_owned())))
        }
    };
    let status = || -> Result<api::Snapshot, Failure> {
        request(Request::Status)?
            .status
            .ok_or_else(|| Failure(1, "no status in the answer".to_owned()))
    };
    let print_changes = |r: Response| {
        if json {
            print_json(&r.changes);
        } else {
            for c in r.changes {
                println!("{c}");
            }
        }
    };
    match cli.command {
        Command::Run {
            config,
            iface,
            xdp_mode,
            log_format,
        } => {
            init_logging(log_format);
            let opts = daemon::RunOptions {
                config,
                iface,
                xdp_mode,
            };
            daemon::run(opts).map_err(|e| Failure(1, format!("{e:#}").replace('\n', " ")))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xlb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => write_man_pages(&out).map_err(|e| Failure(1, e.to_string())),
        Command::Check { config, .. } => {
            let c = Config::load(&config).map_err(|e| Failure(1, e.to_string()))?;
            daemon::host::check_paths(&c).map_err(|e| Failure(1, format!("{e:#}")))?;
            if json {
                // In the schema the file is written in.
                print_json(&c.to_file());
            } else {
                let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
                println!(
                    "{}: valid ({} VIPs, {backends} backends)",
                    config.display(),
                    c.vips.len()
                );
            }
            Ok(())
        }
        Command::Apply { file, .. } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure(1, format!("cannot read {}: {e}", file.display())))?;
            // Validate locally first: a clear error even when no daemon runs.
            Config::parse(&text, &file.display().to_string())
                .map_err(|e| Failure(1, e.to_string()))?;
            print_changes(request(Request::Apply {
                config: text,
                origin: file.display().to_string(),
            })?);
            Ok(())
        }
        Command::Vip {
            cmd:
                VipCommand::Add {
                    vip,
                    name,
                    hash,
                    forwarding,
                    nat_source,
                },
            ..
        } => {
            print_changes(request(Request::VipAdd {
                vip,
                name,
                hash,
                forwarding,
                nat_source,
            })?);
            Ok(())
        }
        Command::Vip {
            cmd: VipCommand::Del { vip },
            ..
        } => {
            print_changes(request(Request::VipDel { vip })?);
            Ok(())
        }
        Command::Vip {
            cmd: VipCommand::List,
            ..
        } => {
            let s = status()?;
            if json {
                let list: Vec<_> = s
                    .vips
                    .iter()
                    .map(|v| serde_json::json!({"vip": v.vip, "name": v.name, "hash": v.hash, "backends": v.backends.len(), "fail_open": v.fail_open}))
                    .collect();
                print_json(&list);
            } else {
                println!(
                    "{:<32} {:<20} {:<15} {:>8}",
                    "VIP", "NAME", "HASH", "BACKENDS"
                );
                for v in s.vips {
                    println!(
                        "{:<32} {:<20} {:<15} {:>8}",
                        v.vip.to_string(),
                        v.name,
                        v.hash.to_string(),
                        v.backends.len()
                    );
                }
            }
            Ok(())
        }
        Command::Backend { cmd: b, .. } => {
            let req = match b {
                BackendCommand::Add {
                    which: Which { vip, address },
                    weight,
                    source,
                } => Request::BackendAdd {
                    vip,
                    address,
                    weight,
                    source,
                },
                BackendCommand::List { vip, source } => {
                    let s = status()?;
                    let rows: Vec<_> = s
                        .vips
                        .iter()
                        .filter(|v| vip.is_none_or(|want| v.vip == want))
                        .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
                        .filter(|(_, b)| {
                            source
                                .as_deref()
                                .is_none_or(|want| b.source.as_deref().unwrap_or("config") == want)
                        })
                        .collect();
                    if json {
                        let list: Vec<_> = rows
                            .iter()
                            .map(|(v, b)| serde_json::json!({"vip": v.vip, "backend": b.address.to_string(), "weight": b.weight, "state": b.state, "health": b.health, "source": b.source.as_deref().unwrap_or("config"), "instance": b.instance}))
                            .collect();
                        print_json(&list);
                    } else {
                        println!(
                            "{:<28} {:<28} {:>7} {:<14} {:<10} {:<20} INSTANCE",
                            "VIP", "BACKEND", "WEIGHT", "STATE", "HEALTH", "SOURCE"
                        );
                        for (v, b) in rows {
                            println!(
                                "{:<28} {:<28} {:>7} {:<14} {:<10} {:<20} {}",
                                v.vip.to_string(),
                                b.address.to_string(),
                                b.weight,
                                b.state,
                                b.health,
                                b.source.as_deref().unwrap_or("config"),
                                b.instance.as_deref().unwrap_or("")
                            );
                        }
                    }
                    return Ok(());
                }
                BackendCommand::Del {
                    which: Which { vip, address },
                } => Request::BackendDel { vip, address },
                BackendCommand::Drain {
                    which: Which { vip, address },
                } => Request::BackendDrain { vip, address },
                BackendCommand::Undrain {
                    which: Which { vip, address },
                } => Request::BackendUndrain { vip, address },
                BackendCommand::Weight {
                    which: Which { vip, address },
                    weight,
                } => Request::BackendWeight {
                    vip,
                    address,
                    weight,
                },
            };
            print_changes(request(req)?);
            Ok(())
        }
        Command::Status { .. } => {
            let s = status()?;
            if json {
                print_json(&s);
            } else {
                print!("{}", stats::status_text(&s));
            }
            Ok(())
        }
        Command::Stats { watch, .. } => {
            let Some(interval) = watch else {
                let s = status()?;
                if json {
                    print_json(&s);
                } else {
                    print!("{}", stats::stats_table(&s, None));
                }
                return Ok(());
            };
            let interval = Duration::from_secs_f64(interval.max(0.1));
            let mut previous = status()?;
            loop {
                std::thread::sleep(interval);
                let now = status()?;
                if json {
                    println!("{}", serde_json::to_string(&now).expect("serialisable"));
                } else {
                    // Clear the screen and redraw in place.
                    print!("\x1b[H\x1b[2J{}", stats::stats_table(&now, Some(&previous)));
                }
                previous = now;
            }
        }
        Command::Announce {
            cmd: AnnounceCommand::Restore,
            ..
        } => {
            print_changes(request(Request::AnnounceRestore)?);
            Ok(())
        }
        Command::Announce {
            cmd: AnnounceCommand::Withdraw { wait },
            ..
        } => {
            print_changes(request(Request::AnnounceWithdraw)?);
            let Some(limit) = wait else { return Ok(()) };
            let limit = Duration::from_secs_f64(limit.max(0.0));
            let packets = || -> Result<u64, Failure> {
                Ok(request(Request::Status)?
                    .status
                    .map(|s| s.vips.iter().map(|v| v.counters.packets).sum())
                    .unwrap_or(0))
            };
            let start = std::time::Instant::now();
            let (mut last, mut since) = (packets()?, std::time::Instant::now());
            while start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(250));
                let now = packets()?;
                if now != last {
                    (last, since) = (now, std::time::Instant::now());
                } else if since.elapsed() >= Duration::from_secs(2) {
                    println!(
                        "traffic to this host's VIPs stopped {:.1}s after the withdrawal",
                        since.duration_since(start).as_secs_f64()
                    );
                    return Ok(());
                }
            }
            Err(Failure(
                1,
                format!("traffic to this host's VIPs still arrives after {limit:?}"),
            ))
        }
        Command::Decap(args) => run_decap(args, json),
        Command::Trace {
            vip, client, count, ..
        } => {
            let req = Request::Trace {
                filter: xlb::trace::Filter { vip, client },
                count,
            };
            let (first, rest) = api::trace(&socket, &req, TIMEOUT)?;
            if !first.ok {
                return Err(Failure(
                    1,
                    first.error.unwrap_or_else(|| "refused".to_owned()),
                ));
            }
            for c in first.changes {
                eprintln!("{c} (Ctrl-C stops)");
            }
            for r in rest {
                let r = r?;
                match r.trace {
                    Some(t) if json => {
                        println!("{}", serde_json::to_string(&t).expect("serialisable"))
                    }
                    Some(t) => println!("{t}"),
                    None => r.changes.iter().for_each(|c| eprintln!("{c}")),
                }
            }
            Ok(())
        }
        Command::Teardown { iface, pin_dir, .. } => {
            match api::call(&socket, &Request::Teardown, TIMEOUT) {
                Ok(r) if r.ok => {
                    print_changes(r);
                    return Ok(());
                }
                Ok(r) => return Err(Failure(1, r.error.unwrap_or_default())),
                Err(ClientError::Connect { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let iface = iface.ok_or_else(|| {
                Failure(3, format!("no daemon answers at {}; pass --iface IF to remove that interface's pins directly", socket.display()))
            })?;
            let removed = daemon::teardown_all_layouts(&pin_dir, &iface)
                .map_err(|e| Failure(1, format!("{e:#}")))?;
            if removed.is_empty() {
                println!("nothing pinned for {iface} under {}", pin_dir.display());
            }
            for p in removed {
                println!("removed {} (balancer detached)", p.display());
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Writes `xlb.1` and a page per command (`xlb-run.1`, `xlb-backend-add.1`, ...).
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_owned())).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    write(&cmd, "xlb", dir)
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        // Colour codes only where a person reads them.
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// `xlb decap`: attaches (and pins) the decapsulator, or detaches it.
fn run_decap(args: DecapArgs, json: bool) -> Result<(), Failure> {
    let pins = args.pin_dir.join(&args.iface);
    let link_pin = pins.join("link");
    if args.detach {
        if !link_pin.exists() {
            return Err(Failure(
                1,
                format!(
                    "no decapsulator is attached to {} (no pin at {})",
                    args.iface,
                    link_pin.display()
                ),
            ));
        }
        daemon::teardown_pins(&pins).map_err(|e| Failure(1, format!("{e:#}")))?;
        println!("decapsulator detached from {}", args.iface);
        return Ok(());
    }
    if args.hook == DecapHook::Tc && args.xdp_mode.is_some() {
        return Err(Failure(
            1,
            "--xdp-mode: only with --hook xdp (the default hook is tc)".to_owned(),
        ));
    }
    let ifidx = daemon::ifindex(&args.iface)
        .ok_or_else(|| Failure(1, format!("--iface: no interface named {:?}", args.iface)))?;
    let addrs = if args.address.is_empty() {
        daemon::host::addresses(Some(&args.iface))
    } else {
        args.address.clone()
    };
    if addrs.is_empty() {
        return Err(Failure(
            1,
            format!(
                "{} has no address to decapsulate for; pass --address",
                args.iface
            ),
        ));
    }
    if link_pin.exists() {
        return Err(Failure(
            1,
            format!(
                "a decapsulator is already attached to {}; `xlb decap --iface {} --detach` first",
                args.iface, args.iface
            ),
        ));
    }
    daemon::ensure_bpffs(&args.pin_dir).map_err(|e| Failure(1, format!("{e:#}")))?;
    let mut d = decap::Decap::load().map_err(|e| Failure(1, e.to_string()))?;
    for a in &addrs {
        d.add_local(*a).map_err(|e| Failure(1, e.to_string()))?;
    }
    let attach = |d: &mut decap::Decap, hook| {
        d.attach(&args.iface, ifidx, hook)
            .map_err(|e| Failure(1, e.to_string()))
    };
    let link = match (args.hook, args.xdp_mode) {
        (DecapHook::Tc, _) => attach(&mut d, decap::Hook::Tc)?,
        (DecapHook::Xdp, Some(XdpMode::Generic)) => {
            attach(&mut d, decap::Hook::Xdp(aya::programs::XdpMode::Skb))?
        }
        (DecapHook::Xdp, Some(XdpMode::Native)) => {
            attach(&mut d, decap::Hook::Xdp(aya::programs::XdpMode::Driver))?
        }
        (DecapHook::Xdp, None | Some(XdpMode::Auto)) => {
            match attach(&mut d, decap::Hook::Xdp(aya::programs::XdpMode::Driver)) {
                Ok(l) => l,
                Err(_) => {
                    eprintln!(
                        "xlb: native XDP failed on {}; using generic XDP",
                        args.iface
                    );
                    attach(&mut d, decap::Hook::Xdp(aya::programs::XdpMode::Skb))?
                }
            }
        }
    };
    std::fs::create_dir_all(&pins)
        .map_err(|e| Failure(1, format!("cannot create {}: {e}", pins.display())))?;
    link.pin(&link_pin)
        .map_err(|e| Failure(1, format!("cannot pin {}: {e}", link_pin.display())))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"interface": args.iface, "addresses": addrs})
        );
    } else {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        println!("decapsulating on {} for {}", args.iface, list.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "xlb", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// `--socket` and `-o` appear only on the commands that use them.
    #[test]
    fn client_options_only_where_they_apply() {
        let mut cmd = Cli::command();
        cmd.build();
        let has = |path: &[&str], id: &str| {
            let mut c = &cmd;
            for p in path {
                c = c.find_subcommand(p).unwrap();
            }
            c.get_arguments().any(|a| a.get_id().as_str() == id)
        };
        assert!(has(&["status"], "socket") && has(&["backend", "add"], "socket"));
        assert!(has(&["vip", "list"], "output") && has(&["check"], "output"));
        for c in ["run", "check", "completions", "decap"] {
            assert!(!has(&[c], "socket"), "{c} has --socket");
        }
        for c in ["run", "teardown", "completions"] {
            assert!(!has(&[c], "output"), "{c} has -o");
        }
    }
}
