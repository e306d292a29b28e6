//! The fast path: the kinds of packet nearly all traffic is made of, read at constant
//! offsets into registers, without the general path's stored headers and scratch slot.
//! All are untagged TCP or UDP, IPv4 without options and not a fragment, or IPv6 without
//! extension headers:
//! - a packet of a flow the flow table knows, to a DSR backend of the packet's family:
//!   encapsulated and sent (IPv6 with the flow hash as the outer flow label);
//! - a TCP SYN, or a UDP datagram the flow table does not know, to a 5-tuple VIP whose
//!   Maglev choice is such a backend: the same, the flow remembered;
//! - IPv4 only: a packet of an established NAT connection, translated to its target from
//!   registers (`nat_established`), and a target's reply to one, translated back to its
//!   client (`nat_reply`), each when its next hop is cached; a reply no connection has is
//!   passed;
//! - IPv4 only: a SYN to a NAT VIP, or a NAT flow's entry without a translation yet: its
//!   headers and scratch slot filled as the general path leaves them, handed to the
//!   translation (`NAT_FORWARD`), which allocates the SNAT port;
//! - a packet for an address with no VIP and no NAT role: passed.
//!
//! It takes only decisions the general path (`crate::balance`) would take for the same
//! packet, and counts them the same way (`crate::run` counts the action and reason). A
//! packet it is not sure of — another shape, a flow-table miss, a check that fails (the
//! frame's MAC, the header checksum, a martian source, the TTL), a FIB answer other than a
//! next hop that carries it, a trace on — gets `FALLBACK` with the packet untouched, and
//! the general path decides it from the start: refusals and rare cases pay for the fast
//! path's reads once more, the common packet pays for nothing else.

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_md, helpers::bpf_jiffies64, programs::XdpContext};
use lb_common::{
    Addr, BACKEND_UNUSED, Backend, CFG_F_SOURCE_V4, CFG_F_SOURCE_V6, CT_F_FIN, CT_F_REPLIED,
    CT_F_RST, DataplaneConfig, FAMILY_V4, FAMILY_V6, FLOW_F_NAT, FlowKey, FlowValue, MODE_DSR,
    MODE_NAT, PROTO_TCP, PROTO_UDP, VIP_F_HASH_SOURCE, VipKey,
    admit::words_sum_ok,
    encap::{outer_ipv4_words, outer_ipv6_first_u32s},
    hash::{
        FILTER_F_TARGETS, FILTER_NAT, FILTER_TARGET, FILTER_VIP, filter_position_words, flow_hash,
        flow_hash_words, table_index,
    },
    nat::{Rewrite, update_wide},
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Headers, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN,
        L4 as Layer4, PacketBytes, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    stats::Reason,
};
use lb_ebpf::packet::{XdpPacket, adjust_head, word};

use crate::{
    BACKEND_STATS, BACKENDS, CONFIG, FLOWS, MAGLEV, MAGLEV_SIZE, NAT_FORWARD, NAT_REV, NEXT_HOPS,
    Outcome, REPLY_HOPS, SNAT_POOL, VIP_FILTER, VIP_STATS, VIPS, forward,
    forward::{CachedHop, Tunnel, cache_hop},
    nat, select, trace,
};

/// `BPF_NOEXIST`: insert only if the key is not there.
const BPF_NOEXIST: u64 = 1;
/// `BPF_ANY`: insert, or overwrite the entry there.
const BPF_ANY: u64 = 0;

/// `packet`'s answer when the general path is to decide: not an XDP action, it never
/// leaves the program.
pub const FALLBACK: u32 = u32::MAX - 1;

/// Its reason is never counted; `Forwarded` (0) makes it a 32-bit constant.
const FALL: Outcome = Outcome::new(FALLBACK, Reason::Forwarded);

/// Offsets in an untagged IPv4 frame without options.
const IP: usize = ETH_HLEN;
const L4: usize = ETH_HLEN + IPV4_HLEN;

/// Decides the packet when it is one of the fast path's kinds; `FALLBACK` (the packet
/// untouched) otherwise. An established NAT connection's packet and its target's reply
/// are translated and sent here; a NAT SYN (or an entry without a translation yet) gets
/// `crate::NAT_FORWARD`, with its headers written to `headers` and its flow resolved into
/// the scratch slot, as the general path hands it to the translation. A subprogram: its
/// frame is not under the general path's.
#[inline(never)]
pub fn packet(ctx: *mut xdp_md, headers: &mut MaybeUninit<Headers>) -> Outcome {
    if trace::on() {
        return FALL;
    }
    let xdp = XdpContext::new(ctx);
    let pkt = XdpPacket::new(&xdp);
    // Ethernet, IPv4 and the first 18 bytes of TCP (to its checksum, which a NAT rewrite
    // updates), or UDP and 10 bytes of payload: every packet of either kind that crosses an
    // Ethernet (a frame has 60 bytes at least); a shorter frame is the general path's.
    let Some(p) = pkt.ptr::<[u8; L4 + 18]>(0) else {
        return FALL;
    };
    let p = p as usize;
    // SAFETY (every load below): within the L4 + 18 bytes just checked.
    let ethertype = unsafe { word::load16_wide_at::<12>(p) };
    if ethertype == u64::from(ETH_P_IPV6.to_be()) {
        return packet6(&xdp, &pkt);
    }
    if ethertype != u64::from(ETH_P_IP.to_be()) {
        return FALL;
    }
    let vl = unsafe { word::load32_at::<{ IP as i16 }>(p) }.to_ne_bytes();
    let total = usize::from(u16::from_be_bytes([vl[2], vl[3]]));
    let proto = unsafe { word::load8_wide_at::<{ IP as i16 + 9 }>(p) };
    // An IPv4 header without options that the general parser takes (`parse`: the whole
    // datagram in the frame, no shorter than its header), of TCP or UDP. For no VIP that
    // is all it needs: whatever the rest (a fragment, a cut or invalid TCP or UDP header),
    // the general path passes it as `not_vip`.
    if vl[0] != 0x45
        || total < IPV4_HLEN
        || total > pkt.len() - IP
        || (proto != u64::from(PROTO_TCP) && proto != u64::from(PROTO_UDP))
    {
        return FALL;
    }
    // The address filter, as `select::destination_of` asks it.
    let dst = unsafe { word::load32_wide_at::<{ IP as i16 + 16 }>(p) };
    let (fw, shift) = filter_position_words(le_address(dst), 0);
    let Some(bits) = VIP_FILTER.get(fw) else {
        return FALL;
    };
    let bits = *bits;
    if (bits >> (shift + FILTER_VIP)) & 1 == 0 {
        // SAFETY: within the bytes checked.
        let src = || {
            (
                le_address(unsafe { word::load32_wide_at::<{ IP as i16 + 12 }>(p) }),
                0,
            )
        };
        if !may_be_reply(bits, shift, src) {
            return Outcome::pass(Reason::PassNotVip);
        }
        return match ports_packet(p, total, proto) {
            Some(_) => nat_reply(&xdp, p),
            None => FALL,
        };
    }
    // Each kind its own copy of `to_vip`, which then knows whether it starts a flow.
    match ports_packet(p, total, proto) {
        Some(true) => to_vip(&xdp, p, total as u16, true, headers),
        Some(false) => to_vip(&xdp, p, total as u16, false, headers),
        None => FALL,
    }
}

/// For a VIP or a NAT reply, whether the IPv4 packet at `p` (its first `L4 + 18` bytes
/// checked, `total` bytes of datagram, protocol `proto`: TCP or UDP) is what `parse_common`
/// accepts — not a fragment, a complete TCP or UDP header inside the datagram — and if so,
/// whether it is a TCP SYN, which starts a flow (`lb_common::resolve::START`).
#[inline(always)]
fn ports_packet(p: usize, total: usize, proto: u64) -> Option<bool> {
    // SAFETY (every load): within the bytes checked.
    let frag = u16::from_be(unsafe { word::load16_at::<{ IP as i16 + 6 }>(p) });
    if frag & 0x3fff != 0 {
        return None;
    }
    if proto == u64::from(PROTO_TCP) {
        let t = unsafe { word::load16_at::<{ L4 as i16 + 12 }>(p) }.to_ne_bytes();
        let data_offset = usize::from(t[0] >> 4) * 4;
        if total < IPV4_HLEN + 20 || data_offset < 20 || IPV4_HLEN + data_offset > total {
            return None;
        }
        Some(t[1] & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN)
    } else {
        let len = usize::from(u16::from_be(unsafe {
            word::load16_at::<{ L4 as i16 + 4 }>(p)
        }));
        if total < IPV4_HLEN + 8 || len < 8 || IPV4_HLEN + len > total {
            return None;
        }
        Some(false)
    }
}

/// Offsets in an untagged IPv6 frame without extension headers.
const IP6: usize = ETH_HLEN;
const L4_6: usize = ETH_HLEN + IPV6_HLEN;

/// `packet` for an IPv6 frame: the same kinds, IPv6 without extension headers, to a DSR
/// backend of IPv6 (IPv6-in-IPv6); NAT flows are the general path's.
#[inline(always)]
fn packet6(xdp: &XdpContext, pkt: &XdpPacket) -> Outcome {
    // Ethernet, IPv6 and the first 14 bytes of TCP, or UDP and 6 bytes of payload.
    let Some(p) = pkt.ptr::<[u8; L4_6 + 14]>(0) else {
        return FALL;
    };
    let p = p as usize;
    // SAFETY (every load below): within the bytes just checked.
    let (version, plen, next) = unsafe {
        (
            word::load8_wide_at::<{ IP6 as i16 }>(p) >> 4,
            usize::from(u16::from_be(word::load16_at::<{ IP6 as i16 + 4 }>(p))),
            word::load8_wide_at::<{ IP6 as i16 + 6 }>(p),
        )
    };
    let total = IPV6_HLEN + plen;
    // What the general parser takes (`parse`: version 6, the whole datagram in the frame)
    // with TCP or UDP right after the fixed header. For no VIP that is all it needs.
    if version != 6
        || total > pkt.len() - IP6
        || (next != u64::from(PROTO_TCP) && next != u64::from(PROTO_UDP))
    {
        return FALL;
    }
    let dst = unsafe {
        [
            le_half(word::load64_at::<{ IP6 as i16 + 24 }>(p)),
            le_half(word::load64_at::<{ IP6 as i16 + 32 }>(p)),
        ]
    };
    let (fw, shift) = filter_position_words(dst[0], dst[1]);
    let Some(bits) = VIP_FILTER.get(fw) else {
        return FALL;
    };
    let bits = *bits;
    if (bits >> (shift + FILTER_VIP)) & 1 == 0 {
        // SAFETY (both loads): within the bytes checked.
        let src = || unsafe {
            (
                le_half(word::load64_at::<{ IP6 as i16 + 8 }>(p)),
                le_half(word::load64_at::<{ IP6 as i16 + 16 }>(p)),
            )
        };
        // An IPv6 NAT reply is the general path's.
        return if may_be_reply(bits, shift, src) {
            FALL
        } else {
            Outcome::pass(Reason::PassNotVip)
        };
    }
    // For a VIP: a complete TCP or UDP header inside the datagram (`parse_common`).
    if next == u64::from(PROTO_TCP) {
        let t = unsafe { word::load16_at::<{ L4_6 as i16 + 12 }>(p) }.to_ne_bytes();
        let data_offset = usize::from(t[0] >> 4) * 4;
        if total < IPV6_HLEN + 20 || data_offset < 20 || IPV6_HLEN + data_offset > total {
            return FALL;
        }
        if t[1] & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
            return to_vip6(xdp, p, total as u16, true);
        }
    } else {
        let len = usize::from(u16::from_be(unsafe {
            word::load16_at::<{ L4_6 as i16 + 4 }>(p)
        }));
        if total < IPV6_HLEN + 8 || len < 8 || IPV6_HLEN + len > total {
            return FALL;
        }
    }
    to_vip6(xdp, p, total as u16, false)
}

/// An 8-byte load of half an IPv6 address as the little-endian word the hashes read
/// (`hash::filter_position`, `hash::flow_hash`).
#[inline(always)]
fn le_half(w: u64) -> u64 {
    if cfg!(target_endian = "little") {
        w
    } else {
        w.swap_bytes()
    }
}

/// `to_vip` for IPv6 (the first `L4_6 + 14` bytes at `p` checked, `total` bytes of IP
/// datagram): to an IPv6 DSR backend, encapsulated in IPv6 with the flow hash as the outer
/// flow label (`select::remembered` computes it on hits too, for IPv6 backends).
#[inline(always)]
fn to_vip6(xdp: &XdpContext, p: usize, total: u16, start: bool) -> Outcome {
    // SAFETY (every packet load until `adjust_head`): within the bytes checked.
    let (s0, s1, d0, d1) = unsafe {
        (
            word::load64_at::<{ IP6 as i16 + 8 }>(p),
            word::load64_at::<{ IP6 as i16 + 16 }>(p),
            word::load64_at::<{ IP6 as i16 + 24 }>(p),
            word::load64_at::<{ IP6 as i16 + 32 }>(p),
        )
    };
    // `admit::martian_source_v6`, and the hop limit (`FORWARD`); IPv6 has no header
    // checksum.
    let (first, last) = (u64::from_be(s0), u64::from_be(s1));
    let hop_limit = unsafe { word::load8_wide_at::<{ IP6 as i16 + 7 }>(p) };
    if (first == 0 && (last <= 1 || last >> 32 == 0xffff))
        || first >> 56 == 0xff
        || (s0 == d0 && s1 == d1)
        || hop_limit <= 1
    {
        return FALL;
    }
    let (ports, proto) = unsafe {
        (
            word::load32_wide_at::<{ L4_6 as i16 }>(p),
            word::load8_wide_at::<{ IP6 as i16 + 6 }>(p),
        )
    };
    let words = [s0, s1, d0, d1, key_tail(ports, proto, FAMILY_V6)];
    let key = as_flow_key(&words);
    let (vip, id, b, hash) = if start {
        let Some(chosen) = choose(key, &words) else {
            return FALL;
        };
        chosen
    } else {
        let Some((v, id, b)) = remembered(key) else {
            // A datagram no entry knows starts a flow, as in `to_vip`.
            return if proto == u64::from(PROTO_UDP) {
                NEW_DATAGRAM
            } else {
                FALL
            };
        };
        // SAFETY: FlowValue is plain integers; the element is valid for the program run.
        let stored = unsafe { (*v).hash };
        let hash = if stored != 0 {
            stored
        } else if cfg!(target_endian = "little") {
            flow_hash_words(&words)
        } else {
            flow_hash(key)
        };
        (u32::from(b.vip), id, b, hash)
    };
    let new = if start { New::Syn } else { New::Known };
    encapsulate::<true>(xdp, p, total, new, key, Chosen { vip, id, b, hash })
}

/// Whether a packet whose destination's VIP bit is clear in its filter word `bits` (the
/// address's bits at `shift`) may be a NAT reply: to a SNAT address, or (while
/// client-preserving VIPs have targets) from a target, whose address `src` gives as the
/// filter reads it. Any other such packet is passed as `not_vip`
/// (`select::destination_of`'s order).
#[inline(always)]
fn may_be_reply(bits: u64, shift: u32, src: impl FnOnce() -> (u64, u64)) -> bool {
    if (bits >> (shift + FILTER_NAT)) & 1 != 0 {
        return true;
    }
    if bits & FILTER_F_TARGETS == 0 {
        return false;
    }
    let (lo, hi) = src();
    let (fw, shift) = filter_position_words(lo, hi);
    VIP_FILTER
        .get(fw)
        .is_some_and(|w| (w >> (shift + FILTER_TARGET)) & 1 != 0)
}

/// An IPv4 address as a 4-byte load from the packet gave it, as the little-endian word the
/// address filter reads (`hash::filter_position`).
#[inline(always)]
fn le_address(a: u64) -> u64 {
    if cfg!(target_endian = "little") {
        a
    } else {
        u64::from((a as u32).swap_bytes())
    }
}

/// The rest of `packet` for a TCP or UDP packet to a VIP address, whose first `L4 + 18`
/// bytes at `p` were checked, `total` bytes of IP datagram: forwarded to an IPv4 DSR
/// backend — its flow's (`select::remembered`), or for a SYN (`start`) the Maglev choice of
/// its 5-tuple VIP (`select::choose_backend`, remembered) — when the general path would
/// neither refuse it (`admit::refusal`) nor ask the FIB about it (`forward::find_hop`); to
/// an IPv4 NAT target, translated (`nat_established`) or handed over (`nat_flow`).
#[inline(always)]
fn to_vip(
    xdp: &XdpContext,
    p: usize,
    total: u16,
    start: bool,
    headers: &mut MaybeUninit<Headers>,
) -> Outcome {
    // SAFETY (every packet load until `adjust_head`): within the L4 + 18 bytes checked.
    let (src, dst) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 + 12 }>(p),
            word::load32_wide_at::<{ IP as i16 + 16 }>(p),
        )
    };
    if !forwardable(p, src, dst) {
        return FALL;
    }
    let (ports, proto) = unsafe {
        (
            word::load32_wide_at::<{ L4 as i16 }>(p),
            word::load8_wide_at::<{ IP as i16 + 9 }>(p),
        )
    };
    let words = flow_key_words_v4(src, dst, ports, proto);
    let key = as_flow_key(&words);
    let (vip, id, b) = if start {
        let Some((vip, id, b, hash)) = choose(key, &words) else {
            return FALL;
        };
        if b.mode != MODE_DSR && b.family == FAMILY_V4 {
            return nat_flow(p, total, key, Known::New { vip, hash }, id, b, headers);
        }
        (vip, id, b)
    } else {
        let Some((v, id, b)) = remembered(key) else {
            // A datagram no entry knows starts a flow (`resolve::how`: remembered, counted
            // new), by the Maglev choice; to a DSR backend here, to a NAT target the
            // general path's (`encapsulate` falls back).
            return if proto == u64::from(PROTO_UDP) {
                NEW_DATAGRAM
            } else {
                FALL
            };
        };
        if b.mode != MODE_DSR && b.family == FAMILY_V4 {
            // SAFETY: FlowValue is plain integers; the element is valid for the program run.
            if unsafe { (*v).state } & FLOW_F_NAT != 0 {
                return nat_established(xdp, p, total, v, id, b);
            }
            // SAFETY: as above.
            return nat_flow(p, total, key, Known::Hit(unsafe { &*v }), id, b, headers);
        }
        (u32::from(b.vip), id, b)
    };
    let new = if start { New::Syn } else { New::Known };
    encapsulate::<false>(
        xdp,
        p,
        total,
        new,
        key,
        Chosen {
            vip,
            id,
            b,
            hash: 0,
        },
    )
}

/// What `packet` answers for a UDP datagram to a VIP whose flow the table does not have,
/// once the checks `to_vip` or `to_vip6` make have passed: `crate::run` then calls
/// `new_datagram`. Not an XDP action: it never leaves the program.
pub const NEW_DATAGRAM: Outcome = Outcome::new(u32::MAX - 2, Reason::Forwarded);

/// The rest of `packet` for a `NEW_DATAGRAM` (the frame unchanged since): the Maglev choice
/// of its 5-tuple VIP (`choose`), encapsulated to a DSR backend of the packet's family and
/// remembered, as `select::choose_backend` does without `START`; `FALLBACK` (the packet
/// untouched) for anything else, a NAT target among them. A subprogram of its own, called
/// after `packet` returns, so that its frame is not under `packet`'s and the paths it is not
/// on keep their registers.
#[inline(never)]
pub fn new_datagram(ctx: *mut xdp_md) -> Outcome {
    let xdp = XdpContext::new(ctx);
    let pkt = XdpPacket::new(&xdp);
    // `packet` checked at least this much of either family's frame.
    let Some(p) = pkt.ptr::<[u8; L4 + 18]>(0) else {
        return FALL;
    };
    let p = p as usize;
    // SAFETY (every load): within the bytes just checked.
    let ethertype = unsafe { word::load16_wide_at::<12>(p) };
    if ethertype == u64::from(ETH_P_IPV6.to_be()) {
        let Some(q) = pkt.ptr::<[u8; L4_6 + 14]>(0) else {
            return FALL;
        };
        let q = q as usize;
        // SAFETY (every load): within the bytes just checked.
        let (words, plen) = unsafe {
            (
                [
                    word::load64_at::<{ IP6 as i16 + 8 }>(q),
                    word::load64_at::<{ IP6 as i16 + 16 }>(q),
                    word::load64_at::<{ IP6 as i16 + 24 }>(q),
                    word::load64_at::<{ IP6 as i16 + 32 }>(q),
                    key_tail(
                        word::load32_wide_at::<{ L4_6 as i16 }>(q),
                        u64::from(PROTO_UDP),
                        FAMILY_V6,
                    ),
                ],
                u16::from_be(word::load16_at::<{ IP6 as i16 + 4 }>(q)),
            )
        };
        let key = as_flow_key(&words);
        let Some((vip, id, b, hash)) = choose(key, &words) else {
            return FALL;
        };
        let total = IPV6_HLEN as u16 + plen;
        let c = Chosen { vip, id, b, hash };
        return encapsulate::<true>(&xdp, q, total, New::Datagram, key, c);
    }
    // SAFETY (every load): within the bytes checked.
    let (words, total) = unsafe {
        (
            flow_key_words_v4(
                word::load32_wide_at::<{ IP as i16 + 12 }>(p),
                word::load32_wide_at::<{ IP as i16 + 16 }>(p),
                word::load32_wide_at::<{ L4 as i16 }>(p),
                u64::from(PROTO_UDP),
            ),
            u16::from_be(word::load16_at::<{ IP as i16 + 2 }>(p)),
        )
    };
    let key = as_flow_key(&words);
    let Some((vip, id, b, _)) = choose(key, &words) else {
        return FALL;
    };
    let c = Chosen {
        vip,
        id,
        b,
        hash: 0,
    };
    encapsulate::<false>(&xdp, p, total, New::Datagram, key, c)
}

/// Whether a packet `encapsulate` sends starts a flow, and how its entry is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum New {
    /// A packet of a flow the table knows.
    Known,
    /// A TCP SYN: inserted if the key is not there (`select::choose_backend`'s `START`),
    /// with its sequence number.
    Syn,
    /// A UDP datagram no entry knows: inserted or overwritten, as `choose_backend` does
    /// without `START`.
    Datagram,
}

/// The VIP and backend a packet goes to (`Chosen::hash`: the flow hash, for an IPv6
/// backend's outer flow label).
struct Chosen {
    vip: u32,
    id: u32,
    b: &'static Backend,
    hash: u32,
}

/// The rest of `to_vip` and `to_vip6` once the backend is chosen (`c`): encapsulated in
/// IPv6 (`V6`) or IPv4 to a DSR backend of that family, when the frame is for us, a source
/// address is configured and the next hop is cached or the FIB gives it (`forward::find_hop`
/// otherwise); a new flow (`new`, `key`) remembered; sent and counted as
/// `crate::deliver` does. `p` is the packet as received (before `adjust_head`).
#[inline(always)]
fn encapsulate<const V6: bool>(
    xdp: &XdpContext,
    p: usize,
    total: u16,
    new: New,
    key: &FlowKey,
    c: Chosen,
) -> Outcome {
    let Chosen { vip, id, b, hash } = c;
    let (family, outer_len, have_source) = if V6 {
        (FAMILY_V6, IPV6_HLEN, CFG_F_SOURCE_V6)
    } else {
        (FAMILY_V4, IPV4_HLEN, CFG_F_SOURCE_V4)
    };
    if b.mode != MODE_DSR || b.family != family {
        return FALL;
    }
    let Some(outer_total) = total.checked_add(outer_len as u16) else {
        return FALL;
    };
    let ingress = xdp.ingress_ifindex() as u32;
    let Some(slot) = NEXT_HOPS.get_ptr_mut(id) else {
        return FALL;
    };
    // SAFETY: this CPU's slot of a per-CPU array; XDP handles one packet at a time per CPU.
    let hop = unsafe { &mut *slot };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_jiffies64() };
    // The frame's MAC (`admit::frame_for_us`), and the source `encapsulate_and_send` needs.
    let Some(cfg) = our_frame(p) else {
        return FALL;
    };
    if cfg.flags & have_source == 0 {
        return FALL;
    }
    if !hop.fits(now, b.generation, ingress, outer_total) {
        // The FIB is asked, its answer cached, as `encapsulate_and_send` would; any answer
        // but a next hop the packet fits (no route, no neighbour, too big) is the general
        // path's to act on, which asks again.
        let tunnel = Tunnel {
            cfg,
            backend: b,
            v6_outer: V6,
            outer_total,
            ingress,
        };
        if !cache_hop(xdp.ctx, &tunnel, hop, now) {
            return FALL;
        }
    }
    // A new flow is remembered last, when nothing sends the packet back to the general path
    // (which would find the entry and count a retransmission). The key already there (a
    // SYN retransmitted, a port reused) is the general path's to judge: a failed insert
    // changes nothing.
    let start = new != New::Known;
    if start {
        // SAFETY (both loads): within the bytes the caller checked (`L4 + 18` or
        // `L4_6 + 14`).
        let (syn_seq, flags) = match new {
            New::Syn if V6 => (
                unsafe { word::load32_at::<{ L4_6 as i16 + 4 }>(p) },
                BPF_NOEXIST,
            ),
            New::Syn => (
                unsafe { word::load32_at::<{ L4 as i16 + 4 }>(p) },
                BPF_NOEXIST,
            ),
            _ => (0, BPF_ANY),
        };
        let value = FlowValue {
            backend: id,
            generation: b.generation,
            syn_seq,
            hash,
            ..FlowValue::default()
        };
        if FLOWS.insert(key, value, flags).is_err() {
            return FALL;
        }
    }
    let Some(pkt) = adjust_head(xdp, -(outer_len as i32)) else {
        if !start {
            // The packet is as it was: the general path fails the same way.
            return FALL;
        }
        // No headroom: as the general path would, after remembering the flow.
        count(vip, id, total, true, false);
        return Outcome::drop(Reason::DropEncapFailed);
    };
    // From here the packet is changed: it is the fast path's, whatever happens. The new
    // L2 and outer headers, and the inner header's first 4 bytes behind them: 58 bytes for
    // either family.
    const _: () = assert!(L4 + IPV4_HLEN == L4_6);
    let written = pkt
        .ptr::<[u8; L4_6 + 4]>(0)
        .and_then(|q| {
            let q = q as usize;
            let (macs_hi, macs_lo) = hop.macs();
            // SAFETY (every store): within the bytes just checked.
            unsafe {
                word::store64_at::<0>(q, macs_hi);
                word::store32_at::<8>(q, macs_lo);
            }
            if V6 {
                write_outer_v6(q, cfg, b, total, hash);
            } else {
                write_outer_v4(q, cfg, b, total)?;
            }
            Some(())
        })
        .is_some();
    let o = if written {
        forward::send(ingress, hop.ifindex, false, Reason::Forwarded)
    } else {
        Outcome::drop(Reason::DropEncapFailed)
    };
    // Spelled out per case, so that each copy of `count` knows what it counts.
    if o.why == Reason::Forwarded {
        count(vip, id, total, start, true);
    } else if start {
        count(vip, id, total, true, false);
    }
    o
}

/// Writes the ethertype and the outer IPv4 header of `total` bytes of inner IPv4 to the
/// backend `b` into the frame at `q` (`L4_6 + 4` bytes checked; the inner header is at
/// `L4`); `None` if the length does not fit.
#[inline(always)]
fn write_outer_v4(q: usize, cfg: &DataplaneConfig, b: &Backend, total: u16) -> Option<()> {
    // SAFETY (every access): within the bytes the caller checked.
    let tos = unsafe { word::load8_wide_at::<{ L4 as i16 + 1 }>(q) } as u8;
    let d = &b.addr;
    let outer = outer_ipv4_words(
        u32::from_ne_bytes(cfg.source_v4),
        u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
        total,
        IPPROTO_IPIP,
        tos,
    )?;
    unsafe {
        word::store16_at::<12>(q, ETH_P_IP.to_be());
        word::store32_at::<{ IP as i16 }>(q, outer[0]);
        word::store32_at::<{ IP as i16 + 4 }>(q, outer[1]);
        word::store32_at::<{ IP as i16 + 8 }>(q, outer[2]);
        word::store32_at::<{ IP as i16 + 12 }>(q, outer[3]);
        word::store32_at::<{ IP as i16 + 16 }>(q, outer[4]);
    }
    Some(())
}

/// Writes the ethertype and the outer IPv6 header (flow label `hash`) of `total` bytes of
/// inner IPv6 to the backend `b` into the frame at `q` (`L4_6 + 4` bytes checked; the inner
/// header is at `L4_6`).
#[inline(always)]
fn write_outer_v6(q: usize, cfg: &DataplaneConfig, b: &Backend, total: u16, hash: u32) {
    // SAFETY (every access): within the bytes the caller checked. The inner header's first
    // word carries the traffic class the outer copies.
    let inner = unsafe { word::load32_at::<{ L4_6 as i16 }>(q) };
    let first = outer_ipv6_first_u32s(inner, total, IPPROTO_IPV6, hash);
    let (src, dst) = (&cfg.source_v6, &b.addr);
    let w = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    unsafe {
        word::store16_at::<12>(q, ETH_P_IPV6.to_be());
        word::store32_at::<{ IP6 as i16 }>(q, first[0]);
        word::store32_at::<{ IP6 as i16 + 4 }>(q, first[1]);
        word::store32_at::<{ IP6 as i16 + 8 }>(q, w(src, 0));
        word::store32_at::<{ IP6 as i16 + 12 }>(q, w(src, 4));
        word::store32_at::<{ IP6 as i16 + 16 }>(q, w(src, 8));
        word::store32_at::<{ IP6 as i16 + 20 }>(q, w(src, 12));
        word::store32_at::<{ IP6 as i16 + 24 }>(q, w(dst, 0));
        word::store32_at::<{ IP6 as i16 + 28 }>(q, w(dst, 4));
        word::store32_at::<{ IP6 as i16 + 32 }>(q, w(dst, 8));
        word::store32_at::<{ IP6 as i16 + 36 }>(q, w(dst, 12));
    }
}

/// How `nat_flow`'s flow was resolved.
enum Known<'a> {
    /// From the flow table (`select::remembered`), with this entry.
    Hit(&'a FlowValue),
    /// A SYN: by the Maglev table of VIP `vip` (`select::choose_backend`), with `hash`.
    New { vip: u32, hash: u32 },
}

/// The rest of `to_vip` for a NAT flow (`key`) to an IPv4 target (backend `id`, `b`): what
/// `vip_packet` and `select::resolve` leave for the translation — the frame checked
/// (`admit::refusal`'s last check), the headers as `parse_common` gives them, the scratch
/// slot filled — and `NAT_FORWARD`.
#[inline(always)]
fn nat_flow(
    p: usize,
    total: u16,
    key: &FlowKey,
    known: Known,
    id: u32,
    b: &Backend,
    headers: &mut MaybeUninit<Headers>,
) -> Outcome {
    if our_frame(p).is_none() {
        return FALL;
    }
    let Some(s) = select::scratch() else {
        return FALL;
    };
    // SAFETY: within the L4 + 18 bytes checked.
    let (ip1, frag, ttl, tcp_flags, seq) = unsafe {
        (
            word::load8_wide_at::<{ IP as i16 + 1 }>(p) as u8,
            u16::from_be(word::load16_at::<{ IP as i16 + 6 }>(p)),
            word::load8_wide_at::<{ IP as i16 + 8 }>(p) as u8,
            word::load8_wide_at::<{ L4 as i16 + 13 }>(p) as u8,
            word::load32_at::<{ L4 as i16 + 4 }>(p),
        )
    };
    let tcp = key.proto == PROTO_TCP;
    headers.write(Headers {
        src: key.src,
        dst: key.dst,
        l3_offset: IP as u16,
        l4_offset: L4 as u16,
        ip_len: total,
        sport: key.sport,
        dport: key.dport,
        vlan: false,
        family: FAMILY_V4,
        proto: key.proto,
        tos: ip1,
        dont_fragment: frag & 0x4000 != 0,
        tcp_flags: if tcp { tcp_flags } else { 0 },
        ttl,
        l4: Layer4::Ports,
        tcp_seq: if tcp { seq } else { 0 },
    });
    s.flow = *key;
    s.midflow = u8::from(tcp && tcp_flags & TCP_SYN == 0);
    s.seq = if tcp { seq } else { 0 };
    s.backend = *b;
    s.id = id;
    s.new_flow = 0;
    match known {
        Known::Hit(v) => {
            s.hash = 0;
            s.vip = u32::from(b.vip);
            s.hit = 1;
            s.value = *v;
        }
        Known::New { vip, hash } => {
            s.hash = hash;
            s.vip = vip;
            s.hit = 0;
        }
    }
    NAT_FORWARD
}

/// What `admit::refusal` with `FORWARD` checks of an IPv4 packet from `src` to `dst` (as
/// 4-byte loads) whose first `L4 + 18` bytes at `p` were checked, but for the frame's MAC:
/// the header checksum, a martian source, the TTL.
#[inline(always)]
fn forwardable(p: usize, src: u64, dst: u64) -> bool {
    // SAFETY (every load): within the bytes checked.
    let (w0, w2) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 }>(p),
            word::load32_wide_at::<{ IP as i16 + 8 }>(p),
        )
    };
    let sum = w0 + unsafe { word::load32_wide_at::<{ IP as i16 + 4 }>(p) } + w2 + src + dst;
    let (first, ttl) = unsafe {
        (
            word::load8_wide_at::<{ IP as i16 + 12 }>(p),
            word::load8_wide_at::<{ IP as i16 + 8 }>(p),
        )
    };
    words_sum_ok(sum) && first != 0 && first != 127 && first < 224 && src != dst && ttl > 1
}

/// A packet of an established NAT flow to an IPv4 target (entry `v`, backend `id`, `b`),
/// `total` bytes of IP datagram at `p` (its first `L4 + 18` bytes checked), that `to_vip`
/// found forwardable: translated to the target and sent as `nat::forward` does for
/// a flow-table hit — the entry's state and time refreshed, destination the target,
/// source the SNAT address and port (or the client, preserved) — when the frame is for
/// us, the SNAT slot has its address and the next hop towards the target is cached.
#[inline(always)]
fn nat_established(
    xdp: &XdpContext,
    p: usize,
    total: u16,
    v: *mut FlowValue,
    id: u32,
    b: &Backend,
) -> Outcome {
    if our_frame(p).is_none() {
        return FALL;
    }
    // SAFETY: FlowValue is plain integers; the element is valid for the program run.
    let (slot, nat_port) = unsafe { ((*v).nat_slot, (*v).nat_port) };
    // SAFETY (every packet load until `rewrite_v4`): within the L4 + 18 bytes checked.
    let (src, dst, ports) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 + 12 }>(p),
            word::load32_wide_at::<{ IP as i16 + 16 }>(p),
            word::load32_wide_at::<{ L4 as i16 }>(p),
        )
    };
    let new_src = if b.mode == MODE_NAT {
        let Some(a) = SNAT_POOL.get(u32::from(slot)) else {
            return FALL;
        };
        u64::from(addr_word(&a.addr))
    } else {
        src
    };
    // The ports word: the source port's two bytes, then the destination's (the target's
    // port, or the packet's when the target has none).
    let new_ports = if cfg!(target_endian = "little") {
        let dport = if b.port != 0 {
            u64::from(b.port) << 16
        } else {
            ports & 0xffff_0000
        };
        u64::from(nat_port) | dport
    } else {
        let dport = if b.port != 0 {
            u64::from(b.port)
        } else {
            ports & 0xffff
        };
        (u64::from(nat_port) << 16) | dport
    };
    let ingress = xdp.ingress_ifindex() as u32;
    let Some(hop) = cached_hop(NEXT_HOPS.get_ptr_mut(id), b.generation, ingress, total) else {
        return FALL;
    };
    let q = p;
    // Nothing sends the packet back to the general path from here. The state and time are
    // written only when they change, as `nat::forward` writes them.
    let time = nat::now_wide();
    // SAFETY: as above; single stores, which a reader on another CPU sees old or new.
    unsafe {
        let state = (*v).state | close_flags(q);
        if state != (*v).state || u64::from((*v).last_seen) != time {
            (*v).state = state;
            (*v).last_seen = time as u32;
        }
    }
    let new_dst = u64::from(addr_word(&b.addr));
    rewrite_v4(q, hop, [src, dst, ports], [new_src, new_dst, new_ports]);
    let o = forward::send(ingress, hop.ifindex, false, Reason::Forwarded);
    if o.why == Reason::Forwarded {
        count(u32::from(b.vip), id, total, false, true);
    }
    o
}

/// A TCP or UDP packet at `p` (its first `L4 + 18` bytes checked) that may be a NAT reply
/// (`may_be_reply`), of a shape `ports_packet` takes: passed as `not_nat` without a
/// reverse entry; with one, rewritten back to its client (source the VIP) and sent as
/// `nat::reply` does, when the router checks pass, the frame is for us and the next hop
/// towards the client is cached (`nat::to_client`'s cache).
#[inline(always)]
fn nat_reply(xdp: &XdpContext, p: usize) -> Outcome {
    // SAFETY: within the bytes checked; `packet` checked the length.
    let total = u16::from_be(unsafe { word::load16_at::<{ IP as i16 + 2 }>(p) });
    // SAFETY (every packet load until `rewrite_v4`): within the L4 + 18 bytes checked.
    let (src, dst, ports, proto) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 + 12 }>(p),
            word::load32_wide_at::<{ IP as i16 + 16 }>(p),
            word::load32_wide_at::<{ L4 as i16 }>(p),
            word::load8_wide_at::<{ IP as i16 + 9 }>(p),
        )
    };
    let words = flow_key_words_v4(src, dst, ports, proto);
    let Some(r) = NAT_REV.get_ptr_mut(as_flow_key(&words)) else {
        return Outcome::pass(Reason::PassNotNat);
    };
    if !forwardable(p, src, dst) || our_frame(p).is_none() {
        return FALL;
    }
    // SAFETY: NatReverse is plain integers; the element is valid for the program run.
    let (client, vip, client_port, vip_port) = unsafe {
        (
            addr_word(&(*r).client),
            addr_word(&(*r).vip),
            (*r).client_port,
            (*r).vip_port,
        )
    };
    let (fw, shift) = filter_position_words(le_address(u64::from(client)), 0);
    let Some(c) = REPLY_HOPS.get_ptr_mut(nat::reply_hop_slot(fw, shift)) else {
        return FALL;
    };
    // SAFETY: this CPU's slot of a per-CPU array; one packet at a time per CPU.
    let c = unsafe { &mut *c };
    // The slot of another client is `nat::to_client`'s to take over.
    if !c.is_for_v4(client) {
        return FALL;
    }
    let ingress = xdp.ingress_ifindex() as u32;
    let Some(hop) = cached_hop(Some(&raw mut c.hop), 0, ingress, total) else {
        return FALL;
    };
    let q = p;
    let time = nat::now_wide();
    // SAFETY: as above; single stores.
    unsafe {
        let state = (*r).state | CT_F_REPLIED | close_flags(q);
        if state != (*r).state || u64::from((*r).last_seen) != time {
            (*r).state = state;
            (*r).last_seen = time as u32;
        }
    }
    let new_ports = if cfg!(target_endian = "little") {
        u64::from(vip_port) | (u64::from(client_port) << 16)
    } else {
        (u64::from(vip_port) << 16) | u64::from(client_port)
    };
    let new = [u64::from(vip), u64::from(client), new_ports];
    rewrite_v4(q, hop, [src, dst, ports], new);
    let o = forward::send(ingress, hop.ifindex, false, Reason::NatReturned);
    if o.why == Reason::NatReturned {
        // SAFETY: as above.
        nat::count_reply(unsafe { &*r }, total);
    }
    o
}

/// The next hop cached in `slot` for a packet of `total` bytes to the destination of
/// `generation` that came in on `ingress`, when it answers for it now
/// (`forward::find_hop`'s cache hit).
#[inline(always)]
fn cached_hop(
    slot: Option<*mut CachedHop>,
    generation: u32,
    ingress: u32,
    total: u16,
) -> Option<&'static CachedHop> {
    // SAFETY: this CPU's slot of a per-CPU array; one packet at a time per CPU.
    let hop = unsafe { &*slot? };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_jiffies64() };
    hop.fits(now, generation, ingress, total).then_some(hop)
}

/// The `CT_F_*` bits the flags of the IPv4 TCP packet at `q` (its first `L4 + 18` bytes
/// checked) add to its direction's state; none for UDP (`nat::close_flags`).
#[inline(always)]
fn close_flags(q: usize) -> u8 {
    // SAFETY: within the bytes checked.
    let (proto, flags) = unsafe {
        (
            word::load8_wide_at::<{ IP as i16 + 9 }>(q),
            word::load8_wide_at::<{ L4 as i16 + 13 }>(q) as u8,
        )
    };
    if proto != u64::from(PROTO_TCP) {
        return 0;
    }
    let mut f = 0;
    if flags & TCP_FIN != 0 {
        f |= CT_F_FIN;
    }
    if flags & TCP_RST != 0 {
        f |= CT_F_RST;
    }
    f
}

/// The first 4 bytes of `a` as a 4-byte load gives them: an IPv4 address as in the packet.
#[inline(always)]
fn addr_word(a: &Addr) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}

/// Rewrites the untagged IPv4 TCP or UDP packet at `q` (its first `L4 + 18` bytes
/// checked, TTL above 1) from the source, destination and ports words `old` (as
/// `word::load32_wide_at` gave them) to `new` (32-bit words too, zero-extended): the next
/// hop's MACs, the TTL decremented, the header and L4 checksums updated incrementally as
/// `lb_common::nat::rewrite` updates them (an IPv4 UDP checksum of 0 stays 0, one that
/// comes out 0 is sent as 0xffff).
///
/// RFC 1624's `~m + m'` per 32-bit word, with `~m` written `0xffff_ffff - m`: equal for a
/// 32-bit `m`, and one subtraction from a constant shared by the words. The TTL's word
/// loses 1 in its TTL byte (no borrow: above 1), a constant change to the header's sum.
#[inline(always)]
fn rewrite_v4(q: usize, hop: &CachedHop, old: [u64; 3], new: [u64; 3]) {
    let (macs_hi, macs_lo) = hop.macs();
    // SAFETY: within the bytes checked.
    unsafe {
        word::store64_at::<0>(q, macs_hi);
        word::store32_at::<8>(q, macs_lo);
    }
    translate_v4(q, old, new);
}

/// `nat::rewrite_l4`'s translation of a NAT packet the general path parsed, when it has the
/// fast path's shape (untagged IPv4 without options, TCP or UDP, its first `L4 + 18` bytes
/// in the frame, TTL above 1): `translate_v4` from the words in the packet to those of
/// `to`. False (nothing written) for any other packet, which `lb_common::nat::rewrite`
/// takes.
///
/// The shape is one test of values ANDed without branches: a branch per condition executed
/// 6 instructions fewer but cost the verifier 28,000 more (914,000 of its 1,000,000 for the
/// program, against 886,000).
#[inline(always)]
pub fn translate_parsed_v4(pkt: &XdpPacket, h: &Headers, to: &Rewrite) -> bool {
    let shaped = (h.family == FAMILY_V4)
        & !h.vlan
        & (h.l4_offset == L4 as u16)
        & ((h.proto == PROTO_TCP) | (h.proto == PROTO_UDP))
        & (h.ttl > 1);
    if !shaped {
        return false;
    }
    let Some(q) = pkt.ptr::<[u8; L4 + 18]>(0) else {
        return false;
    };
    let q = q as usize;
    // SAFETY: within the L4 + 18 bytes just checked.
    let old = unsafe {
        [
            word::load32_wide_at::<{ IP as i16 + 12 }>(q),
            word::load32_wide_at::<{ IP as i16 + 16 }>(q),
            word::load32_wide_at::<{ L4 as i16 }>(q),
        ]
    };
    // The new source, destination and ports as the packet holds them: the first words of
    // `to`'s addresses, and its two ports (network order in memory) as one word, read from
    // a struct aligned to 8 at offsets 0, 16 and 32 (asserted below), so every read is an
    // aligned 4-byte load.
    let w = (&raw const *to).cast::<u32>();
    // SAFETY: within `to`, aligned.
    let new = unsafe { [w.read(), w.add(4).read(), w.add(8).read()] }.map(u64::from);
    translate_v4(q, old, new);
    true
}
const _: () = assert!(
    core::mem::offset_of!(Rewrite, src) == 0
        && core::mem::offset_of!(Rewrite, dst) == 16
        && core::mem::offset_of!(Rewrite, sport) == 32
        && core::mem::offset_of!(Rewrite, dport) == 34
        && core::mem::align_of::<Rewrite>() >= 4
);

/// The L3 and L4 half of `rewrite_v4`: addresses, ports, TTL and both checksums, from the
/// words `old` to `new`.
#[inline(always)]
fn translate_v4(q: usize, old: [u64; 3], new: [u64; 3]) {
    const WORD: u64 = 0xffff_ffff;
    let addrs = 2 * WORD - old[0] - old[1] + new[0] + new[1];
    // SAFETY (every access): within the bytes checked. TTL, protocol, header checksum.
    let (w, proto) = unsafe {
        (
            word::load32_wide_at::<{ IP as i16 + 8 }>(q),
            word::load8_wide_at::<{ IP as i16 + 9 }>(q),
        )
    };
    // The checksum as a native 2-byte load of bytes 10-11 reads it; the TTL's 2-byte word
    // less 1 in its first byte, and what that does to the sum (`~m + m'` = 0xffff - 1 on
    // little-endian, 0xffff - 0x100 on big-endian).
    let (check, ttl_word, ttl_delta) = if cfg!(target_endian = "little") {
        (w >> 16, (w - 1) & 0xffff, 0xfffe)
    } else {
        (w & 0xffff, (w >> 16) - 0x100, 0xfeff)
    };
    let ip = update_wide(check, addrs + ttl_delta);
    let w = if cfg!(target_endian = "little") {
        ttl_word | (ip << 16)
    } else {
        (ttl_word << 16) | ip
    };
    unsafe {
        word::store32_wide_at::<{ IP as i16 + 8 }>(q, w);
        word::store32_wide_at::<{ IP as i16 + 12 }>(q, new[0]);
        word::store32_wide_at::<{ IP as i16 + 16 }>(q, new[1]);
        word::store32_wide_at::<{ L4 as i16 }>(q, new[2]);
    }
    let l4 = addrs + WORD - old[2] + new[2];
    if proto == u64::from(PROTO_TCP) {
        unsafe {
            let check = word::load16_wide_at::<{ L4 as i16 + 16 }>(q);
            word::store16_wide_at::<{ L4 as i16 + 16 }>(q, update_wide(check, l4));
        }
    } else {
        let check = unsafe { word::load16_wide_at::<{ L4 as i16 + 6 }>(q) };
        if check != 0 {
            let n = update_wide(check, l4);
            unsafe {
                word::store16_wide_at::<{ L4 as i16 + 6 }>(q, if n == 0 { 0xffff } else { n })
            };
        }
    }
}

/// The flow table's entry for `key`, with its backend id and backend, when that backend
/// still keeps the flow (`select::remembered`'s test).
#[inline(always)]
fn remembered(key: &FlowKey) -> Option<(*mut FlowValue, u32, &'static Backend)> {
    let v = FLOWS.get_ptr_mut(key)?;
    // SAFETY: FlowValue is plain integers; the element is valid for the program run.
    let (id, generation) = unsafe { ((*v).backend, (*v).generation) };
    let b = BACKENDS.get(id)?;
    b.keeps_flow(generation).then_some((v, id, b))
}

/// The configuration, when the frame at `p` is addressed to this host's MAC (or the MAC is
/// not known: `admit::frame_for_us`).
#[inline(always)]
fn our_frame(p: usize) -> Option<&'static DataplaneConfig> {
    let cfg = CONFIG.get(0)?;
    // SAFETY: the frame's first 6 bytes were checked by the caller.
    let (mac_hi, mac_lo) = unsafe { (word::load32_wide_at::<0>(p), word::load16_wide_at::<4>(p)) };
    let (our_hi, our_lo) = config_mac(cfg);
    let (our_hi, our_lo) = (u64::from(our_hi), u64::from(our_lo));
    if (mac_hi == our_hi && mac_lo == our_lo) || (our_hi == 0 && our_lo == 0) {
        Some(cfg)
    } else {
        None
    }
}

/// The Maglev choice for a new flow `key` (`words`, as `flow_key_words_v4` made them):
/// (VIP index, backend id, backend, flow hash) when the exact port's VIP
/// (`select::find_vip`; an any-port one is the general path's) hashes the 5-tuple and its
/// table names a backend.
#[inline(always)]
fn choose(key: &FlowKey, words: &[u64; 5]) -> Option<(u32, u32, &'static Backend, u32)> {
    let (dst, dport) = (&key.dst, key.dport);
    let vk = VipKey {
        addr: *dst,
        port: dport,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: VipInfo is plain integers (see `select::find_vip`).
    let vip = unsafe { VIPS.get(vk) }?;
    // A source-affinity VIP's key is not the 5-tuple.
    if vip.flags & VIP_F_HASH_SOURCE != 0 {
        return None;
    }
    let hash = if cfg!(target_endian = "little") {
        flow_hash_words(words)
    } else {
        flow_hash(key)
    };
    let index = table_index(vip.table, MAGLEV_SIZE.load(), hash);
    let id = MAGLEV.get(index >> 1)?[(index & 1) as usize];
    let b = BACKENDS.get(id)?;
    if id == 0 || b.state == BACKEND_UNUSED {
        return None;
    }
    Some((vip.index, id, b, hash))
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
/// `ports` (the L4 header's first word) and `proto` (`Headers::five_tuple`'s), as the five
/// 8-byte words it is in memory.
#[inline(always)]
fn flow_key_words_v4(src: u64, dst: u64, ports: u64, proto: u64) -> [u64; 5] {
    // An 8-byte word whose memory holds the 4 bytes of `w` (a 4-byte load, zero-extended),
    // then the bytes `a` and `b` (zero-extended) and two zeros.
    let word = |w: u64, a: u64, b: u64| {
        if cfg!(target_endian = "little") {
            w | (a << 32) | (b << 40)
        } else {
            (w << 32) | (a << 24) | (b << 16)
        }
    };
    [
        word(src, 0, 0),
        0,
        word(dst, 0, 0),
        0,
        key_tail(ports, proto, FAMILY_V4),
    ]
}

/// The flow key's last 8-byte word as it is in memory: `ports` (the L4 header's first word,
/// a 4-byte load), then the bytes `proto`, `family` and two zeros.
#[inline(always)]
fn key_tail(ports: u64, proto: u64, family: u8) -> u64 {
    let family = u64::from(family);
    if cfg!(target_endian = "little") {
        ports | (proto << 32) | (family << 40)
    } else {
        (ports << 32) | (proto << 24) | (family << 16)
    }
}

/// The flow key whose memory is `words`.
#[inline(always)]
fn as_flow_key(words: &[u64; 5]) -> &FlowKey {
    const _: () = assert!(
        size_of::<FlowKey>() == size_of::<[u64; 5]>()
            && align_of::<FlowKey>() <= align_of::<[u64; 5]>()
    );
    // SAFETY: FlowKey is 40 bytes of plain integers (src, dst, sport, dport, proto, family,
    // reserved) in this order without padding, any bit pattern a key, and no more aligned
    // than the words.
    unsafe { &*words.as_ptr().cast::<FlowKey>() }
}

/// `select::count` for a packet of `bytes` bytes for VIP `vip` and backend `id`: a
/// flow-table hit, or with `start` a new flow (a miss that created its entry), counted as
/// a new flow whatever became of the packet, as a packet only when it was `forwarded`.
#[inline(always)]
fn count(vip: u32, id: u32, bytes: u16, start: bool, forwarded: bool) {
    let bytes = u64::from(bytes);
    if let Some(v) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs one packet at a time per
        // CPU, so no other writer interleaves.
        unsafe {
            if start {
                (*v).new_flows += 1;
            }
            if forwarded {
                (*v).packets += 1;
                (*v).bytes += bytes;
                if start {
                    (*v).flow_misses += 1;
                } else {
                    (*v).flow_hits += 1;
                }
            }
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: as above.
        unsafe {
            if start {
                (*b).new_flows += 1;
            }
            if forwarded {
                (*b).packets += 1;
                (*b).bytes += bytes;
            }
        }
    }
}
