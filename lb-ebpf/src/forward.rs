//! Encapsulation towards the backend, next hop from the kernel's FIB, and transmission.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, xdp_action, xdp_md,
    },
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_ns, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    Backend, CFG_F_SOURCE_V4, CFG_F_SOURCE_V6, DataplaneConfig, FAMILY_V4, FAMILY_V6,
    NeighbourEvent,
    encap::{outer_ipv4_words, outer_ipv6_first_words},
    icmp::announced_mtu,
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Headers, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN,
        PacketBytes, VLAN_HLEN,
    },
    stats::Reason,
};
use lb_ebpf::packet::adjust_head;

use crate::{NEIGH_EVENTS, NEXT_HOPS, Outcome};

/// `struct bpf_fib_lookup` with its unions flattened to the members we use, so it can be
/// built field by field (the bindgen type's unions would need a zeroing memset, which the
/// BPF backend emits as a call to a byte loop).
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: L3 length, for the MTU check. Out: the MTU when the answer is FRAG_NEEDED.
    tot_len: u16,
    /// In: ingress interface. Out: egress interface.
    ifindex: u32,
    flowinfo: u32,
    src: [u32; 4],
    /// In: the destination. Out: the next hop.
    dst: [u32; 4],
    vlan_proto: u16,
    vlan_tci: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
}
const _: () = assert!(size_of::<FibParams>() == size_of::<aya_ebpf::bindings::bpf_fib_lookup>());

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Encapsulates the packet for `backend` and sends it towards it. Returns the XDP action
/// and the reason; counting is the caller's (`crate::deliver`).
///
/// The FIB lookup happens before the packet is touched, so every refusal leaves the packet
/// as it was. On success the frame is rebuilt as
/// `[MACs from the FIB][VLAN tag, if any][outer IP][original IP packet]`.
///
/// The lookup and the rewrite are separate BPF subprograms so their stack frames (the FIB
/// parameters, the outer header) are not both live at once: the verifier allows 512 bytes
/// for the deepest chain of frames.
///
/// `cfg` is the `CONFIG` entry, looked up by the caller (once per packet).
#[inline(always)]
pub fn encapsulate_and_send(
    ctx: &XdpContext,
    h: &Headers,
    id: u32,
    backend: &Backend,
    hash: u32,
    cfg: Option<&DataplaneConfig>,
) -> Outcome {
    let Some(cfg) = cfg else {
        return Outcome::drop(Reason::DropNoSource);
    };
    let v6_outer = match (backend.family, h.family) {
        (FAMILY_V4, FAMILY_V4) => false,
        (FAMILY_V6, _) => true,
        _ => return Outcome::drop(Reason::DropFamily),
    };
    let have_source = if v6_outer {
        CFG_F_SOURCE_V6
    } else {
        CFG_F_SOURCE_V4
    };
    if cfg.flags & have_source == 0 {
        return Outcome::drop(Reason::DropNoSource);
    }
    let outer_len = if v6_outer { IPV6_HLEN } else { IPV4_HLEN } as u16;
    // Read before any subprogram call: kept as a pointer into the context across one, the
    // field's address is a "modified ctx ptr", which the verifier refuses to dereference.
    let ingress = ctx.ingress_ifindex() as u32;
    let job = Encap {
        tunnel: Tunnel {
            cfg,
            backend,
            v6_outer,
            outer_total: h.ip_len.saturating_add(outer_len),
            ingress,
        },
        h,
        hash,
    };
    let mut hop = MaybeUninit::<NextHop>::uninit();
    find_hop(
        ingress,
        NEXT_HOPS.get_ptr_mut(id),
        backend.generation,
        job.tunnel.outer_total,
        &mut hop,
        |out| next_hop(ctx.ctx, &job.tunnel, out),
    );
    // SAFETY: find_hop always initialises it.
    let hop = unsafe { hop.assume_init_ref() };
    if let Err(o) = usable(hop, outer_len, h.family) {
        return o;
    }
    if !rewrite(ctx.ctx, &job, hop) {
        return Outcome::drop(Reason::DropEncapFailed);
    }
    send(ingress, hop.ifindex, h.vlan, Reason::Forwarded)
}

/// Fills `hop` with the next hop for a packet of `total` bytes: from this CPU's cache slot
/// `cache` when it is fresh for `generation` and the ingress interface (`ingress`, read by
/// the caller before any subprogram call) and the packet fits
/// its MTU, otherwise from the FIB (`lookup`), caching a successful answer and asking the
/// controller to resolve an unresolved neighbour.
#[inline(always)]
pub fn find_hop(
    ingress: u32,
    cache: Option<*mut CachedHop>,
    generation: u32,
    total: u16,
    hop: &mut MaybeUninit<NextHop>,
    lookup: impl FnOnce(&mut MaybeUninit<NextHop>),
) {
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_jiffies64() };
    // SAFETY: this CPU's slot of a per-CPU array; XDP handles one packet at a time per CPU.
    match cache.map(|c| unsafe { &mut *c }) {
        // Only packets known to fit are answered from the cache; a bigger one asks the FIB,
        // which decides whether it is too big (so a kernel or an MTU the cache reads
        // wrongly can cost a lookup, never a false "too big").
        Some(c) if c.fits(now, generation, ingress, total) => {
            hop.write(NextHop {
                rc: BPF_FIB_LKUP_RET_SUCCESS,
                ifindex: c.ifindex,
                mtu: c.mtu,
                smac: c.smac,
                dmac: c.dmac,
                family: 0,
                next: [0; 4],
            });
        }
        c => {
            lookup(hop);
            // SAFETY: the lookup always initialises it.
            let fresh = unsafe { hop.assume_init_ref() };
            if let Some(c) = c {
                if fresh.carries(total) {
                    *c = CachedHop {
                        looked_up: now,
                        generation,
                        ingress,
                        ifindex: fresh.ifindex,
                        mtu: fresh.mtu,
                        smac: fresh.smac,
                        dmac: fresh.dmac,
                        notified: c.notified,
                        reserved: 0,
                    };
                } else if fresh.rc == BPF_FIB_LKUP_RET_NO_NEIGH {
                    ask_for_neighbour(c, fresh);
                }
            }
        }
    }
}

/// What a next hop's answer means for the packet: `Ok` to send it, else the outcome.
/// `overhead` is what the balancer adds to the packet (encapsulation), taken off the MTU
/// it announces for a packet that is too big.
#[inline(always)]
pub fn usable(hop: &NextHop, overhead: u16, family: u8) -> Result<(), Outcome> {
    match hop.rc {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(()),
        // Dropped: handed to the kernel, the encapsulated packet (whose source is this
        // host's own address) would be dropped there as a martian (IPv4), or not forwarded
        // (IPv6 forwarding is on only for the interface). The controller has been asked to
        // resolve the neighbour (`ask_for_neighbour`); the sender's retransmission finds it.
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Outcome::drop(Reason::DropNoNeigh)),
        // Answered by the program's entry (`icmp::too_big`), not here: at the bottom of
        // this call chain the answer's stack frame would not fit.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Outcome {
            mtu: announced_mtu(hop.mtu, overhead, family),
            ..Outcome::drop(Reason::DropTooBig)
        }),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Outcome::drop(Reason::DropFwdDisabled)),
        _ => Err(Outcome::drop(Reason::DropNoRoute)),
    }
}

/// Sends a rewritten packet to its next hop's interface `ifindex`: `XDP_TX` when it leaves
/// by the interface it came in on (`ingress`; or is VLAN-tagged: a tagged packet goes back
/// out its trunk with its tag), a redirect otherwise; counted under `why`.
#[inline(always)]
pub fn send(ingress: u32, ifindex: u32, vlan: bool, why: Reason) -> Outcome {
    if ifindex == ingress || vlan {
        return Outcome::new(xdp_action::XDP_TX, why);
    }
    // SAFETY: plain helper call with an interface index from the FIB.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Outcome::new(action, why)
    } else {
        Outcome::drop(Reason::DropNoRoute)
    }
}

/// Least time between two neighbour events for one backend from one CPU, in units of
/// 2^20 ns (about a millisecond): ~105 ms. A flood of packets towards an unresolved next
/// hop then costs the controller about ten events a second per CPU, and the data plane a
/// clock read per packet.
pub const NEIGHBOUR_EVENT_INTERVAL: u32 = 100;

/// Tells the controller that the next hop in `hop` (a `NO_NEIGH` answer: the kernel has set
/// its interface and address, the gateway or the destination itself, before answering) has
/// no resolved MAC address, at most every `NEIGHBOUR_EVENT_INTERVAL` per backend and CPU
/// (the time of the last event is kept in the backend's cache slot `c`). A full ring buffer
/// loses the event; the next one comes an interval later.
#[inline(never)]
fn ask_for_neighbour(c: &mut CachedHop, hop: &NextHop) {
    // SAFETY: a plain helper call without arguments.
    let now = (unsafe { bpf_ktime_get_ns() } >> 20) as u32;
    if c.notified != 0 && now.wrapping_sub(c.notified) < NEIGHBOUR_EVENT_INTERVAL {
        return;
    }
    c.notified = now | 1;
    let event = NeighbourEvent {
        family: if hop.family == AF_INET6 {
            FAMILY_V6
        } else {
            FAMILY_V4
        },
        reserved: [0; 3],
        ifindex: hop.ifindex,
        addr: unwords(&hop.next),
    };
    let _ = NEIGH_EVENTS.output::<NeighbourEvent>(&event, 0);
}

/// What the two subprograms need to know about the encapsulation (BPF functions take at
/// most five arguments, so they get it by reference).
struct Encap<'a> {
    tunnel: Tunnel<'a>,
    h: &'a Headers,
    hash: u32,
}

/// The outer packet towards a backend, as the FIB is asked about it (`next_hop`).
pub struct Tunnel<'a> {
    pub cfg: &'a DataplaneConfig,
    pub backend: &'a Backend,
    pub v6_outer: bool,
    /// Length of the encapsulated IP packet.
    pub outer_total: u16,
    /// The ingress interface, read by the caller before any subprogram call: the FIB is
    /// asked as if the outer packet had arrived there, and the cached answer is tied to it.
    pub ingress: u32,
}

/// How long a CPU reuses the FIB's answer for a backend: 250 jiffies (1 s at this kernel's
/// HZ=250; 0.25 s to 2.5 s for HZ 1000 to 100). A route, neighbour or MTU change reaches
/// packets within that time; a cached hop is never used for another backend (generation)
/// or another ingress interface.
const NEXT_HOP_TTL_JIFFIES: u64 = 250;

/// A successful FIB answer for one backend, kept per CPU in `NEXT_HOPS`. The lookup costs
/// about 100 ns, as much as the rest of an established flow's packet; the answer changes
/// only when routes or neighbours do. Only `SUCCESS` answers are kept: an unresolved
/// neighbour, a missing route or a disabled forwarding are asked again every packet.
#[repr(C)]
pub struct CachedHop {
    /// `bpf_jiffies64()` at the lookup; 0 = never looked up.
    looked_up: u64,
    /// `Backend::generation` of the backend it was looked up for.
    generation: u32,
    /// The ingress interface the lookup was made for.
    ingress: u32,
    pub ifindex: u32,
    /// When this CPU last sent a neighbour event for the backend (`ask_for_neighbour`), in
    /// units of 2^20 ns, with bit 0 set; 0 = never.
    notified: u32,
    /// The MACs in the order of an Ethernet header, 8-byte aligned: `macs` reads them as
    /// two words.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The route's MTU (the FIB returns it on success too, since 5.12; before, it echoes
    /// the packet's length, which still bounds what the entry answers for).
    mtu: u16,
    reserved: u16,
}
const _: () = assert!(size_of::<CachedHop>() == 40);
const _: () = assert!(align_of::<CachedHop>() == 8 && core::mem::offset_of!(CachedHop, dmac) == 24);
const _: () = assert!(core::mem::offset_of!(CachedHop, smac) == 30);

impl CachedHop {
    /// The destination and source MACs as the first 12 bytes of an Ethernet header: an
    /// 8-byte and a 4-byte word as they are in memory.
    #[inline(always)]
    pub fn macs(&self) -> (u64, u32) {
        let p = (&raw const self.dmac).cast::<u8>();
        // SAFETY: the 12 bytes of `dmac` and `smac`, which follow it; at offsets 24 and 32
        // of a struct aligned to 8 (asserted above), so both reads are aligned.
        unsafe { (p.cast::<u64>().read(), p.add(8).cast::<u32>().read()) }
    }

    /// Marks the slot as never looked up (it is about to serve another destination).
    #[inline(always)]
    pub fn invalidate(&mut self) {
        self.looked_up = 0;
    }

    /// Whether the slot answers for a packet of `total` bytes to the backend of
    /// `generation` that came in on `ingress`, at `now` (`bpf_jiffies64`): looked up for
    /// them less than `NEXT_HOP_TTL_JIFFIES` ago, and the packet fits its MTU.
    #[inline(always)]
    pub fn fits(&self, now: u64, generation: u32, ingress: u32, total: u16) -> bool {
        self.looked_up != 0
            && now.wrapping_sub(self.looked_up) < NEXT_HOP_TTL_JIFFIES
            && self.generation == generation
            && self.ingress == ingress
            && total <= self.mtu
    }
}

/// The answer of the FIB about the way to a backend.
pub struct NextHop {
    /// `BPF_FIB_LKUP_RET_*`.
    rc: u32,
    pub ifindex: u32,
    /// The route's MTU (on `SUCCESS` too: the kernel reports it since 5.12).
    mtu: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// From the FIB (not from the cache): the next hop's family (`AF_INET`, or `AF_INET6`
    /// for an IPv4 route with an IPv6 gateway) and address (the gateway or the destination),
    /// set for `SUCCESS` and `NO_NEIGH`.
    family: u8,
    /// As the FIB writes it (network order in memory, native words): turned into bytes
    /// only for a neighbour event.
    next: [u32; 4],
}

impl NextHop {
    /// Whether the answer is a next hop a packet of `total` bytes fits (the answers
    /// `find_hop` caches).
    #[inline(always)]
    pub fn carries(&self, total: u16) -> bool {
        carries(self.rc, self.mtu, total)
    }
}

/// Whether a FIB answer `rc` with MTU `mtu` is a next hop a packet of `total` bytes fits.
#[inline(always)]
fn carries(rc: u32, mtu: u16, total: u16) -> bool {
    rc == BPF_FIB_LKUP_RET_SUCCESS && mtu >= total
}

/// Asks the kernel's FIB for the next hop towards the tunnel's backend, as if the
/// encapsulated packet of `outer_total` bytes had arrived on the ingress interface (so the
/// MTU of the way out is checked too).
#[inline(never)]
pub fn next_hop(ctx: *mut xdp_md, job: &Tunnel, out: &mut MaybeUninit<NextHop>) {
    let (src, dst) = job.addresses();
    fib(
        ctx,
        job.ingress,
        job.v6_outer,
        src,
        dst,
        job.outer_total,
        out,
    );
}

/// `find_hop` for a cold cache slot `c` of the tunnel's backend, at `now`, without the
/// answer in between: asks the FIB as `next_hop` does and, when the answer carries the
/// outer packet, caches it straight from the kernel's parameters and returns true. Any other
/// answer is left to `find_hop`, which asks again and acts on it (the fast path's way to a
/// next hop).
#[inline(never)]
pub fn cache_hop(ctx: *mut xdp_md, job: &Tunnel, c: &mut CachedHop, now: u64) -> bool {
    let (src, dst) = job.addresses();
    let (rc, fib) = fib_lookup(ctx, job.ingress, job.v6_outer, src, dst, job.outer_total);
    if !carries(rc, fib.tot_len, job.outer_total) {
        return false;
    }
    *c = CachedHop {
        looked_up: now,
        generation: job.backend.generation,
        ingress: job.ingress,
        ifindex: fib.ifindex,
        mtu: fib.tot_len,
        smac: fib.smac,
        dmac: fib.dmac,
        notified: c.notified,
        reserved: 0,
    };
    true
}

impl Tunnel<'_> {
    /// The outer source and destination as the FIB takes them.
    #[inline(always)]
    fn addresses(&self) -> ([u32; 4], [u32; 4]) {
        let (cfg, backend) = (self.cfg, self.backend);
        if self.v6_outer {
            (words(&cfg.source_v6), words(&backend.addr))
        } else {
            let d = &backend.addr;
            (
                [u32::from_ne_bytes(cfg.source_v4), 0, 0, 0],
                [u32::from_ne_bytes([d[0], d[1], d[2], d[3]]), 0, 0, 0],
            )
        }
    }
}

/// Asks the FIB for the next hop of the packet `h` rewritten (NAT) to the addresses of
/// `to`, as if it had arrived on the ingress interface.
#[inline(never)]
pub fn nat_next_hop(
    ctx: *mut xdp_md,
    h: &Headers,
    to: &lb_common::nat::Rewrite,
    out: &mut MaybeUninit<NextHop>,
) {
    let (v6, len) = (h.family == FAMILY_V6, h.ip_len);
    let (src, dst) = (&to.src, &to.dst);
    let (src, dst) = if v6 {
        (words(src), words(dst))
    } else {
        (
            [
                u32::from_ne_bytes([src[0], src[1], src[2], src[3]]),
                0,
                0,
                0,
            ],
            [
                u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]),
                0,
                0,
                0,
            ],
        )
    };
    let ingress = XdpContext::new(ctx).ingress_ifindex() as u32;
    fib(ctx, ingress, v6, src, dst, len, out);
}

/// The FIB lookup itself, as if a packet of `len` bytes from `src` to `dst` had arrived on
/// the interface `ingress`.
#[inline(always)]
fn fib(
    ctx: *mut xdp_md,
    ingress: u32,
    v6: bool,
    src: [u32; 4],
    dst: [u32; 4],
    len: u16,
    out: &mut MaybeUninit<NextHop>,
) {
    let (rc, fib) = fib_lookup(ctx, ingress, v6, src, dst, len);
    let d = fib.dst;
    let next = if fib.family == AF_INET6 {
        d
    } else {
        [d[0], 0, 0, 0]
    };
    out.write(NextHop {
        rc,
        ifindex: fib.ifindex,
        mtu: fib.tot_len,
        smac: fib.smac,
        dmac: fib.dmac,
        family: fib.family,
        next,
    });
}

/// `bpf_fib_lookup` for a packet of `len` bytes from `src` to `dst` as if it had arrived
/// on the interface `ingress`: its answer (`BPF_FIB_LKUP_RET_*`) and the parameters as the
/// kernel left them.
#[inline(always)]
fn fib_lookup(
    ctx: *mut xdp_md,
    ingress: u32,
    v6: bool,
    src: [u32; 4],
    dst: [u32; 4],
    len: u16,
) -> (u32, FibParams) {
    let mut fib = FibParams {
        family: if v6 { AF_INET6 } else { AF_INET },
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        tot_len: len,
        ifindex: ingress,
        flowinfo: 0,
        src,
        dst,
        vlan_proto: 0,
        vlan_tci: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: the context and a pointer to our stack copy of the parameters, with its size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.cast(),
            (&raw mut fib).cast(),
            size_of::<FibParams>() as i32,
            0,
        )
    };
    (rc as u32, fib)
}

/// Whether the packet `h` is for this host: the FIB, asked about it as received on the
/// ingress interface, says it is not forwarded (`NOT_FWDED`: a local address) or that
/// forwarding is off (`FWD_DISABLED`: the kernel will not send it back out either).
#[inline(never)]
pub fn is_local(ctx: *mut xdp_md, h: &Headers) -> bool {
    let ingress = XdpContext::new(ctx).ingress_ifindex() as u32;
    let v6 = h.family == FAMILY_V6;
    let (src, dst) = if v6 {
        (words(&h.src), words(&h.dst))
    } else {
        let (s, d) = (&h.src, &h.dst);
        (
            [u32::from_ne_bytes([s[0], s[1], s[2], s[3]]), 0, 0, 0],
            [u32::from_ne_bytes([d[0], d[1], d[2], d[3]]), 0, 0, 0],
        )
    };
    let mut fib = FibParams {
        family: if v6 { AF_INET6 } else { AF_INET },
        l4_protocol: h.proto,
        sport: h.sport,
        dport: h.dport,
        tot_len: h.ip_len,
        ifindex: ingress,
        flowinfo: 0,
        src,
        dst,
        vlan_proto: 0,
        vlan_tci: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: the context and a pointer to our stack copy of the parameters, with its size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.cast(),
            (&raw mut fib).cast(),
            size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED
}

/// Grows the packet at the front and writes the L2 header (MACs of the next hop; the VLAN
/// tag kept) and the outer IP header.
/// `false` if the kernel refused to grow the packet.
#[inline(never)]
fn rewrite(ctx: *mut xdp_md, job: &Encap, hop: &NextHop) -> bool {
    let t = &job.tunnel;
    let (cfg, h, backend, hash, v6_outer) = (t.cfg, job.h, t.backend, job.hash, t.v6_outer);
    let ctx = XdpContext::new(ctx);
    let inner_next = if h.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let outer_len = if v6_outer { IPV6_HLEN } else { IPV4_HLEN };
    let Some(pkt) = adjust_head(&ctx, -(outer_len as i32)) else {
        return false;
    };
    // The old L2 header is still there, `outer_len` bytes in: it is read now, after the
    // helper call, and stored at once, so its bytes are not held in registers across the
    // call (spilled one stack slot per byte, they overflowed the stack). It is all used
    // before the outer header overwrites it. Everything is written in small pieces: whole
    // headers in stack arrays would cost stack this chain of frames does not have.
    let Some(eth) = pkt.bytes::<ETH_HLEN>(outer_len) else {
        return false;
    };
    let Some(tag) = pkt.bytes::<VLAN_HLEN>(outer_len + ETH_HLEN) else {
        return false;
    };
    let mut ok = pkt.write(0, &hop.dmac) && pkt.write(6, &hop.smac);
    let t = if v6_outer { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes();
    let l3 = if h.vlan {
        // The tag keeps its protocol identifier and TCI; its ethertype names the outer IP.
        ok &= pkt.write(12, &[eth[12], eth[13], tag[0], tag[1], t[0], t[1]]);
        ETH_HLEN + VLAN_HLEN
    } else {
        ok &= pkt.write(12, &t);
        ETH_HLEN
    };
    if v6_outer {
        ok && pkt.write(
            l3,
            &outer_ipv6_first_words(h.ip_len, inner_next, h.tos, hash),
        ) && pkt.write(l3 + 8, &cfg.source_v6)
            && pkt.write(l3 + 24, &backend.addr)
    } else {
        let d = &backend.addr;
        match outer_ipv4_words(
            u32::from_ne_bytes(cfg.source_v4),
            u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            h.ip_len,
            inner_next,
            h.tos,
        ) {
            Some(outer) => ok && pkt.write_words(l3, &outer),
            None => false,
        }
    }
}

/// An IPv6 address as the four native-endian words `bpf_fib_lookup` takes (network order in
/// memory).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The inverse of `words`.
#[inline(always)]
fn unwords(w: &[u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}
