//! Which VIP a packet is for, and which backend takes it: the flow table first, Maglev for
//! new flows (and for flows whose backend is gone).

use lb_common::{
    Addr, Backend, CFG_F_WILDCARD_VIPS, FAMILY_V6, FlowKey, FlowValue, VipInfo, VipKey,
    hash::{flow_hash, table_index, vip_filter_bit},
    parse::Headers,
};

use crate::{
    BACKEND_STATS, BACKENDS, CONFIG, FLOWS, MAGLEV, MAGLEV_SIZE, SCRATCH, VIP_FILTER, VIP_STATS,
    VIPS,
};

/// The VIP stored under `key`.
#[inline(always)]
pub fn vip(key: &VipKey) -> Option<VipInfo> {
    // SAFETY: VipInfo is plain integers, copied out at once; the controller replaces values
    // whole.
    unsafe { VIPS.get(key) }.copied()
}

/// False when no VIP has the address `dst` (its bit in `VIP_FILTER` is clear); true when
/// one may.
#[inline(always)]
pub fn may_be_vip(dst: &Addr) -> bool {
    let bit = vip_filter_bit(dst);
    VIP_FILTER
        .get(bit >> 6)
        .is_some_and(|word| (word >> (bit & 63)) & 1 != 0)
}

/// The VIP a packet is addressed to: the exact port first, then (only when some VIP has
/// port 0) the any-port VIP of that address and protocol.
#[inline(always)]
pub fn find_vip(h: &Headers) -> Option<(VipKey, VipInfo)> {
    let mut key = VipKey {
        addr: h.dst,
        port: h.dport,
        proto: h.proto,
        family: h.family,
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
    /// 1 when the flow was newly remembered.
    pub new_flow: u8,
    /// 1 when the flow table answered.
    pub hit: u8,
    /// 1 for a TCP packet without SYN (it should belong to a known flow).
    pub midflow: u8,
    pub reserved: u8,
}

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the pointer is this CPU's slot of a one-entry per-CPU array, valid for the
    // program run; a CPU runs one XDP program at a time (NAPI), so nothing else uses the
    // slot while this packet is handled.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `choose_backend`: look the flow up in the flow table first.
pub const LOOK_UP: u32 = 1;
/// `choose_backend`: remember a new choice (not for a TCP RST, which ends its flow, nor
/// for an ICMP error).
pub const REMEMBER: u32 = 2;

/// Finds the backend of the flow in `s.flow`: with `LOOK_UP`, the remembered one if it
/// still keeps flows; otherwise the VIP's Maglev choice, remembered with `REMEMBER`. Fills
/// `s`; false when the VIP has no backend for new flows.
#[inline(never)]
pub fn choose_backend(vip: &VipInfo, how: u32, s: &mut Scratch) -> bool {
    if how & LOOK_UP != 0 && remembered(s) {
        return true;
    }
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
    let value = FlowValue {
        backend: id,
        generation: b.generation,
    };
    // By reference on purpose (clippy: needless borrow): by value, LLVM copies the key
    // from the scratch slot to the stack before the helper call.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = how & REMEMBER != 0 && FLOWS.insert(&s.flow, value, 0).is_ok();
    s.new_flow = u8::from(inserted);
    true
}

/// Looks the flow in `s.flow` up in the flow table: true, with `s` filled, when it is
/// there and its backend still keeps flows.
#[inline(always)]
pub fn remembered(s: &mut Scratch) -> bool {
    // SAFETY: FlowValue is plain integers, copied out at once.
    // By reference, as for the insert.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let found = unsafe { FLOWS.get(&s.flow) };
    if let Some(v) = found {
        let v = *v;
        if let Some(b) = BACKENDS.get(v.backend)
            && b.keeps_flow(v.generation)
        {
            // A remembered flow needs its hash only as an IPv6 flow label.
            s.hash = if b.family == FAMILY_V6 {
                flow_hash(&s.flow)
            } else {
                0
            };
            s.backend = *b;
            s.id = v.backend;
            s.new_flow = 0;
            s.hit = 1;
            return true;
        }
    }
    false
}

/// Counts a forwarded packet of `ip_len` bytes for VIP `vip_id` and the backend in `s`.
#[inline(always)]
pub fn count(vip_id: u32, s: &Scratch, ip_len: u16) {
    let bytes = u64::from(ip_len);
    let (new_flow, hit) = (u64::from(s.new_flow), u64::from(s.hit));
    if let Some(v) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs one packet at a time per
        // CPU, so no other writer interleaves.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += bytes;
            (*v).new_flows += new_flow;
            (*v).flow_hits += hit;
            (*v).flow_misses += 1 - hit;
            (*v).midflow_misses += (1 - hit) * u64::from(s.midflow);
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(s.id) {
        // SAFETY: as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
            (*b).new_flows += new_flow;
        }
    }
}
