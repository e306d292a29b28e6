//! A real HAProxy (Debian's `haproxy`) in a test's namespace, in the foreground (`-db`),
//! killed when the value is dropped or the test thread that started it ends.
//!
//! [`example_config`] is the HAProxy half of the path-routing recipe (README "Path-based
//! routing"): `/api/*`, `/web/*` and one Host header to three services, and a health
//! endpoint that turns 503 as soon as a graceful stop begins, while HAProxy keeps serving
//! for its `grace` period, so the L4 balancer in front stops sending it new connections
//! before it stops listening.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

pub struct Haproxy {
    dir: PathBuf,
    child: Option<Child>,
}

/// The recipe's HAProxy configuration, as shipped in `examples/haproxy.cfg`.
pub fn example_config() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/haproxy.cfg");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Haproxy {
    /// Starts HAProxy `name` (its `PROXY_NAME`) in `ns` with `config`, and waits until
    /// `listen` accepts.
    pub fn start(ns: &Netns, name: &str, config: &str, listen: std::net::SocketAddr) -> Self {
        let dir = PathBuf::from("/run/xlb-test-haproxy").join(ns.name());
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("haproxy config");
        let check = ns
            .command("haproxy")
            .env("PROXY_NAME", name)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output();
        let check =
            check.expect("run haproxy (Debian package haproxy; cargo xtask setup installs it)");
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let mut cmd = ns.command("haproxy");
        // SAFETY: prctl between fork and exec, async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .env("PROXY_NAME", name)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let h = Self {
            dir,
            child: Some(child),
        };
        let t = Instant::now();
        while crate::servers::connect(ns, None, listen, Duration::from_millis(200)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "haproxy did not listen on {listen}:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }

    /// Begins a graceful stop (SIGUSR1): `grace`, then no more listening, then exit once
    /// the connections it has are done.
    pub fn soft_stop(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
        }
    }

    /// Waits up to `within` for the process to exit; whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => return true,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
