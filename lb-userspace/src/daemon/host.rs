//! Facts of the host the daemon runs on and settings it needs there: interface indexes and
//! addresses, and forwarding on the balancer's interface.

use std::net::IpAddr;

/// Interface index of `name` in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|i| *i != 0)
}

/// Turns on forwarding on the interface: the kernel's FIB lookup, which the balancer uses
/// to find next hops, answers only for interfaces that forward.
pub fn enable_forwarding(iface: &str) {
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

/// Every address of interface `iface`, or of every interface with `None` (from
/// getifaddrs).
pub fn addresses(iface: Option<&str>) -> Vec<IpAddr> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter(|a| iface.is_none_or(|i| a.interface_name == i))
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Raises the soft limit of open files to what the daemon may need: a health check per
/// backend (two descriptors while one runs), every API and metrics connection, the maps
/// and programs, and a margin; up to the hard limit, which root may raise too.
pub fn raise_fd_limit(max_backends: u32) {
    let needed = 2 * u64::from(max_backends)
        + super::api_server::MAX_CONNECTIONS as u64
        + super::metrics_server::MAX_CONNECTIONS as u64
        + 512;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).is_ok() {
        tracing::info!("raised the open-file limit from {soft} to {needed}");
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    tracing::warn!(
        "the open-file limit is {hard} (hard limit); up to {needed} may be needed with {max_backends} backend ids"
    );
}

/// Refuses a directory the daemon writes into (or trusts the contents of) unless only root
/// can change it: a real directory, owned by root, not writable by group or others.
/// `setting` names the configuration key in the error.
pub fn check_private_dir(dir: &std::path::Path, setting: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("{setting}: cannot inspect {}: {e}", dir.display()),
    };
    if !m.is_dir() {
        anyhow::bail!("{setting}: {} is not a directory", dir.display());
    }
    if m.uid() != 0 {
        anyhow::bail!(
            "{setting}: {} belongs to uid {}, not root, so another user could plant files in it; remove it or choose a directory only root can write",
            dir.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{setting}: {} is writable by other users (mode {:o}); use a directory only root can write, such as /run/xlb",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// The directories of a configuration that the daemon writes into, checked as
/// [`check_private_dir`] does (those that do not exist yet are created 0700 by the daemon).
pub fn check_paths(config: &crate::config::Config) -> anyhow::Result<()> {
    let d = &config.daemon;
    if let Some(dir) = d.socket.parent() {
        check_private_dir(dir, "daemon.socket")?;
    }
    check_private_dir(&d.pin_dir, "daemon.pin_dir")?;
    Ok(())
}

/// Refuses to go on without the privileges the daemon needs, in one sentence.
pub fn check_privileges() -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    anyhow::bail!(
        "xlb run needs root (or the capabilities CAP_BPF, CAP_NET_ADMIN and, to mount bpffs, CAP_SYS_ADMIN) to load and attach XDP programs; run it as root"
    )
}
