//! Keys and values of the BPF maps, with their byte order and size pinned down.
//!
//! Conventions for every type here:
//! - Addresses are [`Addr`]: 16 bytes in network order. An IPv4 address fills the first four
//!   bytes and the other twelve are zero; a `family` field beside it says which it is.
//! - Ports are `u16` holding the two on-the-wire bytes as read (`u16::from_ne_bytes`), i.e.
//!   network order in memory. Use [`port_to_map`] / [`port_from_map`] to convert.
//! - Values hold integers and named constants only; every padding byte is an explicit field
//!   that must be zero (hash-map keys are compared bytewise).

/// Address family tag for IPv4 (stored in `family` fields).
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 (stored in `family` fields).
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// An address as stored in maps; see the module documentation.
pub type Addr = [u8; 16];

/// Converts a host-order port to the in-map representation (network order in memory).
#[inline(always)]
pub const fn port_to_map(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// Converts an in-map port (network order in memory) to host order.
#[inline(always)]
pub const fn port_from_map(port: u16) -> u16 {
    u16::from_be_bytes(port.to_ne_bytes())
}

/// Key of the `VIPS` hash map: which (address, port, protocol) is a virtual IP.
///
/// A VIP with `port == 0` takes every port of its address and protocol; the data plane
/// looks up the exact port first and the wildcard second.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Addr,
    /// Network order in memory; 0 = every port.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// `VipInfo::flags`: hash on the source address only (client affinity) instead of the
/// 5-tuple, so every connection of one client reaches the same backend.
pub const VIP_F_HASH_SOURCE: u32 = 1;
/// `VipInfo::flags`: the VIP forwards by NAT (its backends' `mode` says how; the data plane
/// reads that). Kept for the controller, which adopts a VIP's settings from the maps.
pub const VIP_F_NAT: u32 = 2;
/// `VipInfo::flags`: a NAT VIP that preserves the client's address. The controller's.
pub const VIP_F_NAT_CLIENT: u32 = 4;

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// The VIP's index (its slot in `VIP_STATS`); it also owns Maglev tables `2 * index`
    /// and `2 * index + 1`. Not to be confused with the VIP's identity (address, port,
    /// protocol), which is its key.
    pub index: u32,
    /// The Maglev table in use (`2 * index` or `2 * index + 1`): entries
    /// `[table * M, (table + 1) * M)` of the `MAGLEV` array. Switching tables is one write
    /// of this value, after the spare table has been filled.
    pub table: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<VipInfo>() == 16);

/// Backend slot not in use (`Backend::state`).
pub const BACKEND_UNUSED: u8 = 0;
/// Backend takes new flows (when it is in its VIP's Maglev table) and keeps existing ones.
pub const BACKEND_ACTIVE: u8 = 1;
/// Backend keeps the flows it has but is not in the Maglev table (drain, deregistration).
pub const BACKEND_DRAINING: u8 = 2;
/// Backend is down (unhealthy or removed): flows pinned to it are moved elsewhere.
pub const BACKEND_DOWN: u8 = 3;

/// `Backend::admin`: an operator drained this backend (`xlb backend drain`); it stays
/// drained across daemon restarts until undrained.
pub const ADMIN_F_DRAINED: u8 = 1;
/// `Backend::admin`: the backend was removed and is serving out its deregistration delay.
pub const ADMIN_F_REMOVING: u8 = 2;
/// `Backend::admin`: the backend fails its health checks (its state is `BACKEND_DOWN`, or
/// `BACKEND_DRAINING` under `on_unhealthy = "keep"`). A SYN retransmitted to it moves on,
/// as it may never have arrived, unless the NAT target has answered it
/// (`resolve::START`).
pub const ADMIN_F_FAILING: u8 = 4;

/// `Backend::mode`: direct server return: packets are encapsulated to the backend, which
/// answers the client itself.
pub const MODE_DSR: u8 = 0;
/// `Backend::mode`: full NAT: destination rewritten to the target's address and port, source
/// to a SNAT address of this host and an allocated port; replies come back here.
pub const MODE_NAT: u8 = 1;
/// `Backend::mode`: NAT preserving the client's address: only the destination is rewritten;
/// the target routes its replies through this host, which rewrites their source back.
pub const MODE_NAT_CLIENT: u8 = 2;

/// Value of the `BACKENDS` array, indexed by backend id. Id 0 is never used, so an all-zero
/// Maglev entry means "no backend".
///
/// A backend id belongs to one (VIP, backend address and port) pair; its counters in
/// `BACKEND_STATS` are indexed by the same id. The data plane reads `addr`, `family`,
/// `state`, `mode`, `port` and `generation`; `admin`, `vip` and `weight` are the
/// controller's, kept here so a restarted controller finds its whole state in the pinned
/// maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Outer destination of the encapsulated packets (DSR), or the target's address (NAT).
    pub addr: Addr,
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    /// `ADMIN_F_*` bits.
    pub admin: u8,
    /// `MODE_*`: how packets reach this backend.
    pub mode: u8,
    /// Bumped every time the id is given to a new backend, so flows remembered for the
    /// previous owner of the id are not sent to the new one.
    pub generation: u32,
    /// `VipInfo::index` of the VIP this backend serves (`max_vips` is at most 4,096).
    pub vip: u16,
    /// NAT: the target's port (network order in memory); 0 keeps the packet's destination
    /// port (any-port VIPs). Always 0 for DSR.
    pub port: u16,
    /// Maglev weight.
    pub weight: u32,
}
// 32 bytes, as before ports: the data plane copies it on every packet.
const _: () = assert!(size_of::<Backend>() == 32);

impl Backend {
    /// Whether a remembered flow to this backend (made under `generation`) may stay.
    #[inline(always)]
    pub fn keeps_flow(&self, generation: u32) -> bool {
        self.generation == generation
            && (self.state == BACKEND_ACTIVE || self.state == BACKEND_DRAINING)
    }
}

/// Key of the `FLOWS` LRU map, and the input of the flow hash.
///
/// For a 5-tuple VIP it is the packet's 5-tuple. For a source-affinity VIP the source port
/// is zero and the destination port is the VIP's configured port (0 for an any-port VIP),
/// so every connection of a client shares one entry and one hash.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network order in memory.
    pub sport: u16,
    /// Network order in memory.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// Must be zero.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// `FlowValue::state`: the entry is a NAT connection's forward entry, with a reverse entry
/// in `NAT_REV` (SNAT port and slot, or the client's own address and port, are valid).
pub const FLOW_F_NAT: u8 = 1;
/// `FlowValue::state` / `NatReverse::state`: a FIN was seen in this direction.
pub const CT_F_FIN: u8 = 2;
/// `FlowValue::state` / `NatReverse::state`: an RST was seen in this direction.
pub const CT_F_RST: u8 = 4;
/// `NatReverse::state`: the target has answered at least once.
pub const CT_F_REPLIED: u8 = 8;

/// Value of the `FLOWS` map: the backend a flow was sent to, and for a NAT connection its
/// translation and liveness (the forward half of its connection-tracking entry).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    /// `Backend::generation` when the flow was remembered.
    pub generation: u32,
    /// NAT: the source port the target sees (network order in memory): the SNAT port, or
    /// the client's own port when the client's address is preserved.
    pub nat_port: u16,
    /// Full NAT: the `SNAT_POOL` slot of the source address the target sees.
    pub nat_slot: u8,
    /// `FLOW_F_NAT` and the `CT_F_*` bits seen from the client.
    pub state: u8,
    /// NAT: `nat_clock()` of the last packet from the client.
    pub last_seen: u32,
    /// TCP: the sequence number of the SYN that made the entry (network order in memory).
    /// A SYN with the same number is that SYN retransmitted: the connection is already on
    /// this entry's backend (its answer may be on the way), so it stays there while the
    /// backend keeps flows (`resolve::START` says when a failing one does not); any other
    /// SYN starts a new connection.
    pub syn_seq: u32,
    /// The flow hash of the key (`hash::flow_hash`), for an IPv6 backend's outer flow
    /// label, so that a packet of the flow need not compute it; 0: not recorded (the fast
    /// path leaves it out for IPv4 backends, which need none; an entry made by userspace or
    /// before the field existed), computed when it is needed.
    pub hash: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 24);

/// Slots of `SNAT_POOL` per address family: IPv4 addresses are slots `0..16`, IPv6 ones
/// `16..32`. Addresses are only ever appended, so a slot keeps its address while
/// connections name it.
pub const SNAT_SLOTS_PER_FAMILY: u32 = 16;
/// Length of the `SNAT_POOL` array.
pub const SNAT_SLOTS: u32 = 2 * SNAT_SLOTS_PER_FAMILY;

/// Value of the `SNAT_POOL` array: a SNAT address (all zero: the slot is empty). Aligned to
/// 8 bytes so the data plane copies it in two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatAddr {
    pub addr: Addr,
}
const _: () = assert!(size_of::<SnatAddr>() == 16);

/// Value of the `NAT_REV` LRU map, whose key is the 5-tuple of a reply (`FlowKey`: target
/// address and port -> SNAT address and port, or -> the client with its address
/// preserved): what the reply is rewritten to, and the reverse half of the connection's
/// tracking entry.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    /// The client: destination of the rewritten reply.
    pub client: Addr,
    /// The address the client sent to (the VIP): source of the rewritten reply.
    pub vip: Addr,
    /// Network order in memory.
    pub client_port: u16,
    /// The port the client sent to (network order in memory).
    pub vip_port: u16,
    /// The backend id of the target (counters, the sweeper).
    pub backend: u32,
    /// `Backend::generation` of the target when the entry was made.
    pub generation: u32,
    /// `VipInfo::index` of the VIP (its reply counters).
    pub vip_index: u32,
    /// `nat_clock()` of the last reply, or of the entry's creation.
    pub last_seen: u32,
    /// `CT_F_*` bits seen from the target.
    pub state: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<NatReverse>() == 56);

/// `DataplaneConfig::flags`: `source_v4` is set.
pub const CFG_F_SOURCE_V4: u32 = 1;
/// `DataplaneConfig::flags`: `source_v6` is set.
pub const CFG_F_SOURCE_V6: u32 = 2;
/// `DataplaneConfig::flags`: at least one VIP has port 0, so a miss on the exact port must
/// be followed by a wildcard lookup. Without it non-VIP traffic costs one lookup, not two.
pub const CFG_F_WILDCARD_VIPS: u32 = 4;

/// The single entry of the `CONFIG` array: settings the controller may change at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Outer IPv4 source of encapsulated packets (network order).
    pub source_v4: [u8; 4],
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// Outer IPv6 source of encapsulated packets (network order).
    pub source_v6: [u8; 16],
    /// The MAC address of the interface the balancer is attached to, set by the daemon from
    /// the interface (at start and on its periodic tick). A VIP packet in a frame addressed
    /// to another MAC (another host's, multicast, broadcast) is dropped, as a router would.
    /// All zero: not known, the check is off (test runs choose).
    pub mac: [u8; 6],
    /// Must be zero.
    pub reserved: [u8; 2],
    /// The SNAT ports to allocate from, inclusive, in host order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// How many IPv4 SNAT addresses `SNAT_POOL` holds (slots `0..snat_v4`).
    pub snat_v4: u8,
    /// How many IPv6 SNAT addresses it holds (slots `16..16 + snat_v6`).
    pub snat_v6: u8,
    /// Must be zero.
    pub reserved2: [u8; 2],
}
const _: () = assert!(size_of::<DataplaneConfig>() == 40);

/// `TraceFilter::flags`: only packets to `vip` (and `vip_port` unless 0).
pub const TRACE_F_VIP: u8 = 1;
/// `TraceFilter::flags`: only packets from `client` (or, for a NAT reply, to it).
pub const TRACE_F_CLIENT: u8 = 2;

/// Entry 0 of the `TRACE` array: which packets a trace logs (while the program's
/// `XLB_TRACE` global is set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    pub vip: Addr,
    pub client: Addr,
    /// Network order in memory; 0: any port.
    pub vip_port: u16,
    pub vip_family: u8,
    pub client_family: u8,
    /// `TRACE_F_*` bits.
    pub flags: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<TraceFilter>() == 40);

/// What part of the program decided a traced packet (the `path` of a trace record).
pub const TRACE_PATH_OTHER: u8 = 0;
/// The VIP path: the flow table, the VIP, Maglev (`vip_packet`).
pub const TRACE_PATH_VIP: u8 = 1;
/// A NAT target's reply, translated back to the client.
pub const TRACE_PATH_NAT_REPLY: u8 = 2;

/// Entry 0 of the `BENCH` array: the frame the benchmark entry point (`xlb_balancer_bench`)
/// restores before each run, given by its length and its L2 header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchTemplate {
    /// Length of the whole frame.
    pub len: u32,
    /// Length of its L2 header: 14, or 18 with a VLAN tag.
    pub l2_len: u32,
    /// The L2 header (the first `l2_len` bytes count).
    pub l2: [u8; 24],
}
const _: () = assert!(size_of::<BenchTemplate>() == 32);

/// A record of the `NEIGH_EVENTS` ring buffer: the data plane found no resolved neighbour
/// (`BPF_FIB_LKUP_RET_NO_NEIGH`) for a next hop, and asks the controller to have the kernel
/// resolve it. Sent at most about every 100 ms per backend and CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighbourEvent {
    /// `FAMILY_V4` or `FAMILY_V6`: the family of the next hop's address (an IPv4 route may
    /// have an IPv6 gateway).
    pub family: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
    /// The interface the next hop is on.
    pub ifindex: u32,
    /// The next hop: the route's gateway, or the destination itself on a connected route.
    pub addr: Addr,
}
const _: () = assert!(size_of::<NeighbourEvent>() == 24);

/// Per-CPU counters of one VIP (`VIP_STATS`, indexed by `VipInfo::index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Packets forwarded to a backend.
    pub packets: u64,
    /// Bytes of those packets as received (before encapsulation).
    pub bytes: u64,
    /// Flows newly remembered in the flow table.
    pub new_flows: u64,
    /// Packets whose flow was found in the flow table with a usable backend.
    pub flow_hits: u64,
    /// Packets that went through Maglev (new flow, evicted entry, or backend gone).
    pub flow_misses: u64,
    /// TCP packets without SYN that found no flow entry: the flow's entry was evicted (the
    /// flow table is too small for the traffic), or the flow began before this balancer
    /// saw it (a restart elsewhere, an ECMP change). Maglev still sends them to the same
    /// backend unless the VIP's backends changed meanwhile.
    pub midflow_misses: u64,
    /// NAT: replies from targets rewritten and sent back to clients.
    pub reply_packets: u64,
    /// NAT: bytes of those replies (IP length as received from the target).
    pub reply_bytes: u64,
}
const _: () = assert!(size_of::<VipStats>() == 64);

/// Per-CPU counters of one backend (`BACKEND_STATS`, indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Packets (and their IP bytes as received) sent to the backend.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// NAT: packets (and bytes) received from the target and sent back to clients.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}
const _: () = assert!(size_of::<BackendStats>() == 40);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made only of integers and integer arrays, and
    // have no implicit padding (the size asserts above pin their layout), so every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for SnatAddr {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for TraceFilter {}
    unsafe impl aya::Pod for BenchTemplate {}
    unsafe impl aya::Pod for NeighbourEvent {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
}

#[cfg(feature = "std")]
mod conv {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// Splits an `IpAddr` into the map representation and its family tag.
    pub fn addr_to_map(ip: IpAddr) -> (Addr, u8) {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => {
                a[..4].copy_from_slice(&v4.octets());
                (a, FAMILY_V4)
            }
            IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
        }
    }

    /// The inverse of [`addr_to_map`]; `None` for an unknown family tag.
    pub fn addr_from_map(addr: &Addr, family: u8) -> Option<IpAddr> {
        match family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
                addr[0], addr[1], addr[2], addr[3],
            ))),
            FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
            _ => None,
        }
    }

    impl VipKey {
        /// The key of the VIP `ip:port/proto` (`port` in host order, 0 = every port).
        pub fn new(ip: IpAddr, port: u16, proto: u8) -> Self {
            let (addr, family) = addr_to_map(ip);
            Self {
                addr,
                port: port_to_map(port),
                proto,
                family,
            }
        }

        pub fn ip(&self) -> IpAddr {
            addr_from_map(&self.addr, self.family).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        }

        /// The port in host order (0 = every port).
        pub fn port_host(&self) -> u16 {
            port_from_map(self.port)
        }
    }

    impl Backend {
        pub fn ip(&self) -> Option<IpAddr> {
            addr_from_map(&self.addr, self.family)
        }
    }
}
#[cfg(feature = "std")]
pub use conv::{addr_from_map, addr_to_map};
