//! Neighbour resolution on behalf of the data plane, and the interface MAC it checks frames
//! against.
//!
//! When the FIB has no resolved MAC address for the next hop towards a backend, the
//! balancer drops the packet (the kernel would drop it too: see `no_neighbour` in the
//! README) and reports the next hop on the `NEIGH_EVENTS` ring buffer
//! (`lb_common::NeighbourEvent`). [`run`] reads those events and asks the kernel to resolve
//! each next hop: an `RTM_NEWNEIGH` with `NTF_USE` (and `NLM_F_CREATE`, for a neighbour the
//! kernel has no entry for yet) makes it call `neigh_event_send`, which starts ARP / ND as
//! if the kernel itself had a packet to send there. The sender's retransmission then finds
//! the neighbour resolved. [`run`] also keeps `DataplaneConfig::mac` equal to the
//! interface's MAC address.
//!
//! Nothing here runs per packet; events are rate-limited in the data plane (about ten a
//! second per backend and CPU at most).

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use lb_common::{DataplaneConfig, FAMILY_V4, FAMILY_V6, NeighbourEvent};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
};
use tokio::io::unix::AsyncFd;

use crate::netlink::RouteSocket;

/// How often the interface's MAC address is compared with the one the data plane checks.
pub const MAC_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of neighbour resolution and of the interface MAC.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot watch the neighbour event ring buffer: {0}")]
    Watch(#[source] io::Error),
    #[error("the kernel refused to resolve neighbour {addr} on interface {ifindex}: {source}")]
    Refused {
        addr: IpAddr,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "no acknowledgement from the kernel for neighbour {addr} within {:?}",
        crate::netlink::ANSWER_TIMEOUT
    )]
    NoAck { addr: IpAddr },
    #[error("cannot read the MAC address of interface {iface}: {source}")]
    Mac {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the interface MAC to the CONFIG map: {0}")]
    Config(#[source] aya::maps::MapError),
}

/// The next hop of an event, if the event is well formed.
pub fn next_hop(event: &NeighbourEvent) -> Option<IpAddr> {
    let a = event.addr;
    match event.family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Option<NeighbourEvent> {
    if record.len() < size_of::<NeighbourEvent>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<NeighbourEvent>() bytes, and
    // NeighbourEvent is plain integers (every bit pattern valid); read_unaligned makes no
    // alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<NeighbourEvent>()) })
}

/// The message that makes the kernel resolve `addr` on interface `ifindex`: `RTM_NEWNEIGH`
/// with `NTF_USE` (start resolution, as for a packet waiting to be sent); sent with
/// `NLM_F_CREATE` (make the entry if there is none).
fn resolve_message(addr: IpAddr, ifindex: u32) -> RouteNetlinkMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = ifindex;
    msg.header.flags = NeighbourFlags::Use;
    msg.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    RouteNetlinkMessage::NewNeighbour(msg)
}

/// The bytes of that request (with `NLM_F_ACK`), for tests.
pub fn resolve_request(addr: IpAddr, ifindex: u32, sequence: u32) -> Vec<u8> {
    crate::netlink::encode(
        resolve_message(addr, ifindex),
        NLM_F_CREATE | NLM_F_ACK,
        sequence,
    )
}

/// A route netlink socket that asks the kernel to resolve neighbours.
pub struct Resolver {
    socket: RouteSocket,
}

impl Resolver {
    pub fn new() -> Result<Self, NeighbourError> {
        Ok(Self {
            socket: RouteSocket::new().map_err(NeighbourError::Socket)?,
        })
    }

    /// Asks the kernel to resolve `addr` on interface `ifindex` and waits for its answer.
    pub async fn resolve(&mut self, addr: IpAddr, ifindex: u32) -> Result<(), NeighbourError> {
        match self
            .socket
            .request(resolve_message(addr, ifindex), NLM_F_CREATE)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(NeighbourError::NoAck { addr }),
            Err(source) => Err(NeighbourError::Refused {
                addr,
                ifindex,
                source,
            }),
        }
    }
}

/// The MAC address of interface `iface` in this process's network namespace (from
/// getifaddrs' link-layer entry; not /sys, which shows the namespace that mounted it).
pub fn interface_mac(iface: &str) -> Result<[u8; 6], NeighbourError> {
    let err = |source| NeighbourError::Mac {
        iface: iface.to_owned(),
        source,
    };
    let all = nix::ifaddrs::getifaddrs().map_err(|e| err(io::Error::from(e)))?;
    all.filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .ok_or_else(|| err(io::Error::from(io::ErrorKind::NotFound)))
}

/// Keeps `DataplaneConfig::mac` in the `CONFIG` map equal to the MAC address of the
/// balancer's interface.
pub struct InterfaceMac {
    iface: String,
    config: Array<MapData, DataplaneConfig>,
}

impl InterfaceMac {
    /// `config` is a handle to the balancer's `CONFIG` map (`Balancer::config_map`).
    pub fn new(iface: &str, config: Array<MapData, DataplaneConfig>) -> Self {
        Self {
            iface: iface.to_owned(),
            config,
        }
    }

    /// Compares the interface's MAC with the map's and writes it when they differ (only
    /// that field: the rest is the engine's). Returns the MAC now in force.
    pub fn sync(&mut self) -> Result<[u8; 6], NeighbourError> {
        let mac = interface_mac(&self.iface)?;
        let mut cfg = self.config.get(&0, 0).map_err(NeighbourError::Config)?;
        if cfg.mac != mac {
            cfg.mac = mac;
            self.config.set(0, cfg, 0).map_err(NeighbourError::Config)?;
            tracing::info!(
                interface = %self.iface,
                mac = %mac.map(|b| format!("{b:02x}")).join(":"),
                "VIP packets are accepted in frames to this MAC address"
            );
        }
        Ok(mac)
    }
}

/// What the daemon runs for the data plane's neighbours and interface MAC: made by
/// [`prepare`], run by [`Neighbours::run`].
pub struct Neighbours {
    ring: RingBuf<MapData>,
    mac: InterfaceMac,
}

/// Takes the balancer's neighbour ring buffer and sets the interface MAC in its
/// configuration now (so the check holds from the first packet the program sees).
pub fn prepare(lb: &mut crate::dataplane::Balancer, iface: &str) -> anyhow::Result<Neighbours> {
    let ring = lb
        .take_neighbour_events()
        .ok_or_else(|| anyhow::anyhow!("the balancer's neighbour ring buffer is taken"))??;
    let mut mac = InterfaceMac::new(iface, lb.config_map()?);
    mac.sync()?;
    Ok(Neighbours { ring, mac })
}

impl Neighbours {
    /// Runs [`run`], logging how it ended.
    pub async fn run(self) {
        if let Err(e) = run(self.ring, self.mac).await {
            tracing::error!("neighbour resolution stopped: {e}");
        }
    }
}

/// Reads neighbour events until the ring buffer fails, asking the kernel to resolve each
/// next hop (once per batch of events), and re-checks the interface MAC every
/// `MAC_CHECK_INTERVAL`. Failures are logged, not fatal: the data plane asks again while
/// packets keep coming.
pub async fn run(ring: RingBuf<MapData>, mut mac: InterfaceMac) -> Result<(), NeighbourError> {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and the same until
    // the AsyncFd (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| NeighbourError::Watch(e.into()))?;
    let mut resolver = Resolver::new()?;
    let mut tick = tokio::time::interval(MAC_CHECK_INTERVAL);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.map_err(NeighbourError::Watch)?;
                let mut hops = BTreeSet::new();
                {
                    let ring = guard.get_inner_mut();
                    while let Some(record) = ring.next() {
                        if let Some(e) = decode(&record)
                            && let Some(addr) = next_hop(&e)
                        {
                            hops.insert((addr, e.ifindex));
                        }
                    }
                }
                guard.clear_ready();
                for (addr, ifindex) in hops {
                    match resolver.resolve(addr, ifindex).await {
                        Ok(()) => tracing::debug!(%addr, ifindex, "asked the kernel to resolve the next hop"),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = mac.sync() {
                    tracing::warn!("{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_and_name_their_next_hop() {
        let mut e = NeighbourEvent {
            family: FAMILY_V4,
            ifindex: 7,
            ..NeighbourEvent::default()
        };
        e.addr[..4].copy_from_slice(&[198, 18, 0, 1]);
        // SAFETY: viewing a plain-integer struct as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const e).cast::<u8>(), size_of::<NeighbourEvent>())
        };
        let d = decode(bytes).unwrap();
        assert_eq!(d, e);
        assert_eq!(next_hop(&d), Some("198.18.0.1".parse().unwrap()));
        assert_eq!(decode(&bytes[..10]), None);
        let v6 = NeighbourEvent {
            family: FAMILY_V6,
            addr: "2001:db8:18::1".parse::<Ipv6Addr>().unwrap().octets(),
            ..e
        };
        assert_eq!(next_hop(&v6), Some("2001:db8:18::1".parse().unwrap()));
        assert_eq!(next_hop(&NeighbourEvent { family: 9, ..e }), None);
    }

    #[test]
    fn the_request_is_rtm_newneigh_with_ntf_use() {
        let b = resolve_request("198.18.0.1".parse().unwrap(), 7, 42);
        // nlmsghdr: length, type RTM_NEWNEIGH (28), flags REQUEST|ACK|CREATE, seq.
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 28);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 0x405);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 42);
        // ndmsg: family AF_INET, ifindex 7, flags NTF_USE (0x01).
        assert_eq!(b[16], 2);
        assert_eq!(i32::from_ne_bytes(b[20..24].try_into().unwrap()), 7);
        assert_eq!(b[26], 0x01);
        // NDA_DST (1) with the address.
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), 1);
        assert_eq!(b[32..36], [198, 18, 0, 1]);
    }
}
