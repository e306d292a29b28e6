//! Packet tracing (`xlb trace`): with `XLB_TRACE` set, each packet that matches the
//! `TRACE` filter is logged through aya-log, one record per packet, with its decision. The
//! record carries numbers (VIP index, backend id, hash, action, reason) and raw addresses;
//! the daemon, which knows the names, turns it into the line the operator reads.
//!
//! Off, a packet pays two tests of the flag in `run`. On, it also pays for `begin` (which
//! marks the scratch slot as not yet written by this packet) and `packet`.

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_md, macros::map, maps::Array, programs::XdpContext};
use aya_log_ebpf::info;
use lb_common::{
    Addr, TRACE_F_CLIENT, TRACE_F_VIP, TRACE_PATH_NAT_REPLY, TRACE_PATH_OTHER, TRACE_PATH_VIP,
    TraceFilter,
    nat::Rewrite,
    parse::{Headers, Parsed, parse_common},
};
use lb_ebpf::packet::XdpPacket;

use crate::select;

/// Nonzero while a trace is on. A global of the program (its `.bss` map), written by the
/// daemon that loaded it: read without a map lookup or a null test, and gone with the
/// program, so a trace never outlives the daemon that started it.
#[unsafe(no_mangle)]
static mut XLB_TRACE: u32 = 0;

/// Whether a trace is on.
#[inline(always)]
pub fn on() -> bool {
    // SAFETY: a plain u32 in the program's own global data; only userspace writes it.
    unsafe { core::ptr::read_volatile(&raw const XLB_TRACE) != 0 }
}

/// Entry 0: which packets are logged (`lb_common::TraceFilter`). Written by the daemon
/// before it sets `XLB_TRACE`; not pinned.
#[map]
static TRACE: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// "Not written by this packet", for the scratch slot's VIP index, backend id and reply
/// VIP index.
const UNSET: u32 = u32::MAX;

/// Marks this CPU's scratch slot as not yet written by the packet about to be balanced,
/// so `packet` can tell what the balancer decided for this packet from what an earlier
/// one left there.
#[inline(never)]
pub fn begin() {
    let Some(s) = select::scratch() else { return };
    s.vip = UNSET;
    s.id = UNSET;
    s.hash = 0;
    s.hit = 0;
    s.new_flow = 0;
    s.rev.vip_index = UNSET;
    s.rewrite = Rewrite {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
    };
}

/// Logs the decision for one packet if it matches the filter. `parsed` and `headers` are
/// what `parse_packet` returned and wrote; `action` and `why` the outcome.
#[inline(never)]
pub fn packet(
    ctx: *mut xdp_md,
    parsed: u32,
    headers: &MaybeUninit<Headers>,
    action: u32,
    why: u32,
) {
    let Some(f) = TRACE.get(0) else { return };
    let Some(s) = select::scratch() else { return };
    let mut local = MaybeUninit::<Headers>::uninit();
    let h: &Headers = match parsed {
        // SAFETY: parse_packet initialised the headers when it says the packet is IP.
        crate::PARSED_IP | crate::PARSED_TO_VIP | crate::PARSED_TO_NAT => unsafe {
            headers.assume_init_ref()
        },
        // Left unwritten by parse_packet; the packet was passed unchanged, so read again.
        crate::PARSED_TO_OTHER => {
            let ctx = XdpContext::new(ctx);
            match parse_common(&XdpPacket::new(&ctx)) {
                Parsed::Ip(h) => local.write(h),
                _ => return,
            }
        }
        // Not IP: no addresses to filter on, so only an unfiltered trace logs it.
        _ => {
            if f.flags != 0 {
                return;
            }
            let none = [0u8; 16];
            info!(
                &XdpContext::new(ctx),
                "path={} fam=0 proto=0 src={:i} sport=0 dst={:i} dport=0 action={} reason={}",
                TRACE_PATH_OTHER,
                none,
                none,
                action,
                why
            );
            return;
        }
    };
    // The VIP path sets `s.vip`; a NAT VIP's first packet also fills `s.rev` (the reverse
    // entry it makes), a reply only `s.rev`.
    let reply = s.vip == UNSET && s.rev.vip_index != UNSET;
    // A NAT reply is filtered by the connection it belongs to: the client and the VIP it
    // is rewritten to, not the target and SNAT address it was sent between.
    let (vip, vip_port, client) = if reply {
        (&s.rev.vip, s.rev.vip_port, &s.rev.client)
    } else {
        (&h.dst, h.dport, &h.src)
    };
    if f.flags & TRACE_F_VIP != 0
        && (f.vip_family != h.family
            || !same(vip, &f.vip)
            || (f.vip_port != 0 && f.vip_port != vip_port))
    {
        return;
    }
    if f.flags & TRACE_F_CLIENT != 0 && (f.client_family != h.family || !same(client, &f.client)) {
        return;
    }
    let path = if reply {
        TRACE_PATH_NAT_REPLY
    } else if s.vip != UNSET {
        TRACE_PATH_VIP
    } else {
        TRACE_PATH_OTHER
    };
    info!(
        &XdpContext::new(ctx),
        "path={} fam={} proto={} src={:i} sport={} dst={:i} dport={} action={} reason={} \
         vip={} backend={} hit={} new={} hash={} nat_src={:i} nat_sport={} nat_dst={:i} \
         nat_dport={}",
        path,
        h.family,
        h.proto,
        h.src,
        u16::from_be(h.sport),
        h.dst,
        u16::from_be(h.dport),
        action,
        why,
        if reply { s.rev.vip_index } else { s.vip },
        if reply { s.rev.backend } else { s.id },
        s.hit,
        s.new_flow,
        s.hash,
        s.rewrite.src,
        u16::from_be(s.rewrite.sport),
        s.rewrite.dst,
        u16::from_be(s.rewrite.dport)
    );
}

/// Whether two addresses are equal (as two words each: fewer instructions than bytes).
#[inline(always)]
fn same(a: &Addr, b: &Addr) -> bool {
    let w = |x: &Addr, i: usize| {
        u64::from_ne_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    w(a, 0) == w(b, 0) && w(a, 8) == w(b, 8)
}
