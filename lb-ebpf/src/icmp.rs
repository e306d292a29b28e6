//! ICMP in the balancer: echo requests to a VIP address are answered here; errors about a
//! VIP flow (a router telling a backend's reply was too big, or unreachable) go to the
//! backend that owns the flow; a VIP packet too big once encapsulated is answered with
//! "fragmentation needed" / "packet too big" so the client's path-MTU discovery works.
//!
//! Replies are made in place and written field by field: building them in stack arrays
//! costs several hundred bytes of BPF stack, which the verifier does not have to give.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, FlowKey, VIP_F_HASH_SOURCE, VipKey,
    icmp::{
        ICMP_ECHO_REPLY, ICMP_HLEN, ICMPV6_ECHO_REPLY, Icmp, QUOTED_V4, QUOTED_V6, classify,
        echo_reply_header, error_ipv4_header, error_ipv6_first_words, frag_needed_header,
        packet_too_big_header,
    },
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Headers, IPV4_HLEN, IPV6_HLEN, PacketBytes, VLAN_HLEN,
    },
    stats::Reason,
};
use lb_ebpf::packet::{XdpPacket, adjust_head};

use crate::{VIP_ADDRS, forward, select};

/// An echo request to a VIP address: answer it (`echo_reply`).
pub const ECHO: u32 = 1;
/// An error about a VIP flow: steer it (`steer_error`).
pub const ERROR: u32 = 2;
/// Anything else: pass it.
pub const OTHER: u32 = 0;

/// What to do with an ICMP or ICMPv6 packet: `ECHO`, `ERROR` or `OTHER`. The caller then
/// calls the handler itself, so this frame is not under the handler's (the verifier allows
/// 512 bytes of stack for the deepest chain of frames).
#[inline(never)]
pub fn kind(ctx: *mut xdp_md, h: &Headers) -> u32 {
    if !select::may_be_vip(&h.dst) {
        return OTHER;
    }
    let key = VipKey {
        addr: h.dst,
        port: 0,
        proto: 0,
        family: h.family,
    };
    // SAFETY: the value is a plain u32 only read for presence.
    if unsafe { VIP_ADDRS.get(key) }.is_none() {
        return OTHER;
    }
    match classify(&XdpPacket::new(&XdpContext::new(ctx)), h) {
        Icmp::EchoRequest => ECHO,
        Icmp::Error { .. } => ERROR,
        Icmp::Other => OTHER,
    }
}

/// Sends an ICMP error about a VIP flow to the backend that has the flow, or that Maglev
/// would give it. Nothing is remembered. (It reads the quoted flow again rather than take
/// it from `kind`: errors are rare, and a flow key in the caller's frame would sit under
/// this one.)
#[inline(never)]
pub fn steer_error(ctx: *mut xdp_md, h: &Headers) -> (u32, u32) {
    let ctx = XdpContext::new(ctx);
    let Icmp::Error { flow } = classify(&XdpPacket::new(&ctx), h) else {
        return (xdp_action::XDP_PASS, Reason::PassNotVip as u32);
    };
    let Some(s) = select::scratch() else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend as u32);
    };
    // As for the flow's own packets: its 5-tuple entry first, then the VIP (and for a
    // source-affinity VIP, the client's entry or the Maglev choice). Nothing is remembered;
    // and an error about an error is never sent: a steered error that is too big is
    // dropped.
    s.flow = flow;
    s.midflow = 0;
    let v = if select::remembered(s) {
        forward::send(&ctx, h, s.backend.vip, s)
    } else {
        let mut key = VipKey {
            addr: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            family: flow.family,
        };
        let vip = match select::vip(&key) {
            Some(v) => v,
            None => {
                key.port = 0;
                match select::vip(&key) {
                    Some(v) => v,
                    None => return (xdp_action::XDP_PASS, Reason::PassNotVip as u32),
                }
            }
        };
        let mut how = 0;
        if vip.flags & VIP_F_HASH_SOURCE != 0 {
            s.flow = FlowKey {
                sport: 0,
                dport: key.port,
                ..flow
            };
            how = select::LOOK_UP;
        }
        forward::forward_flow(&ctx, h, &vip, s, how)
    };
    let why = u32::from(v.why);
    if why == Reason::Forwarded as u32 {
        (v.action, Reason::IcmpErrorSteered as u32)
    } else {
        (v.action, why)
    }
}

/// Swaps the MAC addresses of the frame (a reply goes back where the request came from).
#[inline(always)]
fn swap_macs(pkt: &XdpPacket) -> bool {
    match pkt.bytes::<12>(0) {
        Some(m) => {
            pkt.write(0, &[m[6], m[7], m[8], m[9], m[10], m[11]])
                && pkt.write(6, &[m[0], m[1], m[2], m[3], m[4], m[5]])
        }
        None => false,
    }
}

/// Turns an echo request into its reply in place and sends it back.
#[inline(never)]
pub fn echo_reply(ctx: *mut xdp_md, h: &Headers) -> (u32, u32) {
    let ctx = XdpContext::new(ctx);
    let pkt = XdpPacket::new(&ctx);
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    let Some(icmp) = pkt.bytes::<4>(l4) else {
        return (xdp_action::XDP_PASS, Reason::PassNotVip as u32);
    };
    let ok = if h.family == FAMILY_V4 {
        // Only plain 20-byte headers: a reply with options would have to rework them.
        if l4 != l3 + IPV4_HLEN {
            return (xdp_action::XDP_PASS, Reason::PassNotVip as u32);
        }
        let Some(len) = pkt.bytes::<2>(l3 + 2) else {
            return (xdp_action::XDP_PASS, Reason::PassNotVip as u32);
        };
        let payload = u16::from_be_bytes(len).saturating_sub(IPV4_HLEN as u16);
        let vip = [h.dst[0], h.dst[1], h.dst[2], h.dst[3]];
        let client = [h.src[0], h.src[1], h.src[2], h.src[3]];
        let mut ip = error_ipv4_header(vip, client, payload);
        // An echo reply keeps the request's TOS: an error header's 0xc0 would be wrong here.
        ip[1] = h.tos;
        let c = lb_common::csum::ipv4_header_checksum(&{
            let mut z = ip;
            z[10] = 0;
            z[11] = 0;
            z
        })
        .to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        swap_macs(&pkt)
            && pkt.write(l3, &ip)
            && pkt.write(l4, &echo_reply_header(icmp, ICMP_ECHO_REPLY))
    } else {
        swap_macs(&pkt)
            && pkt.write(l3 + 7, &[64])
            && pkt.write(l3 + 8, &h.dst)
            && pkt.write(l3 + 24, &h.src)
            && pkt.write(l4, &echo_reply_header(icmp, ICMPV6_ECHO_REPLY))
    };
    if ok {
        (xdp_action::XDP_TX, Reason::IcmpEchoAnswered as u32)
    } else {
        (xdp_action::XDP_DROP, Reason::DropMalformed as u32)
    }
}

/// Answers a VIP packet that is too big once encapsulated with "fragmentation needed"
/// (IPv4 with DF) or "packet too big" (IPv6), announcing `mtu`, from the VIP to the client.
/// The reply quotes the client's IP header and the first 8 bytes of its TCP/UDP header.
/// Packets it cannot answer (IPv4 without DF, IP options, IPv6 extension headers) are
/// dropped as `too_big`.
#[inline(always)]
pub fn too_big(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> (u32, u32) {
    if h.family == FAMILY_V4 {
        too_big_v4(ctx, h, mtu)
    } else {
        too_big_v6(ctx, h, mtu)
    }
}

const TOO_BIG_DROP: (u32, u32) = (xdp_action::XDP_DROP, Reason::DropTooBig as u32);

/// Grows the frame's head by `grow` bytes and cuts it `keep` bytes after the new headers
/// (`frame` is its length before), then writes the L2 header back to the sender (MACs
/// swapped, a VLAN tag kept, `ethertype`). The client's packet start, now after the new
/// headers, becomes the quoted part.
#[inline(always)]
fn reshape(
    ctx: &XdpContext,
    h: &Headers,
    frame: usize,
    grow: usize,
    keep: usize,
    ethertype: u16,
) -> Option<XdpPacket> {
    let l3 = usize::from(h.l3_offset);
    let old = XdpPacket::new(ctx);
    let eth = old.bytes::<ETH_HLEN>(0)?;
    let tag = old.bytes::<VLAN_HLEN>(ETH_HLEN)?;
    adjust_head(ctx, -(grow as i32))?;
    let cut = (l3 + grow + keep) as i32 - (frame + grow) as i32;
    // SAFETY: the helper only needs the context pointer.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return None;
    }
    let pkt = XdpPacket::new(ctx);
    let t = ethertype.to_be_bytes();
    let mut ok = pkt.write(0, &[eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]])
        && pkt.write(6, &[eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
    ok &= if h.vlan {
        pkt.write(12, &[eth[12], eth[13], tag[0], tag[1], t[0], t[1]])
    } else {
        pkt.write(12, &t)
    };
    ok.then_some(pkt)
}

/// "Fragmentation needed" for an IPv4 packet with DF and no options.
#[inline(never)]
fn too_big_v4(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> (u32, u32) {
    let ctx = XdpContext::new(ctx);
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    if !h.dont_fragment || l4 != l3 + IPV4_HLEN {
        return TOO_BIG_DROP;
    }
    let old = XdpPacket::new(&ctx);
    let frame = old.len();
    let Some(quoted_sum) = old.checksum_sum::<QUOTED_V4>(l3) else {
        return TOO_BIG_DROP;
    };
    let ip = error_ipv4_header(
        [h.dst[0], h.dst[1], h.dst[2], h.dst[3]],
        [h.src[0], h.src[1], h.src[2], h.src[3]],
        (ICMP_HLEN + QUOTED_V4) as u16,
    );
    let icmp = frag_needed_header(mtu, quoted_sum);
    let Some(pkt) = reshape(&ctx, h, frame, IPV4_HLEN + ICMP_HLEN, QUOTED_V4, ETH_P_IP) else {
        return TOO_BIG_DROP;
    };
    if pkt.write(l3, &ip) && pkt.write(l3 + IPV4_HLEN, &icmp) {
        (xdp_action::XDP_TX, Reason::TooBigSignalled as u32)
    } else {
        TOO_BIG_DROP
    }
}

/// "Packet too big" for an IPv6 packet without extension headers.
#[inline(never)]
fn too_big_v6(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> (u32, u32) {
    let ctx = XdpContext::new(ctx);
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    if l4 != l3 + IPV6_HLEN {
        return TOO_BIG_DROP;
    }
    let old = XdpPacket::new(&ctx);
    let frame = old.len();
    let Some(quoted_sum) = old.checksum_sum::<QUOTED_V6>(l3) else {
        return TOO_BIG_DROP;
    };
    let icmp = packet_too_big_header(&h.dst, &h.src, u32::from(mtu), quoted_sum);
    let Some(pkt) = reshape(&ctx, h, frame, IPV6_HLEN + ICMP_HLEN, QUOTED_V6, ETH_P_IPV6) else {
        return TOO_BIG_DROP;
    };
    let ok = pkt.write(l3, &error_ipv6_first_words((ICMP_HLEN + QUOTED_V6) as u16))
        && pkt.write(l3 + 8, &h.dst)
        && pkt.write(l3 + 24, &h.src)
        && pkt.write(l3 + IPV6_HLEN, &icmp);
    if ok {
        (xdp_action::XDP_TX, Reason::TooBigSignalled as u32)
    } else {
        TOO_BIG_DROP
    }
}
