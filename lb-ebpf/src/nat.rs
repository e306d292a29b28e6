//! NAT: packets of NAT VIPs rewritten to their target (`forward`), the target's replies
//! rewritten back to the client (`reply`), new connections given their translation
//! (`establish`: the SNAT port allocation), and ICMP errors about NAT flows translated both
//! ways (`error_to_target`, `error_to_client`). The rewriting itself (addresses, ports,
//! incremental checksums) is `lb_common::nat`'s, host-tested, but for packets of the fast
//! path's shape, which `rewrite_l4` gives the fast path's word translation
//! (`fast::translate_parsed_v4`). Established connections'
//! packets both ways usually take `fast::nat_established` and `fast::nat_reply` instead,
//! whose rewrite from registers the NAT fixtures and
//! `a_nat_connections_packets_both_ways_are_checked_and_counted_like_any_other` hold
//! equal to this one.
//!
//! Connection tracking: the forward half of a connection is its `FLOWS` entry (5-tuple ->
//! backend, SNAT slot and port, liveness), the reverse half its `NAT_REV` entry (the
//! reply's 5-tuple -> client and VIP). Entries are made by the first packet (a SYN for
//! TCP), reverse first with no overwrite (that is what allocates the port), then forward;
//! FIN and RST are recorded so the controller's sweeper can end closed connections early,
//! and it removes idle ones.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    ADMIN_F_FAILING, Addr, Backend, CT_F_FIN, CT_F_REPLIED, CT_F_RST, FAMILY_V6, FLOW_F_NAT,
    FlowValue, MODE_NAT, MODE_NAT_CLIENT, NatReverse, PROTO_TCP, SNAT_SLOTS_PER_FAMILY,
    hash::{FILTER_SLOTS_PER_WORD, filter_position},
    nat::{NAT_CLOCK_SHIFT, Rewrite, SNAT_ATTEMPTS, rewrite, snat_port},
    parse::{Headers, TCP_FIN, TCP_RST},
    port_from_map, port_to_map,
    resolve::{COUNT_NEW, REMEMBER, START},
    stats::Reason,
};
use lb_ebpf::packet::XdpPacket;

mod icmp;
pub use icmp::{error_to_client, error_to_target};

use crate::{
    BACKEND_STATS, BACKENDS, CONFIG, FLOWS, NAT_REV, NEXT_HOPS, Outcome, REPLY_HOPS, SNAT_POOL,
    VIP_STATS, admit, fast,
    forward::{CachedHop, NextHop, find_hop, nat_next_hop, send, usable},
    select::{self, Scratch},
};

/// `BPF_NOEXIST`: insert only if the key is not there.
const BPF_NOEXIST: u64 = 1;
/// `-EEXIST`.
const EEXIST: i32 = -17;

/// Slots of the per-CPU cache of next hops towards clients (`REPLY_HOPS`).
pub const REPLY_HOP_SLOTS: u32 = 256;

/// The `REPLY_HOPS` slot of the client address at (`word`, `shift`) of the address filter
/// (`hash::filter_position`).
#[inline(always)]
pub fn reply_hop_slot(word: u32, shift: u32) -> u32 {
    (word.wrapping_mul(FILTER_SLOTS_PER_WORD as u32) + shift / 4) % REPLY_HOP_SLOTS
}

/// A cached next hop towards a client address (a reply's destination), per CPU.
#[repr(C)]
pub struct ClientHop {
    pub hop: CachedHop,
    /// The client address the hop is for.
    pub addr: Addr,
}
const _: () = assert!(align_of::<ClientHop>() == 8 && core::mem::offset_of!(ClientHop, addr) == 40);

impl ClientHop {
    /// Whether the slot is for the IPv4 address whose 4-byte load is `a`.
    #[inline(always)]
    pub fn is_for_v4(&self, a: u32) -> bool {
        let p = (&raw const self.addr).cast::<u64>();
        // SAFETY: the 16 bytes of `addr`, at offset 40 of a struct aligned to 8 (asserted
        // above), so both reads are aligned.
        let (lo, hi) = unsafe { (p.read(), p.add(1).read()) };
        let a = if cfg!(target_endian = "little") {
            u64::from(a)
        } else {
            u64::from(a) << 32
        };
        lo == a && hi == 0
    }
}

/// The tracking clock now (`lb_common::nat::nat_clock` of the monotonic time).
#[inline(always)]
pub fn now() -> u32 {
    now_wide() as u32
}

/// The tracking clock now, not truncated to the 32 bits an entry keeps (`lb_common::nat::nat_clock`
/// untruncated): equal to `now()` for the first 2^62 ns (146 years) of uptime, and compared with an entry's time without
/// the two shifts that clear a truncated value's upper half. Whoever stores it keeps
/// `now()` (a 32-bit store truncates).
#[inline(always)]
pub fn now_wide() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() >> NAT_CLOCK_SHIFT }
}

/// The `CT_F_*` bits a TCP packet's flags add to its direction's state.
#[inline(always)]
fn close_flags(h: &Headers) -> u8 {
    if h.proto != PROTO_TCP {
        return 0;
    }
    let mut f = 0;
    if h.tcp_flags & TCP_FIN != 0 {
        f |= CT_F_FIN;
    }
    if h.tcp_flags & TCP_RST != 0 {
        f |= CT_F_RST;
    }
    f
}

/// `establish`: the connection has its translation in `s.value`.
const ESTABLISHED: u32 = 0;
/// `establish`: no (address, port) was free after `SNAT_ATTEMPTS` tries.
const EXHAUSTED: u32 = 1;
/// `establish`: a map write failed.
const FAILED: u32 = 2;

/// A client's packet to a NAT VIP, its backend resolved into the scratch slot
/// (`select::resolve`): finds or makes the connection's translation, rewrites the packet to
/// the target and sends it.
#[inline(never)]
pub fn forward(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let how = lb_common::resolve::how(h);
    let Some(s) = select::scratch() else {
        return Outcome::drop(Reason::DropNoBackend);
    };
    let time = now();
    if s.hit != 0 && s.value.state & FLOW_F_NAT != 0 {
        // Established: record FIN / RST and the time, writing only when they change.
        let state = s.value.state | close_flags(h);
        if state != s.value.state || s.value.last_seen != time {
            s.conn = s.flow;
            refresh_forward(s, state, time);
        }
    } else if how & REMEMBER != 0 {
        match establish(h, s, how, time) {
            ESTABLISHED => {}
            EXHAUSTED => return Outcome::drop(Reason::DropSnatExhausted),
            _ => return Outcome::drop(Reason::DropNoBackend),
        }
    } else if s.backend.mode == MODE_NAT_CLIENT {
        // An RST without an entry, client preserved: the translation needs no state.
        s.value.nat_port = h.sport;
    } else {
        return Outcome::drop(Reason::DropNatNoEntry);
    }
    if !translation(h, s) {
        return Outcome::drop(Reason::DropNoSource);
    }
    let o = to_target(&ctx, h, s, Reason::Forwarded);
    select::count(s, h.ip_len, o.why == Reason::Forwarded);
    o
}

/// Writes the forward entry's state and time (the entry of `s.conn`).
#[inline(never)]
fn refresh_forward(s: &mut Scratch, state: u8, time: u32) {
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    if let Some(p) = FLOWS.get_ptr_mut(&s.conn) {
        // SAFETY: the value of a hash-map element of this map's value type; the two fields
        // are single stores, and a reader on another CPU sees old or new values.
        unsafe {
            (*p).state = state;
            (*p).last_seen = time;
        }
    }
}

/// Fills `s.rewrite` with the packet's translation towards its target: destination the
/// target's address and port (its own port 0: the packet's), source the SNAT address and
/// port, or the client itself when its address is preserved. False when the SNAT slot has
/// no address.
#[inline(always)]
fn translation(h: &Headers, s: &mut Scratch) -> bool {
    let b = &s.backend;
    s.rewrite.dst = b.addr;
    s.rewrite.dport = if b.port != 0 { b.port } else { h.dport };
    s.rewrite.sport = s.value.nat_port;
    if b.mode == MODE_NAT {
        match SNAT_POOL.get(u32::from(s.value.nat_slot)) {
            Some(a) => s.rewrite.src = a.addr,
            None => return false,
        }
    } else {
        s.rewrite.src = h.src;
    }
    true
}

/// Routes the packet of `s` to its target (the next hop cached per backend and CPU, as for
/// DSR), rewrites it with `s.rewrite` and sends it, counted under `why`.
#[inline(always)]
fn to_target(ctx: &XdpContext, h: &Headers, s: &Scratch, why: Reason) -> Outcome {
    let mut hop = MaybeUninit::<NextHop>::uninit();
    find_hop(
        ctx.ingress_ifindex() as u32,
        NEXT_HOPS.get_ptr_mut(s.id),
        s.backend.generation,
        h.ip_len,
        &mut hop,
        |out| nat_next_hop(ctx.ctx, h, &s.rewrite, out),
    );
    // SAFETY: find_hop always initialises it.
    let hop = unsafe { hop.assume_init_ref() };
    rewrite_and_send(ctx, h, &s.rewrite, hop, why)
}

/// Checks the next hop, then rewrites the packet (`rewrite_l4`, or for ICMP errors
/// `rewrite_icmp`) and its MACs and sends it.
#[inline(always)]
fn rewrite_and_send(
    ctx: &XdpContext,
    h: &Headers,
    to: &Rewrite,
    hop: &NextHop,
    why: Reason,
) -> Outcome {
    // Read before the subprogram call (see `forward::encapsulate_and_send`).
    let ingress = ctx.ingress_ifindex() as u32;
    if let Err(o) = usable(hop, 0, h.family) {
        return o;
    }
    let done = if why == Reason::Forwarded || why == Reason::NatReturned {
        rewrite_l4(ctx.ctx, h, to, hop)
    } else {
        icmp::rewrite_icmp(ctx.ctx, h, to, hop)
    };
    if !done {
        return Outcome::drop(Reason::DropMalformed);
    }
    send(ingress, hop.ifindex, h.vlan, why)
}

/// Rewrites the frame's MACs (the next hop's), addresses and ports: by the fast path's word
/// translation when the packet has its shape, else by `lb_common::nat::rewrite`. A
/// subprogram: the rewrite's temporaries are not stacked on the callers'.
#[inline(never)]
fn rewrite_l4(ctx: *mut xdp_md, h: &Headers, to: &Rewrite, hop: &NextHop) -> bool {
    let ctx = XdpContext::new(ctx);
    let mut pkt = XdpPacket::new(&ctx);
    pkt.write(0, &hop.dmac)
        && pkt.write(6, &hop.smac)
        && (fast::translate_parsed_v4(&pkt, h, to) || rewrite(&mut pkt, h, to))
}

/// Makes (or finds again) the translation of a new connection to `s.id`: reuses the
/// connection's own entry when it already has one on that target (a client reusing its
/// port), or on the target it already went to when this is its SYN retransmitted and that
/// target still keeps flows (and, if it fails its checks, has answered: `resolve::START`),
/// else allocates: the client's port first, then random ports, each tried by inserting the
/// reverse entry without overwriting (`SNAT_ATTEMPTS` tries), then writes the forward entry,
/// removing the reverse one if that fails.
#[inline(never)]
fn establish(h: &Headers, s: &mut Scratch, how: u32, time: u32) -> u32 {
    // Field by field into the scratch slot, here and below: values built on this frame
    // first made the chain of frames from the entry too deep for 512 bytes.
    s.conn.src = h.src;
    s.conn.dst = h.dst;
    s.conn.sport = h.sport;
    s.conn.dport = h.dport;
    s.conn.proto = h.proto;
    s.conn.family = h.family;
    s.conn.reserved = [0; 2];
    let start = how & START != 0;
    let mut fresh = true;
    let mut syn_seq = 0;
    s.value.state = 0;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    // SAFETY: FlowValue is plain integers, copied out at once.
    if let Some(old) = unsafe { FLOWS.get(&s.conn) } {
        let old = *old;
        let open = old.state & FLOW_F_NAT != 0 && old.state & (CT_F_FIN | CT_F_RST) == 0;
        if open && start && old.syn_seq == h.tcp_seq && old.backend != s.id {
            // This connection's SYN again, its first on another target: it stays there
            // while that target keeps flows, unless it fails its checks and has not
            // answered this connection (then the SYN may never have reached it).
            if let Some(b) = BACKENDS.get(old.backend)
                && b.keeps_flow(old.generation)
                && (b.admin & ADMIN_F_FAILING == 0 || answered(h, s, &old, b))
            {
                s.backend = *b;
                s.id = old.backend;
                s.vip = u32::from(b.vip);
            }
        }
        if old.state & FLOW_F_NAT != 0 && old.backend != s.id {
            forget(h, s, &old);
        }
        if old.state & FLOW_F_NAT != 0
            && old.backend == s.id
            && old.generation == s.backend.generation
        {
            // The same target: keep the translation (the target must see the same port).
            // A closed connection's entry, or a SYN of another connection, counts as a new
            // flow again.
            fresh = !open || (start && old.syn_seq != h.tcp_seq);
            syn_seq = old.syn_seq;
            s.value = old;
        }
    }
    if start {
        syn_seq = h.tcp_seq;
    }
    let generation = s.backend.generation;
    let Some(cfg) = CONFIG.get(0) else {
        return FAILED;
    };
    let v6 = h.family == FAMILY_V6;
    let (base, count) = if v6 {
        (SNAT_SLOTS_PER_FAMILY, u32::from(cfg.snat_v6))
    } else {
        (0, u32::from(cfg.snat_v4))
    };
    let client_mode = s.backend.mode == MODE_NAT_CLIENT;
    let tport = if s.backend.port != 0 {
        s.backend.port
    } else {
        h.dport
    };
    s.rev.client = h.src;
    s.rev.vip = h.dst;
    s.rev.client_port = h.sport;
    s.rev.vip_port = h.dport;
    s.rev.backend = s.id;
    s.rev.generation = generation;
    s.rev.vip_index = s.vip;
    s.rev.last_seen = time;
    s.rev.state = 0;
    s.rev.reserved = [0; 3];
    s.rev_key.src = s.backend.addr;
    s.rev_key.sport = tport;
    s.rev_key.proto = h.proto;
    s.rev_key.family = h.family;
    s.rev_key.reserved = [0; 2];
    let mut taken = false;
    if s.value.state & FLOW_F_NAT != 0 {
        // The old translation's reverse entry: still ours, or free again.
        let (slot, port) = (s.value.nat_slot, s.value.nat_port);
        taken = try_port(s, client_mode, u32::from(slot), port);
    }
    if !taken {
        if !client_mode && count == 0 {
            return FAILED;
        }
        // SAFETY: a plain helper call without arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        let client_port = port_from_map(h.sport);
        let mut attempt = 0;
        while attempt < SNAT_ATTEMPTS {
            if client_mode {
                // The client's own address and port: one candidate only.
                taken = try_port(s, true, 0, h.sport);
                break;
            }
            if let Some(p) = snat_port(
                attempt,
                client_port,
                random,
                cfg.snat_port_min,
                cfg.snat_port_max,
            ) {
                let slot = base
                    + (((u64::from(s.hash.wrapping_add(attempt)) * u64::from(count)) >> 32) as u32);
                if try_port(s, false, slot, port_to_map(p)) {
                    taken = true;
                    break;
                }
            }
            attempt += 1;
        }
        if !taken {
            return EXHAUSTED;
        }
    }
    s.value.backend = s.id;
    s.value.generation = generation;
    s.value.state = FLOW_F_NAT | close_flags(h);
    s.value.last_seen = time;
    s.value.syn_seq = syn_seq;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    if FLOWS.insert(&s.conn, &s.value, 0).is_err() {
        // Undo: the port goes back to the pool.
        let _ = NAT_REV.remove(&s.rev_key);
        return FAILED;
    }
    if fresh && how & (START | COUNT_NEW) != 0 {
        s.new_flow = 1;
    }
    ESTABLISHED
}

/// Whether target `b` has answered the connection of `h` whose forward entry is `old`: its
/// reverse entry (built in `s.rev_key`) records a reply.
#[inline(never)]
fn answered(h: &Headers, s: &mut Scratch, old: &FlowValue, b: &Backend) -> bool {
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    // SAFETY: NatReverse is plain integers, read at once.
    let replied = old_reverse_key(h, s, old, b)
        && unsafe { NAT_REV.get(&s.rev_key) }.is_some_and(|r| r.state & CT_F_REPLIED != 0);
    replied
}

/// Removes the reverse entry of `old`, the translation of the connection of `h` to a target
/// it is leaving (its SYN moved on to another, or a new connection on its port went
/// elsewhere), when that entry is still this connection's: the old target's replies then
/// pass untranslated. Kept, a late SYN-ACK of the old target would reach the client, which
/// takes the first SYN-ACK it gets, acknowledges it to the target it is on now, and is
/// reset by that one.
#[inline(never)]
fn forget(h: &Headers, s: &mut Scratch, old: &FlowValue) {
    let Some(b) = BACKENDS.get(old.backend) else {
        return;
    };
    if !old_reverse_key(h, s, old, b) {
        return;
    }
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    // SAFETY: NatReverse is plain integers, read at once.
    let ours = unsafe { NAT_REV.get(&s.rev_key) }.is_some_and(|r| {
        r.client == h.src && r.client_port == h.sport && r.vip == h.dst && r.vip_port == h.dport
    });
    if ours {
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, LLVM copies the key to the stack first"
        )]
        let _ = NAT_REV.remove(&s.rev_key);
    }
}

/// Builds in `s.rev_key` the key of the reverse entry that translation `old` of the
/// connection of `h` has on target `b`; false when its SNAT slot has no address.
#[inline(always)]
fn old_reverse_key(h: &Headers, s: &mut Scratch, old: &FlowValue, b: &Backend) -> bool {
    s.rev_key.src = b.addr;
    s.rev_key.sport = if b.port != 0 { b.port } else { h.dport };
    s.rev_key.proto = h.proto;
    s.rev_key.family = h.family;
    s.rev_key.reserved = [0; 2];
    s.rev_key.dport = old.nat_port;
    if b.mode == MODE_NAT_CLIENT {
        s.rev_key.dst = h.src;
    } else {
        match SNAT_POOL.get(u32::from(old.nat_slot)) {
            Some(a) => s.rev_key.dst = a.addr,
            None => return false,
        }
    }
    true
}

/// Tries (SNAT slot `slot`, port `port`) for the connection in `s` (`s.rev` and the
/// target's half of `s.rev_key` filled): inserts the reverse entry if the key is free, or
/// takes it back if it is this very connection's. True (with `s.value`'s slot and port
/// set) when the connection has it.
#[inline(never)]
fn try_port(s: &mut Scratch, client_mode: bool, slot: u32, port: u16) -> bool {
    if client_mode {
        s.rev_key.dst = s.rev.client;
    } else {
        match SNAT_POOL.get(slot) {
            Some(a) => s.rev_key.dst = a.addr,
            None => return false,
        }
    }
    s.rev_key.dport = port;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    let ours = match NAT_REV.insert(&s.rev_key, &s.rev, BPF_NOEXIST) {
        Ok(()) => true,
        Err(EEXIST) => match NAT_REV.get_ptr_mut(&s.rev_key) {
            // SAFETY: the value of a hash-map element of this map's value type, written
            // only by this program (one CPU per flow in practice).
            Some(p) => unsafe {
                let same = (*p).client == s.rev.client
                    && (*p).client_port == s.rev.client_port
                    && (*p).vip_port == s.rev.vip_port
                    && (*p).vip == s.rev.vip;
                if same {
                    *p = s.rev;
                }
                same
            },
            None => false,
        },
        Err(_) => false,
    };
    if ours {
        s.value.nat_slot = slot as u8;
        s.value.nat_port = port;
    }
    ours
}

/// A packet that may be a NAT reply (to a SNAT address, or from a client-preserving
/// target): rewritten back to its client (source the VIP, destination the client) and sent
/// when it has a reverse entry, passed untouched otherwise.
#[inline(never)]
pub fn reply(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let Some(s) = select::scratch() else {
        return Outcome::pass(Reason::PassNotNat);
    };
    let Some(key) = h.five_tuple() else {
        return Outcome::pass(Reason::PassNotNat);
    };
    s.rev_key = key;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    let Some(p) = NAT_REV.get_ptr_mut(&s.rev_key) else {
        return Outcome::pass(Reason::PassNotNat);
    };
    if let Some(why) = admit::refusal(ctx.ctx, h, admit::FORWARD) {
        return Outcome::drop(why);
    }
    let time = now();
    // SAFETY: the value of a hash-map element of this map's value type, valid for the
    // program run; its state and time written with single stores, then copied to the
    // scratch slot (not to the stack: this frame is under the rewrite's).
    unsafe {
        let state = (*p).state | CT_F_REPLIED | close_flags(h);
        if state != (*p).state || (*p).last_seen != time {
            (*p).state = state;
            (*p).last_seen = time;
        }
        s.rev = *p;
    }
    s.rewrite = Rewrite {
        src: s.rev.vip,
        dst: s.rev.client,
        sport: s.rev.vip_port,
        dport: s.rev.client_port,
    };
    let o = to_client(&ctx, h, s, Reason::NatReturned);
    if o.why == Reason::NatReturned {
        count_reply(&s.rev, h.ip_len);
    }
    o
}

/// Routes the packet of `s` to the client `s.rewrite.dst` (a next hop cached per CPU by
/// client address), rewrites and sends it under `why`.
#[inline(always)]
fn to_client(ctx: &XdpContext, h: &Headers, s: &Scratch, why: Reason) -> Outcome {
    let dst = &s.rewrite.dst;
    let (word, shift) = filter_position(dst);
    let slot = reply_hop_slot(word, shift);
    let cache = REPLY_HOPS.get_ptr_mut(slot).map(|c| {
        // SAFETY: this CPU's slot of a per-CPU array; one packet at a time per CPU.
        let c = unsafe { &mut *c };
        if c.addr != *dst {
            c.addr = *dst;
            c.hop.invalidate();
        }
        &raw mut c.hop
    });
    let mut hop = MaybeUninit::<NextHop>::uninit();
    find_hop(
        ctx.ingress_ifindex() as u32,
        cache,
        0,
        h.ip_len,
        &mut hop,
        |out| nat_next_hop(ctx.ctx, h, &s.rewrite, out),
    );
    // SAFETY: find_hop always initialises it.
    let hop = unsafe { hop.assume_init_ref() };
    rewrite_and_send(ctx, h, &s.rewrite, hop, why)
}

/// Counts a reply of `ip_len` bytes for its target and VIP.
#[inline(always)]
pub fn count_reply(r: &NatReverse, ip_len: u16) {
    let bytes = u64::from(ip_len);
    if let Some(b) = BACKEND_STATS.get_ptr_mut(r.backend) {
        // SAFETY: this CPU's slot of a per-CPU array; one packet at a time per CPU.
        unsafe {
            (*b).reply_packets += 1;
            (*b).reply_bytes += bytes;
        }
    }
    if let Some(v) = VIP_STATS.get_ptr_mut(r.vip_index) {
        // SAFETY: as above.
        unsafe {
            (*v).reply_packets += 1;
            (*v).reply_bytes += bytes;
        }
    }
}
