//! bpffs and the pinned state: where it lives, mounting bpffs, the layout version, the
//! XDP link (attached fresh, or the new program swapped into the pinned link), teardown.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

use crate::{config::XdpMode, dataplane::Balancer};

/// Version of the layout of pinned maps; part of the pin path. Bump it with any change to
/// a map's key, value or meaning, so a new daemon never misreads old pins.
/// 2: CONFIG holds the interface MAC, GLOBAL_STATS has the router-check reasons.
/// 3: NAT: FLOWS values of 16 bytes, BACKENDS with mode and port, CONFIG with the SNAT
/// settings, VIP_STATS/BACKEND_STATS with reply counters, NAT_REV and SNAT_POOL, the
/// address filter with four bits per address, the NAT reasons.
/// 4: GLOBAL_STATS with one counter per (reason, action) pair, so a packet moves one.
pub const LAYOUT_VERSION: u32 = 4;

/// The pin directory of an interface: `<pin_dir>/v<layout>/<interface>`.
pub fn pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}")).join(iface)
}

/// Mounts bpffs on /sys/fs/bpf if `dir` lives there and it is not mounted.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    let mounted = nix::sys::statfs::statfs(root)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    tracing::info!("mounting bpffs on /sys/fs/bpf (needed to pin maps and the XDP link)");
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot mount bpffs on /sys/fs/bpf: {e}"))?;
    Ok(())
}

/// Refuses pins left by another layout version for this interface.
pub fn check_layouts(pin_dir: &Path, iface: &str) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != format!("v{LAYOUT_VERSION}")
            && name.starts_with('v')
            && e.path().join(iface).exists()
        {
            bail!(
                "{} holds pinned state of an incompatible xlb version (layout {name}, this xlb uses v{LAYOUT_VERSION}); \
                 run `xlb teardown --iface {iface}` to remove it (remembered flows are lost) and start again",
                e.path().join(iface).display()
            );
        }
    }
    Ok(())
}

/// Attaches the balancer, or swaps it into the link pinned by a previous run. Returns the
/// XDP mode of a fresh attachment, `None` when an existing link was reused.
pub fn attach(
    lb: &mut Balancer,
    pins: &Path,
    ifidx: u32,
    iface: &str,
    mode: XdpMode,
) -> anyhow::Result<Option<XdpMode>> {
    use aya::programs::XdpMode as Flags;
    let link_pin = pins.join("link");
    let prog = lb.program_mut();
    if link_pin.exists() {
        let replaced = PinnedLink::from_pin(&link_pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(XdpLink::try_from(FdLink::from(p))?))
            .and_then(|l| Ok(prog.attach_to_link(l)?));
        match replaced {
            Ok(_) => {
                tracing::info!("replaced the program in the pinned XDP link atomically");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!("the pinned XDP link is unusable ({e}); attaching afresh");
                let _ = std::fs::remove_file(&link_pin);
            }
        }
    }
    let (id, used) = match mode {
        XdpMode::Native => (
            prog.attach_to_if_index(ifidx, Flags::Driver).with_context(|| {
                format!("attaching in native mode to {iface} failed; its driver may lack XDP support (set dataplane.xdp_mode = \"auto\" or \"generic\")")
            })?,
            XdpMode::Native,
        ),
        XdpMode::Generic => (prog.attach_to_if_index(ifidx, Flags::Skb)?, XdpMode::Generic),
        XdpMode::Auto => match prog.attach_to_if_index(ifidx, Flags::Driver) {
            Ok(id) => (id, XdpMode::Native),
            Err(e) => {
                tracing::warn!("native XDP on {iface} failed ({e}); falling back to generic XDP, which is much slower");
                (prog.attach_to_if_index(ifidx, Flags::Skb)?, XdpMode::Generic)
            }
        },
    };
    let link = FdLink::try_from(prog.take_link(id)?)
        .context("the XDP attachment is not a BPF link (kernel older than 5.9?)")?;
    link.pin(&link_pin)
        .with_context(|| format!("cannot pin the XDP link at {}", link_pin.display()))?;
    Ok(Some(used))
}

/// Detaches the balancer (removing the link pin detaches it once no process holds it) and
/// removes every pinned map.
pub fn teardown_pins(pins: &Path) -> anyhow::Result<()> {
    if !pins.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(pins)?.flatten() {
        std::fs::remove_file(e.path())
            .with_context(|| format!("cannot remove {}", e.path().display()))?;
    }
    std::fs::remove_dir(pins).with_context(|| format!("cannot remove {}", pins.display()))?;
    Ok(())
}

/// Removes pins of every layout version for an interface (used by `xlb teardown` when no
/// daemon runs).
pub fn teardown_all_layouts(pin_dir: &Path, iface: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(removed);
    };
    for e in entries.flatten() {
        let p = e.path().join(iface);
        if p.exists() {
            teardown_pins(&p)?;
            // The layout directory goes with its last interface.
            let _ = std::fs::remove_dir(e.path());
            removed.push(p);
        }
    }
    Ok(removed)
}
