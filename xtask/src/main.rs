//! `cargo xtask`: the project's own commands.
//!
//! - `setup`: installs every prerequisite, idempotently (nightly's rust-src, bpf-linker,
//!   the Debian packages the tests and the lab use).
//! - `build`: release build of `xlb` (the XDP programs are embedded in it).
//! - `test`: the whole suite, including the tests that need root (network namespaces and
//!   BPF); runs `setup` first, so a fresh machine needs nothing else.
//! - `demo`: the lab (`xlb-lab`): client, router, xlb and three backends in namespaces,
//!   real traffic, counters, a failover; everything removed at the end. `demo containers`:
//!   the container lab (`xlb-lab-containers`): a real Docker host whose labelled
//!   containers xlb finds, scaled up and down under traffic.
//! - `bench`: the benchmarks (`xlb-bench`, then the Maglev criterion bench).
//! - `lint`: rustfmt check and clippy with warnings denied, userspace and eBPF separately.
//! - `man`: the man pages, generated from the command line's definitions (target/man/).
//!
//! Plain `std::process::Command` and anyhow only: this runs before anything else builds.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};

const BPF_LINKER_VERSION: &str = "0.10.4";

/// Commands the tests and the lab run, and the Debian package that provides each.
const DEBIAN_TOOLS: [(&str, &str); 16] = [
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("tc", "iproute2"),
    // The scale-out tests run real BIRD daemons (BGP, ECMP).
    ("bird", "bird2"),
    ("birdc", "bird2"),
    // The status page is tested in a real (headless) browser.
    ("chromium", "chromium"),
    // The container tests run a real Docker daemon and build their image from busybox.
    ("dockerd", "docker.io"),
    ("iptables", "iptables"),
    ("busybox", "busybox-static"),
    // The NAT tests' and the lab's container host publishes its tasks by nftables DNAT.
    ("nft", "nftables"),
    // The path-routing test puts a real HAProxy pair behind a NAT VIP.
    ("haproxy", "haproxy"),
    // The bench's throughput rows are real iperf3 streams.
    ("iperf3", "iperf3"),
    // The bench's instruction counts read the loaded program's translated code.
    ("bpftool", "bpftool"),
];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup   install prerequisites (rust-src for nightly, bpf-linker, Debian packages)
  demo    run the lab: namespaces with a client, router, xlb and 3 backends (run as root)
          [containers]: the lab with a Docker host whose labelled containers xlb finds
  bench   measure: per-packet cost, forwarding rate, Maglev, throughput, instructions (run as root)
          [--quick] [--json] [--save-baseline] [--no-criterion] [dataplane|maglev|throughput|instructions]
  build   build xlb in release mode
  test    run every test, including the root-only ones (run as root)
  lint    rustfmt --check and clippy -D warnings (userspace and eBPF)
  man     write xlb's man pages to target/man/";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => setup().and_then(|()| build()),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("lint") => setup().and_then(|()| lint()),
        Some("man") => setup().and_then(|()| man()),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's parent directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Runs a command (in the workspace root unless it has a directory), failing with its name
/// if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what is missing; prints one line per prerequisite.
fn setup() -> Result<()> {
    // The eBPF crate's toolchain and its standard library sources (build-std=core).
    let toolchain = ebpf_toolchain()?;
    let sysroot =
        output(Command::new("rustup").args(["run", &toolchain, "rustc", "--print", "sysroot"]))
            .map(|s| PathBuf::from(s.trim()))
            .context("the eBPF toolchain has no sysroot")?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        println!("setup: {toolchain} toolchain with rust-src: present");
    } else {
        println!("setup: adding rust-src to the {toolchain} toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &toolchain,
        ]))?;
    }

    // bpf-linker, which links the BPF objects with the nightly's own LLVM.
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker.contains(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
    } else {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about 2 minutes)");
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }

    // Debian packages used by the tests and the lab.
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        println!(
            "setup: system tools ({}): present",
            DEBIAN_TOOLS.map(|(b, _)| b).join(", ")
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo cargo xtask setup` (or install them)",
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    let install = |pkgs: &[&str]| {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "-q"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install(&missing).is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install(&missing)?;
    }
    Ok(())
}

/// The pinned eBPF toolchain of `lb-ebpf/rust-toolchain.toml` (installed if missing), or
/// an undated `nightly` that is that very build (the file records its `rustc -V`).
fn ebpf_toolchain() -> Result<String> {
    let pin = std::fs::read_to_string(root().join("lb-ebpf/rust-toolchain.toml"))
        .context("reading lb-ebpf/rust-toolchain.toml")?;
    let channel = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_owned())
        .context("no channel in lb-ebpf/rust-toolchain.toml")?;
    let want = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("# rustc "))
        .map(str::trim);
    let version = |tc: &str| {
        output(
            Command::new("rustup")
                .args(["run", tc, "rustc", "-V"])
                .env("RUSTUP_AUTO_INSTALL", "0"),
        )
        .map(|v| v.trim().to_owned())
    };
    if version(&channel).is_some() {
        return Ok(channel);
    }
    if let (Some(v), Some(want)) = (version("nightly"), want)
        && v.strip_prefix("rustc ") == Some(want)
    {
        return Ok("nightly".to_owned());
    }
    println!(
        "setup: installing the {channel} toolchain with rust-src (pinned in lb-ebpf/rust-toolchain.toml)"
    );
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        &channel,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context("the eBPF programs need their pinned nightly toolchain")?;
    Ok(channel)
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--package", "xlb"]))
}

/// Runs the whole suite. The namespace and BPF tests are `#[ignore]`d for plain
/// `cargo test`; here they run, so this must be root.
fn test(extra: &[String]) -> Result<()> {
    require_root(
        "the suite creates network namespaces and loads XDP programs",
        "test",
    )?;
    setup()?;
    let started = std::time::Instant::now();
    // The end-to-end tests run the real `xlb` binary (target/debug/xlb).
    run(Command::new("cargo").args(["build", "--package", "xlb", "--bins"]))?;
    run(Command::new("cargo")
        // The default members: every crate but lb-ebpf, which only builds for the BPF
        // target (the userspace build script builds it).
        .args(["test", "--no-fail-fast"])
        .args(extra)
        .args(["--", "--include-ignored"]))?;
    println!("xtask test: passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Builds xlb and the lab, then runs the lab (`tests/src/bin/xlb-lab.rs`), or with
/// `containers` the container lab (`tests/src/bin/xlb-lab-containers.rs`).
fn demo(extra: &[String]) -> Result<()> {
    require_root(
        "the lab creates network namespaces and attaches XDP programs",
        "demo",
    )?;
    setup()?;
    println!("xtask demo: building xlb and the lab (the first build takes a few minutes)");
    build_bins(false)?;
    match extra.first().map(String::as_str) {
        Some("containers") => {
            run(Command::new(root().join("target/debug/xlb-lab-containers")).args(&extra[1..]))
        }
        _ => run(Command::new(root().join("target/debug/xlb-lab")).args(extra)),
    }
}

/// Fails with how to run `cargo xtask <command>` as root, unless this is root.
fn require_root(why: &str, command: &str) -> Result<()> {
    if !is_root() {
        bail!("{why}, so it needs root: run `sudo -E env PATH=$PATH cargo xtask {command}`");
    }
    Ok(())
}

/// Builds the `xlb` binary and the test binaries (the lab, the benchmarks).
fn build_bins(release: bool) -> Result<()> {
    let mut c = Command::new("cargo");
    c.arg("build");
    if release {
        c.arg("--release");
    }
    run(c.args([
        "--quiet",
        "--package",
        "xlb",
        "--package",
        "xlb-tests",
        "--bins",
    ]))
}

/// Builds everything in release mode and runs the benchmarks (`tests/src/bin/xlb-bench.rs`,
/// then the Maglev criterion bench unless `--no-criterion`).
fn bench(args: &[String]) -> Result<()> {
    require_root(
        "the benchmarks load XDP programs and build namespaces",
        "bench",
    )?;
    setup()?;
    println!("xtask bench: building in release mode");
    build_bins(true)?;
    let own: Vec<&String> = args.iter().filter(|a| *a != "--no-criterion").collect();
    run(Command::new(root().join("target/release/xlb-bench")).args(own))?;
    if !args.iter().any(|a| a == "--no-criterion" || a == "--json") {
        let quick = args.iter().any(|a| a == "--quick");
        let mut c = Command::new("cargo");
        c.args([
            "bench",
            "--quiet",
            "--package",
            "xlb",
            "--bench",
            "maglev",
            "--",
        ]);
        if quick {
            c.arg("--quick");
        }
        run(&mut c)?;
    }
    Ok(())
}

/// Writes the man pages, generated from the command line's own definitions.
fn man() -> Result<()> {
    run(Command::new("cargo").args(["build", "--quiet", "--package", "xlb", "--bins"]))?;
    let out = root().join("target/man");
    run(Command::new(root().join("target/debug/xlb"))
        .args(["man", "--out"])
        .arg(&out))?;
    println!("xtask man: pages in {}", out.display());
    Ok(())
}

fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate, for its own target (its .cargo/config.toml), with its pinned
    // toolchain (named explicitly: it may be the undated nightly of the same build).
    // `cargo xtask` runs under the workspace toolchain and exports it (RUSTUP_TOOLCHAIN,
    // RUSTC); those are removed so they do not override it.
    let toolchain = ebpf_toolchain()?;
    run(Command::new("rustup")
        .args([
            "run",
            &toolchain,
            "cargo",
            "clippy",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root().join("lb-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))
}
