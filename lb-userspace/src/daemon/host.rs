//! Facts of the host the daemon runs on and settings it needs there: interface indexes and
//! addresses, and forwarding on the balancer's interface.

use std::net::IpAddr;

/// Interface index of `name` in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
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
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below; we only read entries it filled.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut p = list;
        while !p.is_null() {
            let e = &*p;
            let name = std::ffi::CStr::from_ptr(e.ifa_name).to_string_lossy();
            if iface.is_none_or(|i| name == i) && !e.ifa_addr.is_null() {
                match i32::from((*e.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(e.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(e.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = e.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}
