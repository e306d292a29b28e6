//! `xlb_balancer`: the XDP load balancer. Entry point and maps; the steps live in
//! `select` (which VIP and backend: the one resolver), `admit` (what a router would not
//! forward), `forward` (encapsulation, FIB lookup, transmit), `icmp`, and `bench` (the
//! benchmark's entry points).
//!
//! Per packet: parse (lb-common), find the VIP, find or choose the backend, encapsulate
//! towards it and send it back out. Anything that is not VIP traffic is returned
//! `XDP_PASS` untouched; the program never returns `XDP_ABORTED`.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

mod admit;
mod bench;
mod fast;
mod forward;
mod icmp;
mod nat;
mod select;
mod trace;

use aya_ebpf::{
    Global,
    bindings::{xdp_action, xdp_md},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use lb_common::{
    Backend, BackendStats, DataplaneConfig, FlowKey, FlowValue, MODE_DSR, NatReverse, PROTO_TCP,
    PROTO_UDP, SNAT_SLOTS, SnatAddr, VipInfo, VipKey, VipStats,
    hash::{VIP_FILTER_WORDS, flow_key},
    parse::Headers,
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, L4, PacketBytes, Parsed, TCP_SYN,
        parse, parse_common,
    },
    stats::{GLOBAL_SLOTS, Reason, slot},
};
use lb_ebpf::{packet::XdpPacket, stats::bump};

/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists, so inserts on different CPUs do not contend.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// `BPF_F_MMAPABLE`: userspace writes Maglev tables with one memcpy through mmap.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Maglev table size M, set by the loader (must match the `MAGLEV` map's layout).
#[unsafe(no_mangle)]
static MAGLEV_SIZE: Global<u32> = Global::new(65_537);

// Map sizes below are placeholders: the loader sets every one from the configuration.

/// (VIP address, port, protocol) -> VIP.
#[map]
static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(1, 0);
/// (VIP address, port 0, protocol 0) -> number of VIPs on that address: lets fragments and
/// malformed packets to a VIP address be recognised without ports.
#[map]
static VIP_ADDRS: HashMap<VipKey, u32> = HashMap::with_max_entries(1, 0);
/// The VIP address filter: bit `lb_common::hash::vip_filter_bit(a)` is set for every
/// address `a` that has a VIP (maintained with `VIP_ADDRS`). A clear bit proves a packet is
/// not for a VIP at the cost of an array read, so other traffic skips the `VIPS` lookup.
#[map]
static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);
/// Backend id -> backend.
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);
/// Maglev tables, two per VIP, as one array of backend ids (0 = none): slot `s` of table
/// `t` is id number `t * M + s`. Two ids per element: an mmap'd array places elements 8
/// bytes apart, so 8-byte elements make the ids contiguous in userspace's mapping.
#[map]
static MAGLEV: Array<[u32; 2]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Flow table: flow key -> backend, least recently used evicted first.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1, BPF_F_NO_COMMON_LRU);
/// NAT connections' reverse halves: a reply's 5-tuple (target -> SNAT address and port, or
/// -> the client) -> the client and VIP it is rewritten to (`lb_common::NatReverse`). The
/// forward halves are `FLOWS` entries.
#[map]
static NAT_REV: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(1, BPF_F_NO_COMMON_LRU);
/// SNAT addresses by slot (`lb_common::SNAT_SLOTS_PER_FAMILY` per family; all zero: none).
#[map]
static SNAT_POOL: Array<SnatAddr> = Array::with_max_entries(SNAT_SLOTS, 0);
/// This CPU's next hops towards clients, for NAT replies (`nat::ClientHop`): a cache, not
/// pinned.
#[map]
static REPLY_HOPS: PerCpuArray<nat::ClientHop> =
    PerCpuArray::with_max_entries(nat::REPLY_HOP_SLOTS, 0);
/// Run-time settings (entry 0).
#[map]
static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);
/// Counters by (reason, XDP action) pair (`lb_common::stats::slot`).
#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_SLOTS, 0);
/// Counters per VIP id.
#[map]
static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(1, 0);
/// Counters per backend id.
#[map]
static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(1, 0);

/// Per-packet values too large for the BPF stack (`select::Scratch`), one slot per CPU.
#[map]
static SCRATCH: PerCpuArray<select::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Backend id -> the next hop this CPU last got from the FIB for it (`forward::CachedHop`).
/// A cache: never pinned, sized like `BACKENDS` by the loader, empty after every load.
#[map]
static NEXT_HOPS: PerCpuArray<forward::CachedHop> = PerCpuArray::with_max_entries(1, 0);

/// Next hops without a resolved MAC address (`lb_common::NeighbourEvent`), for the
/// controller to have the kernel resolve them. Not pinned: a new program gets a new one, read
/// by the daemon that loaded it. 64 KiB holds 2,730 events; at most one per backend per CPU
/// every ~100 ms is sent (`forward::NEIGHBOUR_EVENT_INTERVAL`).
#[map]
static NEIGH_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// Balances one packet and counts its action and reason (`count`, the one place global
/// counters move): by the fast path (`fast`) when it is one of the common kinds (a new NAT
/// connection's packet then translated from here, `translate`), else by the general path
/// (`balance`); with a trace on (`trace::on`), always the general path, which logs the
/// decision (`trace`).
///
/// The trace flag is read twice rather than kept: a value live across `balance` would
/// have the verifier walk every path of it once per value.
#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let mut headers = MaybeUninit::<Headers>::uninit();
    let fast = fast::packet(ctx.ctx, &mut headers);
    // One comparison for the fast path's own decisions, XDP actions all.
    if fast.action <= xdp_action::XDP_REDIRECT || fast.action == NAT_FORWARD.action {
        let o = if fast.action == NAT_FORWARD.action {
            // SAFETY: the fast path wrote the headers and resolved the flow into the
            // scratch slot, as the general path does before it translates.
            translate(ctx, unsafe { headers.assume_init_ref() })
        } else {
            fast
        };
        count(o);
        return o.action;
    }
    if fast.action == fast::NEW_DATAGRAM.action {
        let o = fast::new_datagram(ctx.ctx);
        if o.action != fast::FALLBACK {
            count(o);
            return o.action;
        }
    }
    let parsed = parse_packet(ctx.ctx, &mut headers);
    if trace::on() {
        trace::begin();
    }
    let o = balance(ctx, parsed, &headers);
    count(o);
    if trace::on() {
        trace::packet(ctx.ctx, parsed, &headers, o.action, o.why.index());
    }
    o.action
}

/// Counts a packet's action and reason: one counter for the pair.
#[inline(always)]
fn count(o: Outcome) {
    bump(&GLOBAL_STATS, slot(o.action, o.why));
}

/// What happens to a packet: the XDP action and the reason counted for it.
///
/// Eight bytes, so BPF subprograms return it in a register: for a larger result LLVM may
/// return the address of the caller's stack slot, which the verifier refuses ("cannot
/// return stack pointer to the caller").
#[derive(Clone, Copy)]
pub struct Outcome {
    /// The XDP action (`xdp_action::*`).
    pub action: u32,
    /// With `Reason::DropTooBig`: the MTU to announce to the client (0: none).
    pub mtu: u16,
    pub why: Reason,
}
const _: () = assert!(size_of::<Outcome>() == 8);

impl Outcome {
    #[inline(always)]
    pub const fn new(action: u32, why: Reason) -> Self {
        Self {
            action,
            mtu: 0,
            why,
        }
    }

    /// `XDP_PASS`: to the kernel, unchanged.
    #[inline(always)]
    pub const fn pass(why: Reason) -> Self {
        Self::new(xdp_action::XDP_PASS, why)
    }

    /// `XDP_DROP`.
    #[inline(always)]
    pub const fn drop(why: Reason) -> Self {
        Self::new(xdp_action::XDP_DROP, why)
    }
}

/// Decides the fate of one packet, parsed by `parse_packet` into `headers` (`parsed` says
/// what it found).
///
/// The program's frame holds only the parsed headers: each kind of packet is handled by a BPF
/// subprogram of its own, so their stack frames are never stacked on one another (the
/// verifier allows 512 bytes for the deepest chain). For the same reason a VIP packet that
/// is too big once encapsulated is answered from here, not from the bottom of its chain.
#[inline(always)]
fn balance(ctx: &XdpContext, parsed: u32, headers: &MaybeUninit<Headers>) -> Outcome {
    let h = match parsed {
        // SAFETY: parse_packet initialised the headers when it says the packet is IP.
        PARSED_IP | PARSED_TO_VIP | PARSED_TO_NAT => unsafe { headers.assume_init_ref() },
        PARSED_TO_OTHER => return Outcome::pass(Reason::PassNotVip),
        PARSED_NOT_IP => return Outcome::pass(Reason::PassNotIp),
        _ => return Outcome::pass(Reason::PassBadIp),
    };
    let is_icmp = h.proto == IPPROTO_ICMP || h.proto == IPPROTO_ICMPV6;
    match h.l4 {
        L4::Ports => {
            let to = match parsed {
                PARSED_TO_VIP => select::TO_VIP,
                PARSED_TO_NAT => select::TO_NAT,
                _ => select::destination(h),
            };
            let o = match to {
                select::TO_VIP => vip_packet(ctx.ctx, h),
                // From here, not from `vip_packet`: under its frame, the reply's chain of
                // frames would not fit the verifier's 512 bytes of stack.
                select::TO_NAT => nat::reply(ctx.ctx, h),
                _ => return Outcome::pass(Reason::PassNotVip),
            };
            if o.why == Reason::DropTooBig {
                if o.mtu != 0 {
                    return icmp::too_big(ctx.ctx, h, o.mtu);
                }
                if o.action == NAT_FORWARD.action {
                    // For the same reason, a NAT VIP's packet is translated from here.
                    return translate(ctx, h);
                }
            }
            o
        }
        L4::Other if is_icmp => match icmp::kind(ctx.ctx, h) {
            icmp::ECHO => icmp::echo_reply(ctx.ctx, h),
            icmp::ERROR => match icmp::steer_error(ctx.ctx, h) {
                o if o.action == icmp::NAT_ERROR.action => nat::error_to_target(ctx.ctx, h),
                o => o,
            },
            _ if select::destination(h) == select::TO_NAT => nat::error_to_client(ctx.ctx, h),
            _ => Outcome::pass(Reason::PassNotVip),
        },
        L4::Fragment if h.proto == PROTO_TCP || h.proto == PROTO_UDP => {
            refuse_if_vip_address(&h.dst, h.family, Reason::DropFragment)
        }
        L4::Fragment if is_icmp => Outcome::pass(Reason::PassNotVip),
        // Another protocol (GRE, IP-in-IP, ESP, ...): no VIP takes it.
        L4::Other | L4::Fragment => no_vip(ctx.ctx, h),
        // A bad TCP/UDP header, or an IPv6 header chain too long to find one.
        L4::Malformed => refuse_if_vip_address(&h.dst, h.family, Reason::DropMalformed),
    }
}

/// Translates a NAT VIP's packet `h`, its flow resolved into the scratch slot
/// (`NAT_FORWARD`), and sends it to its target; a packet too big for the way there is
/// answered. Called from the program's entry, where the translation's chain of frames fits
/// the verifier's 512 bytes of stack.
#[inline(always)]
fn translate(ctx: &XdpContext, h: &Headers) -> Outcome {
    let o = nat::forward(ctx.ctx, h);
    if o.why == Reason::DropTooBig && o.mtu != 0 {
        return icmp::too_big(ctx.ctx, h, o.mtu);
    }
    o
}

/// A TCP or UDP packet whose destination may have a VIP (`select::destination`): to its
/// VIP's backend if it is for a VIP, dropped or passed otherwise (`no_vip`).
///
/// Which backend is decided by `select::resolve` (the flow table, the VIP, Maglev: the
/// order is written there once); a NAT backend's packets are then translated by `nat`. A
/// VIP packet a router would not forward (`admit`) is dropped before anything is
/// remembered for it.
#[inline(never)]
fn vip_packet(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let Some(s) = select::scratch() else {
        return Outcome::drop(Reason::DropNoBackend);
    };
    s.flow = flow_key(h, h.dport, 0);
    // Looked up once for the router checks and the encapsulation.
    let cfg = CONFIG.get(0);
    if let Some(why) = admit::refusal_with(ctx.ctx, h, admit::FORWARD, cfg) {
        // Only a packet that is for a VIP is refused; any other goes on as it would have.
        return if select::find_vip(&s.flow).is_some() {
            Outcome::drop(why)
        } else {
            no_vip(ctx.ctx, h)
        };
    }
    s.midflow = u8::from(h.proto == PROTO_TCP && h.tcp_flags & TCP_SYN == 0);
    s.seq = h.tcp_seq;
    let how = lb_common::resolve::how(h);
    match select::resolve(how, s) {
        select::RESOLVED if s.backend.mode != MODE_DSR => NAT_FORWARD,
        select::RESOLVED => deliver_with(&ctx, h, s, cfg),
        select::NOT_VIP => no_vip(ctx.ctx, h),
        _ => Outcome::drop(Reason::DropNoBackend),
    }
}

/// `vip_packet`'s (and `fast::packet`'s) answer for a NAT VIP's packet resolved into the
/// scratch slot: the caller hands it to `nat::forward` (`translate`; under `vip_packet`'s
/// frame, the translation's chain of frames did not fit the verifier's 512 bytes of
/// stack). Not an XDP action: it never leaves the program. It carries the `too_big` reason
/// without an MTU so that DSR packets pay nothing for it: the caller tests that reason
/// anyway.
pub const NAT_FORWARD: Outcome = Outcome::new(u32::MAX, Reason::DropTooBig);

/// Encapsulates the packet to the backend resolved into `s` and sends it, and counts it
/// for its VIP and backend: the one place those counters move.
#[inline(always)]
pub fn deliver(ctx: &XdpContext, h: &Headers, s: &select::Scratch) -> Outcome {
    deliver_with(ctx, h, s, CONFIG.get(0))
}

/// `deliver` with the `CONFIG` entry the caller has already looked up.
#[inline(always)]
fn deliver_with(
    ctx: &XdpContext,
    h: &Headers,
    s: &select::Scratch,
    cfg: Option<&DataplaneConfig>,
) -> Outcome {
    let o = forward::encapsulate_and_send(ctx, h, s.id, &s.backend, s.hash, cfg);
    select::count(s, h.ip_len, o.why == Reason::Forwarded);
    o
}

/// Parses the packet in a BPF subprogram of its own: the parser's temporaries then live in
/// a stack frame that is released before encapsulation needs its own (the verifier allows
/// 512 bytes for the deepest chain of frames, not per function).
///
/// The common case (untagged IPv4 without options or IPv6 without extension headers,
/// TCP or UDP: `parse_common`) is parsed with constant offsets, and the address filter is
/// asked first, from the addresses in the packet: traffic for other addresses is only
/// checked to have that shape and leaves without its headers being stored (a VIP packet
/// pays for a second reading of its addresses). Anything else goes through the general
/// parser.
///
/// Returns `PARSED_*`; the headers are written to `out` when the packet is IP, except for
/// `PARSED_TO_OTHER`.
#[inline(never)]
fn parse_packet(ctx: *mut xdp_md, out: &mut MaybeUninit<Headers>) -> u32 {
    let pkt = XdpPacket::new(&XdpContext::new(ctx));
    let to = common_destination(&pkt);
    if to == select::TO_OTHER {
        // Only checked, not stored (a copy of `parse_common` whose headers are unused, so
        // none of their fields is computed): whether the general path would also have
        // found TCP or UDP for no VIP.
        if matches!(parse_common(&pkt), Parsed::Ip(_)) {
            return PARSED_TO_OTHER;
        }
    } else if to == select::TO_VIP {
        if let Parsed::Ip(h) = parse_common(&pkt) {
            out.write(h);
            return PARSED_TO_VIP;
        }
    } else if let Parsed::Ip(h) = parse_common(&pkt) {
        out.write(h);
        return PARSED_TO_NAT;
    }
    match parse(&pkt) {
        Parsed::Ip(h) => {
            out.write(h);
            PARSED_IP
        }
        Parsed::NotIp => PARSED_NOT_IP,
        Parsed::BadIp => PARSED_BAD_IP,
    }
}

/// What the address filter says (`select::destination`) about an untagged IPv4 or IPv6
/// packet, from the addresses where `parse_common` finds them (IPv4 source and destination
/// at 26 and 30, IPv6 at 22 and 38), so that the headers need not be stored to ask it;
/// `select::TO_OTHER` for a frame too short or of another ethertype, which `parse_common`
/// does not take either.
#[inline(always)]
fn common_destination(pkt: &XdpPacket) -> u32 {
    let Some(ethertype) = pkt.bytes::<2>(12) else {
        return select::TO_OTHER;
    };
    let mut dst = [0u8; 16];
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => {
            let Some(a) = pkt.bytes::<8>(26) else {
                return select::TO_OTHER;
            };
            dst[..4].copy_from_slice(&a[4..]);
            select::destination_of(&dst, || {
                let mut src = [0u8; 16];
                src[..4].copy_from_slice(&a[..4]);
                src
            })
        }
        ETH_P_IPV6 => {
            let Some(a) = pkt.bytes::<32>(22) else {
                return select::TO_OTHER;
            };
            dst.copy_from_slice(&a[16..]);
            select::destination_of(&dst, || {
                let mut src = [0u8; 16];
                src.copy_from_slice(&a[..16]);
                src
            })
        }
        _ => select::TO_OTHER,
    }
}

pub(crate) const PARSED_NOT_IP: u32 = 0;
pub(crate) const PARSED_BAD_IP: u32 = 1;
/// IP, from the general parser: the address filter is still to be asked.
pub(crate) const PARSED_IP: u32 = 2;
/// TCP or UDP (`L4::Ports`) whose destination may have a VIP (`select::TO_VIP`).
pub(crate) const PARSED_TO_VIP: u32 = 3;
/// TCP or UDP that may be a NAT reply (`select::TO_NAT`).
pub(crate) const PARSED_TO_NAT: u32 = 4;
/// TCP or UDP for no VIP and no NAT (`select::TO_OTHER`): passed untouched; the headers
/// are not written.
pub(crate) const PARSED_TO_OTHER: u32 = 5;

/// Whether `dst` is an address that has VIPs (`VIP_ADDRS`).
#[inline(always)]
fn is_vip_address(dst: &lb_common::Addr, family: u8) -> bool {
    if !select::may_be_vip(dst) {
        return false;
    }
    let key = VipKey {
        addr: *dst,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: the value is a plain u32 only read for presence.
    unsafe { VIP_ADDRS.get(key) }.is_some()
}

/// A TCP/UDP packet without usable ports: dropped (with `why`) when addressed to an
/// address that has VIPs, passed untouched otherwise.
#[inline(always)]
fn refuse_if_vip_address(dst: &lb_common::Addr, family: u8, why: Reason) -> Outcome {
    if is_vip_address(dst, family) {
        Outcome::drop(why)
    } else {
        Outcome::pass(Reason::PassNotVip)
    }
}

/// A packet that no VIP takes (not ICMP). To an address that has VIPs it is dropped as
/// `not_vip_port` unless the address is also one of this host's (the FIB says it is not
/// forwarded): passed to the kernel, the kernel would route it to the router, which sends
/// it back here, until its TTL runs out. To any other address it is passed untouched. Only
/// this miss path pays for the lookups.
#[inline(never)]
fn no_vip(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    if !is_vip_address(&h.dst, h.family) || forward::is_local(ctx, h) {
        Outcome::pass(Reason::PassNotVip)
    } else {
        Outcome::drop(Reason::DropNotVipPort)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that gets here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
