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

/// Set once a signal started removing everything (`cleanup_on_signal`): from then on a
/// command that fails because its namespace is gone is not an error, the process is about
/// to exit.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Parks this thread for good if the process is being stopped by a signal (the cleanup
/// thread exits the process); returns otherwise.
fn quiet_if_stopping() {
    if STOPPING.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

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
        quiet_if_stopping();
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
        let there = File::open(self.path()).unwrap_or_else(|e| {
            quiet_if_stopping();
            panic!("open {}: {e}", self.name)
        });
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

/// Removes every namespace this process created (`xlbt-<pid>-*`) and the pins its daemons
/// and decapsulators left: what drops do, for when they cannot run.
pub fn cleanup_everything_of_this_process() {
    let prefix = format!("xlbt-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &name])
                    .stderr(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xlb-test-decap/{name}"));
                let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xlb-test/{name}"));
                let _ = std::fs::remove_dir_all(format!("/run/xlb-test/{name}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/xlb-lab");
    let _ = std::fs::remove_dir_all("/run/xlb-lab");
}

/// On SIGINT or SIGTERM, cleans up everything of this process and exits with 130. Call
/// before starting threads (the signals are blocked in every thread but the watcher).
pub fn cleanup_on_signal() {
    // SAFETY: plain signal-mask calls on a local, zero-initialised sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            STOPPING.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: removing the lab's namespaces, programs and pins");
            cleanup_everything_of_this_process();
            std::process::exit(130);
        });
    }
}
