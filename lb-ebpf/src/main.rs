//! `xlb_balancer`: the XDP load balancer. Entry point and maps; the steps live in
//! `select` (flow table and Maglev), `forward` (encapsulation, FIB lookup, transmit).
//!
//! Per packet: parse (lb-common), find the VIP, find or choose the backend, encapsulate
//! towards it and send it back out. Anything that is not VIP traffic is returned
//! `XDP_PASS` untouched; the program never returns `XDP_ABORTED`.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

mod forward;
mod icmp;
mod select;

use aya_ebpf::{
    Global,
    bindings::{xdp_action, xdp_md},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::parse::PacketBytes;
use lb_common::{
    Backend, BackendStats, DataplaneConfig, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP,
    VIP_F_HASH_SOURCE, VipInfo, VipKey, VipStats,
    hash::{VIP_FILTER_WORDS, flow_key},
    parse::Headers,
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, L4, Parsed, TCP_RST, TCP_SYN, parse},
    stats::{ACTIONS, GLOBAL_COUNTERS, Reason},
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
/// Run-time settings (entry 0).
#[map]
static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);
/// Counters by XDP action and by reason (`lb_common::stats`).
#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_COUNTERS, 0);
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

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// Balances one packet and counts its action and reason.
#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let (action, why) = balance(ctx);
    bump(&GLOBAL_STATS, action);
    bump(&GLOBAL_STATS, ACTIONS + why);
    action
}

/// The frame a benchmark run starts from: its length and its L2 header.
#[repr(C)]
pub struct BenchTemplate {
    pub len: u32,
    pub l2_len: u32,
    pub l2: [u8; 24],
}

/// Entry 0: the benchmark's template (see `xlb_balancer_bench`). Unused in production.
#[map]
static BENCH: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Puts a frame the balancer rewrote back to the benchmark's template: encapsulation only
/// grows the head and overwrites only the original L2 header, so moving the head back and
/// rewriting that header restores the frame. Returns false if it cannot. (A subprogram, so
/// its frame is not under the balancer's.)
#[inline(never)]
fn restore_template(ctx: *mut xdp_md) -> bool {
    let ctx = &XdpContext::new(ctx);
    let Some(t) = BENCH.get(0) else { return false };
    let len = XdpPacket::new(ctx).len();
    let grown = len as i64 - i64::from(t.len);
    if grown > 0 && grown <= 64 && lb_ebpf::packet::adjust_head(ctx, grown as i32).is_none() {
        return false;
    }
    let pkt = XdpPacket::new(ctx);
    if t.l2_len == 18 {
        let l2: [u8; 18] = [
            t.l2[0], t.l2[1], t.l2[2], t.l2[3], t.l2[4], t.l2[5], t.l2[6], t.l2[7], t.l2[8],
            t.l2[9], t.l2[10], t.l2[11], t.l2[12], t.l2[13], t.l2[14], t.l2[15], t.l2[16],
            t.l2[17],
        ];
        pkt.write(0, &l2)
    } else {
        let l2: [u8; 14] = [
            t.l2[0], t.l2[1], t.l2[2], t.l2[3], t.l2[4], t.l2[5], t.l2[6], t.l2[7], t.l2[8],
            t.l2[9], t.l2[10], t.l2[11], t.l2[12], t.l2[13],
        ];
        pkt.write(0, &l2)
    }
}

/// Benchmark entry point: restores the frame to the template, then balances it exactly as
/// `xlb_balancer` does. With `BPF_PROG_TEST_RUN` the kernel reuses the frame between runs
/// (repeat > 1, live frames); this makes every run see the original packet. Never attached.
#[xdp]
pub fn xlb_balancer_bench(ctx: XdpContext) -> u32 {
    if !restore_template(ctx.ctx) {
        return xdp_action::XDP_DROP;
    }
    run(&ctx)
}

/// The benchmark's floor for `xlb_balancer_bench`: the same restore, then `XDP_TX`.
#[xdp]
pub fn xlb_bench_restore(ctx: XdpContext) -> u32 {
    if !restore_template(ctx.ctx) {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// What to do with a packet: the XDP action and the reason counted for it.
///
/// Eight bytes, so BPF subprograms return it in a register: for a larger result LLVM may
/// return the address of the caller's stack slot, which the verifier refuses ("cannot
/// return stack pointer to the caller").
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub why: u16,
    /// With `Reason::DropTooBig as u32`: the MTU to announce to the client (0: none).
    pub mtu: u16,
}
const _: () = assert!(size_of::<Verdict>() == 8);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, why: u32) -> Self {
        Self {
            action,
            why: why as u16,
            mtu: 0,
        }
    }
}

/// Decides the fate of one packet.
///
/// This frame holds only the parsed headers: each kind of packet is handled by a BPF
/// subprogram of its own, so their stack frames are never stacked on one another (the
/// verifier allows 512 bytes for the deepest chain). For the same reason a VIP packet that
/// is too big once encapsulated is answered from here, not from the bottom of its chain.
#[inline(always)]
fn balance(ctx: &XdpContext) -> (u32, u32) {
    let mut headers = MaybeUninit::<Headers>::uninit();
    let h = match parse_packet(ctx.ctx, &mut headers) {
        // SAFETY: parse_packet initialised the headers when it says the packet is IP.
        PARSED_IP => unsafe { headers.assume_init_ref() },
        PARSED_NOT_IP => return (xdp_action::XDP_PASS, Reason::PassNotIp as u32),
        _ => return (xdp_action::XDP_PASS, Reason::PassBadIp as u32),
    };
    match h.l4 {
        L4::Ports => {
            let v = vip_packet(ctx.ctx, h);
            if u32::from(v.why) == Reason::DropTooBig as u32 && v.mtu != 0 {
                return icmp::too_big(ctx.ctx, h, v.mtu);
            }
            (v.action, u32::from(v.why))
        }
        L4::Other if h.proto == IPPROTO_ICMP || h.proto == IPPROTO_ICMPV6 => {
            match icmp::kind(ctx.ctx, h) {
                icmp::ECHO => icmp::echo_reply(ctx.ctx, h),
                icmp::ERROR => icmp::steer_error(ctx.ctx, h),
                _ => (xdp_action::XDP_PASS, Reason::PassNotVip as u32),
            }
        }
        L4::Other => (xdp_action::XDP_PASS, Reason::PassNotVip as u32),
        L4::Fragment if h.proto == PROTO_TCP || h.proto == PROTO_UDP => {
            refuse_if_vip_address(&h.dst, h.family, Reason::DropFragment as u32)
        }
        L4::Fragment => (xdp_action::XDP_PASS, Reason::PassNotVip as u32),
        // A bad TCP/UDP header, or an IPv6 header chain too long to find one.
        L4::Malformed => refuse_if_vip_address(&h.dst, h.family, Reason::DropMalformed as u32),
    }
}

/// A TCP or UDP packet: to its VIP's backend if it is for a VIP, passed otherwise.
///
/// The flow table is asked first, with the packet's 5-tuple: a packet of a remembered flow
/// (most packets) then needs no `VIPS` lookup; its backend entry names its VIP. Only on a
/// miss is the VIP looked up, and for a source-affinity VIP the table asked again with the
/// affinity key. Flows of a removed VIP do not survive this way: removing a VIP releases its
/// backend ids, which then keep no flow.
#[inline(never)]
fn vip_packet(ctx: *mut xdp_md, h: &Headers) -> Verdict {
    let ctx = XdpContext::new(ctx);
    if !select::may_be_vip(&h.dst) {
        return Verdict::new(xdp_action::XDP_PASS, Reason::PassNotVip as u32);
    }
    let Some(s) = select::scratch() else {
        return Verdict::new(xdp_action::XDP_DROP, Reason::DropNoBackend as u32);
    };
    s.flow = flow_key(h, h.dport, 0);
    s.midflow = u8::from(h.proto == PROTO_TCP && h.tcp_flags & TCP_SYN == 0);
    if select::remembered(s) {
        return forward::send(&ctx, h, s.backend.vip, s);
    }
    let Some((vip_key, vip)) = select::find_vip(h) else {
        return Verdict::new(xdp_action::XDP_PASS, Reason::PassNotVip as u32);
    };
    let mut how = 0;
    if vip.flags & VIP_F_HASH_SOURCE != 0 {
        s.flow = flow_key(h, vip_key.port, vip.flags);
        how |= select::LOOK_UP;
    }
    // A TCP RST ends its flow: forwarded, but not remembered.
    if h.proto != PROTO_TCP || h.tcp_flags & TCP_RST == 0 {
        how |= select::REMEMBER;
    }
    forward::forward_flow(&ctx, h, &vip, s, how)
}

/// Parses the packet in a BPF subprogram of its own: the parser's temporaries then live in
/// a stack frame that is released before encapsulation needs its own (the verifier allows
/// 512 bytes for the deepest chain of frames, not per function).
///
/// Returns `PARSED_*`; the headers are written to `out` when the packet is IP.
#[inline(never)]
fn parse_packet(ctx: *mut xdp_md, out: &mut MaybeUninit<Headers>) -> u32 {
    match parse(&XdpPacket::new(&XdpContext::new(ctx))) {
        Parsed::Ip(h) => {
            out.write(h);
            PARSED_IP
        }
        Parsed::NotIp => PARSED_NOT_IP,
        Parsed::BadIp => PARSED_BAD_IP,
    }
}

const PARSED_NOT_IP: u32 = 0;
const PARSED_BAD_IP: u32 = 1;
const PARSED_IP: u32 = 2;

/// A TCP/UDP packet without usable ports: dropped (with `why`) when addressed to an
/// address that has VIPs, passed untouched otherwise.
#[inline(always)]
fn refuse_if_vip_address(dst: &lb_common::Addr, family: u8, why: u32) -> (u32, u32) {
    if !select::may_be_vip(dst) {
        return (xdp_action::XDP_PASS, Reason::PassNotVip as u32);
    }
    let key = VipKey {
        addr: *dst,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: the value is a plain u32 only read for presence.
    if unsafe { VIP_ADDRS.get(key) }.is_some() {
        (xdp_action::XDP_DROP, why)
    } else {
        (xdp_action::XDP_PASS, Reason::PassNotVip as u32)
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
