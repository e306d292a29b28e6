//! ICMP errors about NAT flows, translated both ways: from the client's side to the
//! target (`error_to_target`), from the target's side to the client (`error_to_client`).
//! The rewrite is `lb_common::nat`'s, in two subprograms (quoted and outer halves) whose
//! frames are not stacked.

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::{
    FLOW_F_NAT, MODE_NAT,
    icmp::{Icmp, classify},
    nat::{NOT_REWRITTEN, Rewrite, rewrite_error_outer, rewrite_quoted},
    parse::Headers,
    stats::Reason,
};
use lb_ebpf::packet::XdpPacket;

use super::{rewrite_and_send, to_client};
use crate::{
    NAT_REV, NEXT_HOPS, Outcome, SNAT_POOL, admit,
    forward::{NextHop, find_hop, nat_next_hop},
    select,
};

/// Rewrites an ICMP error's MACs and its outer (`to`: addresses only) and quoted headers
/// (`Scratch::quoted`), in two subprograms whose frames are not stacked: together in one,
/// the chain from the entry did not fit the verifier's 512 bytes of stack.
#[inline(always)]
pub(super) fn rewrite_icmp(ctx: *mut xdp_md, h: &Headers, to: &Rewrite, hop: &NextHop) -> bool {
    let delta = rewrite_icmp_quoted(ctx, h);
    delta != NOT_REWRITTEN && rewrite_icmp_outer(ctx, h, to, hop, delta)
}

/// The quoted half of `rewrite_icmp` (`lb_common::nat::rewrite_quoted`).
#[inline(never)]
fn rewrite_icmp_quoted(ctx: *mut xdp_md, h: &Headers) -> u64 {
    let ctx = XdpContext::new(ctx);
    let mut pkt = XdpPacket::new(&ctx);
    match select::scratch() {
        Some(s) => rewrite_quoted(&mut pkt, h, &s.quoted),
        None => NOT_REWRITTEN,
    }
}

/// The outer half of `rewrite_icmp`, with the MACs.
#[inline(never)]
fn rewrite_icmp_outer(
    ctx: *mut xdp_md,
    h: &Headers,
    to: &Rewrite,
    hop: &NextHop,
    delta: u64,
) -> bool {
    let ctx = XdpContext::new(ctx);
    let mut pkt = XdpPacket::new(&ctx);
    pkt.write(0, &hop.dmac)
        && pkt.write(6, &hop.smac)
        && rewrite_error_outer(&mut pkt, h, &to.src, &to.dst, delta)
}

/// An ICMP error from the client's side about a NAT flow (resolved into `s`: its quoted
/// packet is a reply VIP -> client): translated for the target (outer destination the
/// target, source the SNAT address or, client preserved, unchanged; the quoted packet
/// becomes the target's own, target -> SNAT address or client) and sent to it.
#[inline(never)]
pub fn error_to_target(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let Some(s) = select::scratch() else {
        return Outcome::drop(Reason::DropNoBackend);
    };
    if s.hit == 0 || s.value.state & FLOW_F_NAT == 0 {
        return Outcome::drop(Reason::DropNatNoEntry);
    }
    let tport = if s.backend.port != 0 {
        s.backend.port
    } else {
        s.flow.dport
    };
    let src = if s.backend.mode == MODE_NAT {
        match SNAT_POOL.get(u32::from(s.value.nat_slot)) {
            Some(a) => a.addr,
            None => return Outcome::drop(Reason::DropNoSource),
        }
    } else {
        s.flow.src
    };
    // The quoted packet as the target sent it; the outer header towards the target.
    s.quoted = Rewrite {
        src: s.backend.addr,
        dst: src,
        sport: tport,
        dport: s.value.nat_port,
    };
    s.rewrite.src = if s.backend.mode == MODE_NAT {
        src
    } else {
        h.src
    };
    s.rewrite.dst = s.backend.addr;
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
    // An error about an error is never sent: a translated error that is too big is dropped.
    match rewrite_and_send(&ctx, h, &s.rewrite, hop, Reason::IcmpErrorSteered) {
        Outcome {
            why: Reason::DropTooBig,
            ..
        } => Outcome::drop(Reason::DropTooBig),
        o => o,
    }
}

/// An ICMP error that may be about a NAT flow from the target's side (to a SNAT address, or
/// from a client-preserving target): its quoted packet is what this host sent the target;
/// with a reverse entry it is translated for the client (outer VIP -> client, the quoted
/// packet the client's own, client -> VIP) and sent; passed untouched otherwise.
#[inline(never)]
pub fn error_to_client(ctx: *mut xdp_md, h: &Headers) -> Outcome {
    let ctx = XdpContext::new(ctx);
    let Icmp::Error { flow } = classify(&XdpPacket::new(&ctx), h) else {
        return Outcome::pass(Reason::PassNotNat);
    };
    let Some(s) = select::scratch() else {
        return Outcome::pass(Reason::PassNotNat);
    };
    // The quoted packet reversed is the reply's 5-tuple: the reverse entry's key.
    s.rev_key = flow;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    // SAFETY: NatReverse is plain integers, copied out at once.
    let Some(r) = (unsafe { NAT_REV.get(&s.rev_key) }) else {
        return Outcome::pass(Reason::PassNotNat);
    };
    s.rev = *r;
    if let Some(why) = admit::refusal(ctx.ctx, h, admit::FORWARD) {
        return Outcome::drop(why);
    }
    // The quoted packet as the client sent it; the outer header from the VIP to the client.
    s.quoted = Rewrite {
        src: s.rev.client,
        dst: s.rev.vip,
        sport: s.rev.client_port,
        dport: s.rev.vip_port,
    };
    s.rewrite.src = s.rev.vip;
    s.rewrite.dst = s.rev.client;
    match to_client(&ctx, h, s, Reason::IcmpErrorToClient) {
        Outcome {
            why: Reason::DropTooBig,
            ..
        } => Outcome::drop(Reason::DropTooBig),
        o => o,
    }
}
