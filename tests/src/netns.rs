//! Network namespaces for tests: created with a unique name, entered by the current
//! thread only, and removed on drop (also when the test panics).

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique prefix for the names of this process's namespaces: tests in parallel (threads
/// and processes) never collide.
pub fn unique(tag: &str) -> String {
    format!(
        "xlbt-{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that exists for the life of this value.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `xlbt-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.conf.all.forwarding=1`).
    pub fn sysctl(&self, setting: &str) {
        run(
            "ip",
            &["netns", "exec", &self.name, "sysctl", "-qw", setting],
        );
    }

    /// Runs a command inside the namespace (through `nsenter`, which keeps the mount
    /// namespace, so bpffs pins stay visible).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut a = vec![net.as_str(), "--", cmd];
        a.extend_from_slice(args);
        run("nsenter", &a)
    }

    /// A command that will run inside the namespace (the caller spawns it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Moves the current thread into the namespace until the guard is dropped. Sockets
    /// created meanwhile belong to the namespace for good.
    pub fn enter(&self) -> Entered {
        let here = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let there = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.name));
        setns(&there);
        Entered { previous: here }
    }

    /// Interface index of `dev` inside the namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {out:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes every interface inside it (veth peers outside go
        // with them).
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The current thread is inside a namespace until this is dropped.
pub struct Entered {
    previous: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        setns(&self.previous);
    }
}

fn setns(f: &File) {
    // SAFETY: setns on an open namespace file descriptor, affecting only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Panics unless running as root: the namespace tests need CAP_NET_ADMIN and CAP_BPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, BPF): run `sudo cargo xtask test`"
    );
}
