//! The fast path: the two kinds of packet nearly all traffic is made of, handled with
//! constant offsets, from registers, without the general path's stored headers and
//! scratch slot:
//! - an untagged IPv4 TCP or UDP packet (no options, not a fragment, not a TCP SYN) of a
//!   flow the flow table knows, to an IPv4 DSR backend whose next hop this CPU has cached;
//! - an untagged IPv4 TCP or UDP packet for an address with no VIP and no NAT role.
//!
//! It takes only decisions the general path (`crate::balance`) would take for the same
//! packet, and counts them the same way (`crate::run` counts the action and reason). A
//! packet it is not sure of — another shape, a flow-table miss, a NAT flow, a check that
//! fails (the frame's MAC, the header checksum, a martian source, the TTL), a next hop to
//! ask the FIB for, a trace on — gets `FALLBACK` with the packet untouched, and the general
//! path decides it from the start: refusals and rare cases pay for the fast path's reads
//! once more, the common packet pays for nothing else.

use aya_ebpf::{bindings::xdp_md, helpers::bpf_jiffies64, programs::XdpContext};
use lb_common::{
    CFG_F_SOURCE_V4, DataplaneConfig, FAMILY_V4, FlowKey, MODE_DSR, PROTO_TCP, PROTO_UDP,
    admit::fold16,
    encap::outer_ipv4_words,
    hash::{FILTER_F_TARGETS, FILTER_NAT, FILTER_VIP, filter_position_words},
    parse::{ETH_HLEN, ETH_P_IP, IPPROTO_IPIP, IPV4_HLEN, PacketBytes, TCP_ACK, TCP_RST, TCP_SYN},
    stats::Reason,
};
use lb_ebpf::packet::{XdpPacket, adjust_head, word};

use crate::{
    BACKEND_STATS, BACKENDS, CONFIG, FLOWS, NEXT_HOPS, Outcome, VIP_FILTER, VIP_STATS, forward,
    trace,
};

/// `packet`'s answer when the general path is to decide: not an XDP action, it never
/// leaves the program.
pub const FALLBACK: u32 = u32::MAX - 1;

const FALL: Outcome = Outcome::new(FALLBACK, Reason::PassNotIp);

/// Offsets in an untagged IPv4 frame without options.
const IP: usize = ETH_HLEN;
const L4: usize = ETH_HLEN + IPV4_HLEN;

/// Decides the packet when it is one of the fast path's two kinds; `FALLBACK` (the packet
/// untouched) otherwise. A subprogram: its frame is not under the general path's.
#[inline(never)]
pub fn packet(ctx: *mut xdp_md) -> Outcome {
    if trace::on() {
        return FALL;
    }
    let xdp = XdpContext::new(ctx);
    let pkt = XdpPacket::new(&xdp);
    // Ethernet, IPv4 and the first 8 bytes of TCP or UDP.
    let Some(p) = pkt.ptr::<[u8; L4 + 8]>(0) else {
        return FALL;
    };
    let p = p as usize;
    // SAFETY (every load below): within the L4 + 8 bytes just checked.
    if unsafe { word::load16_at::<12>(p) } != ETH_P_IP.to_be() {
        return FALL;
    }
    let vl = unsafe { word::load32_at::<{ IP as i16 }>(p) }.to_ne_bytes();
    let total = usize::from(u16::from_be_bytes([vl[2], vl[3]]));
    let proto = unsafe { word::load16_at::<{ IP as i16 + 8 }>(p) }.to_ne_bytes()[1];
    // An IPv4 header without options that the general parser takes (`parse`: the whole
    // datagram in the frame, no shorter than its header), of TCP or UDP. For no VIP that
    // is all it needs: whatever the rest (a fragment, a cut or invalid TCP or UDP header),
    // the general path passes it as `not_vip`.
    if vl[0] != 0x45
        || total < IPV4_HLEN
        || total > pkt.len() - IP
        || (proto != PROTO_TCP && proto != PROTO_UDP)
    {
        return FALL;
    }
    // The address filter, as `select::destination_of` asks it.
    let dst = unsafe { word::load32_at::<{ IP as i16 + 16 }>(p) };
    let (fw, shift) = filter_position_words(u64::from(u32::from_le_bytes(dst.to_ne_bytes())), 0);
    let Some(bits) = VIP_FILTER.get(fw) else {
        return FALL;
    };
    let bits = *bits;
    if (bits >> (shift + FILTER_VIP)) & 1 == 0 {
        if bits & ((1 << (shift + FILTER_NAT)) | FILTER_F_TARGETS) == 0 {
            return Outcome::pass(Reason::PassNotVip);
        }
        return FALL;
    }
    // For a VIP: what `parse_common` accepts (not a fragment, a complete TCP or UDP header
    // inside the datagram), not a TCP SYN (`lb_common::resolve::START`: the general path
    // chooses anew).
    let frag = u16::from_be(unsafe { word::load16_at::<{ IP as i16 + 6 }>(p) });
    if frag & 0x3fff != 0 {
        return FALL;
    }
    if proto == PROTO_TCP {
        if pkt.ptr::<[u8; L4 + 14]>(0).is_none() {
            return FALL;
        }
        // SAFETY: within the 14 bytes of TCP header just checked.
        let t = unsafe { word::load16_at::<{ L4 as i16 + 12 }>(p) }.to_ne_bytes();
        let data_offset = usize::from(t[0] >> 4) * 4;
        if total < IPV4_HLEN + 20
            || data_offset < 20
            || IPV4_HLEN + data_offset > total
            || t[1] & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        {
            return FALL;
        }
    } else {
        let len = usize::from(u16::from_be(unsafe {
            word::load16_at::<{ L4 as i16 + 4 }>(p)
        }));
        if total < IPV4_HLEN + 8 || len < 8 || IPV4_HLEN + len > total {
            return FALL;
        }
    }
    known_flow(&xdp, p, total as u16)
}

/// The rest of `packet` for a TCP or UDP packet to a VIP address, whose first `L4 + 8`
/// bytes at `p` were checked, `total` bytes of IP datagram: forwarded when its flow is
/// known (`select::remembered`), to an IPv4 DSR backend, and the general path would neither
/// refuse it (`admit::refusal`) nor ask the FIB about it (`forward::find_hop`).
#[inline(always)]
fn known_flow(xdp: &XdpContext, p: usize, total: u16) -> Outcome {
    // SAFETY (every packet load until `adjust_head`): within the L4 + 8 bytes checked.
    let (src, dst) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 + 12 }>(p),
            word::load32_wide_at::<{ IP as i16 + 16 }>(p),
        )
    };
    // `admit::refusal` with `FORWARD`, but for the frame's MAC: the header checksum, a
    // martian source, the TTL.
    let (w0, w2) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 }>(p),
            word::load32_wide_at::<{ IP as i16 + 8 }>(p),
        )
    };
    let sum = w0 + unsafe { word::load32_wide_at::<{ IP as i16 + 4 }>(p) } + w2 + src + dst;
    let first = (src as u32).to_ne_bytes()[0];
    let tp = (w2 as u32).to_ne_bytes();
    if fold16(sum) != 0xffff
        || first == 0
        || first == 127
        || first >= 224
        || src == dst
        || tp[0] <= 1
    {
        return FALL;
    }
    let ports = unsafe { word::load32_wide_at::<{ L4 as i16 }>(p) };
    let key = flow_key_v4(src, dst, ports, tp[1]);
    // SAFETY: FlowValue is plain integers, read at once.
    let Some(v) = (unsafe { FLOWS.get(&key) }) else {
        return FALL;
    };
    let (id, generation) = (v.backend, v.generation);
    let Some(b) = BACKENDS.get(id) else {
        return FALL;
    };
    if !b.keeps_flow(generation) || b.mode != MODE_DSR || b.family != FAMILY_V4 {
        return FALL;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return FALL;
    };
    // The frame's MAC (`admit::frame_for_us`), and the source `encapsulate_and_send` needs.
    let (mac_hi, mac_lo) = unsafe { (word::load32_at::<0>(p), word::load16_at::<4>(p)) };
    let (our_hi, our_lo) = config_mac(cfg);
    if !((mac_hi == our_hi && mac_lo == our_lo) || (our_hi == 0 && our_lo == 0))
        || cfg.flags & CFG_F_SOURCE_V4 == 0
    {
        return FALL;
    }
    let d = &b.addr;
    // SAFETY: within the bytes checked.
    let tos = unsafe { word::load16_at::<{ IP as i16 }>(p) }.to_ne_bytes()[1];
    let Some(outer) = outer_ipv4_words(
        u32::from_ne_bytes(cfg.source_v4),
        u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
        total,
        IPPROTO_IPIP,
        tos,
    ) else {
        return FALL;
    };
    let ingress = xdp.ingress_ifindex() as u32;
    let Some(hop) = NEXT_HOPS.get_ptr_mut(id) else {
        return FALL;
    };
    // SAFETY: this CPU's slot of a per-CPU array; XDP handles one packet at a time per CPU.
    let hop = unsafe { &*hop };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_jiffies64() };
    if !hop.fits(now, generation, ingress, total + IPV4_HLEN as u16) {
        return FALL;
    }
    // The packet is changed from here on: no more falling back.
    let Some(pkt) = adjust_head(xdp, -(IPV4_HLEN as i32)) else {
        return FALL;
    };
    let Some(q) = pkt.ptr::<[u8; L4]>(0) else {
        return Outcome::drop(Reason::DropEncapFailed);
    };
    let q = q as usize;
    let (macs_hi, macs_lo) = hop.macs();
    // SAFETY: within the L4 bytes just checked.
    unsafe {
        word::store64_at::<0>(q, macs_hi);
        word::store32_at::<8>(q, macs_lo);
        word::store16_at::<12>(q, ETH_P_IP.to_be());
        word::store32_at::<{ IP as i16 }>(q, outer[0]);
        word::store32_at::<{ IP as i16 + 4 }>(q, outer[1]);
        word::store32_at::<{ IP as i16 + 8 }>(q, outer[2]);
        word::store32_at::<{ IP as i16 + 12 }>(q, outer[3]);
        word::store32_at::<{ IP as i16 + 16 }>(q, outer[4]);
    }
    let o = forward::send(ingress, hop.ifindex, false, Reason::Forwarded);
    if o.why == Reason::Forwarded {
        count_hit(u32::from(b.vip), id, total);
    }
    o
}

/// This host's MAC from the configuration as a 4-byte and a 2-byte word as they are in
/// memory (`admit::frame_for_us` compares the same words).
#[inline(always)]
fn config_mac(cfg: &DataplaneConfig) -> (u32, u16) {
    const _: () = assert!(core::mem::offset_of!(DataplaneConfig, mac) % 4 == 0);
    let p = (&raw const cfg.mac).cast::<u8>();
    // SAFETY: the six bytes of `mac`, at a 4-byte aligned offset of a 4-byte aligned struct
    // (asserted above), so both reads are aligned.
    unsafe { (p.cast::<u32>().read(), p.add(4).cast::<u16>().read()) }
}

/// The flow key of an IPv4 packet from `src` to `dst` (as 4-byte loads from the packet) with
/// `ports` (the L4 header's first word) and `proto`: `Headers::five_tuple`'s, built as the
/// five 8-byte words it is in memory.
#[inline(always)]
fn flow_key_v4(src: u64, dst: u64, ports: u64, proto: u8) -> FlowKey {
    // An 8-byte word whose memory holds the 4 bytes of `w` (a 4-byte load, zero-extended),
    // then `a`, `b` and two zeros.
    let word = |w: u64, a: u8, b: u8| {
        let tail = u64::from(u32::from_ne_bytes([a, b, 0, 0]));
        if cfg!(target_endian = "little") {
            w | (tail << 32)
        } else {
            (w << 32) | tail
        }
    };
    let words: [u64; 5] = [
        word(src, 0, 0),
        0,
        word(dst, 0, 0),
        0,
        word(ports, proto, FAMILY_V4),
    ];
    const _: () = assert!(size_of::<FlowKey>() == size_of::<[u64; 5]>());
    // SAFETY: FlowKey is 40 bytes of plain integers (src, dst, sport, dport, proto,
    // family, reserved) in this order without padding; any bit pattern is a key.
    unsafe { core::mem::transmute::<[u64; 5], FlowKey>(words) }
}
/// `select::count` for a forwarded packet of `bytes` bytes whose flow the table knew: a
/// hit for VIP `vip`, a packet for backend `id`.
#[inline(always)]
fn count_hit(vip: u32, id: u32, bytes: u16) {
    let bytes = u64::from(bytes);
    if let Some(v) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs one packet at a time per
        // CPU, so no other writer interleaves.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += bytes;
            (*v).flow_hits += 1;
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
        }
    }
}
