//! An `xlb run` process inside a test's LB namespace: started from a configuration text,
//! killable (SIGKILL) and restartable, and torn down on drop.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use xlb::api::{self, Request, Response, Snapshot};

use crate::netns::Netns;

/// The `xlb` binary under test: `$XLB_BIN`, or `xlb` next to the test executable's
/// directory (`target/<profile>/xlb`, which `cargo xtask test` builds first).
pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable directory");
    // A binary sits next to xlb (target/<profile>/); a test sits in target/<profile>/deps/.
    let bin = [dir.join("xlb"), dir.parent().unwrap_or(dir).join("xlb")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("xlb"));
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p xlb` (cargo xtask test does) or set XLB_BIN",
        bin.display()
    );
    bin
}

/// A running daemon.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    ns_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// The open-file limit (soft and hard) the next start runs under, if set.
    pub nofile: Option<u64>,
}

impl Daemon {
    /// Writes `config` (TOML; `@SOCKET@`, `@PINS@` are replaced by per-test paths) and
    /// starts `xlb run` in `ns`, waiting until its API answers.
    pub fn start(ns: &Netns, config: &str) -> Self {
        let dir = PathBuf::from("/run/xlb-test").join(ns.name());
        std::fs::create_dir_all(&dir).expect("test run dir");
        let socket = dir.join("xlb.sock");
        let pin_dir = PathBuf::from("/sys/fs/bpf/xlb-test").join(ns.name());
        let text = config
            .replace("@SOCKET@", &socket.to_string_lossy())
            .replace("@PINS@", &pin_dir.to_string_lossy());
        let config_path = dir.join("xlb.toml");
        std::fs::write(&config_path, text).expect("write config");
        let mut d = Self {
            dir,
            socket,
            config_path,
            pin_dir,
            ns_path: ns.path(),
            child: None,
            starts: 0,
            nofile: None,
        };
        d.spawn();
        d
    }

    /// Writes `config` like [`Daemon::start`] and runs `xlb run`, which must fail during
    /// start-up; returns its exit code and log.
    pub fn start_failing(ns: &Netns, config: &str) -> (i32, String) {
        let dir = PathBuf::from("/run/xlb-test").join(ns.name());
        std::fs::create_dir_all(&dir).expect("test run dir");
        let socket = dir.join("xlb.sock");
        let pin_dir = PathBuf::from("/sys/fs/bpf/xlb-test").join(ns.name());
        let text = config
            .replace("@SOCKET@", &socket.to_string_lossy())
            .replace("@PINS@", &pin_dir.to_string_lossy());
        let config_path = dir.join("xlb.toml");
        std::fs::write(&config_path, text).expect("write config");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(xlb_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .output()
            .expect("run xlb run");
        let _ = std::fs::remove_dir_all(&pin_dir);
        let _ = std::fs::remove_dir_all(&dir);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts `xlb run` in `ns` with the configuration file `path` as it is (the socket and
    /// pin directory it names are used).
    pub fn start_file(ns: &Netns, path: &std::path::Path) -> Self {
        let config = xlb::config::Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let dir = PathBuf::from("/run/xlb-test").join(ns.name());
        std::fs::create_dir_all(&dir).expect("run dir");
        let mut d = Self {
            dir,
            socket: config.daemon.socket.clone(),
            config_path: path.to_owned(),
            pin_dir: config.daemon.pin_dir.clone(),
            ns_path: ns.path(),
            child: None,
            starts: 0,
            nofile: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("xlb-{}.log", self.starts)))
            .expect("log file");
        let mut cmd = std::process::Command::new("nsenter");
        let nofile = self.nofile;
        // SAFETY: prctl and setrlimit in the child between fork and exec, both
        // async-signal-safe. The daemon dies with the test thread that started it, even if
        // the test is killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(xlb_bin())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn xlb run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = api::call(&self.socket, &Request::Status, Duration::from_secs(5))
                && r.ok
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("xlb run exited ({status}) during start-up:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "xlb run did not answer within 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log of the current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("xlb-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (no clean-up of any kind).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again with the same configuration file.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn call(&self, req: Request) -> Response {
        api::call(&self.socket, &req, Duration::from_secs(30)).expect("API call")
    }

    pub fn status(&self) -> Snapshot {
        self.call(Request::Status).status.expect("status")
    }

    /// Polls the status until `done` holds, for at most `within` (then fails with `what`
    /// and the status); returns how long it took.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let st = self.status();
            if done(&st) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{what} did not happen within {within:?}:\n{}",
                xlb::stats::status_text(&st)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the `xlb` command line against this daemon: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(xlb_bin())
            .env("XLB_SOCKET", &self.socket)
            .args(args)
            .output()
            .expect("run xlb");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sends SIGHUP (reload the configuration file).
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    /// Rewrites the configuration file (placeholders as in `start`).
    pub fn write_config(&self, config: &str) {
        let text = config
            .replace("@SOCKET@", &self.socket.to_string_lossy())
            .replace("@PINS@", &self.pin_dir.to_string_lossy());
        std::fs::write(&self.config_path, text).expect("write config");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Tear down through the API if it answers; kill in any case; then remove the pins.
        let _ = api::call(&self.socket, &Request::Teardown, Duration::from_secs(5));
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        // A daemon killed at once may not have removed its socket and saved state (one
        // started from a file keeps them outside `dir`); its directory goes if empty.
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(xlb::daemon::state_file(&self.socket));
        if let Some(parent) = self.socket.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
