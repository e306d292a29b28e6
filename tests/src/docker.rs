//! A real Docker daemon (Debian's `docker.io`) inside a test's container-host namespace,
//! with its own data root, exec root and socket; and a small web image made locally with
//! `docker import` from Debian's `busybox-static` (no registry is reachable): busybox
//! httpd on port 80 serving `/` (the container's hostname, so a reply says which task
//! answered), `/health` and `/bytes` (a large file).
//!
//! Started through nsenter (not `ip netns exec`, which remounts /sys so dockerd finds no
//! cgroups). docker0 uses a benchmark range (198.18.100.0/24), not Docker's default.
//! containerd runs as a process of its own, as Debian's systemd units run it, and dockerd
//! with `--live-restore`: killing dockerd leaves the containers running, and a restarted
//! dockerd finds them again.
//! Everything is removed on drop: containers, the daemon, its mounts and directories.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// The test image's name.
pub const WEB_IMAGE: &str = "xlb-test-web:1";

pub struct DockerHost {
    pub dir: PathBuf,
    pub socket: PathBuf,
    ns_path: PathBuf,
    child: Option<Child>,
    containerd: Option<Child>,
}

impl DockerHost {
    /// Starts dockerd in `ns` and waits until it answers.
    pub fn start(ns: &Netns) -> Self {
        let dir = PathBuf::from("/run/xlb-test-docker").join(ns.name());
        std::fs::create_dir_all(&dir).expect("docker dir");
        let mut d = Self {
            socket: dir.join("docker.sock"),
            dir,
            ns_path: ns.path(),
            child: None,
            containerd: None,
        };
        d.spawn_containerd();
        d.spawn();
        d
    }

    /// `nsenter --net=NS -- PROGRAM`, killed when the thread that started it ends.
    fn in_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        // SAFETY: prctl in the child between fork and exec, async-signal-safe: dockerd dies
        // with the test thread that started it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    fn spawn_containerd(&mut self) {
        let log = std::fs::File::create(self.dir.join("containerd.log")).expect("log");
        // Its own configuration: no CRI plugin (nothing here is Kubernetes).
        let config = self.dir.join("containerd.toml");
        std::fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .expect("containerd config");
        let child = self
            .in_ns("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.dir.join("containerd-root"))
            .arg("--state")
            .arg(self.dir.join("containerd-state"))
            .arg("--address")
            .arg(self.containerd_socket())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd (Debian package containerd, a dependency of docker.io)");
        self.containerd = Some(child);
        let t = Instant::now();
        while !self.containerd_socket().exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not start:\n{}",
                std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("dockerd.log")).expect("dockerd log");
        let child = self
            .in_ns("dockerd")
            .arg("--containerd")
            .arg(self.containerd_socket())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args([
                "--bip",
                "198.18.100.1/24",
                "--ip6tables=false",
                "--userland-proxy=false",
                "--live-restore",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd (Debian package docker.io; cargo xtask setup installs it)");
        self.child = Some(child);
        let t = Instant::now();
        while self.try_docker(&["version"]).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `docker ARGS...` against this daemon; panics with its error if it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Builds [`WEB_IMAGE`] with `docker import` from a busybox rootfs.
    pub fn import_web_image(&self) {
        let root = self.dir.join("rootfs");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox (Debian package busybox-static; cargo xtask setup installs it)");
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "httpd", "hostname", "dd", "sleep", "echo", "cat", "kill",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // The hostname is the container id (or --hostname): `/` says who answered.
        // On SIGTERM (`docker stop`) it keeps serving for GRACE seconds (default 6), so
        // requests in flight finish, as a well-behaved task does.
        let start = "#!/bin/sh\nhostname > /www/index.html\necho ok > /www/health\n\
                     dd if=/dev/zero of=/www/bytes bs=1M count=${BYTES_MB:-8} 2>/dev/null\n\
                     httpd -f -p ${PORT:-80} -h /www &\npid=$!\n\
                     trap 'sleep ${GRACE:-6}; kill $pid; exit 0' TERM\n\
                     wait $pid\nwait $pid\n";
        std::fs::write(root.join("bin/start"), start).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("bin/start"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args([
                "import",
                "-c",
                "CMD [\"/bin/start\"]",
                "-c",
                "EXPOSE 80",
                "-",
                WEB_IMAGE,
            ])
            .stdin(tar.stdout.take().expect("piped"))
            .output()
            .unwrap();
        let _ = tar.wait();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills dockerd at once (its containers keep running, as with a real crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts dockerd again on the same data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.try_docker(&["ps", "-aq"]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.try_docker(&args);
            }
        }
        self.kill9();
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The container shims, which outlive containerd.
        let mark = self.dir.to_string_lossy().into_owned();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&mark) {
                    // SAFETY: kill(2) on a process of this test's daemon.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        // Whatever dockerd left mounted under its directories.
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut mine: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| Path::new(m).starts_with(&self.dir))
                .collect();
            mine.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mine {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
