//! The running state the daemon saves after every change, to restart into exactly what
//! ran (run-time changes included): the configuration in the schema operators write, read
//! back through the same validation, with two facts in a comment header.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::config::{Config, ConfigError, XdpMode};

/// Where the daemon keeps the state it runs (next to its socket, in its root-only
/// directory).
pub fn state_file(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".state.toml");
    PathBuf::from(s)
}

/// What a restart needs besides the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Hash of the configuration file the state derives from: if the file has changed
    /// since, the file wins at the next start.
    pub file_hash: u64,
    /// How the balancer was attached (`None`: by an earlier run, mode unknown).
    pub xdp_mode: Option<XdpMode>,
    pub config: Config,
}

const HEADER: &str =
    "# xlb running state, written by the daemon after every change; do not edit.\n";

/// FNV-1a of a configuration text: stable across Rust versions, unlike std's hasher.
pub fn file_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Saved {
    pub fn to_text(&self) -> String {
        let mode = self.xdp_mode.map_or("unknown", |m| m.as_str());
        format!(
            "{HEADER}# file-hash = {}\n# xdp-mode = {mode}\n\n{}",
            self.file_hash,
            self.config.to_toml()
        )
    }

    /// Reads a saved state; `None` (with the reason) if it is not one this daemon wrote.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let field = |name: &str| {
            text.lines()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| l.strip_prefix(&format!("# {name} = ")))
                .map(str::to_owned)
        };
        let missing = |what: &str| ConfigError {
            at: crate::config::Location::Line {
                origin: origin.to_owned(),
                line: None,
            },
            message: format!("not a saved state: no {what} line"),
        };
        let file_hash = field("file-hash")
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| missing("file-hash"))?;
        let xdp_mode = field("xdp-mode")
            .ok_or_else(|| missing("xdp-mode"))?
            .parse()
            .ok();
        Ok(Self {
            file_hash,
            xdp_mode,
            config: Config::parse(text, origin)?,
        })
    }

    /// The saved state at `path`, if there is a valid one.
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        match Self::from_text(&text, &path.display().to_string()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("ignoring the saved state {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes the state to `path` atomically: a new file beside it (created exclusively,
    /// never through a symbolic link), then renamed over it.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("toml.tmp");
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
