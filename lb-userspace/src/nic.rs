//! Counters the interface's driver keeps about XDP transmission, read like `ethtool -S`
//! does (`SIOCETHTOOL`). An `XDP_TX` or redirect that the driver cannot place on its
//! transmit ring is dropped there and counted only there (for veth:
//! `rx_queue_N_xdp_tx_errors`, `tx_queue_N_xdp_xmit_errors`; for mlx5 `tx_xdp_err`, ...):
//! the balancer's own counters cannot see it, so `xlb stats` and the metrics show these.

use std::{ffi::c_void, io, os::fd::AsRawFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

/// Runs one `SIOCETHTOOL` command on `iface`; `buf` starts with the command word.
fn ethtool(sock: &std::net::UdpSocket, iface: &str, buf: &mut [u8]) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    let n = iface.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    // SAFETY: SIOCETHTOOL reads `req` and the command in `buf`, and writes at most the
    // sizes that command declares, which the caller made `buf` large enough for.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Every driver statistic of `iface` with its name (empty if the driver has none).
pub fn stats(iface: &str) -> io::Result<Vec<(String, u64)>> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set.
    let mut info = [0u8; 20];
    info[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    ethtool(&sock, iface, &mut info)?;
    let mask = u64::from_ne_bytes(info[8..16].try_into().expect("8 bytes"));
    if mask & (1 << ETH_SS_STATS) == 0 {
        return Ok(Vec::new());
    }
    let n = word(&info, 16) as usize;
    if n == 0 || n > 1 << 16 {
        return Ok(Vec::new());
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut names = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    names[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    names[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    names[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&sock, iface, &mut names)?;
    // struct ethtool_stats: cmd, n_stats, then n u64 values.
    let mut values = vec![0u8; 8 + n * 8];
    values[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    values[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&sock, iface, &mut values)?;
    Ok((0..n)
        .map(|i| {
            let raw = &names[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            let at = 8 + i * 8;
            let v = u64::from_ne_bytes(values[at..at + 8].try_into().expect("8 bytes"));
            (name, v)
        })
        .collect())
}

/// Whether a driver statistic counts XDP frames that could not be transmitted.
pub fn is_xdp_transmit_error(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("xdp") && n.contains("err")
}

/// The XDP transmit-error counters of `iface` (empty if it has none or cannot be read).
pub fn xdp_transmit_errors(iface: &str) -> Vec<(String, u64)> {
    stats(iface)
        .map(|all| {
            all.into_iter()
                .filter(|(n, _)| is_xdp_transmit_error(n))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn which_counters_are_transmit_errors() {
        for n in [
            "rx_queue_0_xdp_tx_errors",
            "tx_queue_1_xdp_xmit_errors",
            "tx_xdp_err",
        ] {
            assert!(super::is_xdp_transmit_error(n), "{n}");
        }
        for n in ["rx_queue_0_xdp_drops", "rx_queue_0_xdp_tx", "tx_errors"] {
            assert!(!super::is_xdp_transmit_error(n), "{n}");
        }
    }
}
