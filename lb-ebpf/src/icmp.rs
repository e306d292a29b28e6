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
    FAMILY_V4,
    admit::fold16,
    icmp::{
        ICMP_ECHO_REPLY, ICMP_HLEN, ICMPV6_ECHO_REPLY, Icmp, QUOTED_V4, QUOTED_V6, classify,
        echo_reply_header, error_ipv4_header, error_ipv6_first_words, frag_needed_header,
        packet_too_big_header,
    },
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Headers, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, PacketBytes,
        VLAN_HLEN,
    },
    stats::Reason,
};
use lb_ebpf::packet::{XdpPacket, adjust_head};

use crate::{Outcome, admit, deliver, is_vip_address, select};

/// An echo request to a VIP address: answer it (`echo_reply`).
pub const ECHO: u32 = 1;
/// An error about a VIP flow: steer it (`steer_error`).
pub const ERROR: u32 = 2;
/// Anything else: pass it.
pub const OTHER: u32 = 0;

/// `steer_error`'s answer for an error about a NAT flow: the caller translates it
/// (`nat::error_to_target`, with the flow resolved in the scratch slot). Not an XDP action:
/// it never leaves the program.
pub const NAT_ERROR: Outcome = Outcome::new(u32::MAX, Reason::IcmpErrorSteered);

/// What to do with an ICMP or ICMPv6 packet: `ECHO`, `ERROR` or `OTHER`. The caller then
/// calls the handler itself, so this frame is not under the handler's (the verifier allows
/// 512 bytes of stack for the deepest chain of frames).
#[inline(never)]
pub fn kind(ctx: *mut xdp_md, h: &Headers) -> u32 {
    if !is_vip_address(&h.dst, h.family) {
        return OTHER;
    }
    match classify(&XdpPacket::new(&XdpContext::new(ctx)), h) {
        Icmp::EchoRequest => ECHO,
        Icmp::Error { .. } => ERROR,
        Icmp::Other => OTHER,
    }
}

/// Sends an ICMP error about a VIP flow to the backend that has the flow, or that Maglev
/// would give it: the resolver's order, as for the flow's own packets (`select::resolve`),
/// with nothing remembered. An error a router would not forward is dropped (`admit`); an
/// error about an error is never sent: a steered error that is too big is dropped. (It
/// reads the quoted flow again rather than take it from `kind`: errors are rare, and a flow
/// key in the caller's frame would sit under this one.)
#[inline(never)]
pub fn steer_error(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let Icmp::Error { flow } = classify(&XdpPacket::new(&ctx), h) else {
        return Outcome::pass(Reason::PassNotVip);
    };
    let Some(s) = select::scratch() else {
        return Outcome::drop(Reason::DropNoBackend);
    };
    s.flow = flow;
    s.midflow = 0;
    let resolved = select::resolve(lb_common::resolve::ICMP_ERROR, s);
    match resolved {
        select::RESOLVED => {}
        select::NOT_VIP => return Outcome::pass(Reason::PassNotVip),
        _ => return Outcome::drop(Reason::DropNoBackend),
    }
    if let Some(why) = admit::refusal(ctx.ctx, h, admit::FORWARD) {
        return Outcome::drop(why);
    }
    if s.backend.mode != lb_common::MODE_DSR {
        // Translated by the caller (`nat::error_to_target`): from here its frame, and the
        // rewrite's under it, would not fit the 512 bytes of stack.
        return NAT_ERROR;
    }
    let o = deliver(&ctx, h, s);
    if o.why == Reason::Forwarded {
        Outcome {
            why: Reason::IcmpErrorSteered,
            ..o
        }
    } else {
        o
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

/// Turns an echo request into its reply in place and sends it back: only for a request a
/// router would answer (a unicast frame to this host, a source that is no martian, a
/// correct IPv4 header checksum: `admit`) with a correct ICMP checksum. The reply's source
/// MAC is the request's destination, so this host's.
#[inline(never)]
pub fn echo_reply(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    if let Some(why) = admit::refusal(ctx.ctx, h, admit::ANSWER) {
        return Outcome::drop(why);
    }
    let pkt = XdpPacket::new(&ctx);
    let (l3, l4) = (usize::from(h.l3_offset), usize::from(h.l4_offset));
    let Some(icmp) = pkt.bytes::<4>(l4) else {
        return Outcome::pass(Reason::PassNotVip);
    };
    let v4 = h.family == FAMILY_V4;
    // Only plain 20-byte IPv4 headers: a reply with options would have to rework them.
    if v4 && l4 != l3 + IPV4_HLEN {
        return Outcome::pass(Reason::PassNotVip);
    }
    let message = usize::from(h.ip_len).saturating_sub(l4 - l3);
    let Some(mut sum) = pkt.ones_sum(l4, message) else {
        return Outcome::drop(Reason::DropBadIcmpChecksum);
    };
    if !v4 {
        sum += pseudo_header_sum(h, message as u32);
    }
    if fold16(sum) != 0xffff {
        return Outcome::drop(Reason::DropBadIcmpChecksum);
    }
    let ok = if v4 {
        let payload = h.ip_len.saturating_sub(IPV4_HLEN as u16);
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
        Outcome::new(xdp_action::XDP_TX, Reason::IcmpEchoAnswered)
    } else {
        Outcome::drop(Reason::DropMalformed)
    }
}

/// The ICMPv6 pseudo-header's part of the checksum (source, destination, upper-layer length
/// `len`, next header 58), as 32-bit little-endian words like `XdpPacket::ones_sum`.
#[inline(always)]
fn pseudo_header_sum(h: &Headers, len: u32) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 16 {
        let (s, d) = (&h.src, &h.dst);
        sum += u64::from(u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]));
        sum += u64::from(u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]));
        i += 4;
    }
    sum + u64::from(u32::from_le_bytes(len.to_be_bytes()))
        + u64::from(u32::from_le_bytes([0, 0, 0, IPPROTO_ICMPV6]))
}

/// Answers a VIP packet that is too big once encapsulated with "fragmentation needed"
/// (IPv4 with DF) or "packet too big" (IPv6), announcing `mtu`, from the VIP to the client.
/// The reply quotes the client's IP header and the first 8 bytes of its TCP/UDP header.
/// Packets it cannot answer (IPv4 without DF, IP options, IPv6 extension headers) are
/// dropped as `too_big`.
#[inline(always)]
pub fn too_big(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> Outcome {
    if h.family == FAMILY_V4 {
        too_big_v4(ctx, h, mtu)
    } else {
        too_big_v6(ctx, h, mtu)
    }
}

const TOO_BIG_DROP: Outcome = Outcome::drop(Reason::DropTooBig);

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
fn too_big_v4(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> Outcome {
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
        Outcome::new(xdp_action::XDP_TX, Reason::TooBigSignalled)
    } else {
        TOO_BIG_DROP
    }
}

/// "Packet too big" for an IPv6 packet without extension headers.
#[inline(never)]
fn too_big_v6(ctx: *mut xdp_md, h: &Headers, mtu: u16) -> Outcome {
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
        Outcome::new(xdp_action::XDP_TX, Reason::TooBigSignalled)
    } else {
        TOO_BIG_DROP
    }
}
