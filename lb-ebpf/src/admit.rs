//! What a router would not forward: the checks made on a packet bound for a VIP before it
//! is sent to a backend or answered. The decisions themselves are `lb_common::admit`'s
//! (host-tested); this reads what they need from the packet and the configuration.
//!
//! Only packets for a VIP are refused: a caller that finds a reason confirms the packet is
//! for a VIP before dropping it, so traffic for any other address still reaches the kernel
//! unchanged, and the common path pays only for the checks (a MAC compare, the header
//! checksum as five 32-bit loads, a few address compares).

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::{
    DataplaneConfig, FAMILY_V4,
    admit::{
        frame_for_us, ipv4_header_checksum_ok, is_group_mac, martian_source_v4, martian_source_v6,
    },
    parse::{Headers, PacketBytes},
    stats::Reason,
};
use lb_ebpf::packet::XdpPacket;

use crate::CONFIG;

/// `refusal`: the packet is to be forwarded (to a backend): its TTL / hop limit must allow
/// one more hop.
pub const FORWARD: u32 = 1;
/// `refusal`: the packet is to be answered by the balancer (an echo request): the frame
/// must be unicast even when this host's MAC is not known, as the answer's source MAC is the
/// request's destination.
pub const ANSWER: u32 = 2;

/// Why a router would not forward (or answer) the packet `h`, or `None` when it would:
/// a frame for another MAC (`not_our_mac`), a wrong IPv4 header checksum
/// (`bad_ip_checksum`), a martian source (`martian_source`), with `FORWARD` a TTL / hop
/// limit of 0 or 1 (`ttl_exceeded`).
#[inline(always)]
pub fn refusal(ctx: *mut xdp_md, h: &Headers, how: u32) -> Option<Reason> {
    refusal_with(ctx, h, how, CONFIG.get(0))
}

/// `refusal` with the `CONFIG` entry the caller has already looked up (`None`: the frame
/// check is off, as with a MAC of zero).
#[inline(never)]
pub fn refusal_with(
    ctx: *mut xdp_md,
    h: &Headers,
    how: u32,
    cfg: Option<&DataplaneConfig>,
) -> Option<Reason> {
    let ctx = XdpContext::new(ctx);
    let pkt = XdpPacket::new(&ctx);
    let Some(dst_mac) = pkt.bytes::<6>(0) else {
        return Some(Reason::DropMalformed);
    };
    let ours = cfg.map_or([0; 6], |c| c.mac);
    if !frame_for_us(&dst_mac, &ours) || (how & ANSWER != 0 && is_group_mac(&dst_mac)) {
        return Some(Reason::DropNotOurMac);
    }
    let martian = if h.family == FAMILY_V4 {
        let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
        if !ipv4_header_checksum_ok(&pkt, l3, l4 - l3) {
            return Some(Reason::DropBadIpChecksum);
        }
        martian_source_v4(&h.src, &h.dst)
    } else {
        martian_source_v6(&h.src, &h.dst)
    };
    if martian {
        return Some(Reason::DropMartian);
    }
    if how & FORWARD != 0 && h.ttl <= 1 {
        return Some(Reason::DropTtl);
    }
    None
}
