//! `xlb_decap`: runs on backends. Strips the outer IPv4 or IPv6 header of packets that a
//! balancer encapsulated to one of this host's addresses (`LOCAL_ADDRS`) and hands the
//! original packet to the kernel, which delivers it to the VIP configured on loopback; the
//! reply goes straight to the client. Every other packet passes unchanged.
//!
//! Two hooks, one decision (`outer`): TC ingress (`xlb_decap_tc`, the default), which sees
//! socket buffers with their offloads intact, and XDP (`xlb_decap`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action,
    },
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, VipKey,
    parse::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6,
        IPV4_HLEN, IPV6_HLEN, PacketBytes, VLAN_HLEN,
    },
    stats::decap,
};
use lb_ebpf::{
    packet::{SkbPacket, XdpPacket, adjust_head},
    stats::bump,
};

/// Addresses this host decapsulates for, as `VipKey { addr, family, port: 0, proto: 0 }`.
#[map]
static LOCAL_ADDRS: HashMap<VipKey, u32> = HashMap::with_max_entries(64, 0);

/// `lb_common::stats::decap` counters.
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap::COUNT, 0);

/// The decapsulator at XDP: every frame, before the kernel builds a socket buffer. On a
/// veth this turns segmentation offload off on the peer (`xlb decap --hook xdp`).
#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let (action, why) = decap_xdp(&ctx);
    bump(&DECAP_STATS, why);
    action
}

/// The decapsulator at TC ingress (the default hook): every socket buffer, which may be
/// many segments that GRO merged, so offloads stay on and a packet it does not
/// decapsulate costs it one look at its headers.
#[classifier]
pub fn xlb_decap_tc(ctx: TcContext) -> i32 {
    let (action, why) = decap_tc(&ctx);
    bump(&DECAP_STATS, why);
    action
}

/// An encapsulated packet to one of this host's addresses, as `outer` found it.
struct Outer {
    /// The Ethernet header as received.
    eth: [u8; ETH_HLEN],
    /// The VLAN tag in the frame, if there is one.
    tag: Option<[u8; VLAN_HLEN]>,
    /// The outer IP header's length.
    len: usize,
    /// The inner packet's ethertype, and whether it differs from the outer one's.
    inner_ethertype: u16,
    family_changes: bool,
}

/// What the decapsulator does with the frame in `pkt`: `Ok` for a packet a balancer
/// encapsulated to one of this host's addresses, well formed; the counter it passes under
/// otherwise.
#[inline(always)]
fn outer<P: PacketBytes>(pkt: &P) -> Result<Outer, u32> {
    let eth = pkt.bytes::<ETH_HLEN>(0).ok_or(decap::PASS_NOT_ENCAP)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    let mut tag = None;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let t = pkt
            .bytes::<VLAN_HLEN>(ETH_HLEN)
            .ok_or(decap::PASS_NOT_ENCAP)?;
        tag = Some(t);
        ethertype = u16::from_be_bytes([t[2], t[3]]);
        l3 += VLAN_HLEN;
    }

    // Outer header: its length, the inner protocol, and the destination it was sent to.
    let (len, inner, dst, family) = match ethertype {
        ETH_P_IP => {
            let ip = pkt.bytes::<IPV4_HLEN>(l3).ok_or(decap::PASS_NOT_ENCAP)?;
            if ip[0] >> 4 != 4 || (ip[9] != IPPROTO_IPIP && ip[9] != IPPROTO_IPV6) {
                return Err(decap::PASS_NOT_ENCAP);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ihl < IPV4_HLEN || frag & 0x3fff != 0 {
                return Err(decap::PASS_MALFORMED);
            }
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&ip[16..20]);
            (ihl, ip[9], dst, FAMILY_V4)
        }
        ETH_P_IPV6 => {
            let (Some(fixed), Some(dst)) = (pkt.bytes::<8>(l3), pkt.bytes::<16>(l3 + 24)) else {
                return Err(decap::PASS_NOT_ENCAP);
            };
            if fixed[0] >> 4 != 6 || (fixed[6] != IPPROTO_IPIP && fixed[6] != IPPROTO_IPV6) {
                return Err(decap::PASS_NOT_ENCAP);
            }
            (IPV6_HLEN, fixed[6], dst, FAMILY_V6)
        }
        _ => return Err(decap::PASS_NOT_ENCAP),
    };
    let key = VipKey {
        addr: dst,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: the value is a plain u32 only read for presence.
    if unsafe { LOCAL_ADDRS.get(key) }.is_none() {
        return Err(decap::PASS_NOT_LOCAL);
    }
    // The inner header must be there, of the family the outer header announced.
    let first = pkt.bytes::<1>(l3 + len).ok_or(decap::PASS_MALFORMED)?;
    let inner_ethertype = match (inner, first[0] >> 4) {
        (IPPROTO_IPIP, 4) => ETH_P_IP,
        (IPPROTO_IPV6, 6) => ETH_P_IPV6,
        _ => return Err(decap::PASS_MALFORMED),
    };
    Ok(Outer {
        eth,
        tag,
        len,
        inner_ethertype,
        family_changes: inner_ethertype != ethertype,
    })
}

#[inline(always)]
fn decap_xdp(ctx: &XdpContext) -> (u32, u32) {
    let pass = xdp_action::XDP_PASS;
    let o = match outer(&XdpPacket::new(ctx)) {
        Ok(o) => o,
        Err(why) => return (pass, why),
    };
    // Rebuild the L2 header just in front of the inner packet.
    let Some(pkt) = adjust_head(ctx, o.len as i32) else {
        return (xdp_action::XDP_DROP, decap::DROP_ADJUST);
    };
    let t = o.inner_ethertype.to_be_bytes();
    let mut l2 = o.eth;
    let ok = if let Some(tag) = o.tag {
        pkt.write(0, &l2) && pkt.write(ETH_HLEN, &[tag[0], tag[1], t[0], t[1]])
    } else {
        l2[12] = t[0];
        l2[13] = t[1];
        pkt.write(0, &l2)
    };
    if !ok {
        return (xdp_action::XDP_DROP, decap::DROP_ADJUST);
    }
    (pass, decap::DECAPSULATED)
}

/// The bytes `outer` may read: a tagged frame's Ethernet header and tag, an IPv6 header,
/// the inner header's first byte.
const HEADERS: u32 = (ETH_HLEN + VLAN_HLEN + IPV6_HLEN + 1) as u32;

#[inline(always)]
fn decap_tc(ctx: &TcContext) -> (i32, u32) {
    let mut pkt = SkbPacket::of_skb(ctx);
    // Headers outside the linear part are pulled into it (cheap when they are already
    // there, as they nearly always are); a short packet is looked at as it is.
    if pkt.len() < HEADERS as usize && ctx.len() > pkt.len() as u32 {
        let _ = ctx.pull_data(HEADERS.min(ctx.len()));
        pkt = SkbPacket::of_skb(ctx);
    }
    let o = match outer(&pkt) {
        Ok(o) => o,
        Err(why) => return (TC_ACT_OK, why),
    };
    // At TC ingress the kernel has already moved a VLAN tag into the socket buffer's
    // metadata; a tag still in the frame (the inner one of two) puts the outer header
    // where `bpf_skb_adjust_room` does not look for it.
    if o.tag.is_some() {
        return (TC_ACT_OK, decap::PASS_MALFORMED);
    }
    // The outer header goes; a merged packet keeps its segment size (the inner segments
    // are what they were), and the kernel learns the new protocol if the family changes.
    let mut flags = u64::from(BPF_F_ADJ_ROOM_FIXED_GSO);
    if o.family_changes {
        flags |= u64::from(if o.inner_ethertype == ETH_P_IP {
            BPF_F_ADJ_ROOM_DECAP_L3_IPV4
        } else {
            BPF_F_ADJ_ROOM_DECAP_L3_IPV6
        });
    }
    if ctx
        .adjust_room(-(o.len as i32), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return (TC_ACT_SHOT, decap::DROP_ADJUST);
    }
    if o.family_changes {
        let t = o.inner_ethertype.to_be_bytes();
        if ctx.store(12, &t, 0).is_err() {
            return (TC_ACT_SHOT, decap::DROP_ADJUST);
        }
    }
    (TC_ACT_OK, decap::DECAPSULATED)
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
