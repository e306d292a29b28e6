//! `xlb_decap`: runs on backends. Strips the outer IPv4 or IPv6 header of packets that a
//! balancer encapsulated to one of this host's addresses (`LOCAL_ADDRS`) and hands the
//! original packet to the kernel, which delivers it to the VIP configured on loopback; the
//! reply goes straight to the client. Every other packet passes unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
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
    packet::{XdpPacket, adjust_head},
    stats::bump,
};

/// Addresses this host decapsulates for, as `VipKey { addr, family, port: 0, proto: 0 }`.
#[map]
static LOCAL_ADDRS: HashMap<VipKey, u32> = HashMap::with_max_entries(64, 0);

/// `lb_common::stats::decap` counters.
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap::COUNT, 0);

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let (action, why) = try_decap(&ctx);
    bump(&DECAP_STATS, why);
    action
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> (u32, u32) {
    let pass = xdp_action::XDP_PASS;
    let pkt = XdpPacket::new(ctx);
    let Some(eth) = pkt.bytes::<ETH_HLEN>(0) else {
        return (pass, decap::PASS_NOT_ENCAP);
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    let mut tag = [0u8; VLAN_HLEN];
    let vlan = ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD;
    if vlan {
        let Some(t) = pkt.bytes::<VLAN_HLEN>(ETH_HLEN) else {
            return (pass, decap::PASS_NOT_ENCAP);
        };
        tag = t;
        ethertype = u16::from_be_bytes([t[2], t[3]]);
        l3 += VLAN_HLEN;
    }

    // Outer header: its length, the inner protocol, and the destination it was sent to.
    let (outer_len, inner, dst, family) = match ethertype {
        ETH_P_IP => {
            let Some(ip) = pkt.bytes::<IPV4_HLEN>(l3) else {
                return (pass, decap::PASS_NOT_ENCAP);
            };
            if ip[0] >> 4 != 4 || (ip[9] != IPPROTO_IPIP && ip[9] != IPPROTO_IPV6) {
                return (pass, decap::PASS_NOT_ENCAP);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ihl < IPV4_HLEN || frag & 0x3fff != 0 {
                return (pass, decap::PASS_MALFORMED);
            }
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&ip[16..20]);
            (ihl, ip[9], dst, FAMILY_V4)
        }
        ETH_P_IPV6 => {
            let (Some(fixed), Some(dst)) = (pkt.bytes::<8>(l3), pkt.bytes::<16>(l3 + 24)) else {
                return (pass, decap::PASS_NOT_ENCAP);
            };
            if fixed[0] >> 4 != 6 || (fixed[6] != IPPROTO_IPIP && fixed[6] != IPPROTO_IPV6) {
                return (pass, decap::PASS_NOT_ENCAP);
            }
            (IPV6_HLEN, fixed[6], dst, FAMILY_V6)
        }
        _ => return (pass, decap::PASS_NOT_ENCAP),
    };
    let key = VipKey {
        addr: dst,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: the value is a plain u32 only read for presence.
    if unsafe { LOCAL_ADDRS.get(key) }.is_none() {
        return (pass, decap::PASS_NOT_LOCAL);
    }
    // The inner header must be there, of the family the outer header announced.
    let Some(first) = pkt.bytes::<1>(l3 + outer_len) else {
        return (pass, decap::PASS_MALFORMED);
    };
    let inner_ethertype = match (inner, first[0] >> 4) {
        (IPPROTO_IPIP, 4) => ETH_P_IP,
        (IPPROTO_IPV6, 6) => ETH_P_IPV6,
        _ => return (pass, decap::PASS_MALFORMED),
    };

    // Rebuild the L2 header just in front of the inner packet.
    let Some(pkt) = adjust_head(ctx, outer_len as i32) else {
        return (xdp_action::XDP_DROP, decap::DROP_ADJUST);
    };
    let t = inner_ethertype.to_be_bytes();
    let mut l2 = eth;
    let ok = if vlan {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that gets here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
