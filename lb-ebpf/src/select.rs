//! Which VIP a packet is for, and which backend takes it: the one resolver
//! ([`resolve`]), used for a flow's own packets and for ICMP errors about it, and mirrored
//! by userspace's `Balancer::predict`.

use lb_common::{
    ADMIN_F_FAILING, Addr, Backend, CFG_F_WILDCARD_VIPS, FAMILY_V6, FlowKey, FlowValue, MODE_DSR,
    NatReverse, VIP_F_HASH_SOURCE, VipInfo, VipKey,
    hash::{
        FILTER_F_TARGETS, FILTER_NAT, FILTER_TARGET, FILTER_VIP, filter_position, flow_hash,
        table_index,
    },
    nat::Rewrite,
    parse::Headers,
    resolve::{COUNT_NEW, REMEMBER, START},
};

use crate::{
    BACKEND_STATS, BACKENDS, CONFIG, FLOWS, MAGLEV, MAGLEV_SIZE, SCRATCH, VIP_FILTER, VIP_STATS,
    VIPS,
};

/// False when no VIP has the address `dst` (its VIP bit in `VIP_FILTER` is clear); true
/// when one may.
#[inline(always)]
pub fn may_be_vip(dst: &Addr) -> bool {
    let (word, shift) = filter_position(dst);
    VIP_FILTER
        .get(word)
        .is_some_and(|w| (w >> (shift + FILTER_VIP)) & 1 != 0)
}

/// `destination`: neither for a VIP nor a NAT reply: passed untouched.
pub const TO_OTHER: u32 = 0;
/// `destination`: the destination may have a VIP.
pub const TO_VIP: u32 = 1;
/// `destination`: a NAT reply, maybe: to a SNAT address, or from a client-preserving
/// target.
pub const TO_NAT: u32 = 2;

/// What the address filter says about a packet: `TO_VIP`, `TO_NAT` or `TO_OTHER`. One
/// array read and a test for a VIP packet as before NAT existed, one more test for other
/// packets; the source is looked at only while some client-preserving VIP has targets
/// (`FILTER_F_TARGETS`).
#[inline(always)]
pub fn destination(h: &Headers) -> u32 {
    destination_of(&h.dst, || h.src)
}

/// `destination` for the addresses `dst` and (asked only while client-preserving VIPs have
/// targets) `src()`.
#[inline(always)]
pub fn destination_of(dst: &Addr, src: impl FnOnce() -> Addr) -> u32 {
    let (word, shift) = filter_position(dst);
    let Some(w) = VIP_FILTER.get(word) else {
        return TO_OTHER;
    };
    let w = *w;
    if (w >> (shift + FILTER_VIP)) & 1 != 0 {
        return TO_VIP;
    }
    if w & ((1 << (shift + FILTER_NAT)) | FILTER_F_TARGETS) == 0 {
        return TO_OTHER;
    }
    if (w >> (shift + FILTER_NAT)) & 1 != 0 {
        return TO_NAT;
    }
    let (word, shift) = filter_position(&src());
    match VIP_FILTER.get(word) {
        Some(w) if (w >> (shift + FILTER_TARGET)) & 1 != 0 => TO_NAT,
        _ => TO_OTHER,
    }
}

/// The VIP the flow `f` (a 5-tuple) is addressed to: the exact port first, then (only when
/// some VIP has port 0, `CFG_F_WILDCARD_VIPS`) the any-port VIP of that address and
/// protocol.
#[inline(always)]
pub fn find_vip(f: &FlowKey) -> Option<(VipKey, VipInfo)> {
    let mut key = VipKey {
        addr: f.dst,
        port: f.dport,
        proto: f.proto,
        family: f.family,
    };
    // SAFETY: VipInfo is plain integers; the controller replaces values whole (a hash-map
    // update swaps in a new element), so a reader never sees a half-written value.
    if let Some(vip) = unsafe { VIPS.get(key) } {
        return Some((key, *vip));
    }
    let wildcard = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & CFG_F_WILDCARD_VIPS != 0);
    if !wildcard {
        return None;
    }
    key.port = 0;
    // SAFETY: as above.
    unsafe { VIPS.get(key) }.map(|vip| (key, *vip))
}

/// Per-packet values too large for the 512-byte BPF stack, kept in this CPU's slot of
/// `SCRATCH`: the flow and the backend chosen for it.
#[repr(C)]
pub struct Scratch {
    pub flow: FlowKey,
    /// The chosen backend's entry.
    pub backend: Backend,
    /// The chosen backend's id.
    pub id: u32,
    /// The flow hash. It is also the outer IPv6 flow label, so for an IPv6 backend it is
    /// computed on flow-table hits too (a label that changed after the first packet would
    /// let ECMP split the flow); for an IPv4 backend a hit leaves it 0, unused.
    pub hash: u32,
    /// The VIP index the packet is counted for: the VIP found, or on a flow-table hit the
    /// one its backend entry names (`Backend::vip`).
    pub vip: u32,
    /// 1 when the packet started a flow (see `COUNT_NEW` and `START`).
    pub new_flow: u8,
    /// 1 when the flow table answered.
    pub hit: u8,
    /// 1 for a TCP packet without SYN (it should belong to a known flow).
    pub midflow: u8,
    pub reserved: u8,
    /// The packet's TCP sequence number (`Headers::tcp_seq`), for a SYN's entry.
    pub seq: u32,
    /// The flow-table entry found on a hit (a NAT connection's translation).
    pub value: FlowValue,
    /// NAT: the connection's 5-tuple (the forward entry's key; `flow` is the client's key
    /// for a source-affinity VIP).
    pub conn: FlowKey,
    /// NAT: the reverse entry's key and value being made or read.
    pub rev_key: FlowKey,
    pub rev: NatReverse,
    /// NAT: the packet's new addresses and ports (of an ICMP error: its outer addresses).
    pub rewrite: Rewrite,
    /// NAT: an ICMP error's quoted packet's new addresses and ports.
    pub quoted: Rewrite,
}

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the pointer is this CPU's slot of a one-entry per-CPU array, valid for the
    // program run; a CPU runs one XDP program at a time (NAPI), so nothing else uses the
    // slot while this packet is handled.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `resolve`: the backend is in the scratch slot.
pub const RESOLVED: u32 = 0;
/// `resolve`: no VIP takes the flow.
pub const NOT_VIP: u32 = 1;
/// `resolve`: the VIP has no backend for a new flow.
pub const NO_BACKEND: u32 = 2;

/// Finds the VIP and backend of the flow whose 5-tuple is in `s.flow`, in the kernel's one
/// order (`how`: `lb_common::resolve` bits; `Balancer::predict` mirrors this function):
/// 1. the flow table with the 5-tuple (not for `START`): a hit whose backend still keeps
///    flows wins, counted for the VIP its backend entry names, without a VIP lookup;
/// 2. the VIP of the exact port, then the any-port VIP (`find_vip`);
/// 3. for a source-affinity VIP, the flow table with the client's key (not for `START`);
/// 4. the VIP's Maglev table, the choice remembered with `REMEMBER`.
///
/// Fills `s` and returns `RESOLVED`, `NOT_VIP` or `NO_BACKEND`. Flows of a removed VIP do
/// not survive step 1: removing a VIP releases its backend ids, which then keep no flow.
#[inline(always)]
pub fn resolve(how: u32, s: &mut Scratch) -> u32 {
    let fresh = how & START != 0;
    if !fresh {
        let r = remembered(s);
        if r != NOT_REMEMBERED {
            s.vip = u32::from(s.backend.vip);
            return r;
        }
    }
    let Some((key, vip)) = find_vip(&s.flow) else {
        return NOT_VIP;
    };
    s.vip = vip.index;
    if vip.flags & VIP_F_HASH_SOURCE != 0 {
        s.flow.sport = 0;
        s.flow.dport = key.port;
        if !fresh {
            let r = remembered(s);
            if r != NOT_REMEMBERED {
                return r;
            }
        }
    }
    if choose_backend(&vip, how, s) {
        RESOLVED
    } else {
        NO_BACKEND
    }
}

/// `remembered`: the flow table has no usable entry.
const NOT_REMEMBERED: u32 = u32::MAX;

/// `BPF_NOEXIST`: insert only if the key is not there.
const BPF_NOEXIST: u64 = 1;
/// `-EEXIST`.
const EEXIST: i32 = -17;

/// The VIP's Maglev choice for the flow in `s.flow`, remembered with `REMEMBER` (see
/// `resolve` for `START` and `COUNT_NEW`). Fills `s`; false when the VIP has no backend for
/// new flows.
#[inline(never)]
pub fn choose_backend(vip: &VipInfo, how: u32, s: &mut Scratch) -> bool {
    let hash = flow_hash(&s.flow);
    s.hash = hash;
    let index = table_index(vip.table, MAGLEV_SIZE.load(), hash);
    let Some(pair) = MAGLEV.get(index >> 1) else {
        return false;
    };
    let id = pair[(index & 1) as usize];
    let Some(b) = BACKENDS.get(id) else {
        return false;
    };
    if id == 0 || b.state == lb_common::BACKEND_UNUSED {
        return false;
    }
    s.backend = *b;
    s.id = id;
    s.hit = 0;
    s.new_flow = 0;
    // A NAT connection's entry is made with its translation (`nat::establish`); only a
    // source-affinity VIP's per-client entry is remembered here.
    if how & REMEMBER == 0 || (b.mode != MODE_DSR && vip.flags & VIP_F_HASH_SOURCE == 0) {
        return true;
    }
    let value = FlowValue {
        backend: id,
        generation: b.generation,
        syn_seq: s.seq,
        hash,
        ..FlowValue::default()
    };
    // By reference on purpose (clippy: needless borrow): by value, LLVM copies the key
    // from the scratch slot to the stack before the helper call.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    if how & START != 0 {
        // Insert first: a new flow costs one map operation, as before. Only when the key is
        // there (a port reused, or the SYN retransmitted) is the entry read: this SYN's own
        // entry on a backend that still keeps flows is a retransmission, which stays there
        // (`START`); any other is replaced in place. (The kernel's LRU insert takes a free
        // node before it finds the key, which with a full table may evict an idle flow even
        // when it answers EEXIST; that cost is only on this rare path.)
        match FLOWS.insert(&s.flow, value, BPF_NOEXIST) {
            Ok(()) => s.new_flow = 1,
            Err(EEXIST) => {
                if let Some(p) = FLOWS.get_ptr_mut(&s.flow) {
                    // SAFETY: FlowValue is plain integers; the element is valid for the
                    // program run.
                    let v = unsafe { *p };
                    if v.syn_seq == s.seq
                        && let Some(old) = BACKENDS.get(v.backend)
                        && old.keeps_flow(v.generation)
                        && old.admin & ADMIN_F_FAILING == 0
                    {
                        s.backend = *old;
                        s.id = v.backend;
                        s.vip = u32::from(old.vip);
                        s.hit = 1;
                        s.value = v;
                        return true;
                    }
                    let new = flow_value_word(&value);
                    // SAFETY: the value of a hash-map element, its first 8 bytes at an
                    // 8-byte aligned address (the kernel rounds the key up to 8); one
                    // 8-byte store, so a reader on another CPU sees the old or the new
                    // backend, never half. Only SYNs read `syn_seq`.
                    unsafe {
                        (*p).syn_seq = s.seq;
                        core::ptr::write_volatile(p.cast::<u64>(), new);
                    }
                    s.new_flow = 1;
                }
            }
            Err(_) => {}
        }
    } else {
        let inserted = FLOWS.insert(&s.flow, value, 0).is_ok();
        s.new_flow = u8::from(inserted && how & COUNT_NEW != 0);
    }
    true
}

/// A flow value as the 8-byte word it is in memory.
#[inline(always)]
fn flow_value_word(v: &FlowValue) -> u64 {
    let (a, b) = (v.backend.to_ne_bytes(), v.generation.to_ne_bytes());
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

/// Looks the flow in `s.flow` up in the flow table: `RESOLVED`, with `s` filled (the entry
/// in `s.value`, for a NAT connection's translation), when it is there and its backend
/// still keeps flows; `NOT_REMEMBERED` otherwise.
#[inline(always)]
pub fn remembered(s: &mut Scratch) -> u32 {
    // SAFETY: FlowValue is plain integers, copied out at once.
    // By reference, as for the insert.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, LLVM copies the key to the stack first"
    )]
    let found = unsafe { FLOWS.get(&s.flow) };
    if let Some(v) = found {
        let v = *v;
        if let Some(b) = BACKENDS.get(v.backend)
            && b.keeps_flow(v.generation)
        {
            // A remembered flow needs its hash only as an IPv6 flow label: the entry's, or
            // computed for an entry that has none (`FlowValue::hash`).
            s.hash = if b.family != FAMILY_V6 {
                0
            } else if v.hash != 0 {
                v.hash
            } else {
                flow_hash(&s.flow)
            };
            s.backend = *b;
            s.id = v.backend;
            s.new_flow = 0;
            s.hit = 1;
            s.value = v;
            return RESOLVED;
        }
    }
    NOT_REMEMBERED
}

/// Counts a packet of `ip_len` bytes resolved into `s` for its VIP and backend: a new flow
/// whatever became of the packet (the entry exists, and a retransmission will not count
/// again), packets and bytes only when it was `forwarded`.
#[inline(always)]
pub fn count(s: &Scratch, ip_len: u16, forwarded: bool) {
    let bytes = u64::from(ip_len);
    let new_flow = u64::from(s.new_flow);
    if let Some(v) = VIP_STATS.get_ptr_mut(s.vip) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs one packet at a time per
        // CPU, so no other writer interleaves.
        unsafe {
            if new_flow != 0 {
                (*v).new_flows += 1;
            }
            if forwarded {
                (*v).packets += 1;
                (*v).bytes += bytes;
                // Only the counters that move are read and written.
                if s.hit != 0 {
                    (*v).flow_hits += 1;
                } else {
                    (*v).flow_misses += 1;
                    (*v).midflow_misses += u64::from(s.midflow);
                }
            }
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(s.id) {
        // SAFETY: as above.
        unsafe {
            if new_flow != 0 {
                (*b).new_flows += 1;
            }
            if forwarded {
                (*b).packets += 1;
                (*b).bytes += bytes;
            }
        }
    }
}
