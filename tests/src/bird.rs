//! A real BIRD 2 (Debian's `bird2`) inside a test namespace: started from a configuration
//! text, killed (SIGKILL) on demand and on drop, its files removed.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

pub struct Bird {
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Writes `config` and starts `bird -f` in `ns` (through nsenter, keeping the mount
    /// namespace), waiting until its control socket answers.
    pub fn start(ns: &Netns, config: &str) -> Self {
        let dir = PathBuf::from("/run/xlb-test-bird").join(ns.name());
        std::fs::create_dir_all(&dir).expect("bird dir");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let ctl = dir.join("bird.ctl");
        let log = std::fs::File::create(dir.join("bird.log")).expect("bird log");
        let mut cmd = Command::new("nsenter");
        // SAFETY: prctl in the child between fork and exec, async-signal-safe: BIRD dies
        // with the test thread that started it, even if the test is killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bird (Debian package bird2; cargo xtask setup installs it)");
        let b = Self {
            dir,
            child: Some(child),
        };
        let t = Instant::now();
        while !ctl.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "bird did not start:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// `birdc show protocols` and the like.
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// BIRD's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills BIRD at once (no withdrawal is sent: its peers notice by their hold timer).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
