//! Which VIP a packet is for, and which backend takes it: the flow table first, Maglev for
//! new flows (and for flows whose backend is gone).

use aya_ebpf::maps::PerCpuArray;
use lb_common::{
    Backend, CFG_F_WILDCARD_VIPS, FlowKey, FlowValue, VipInfo, VipKey,
    hash::{flow_hash, table_index},
    parse::{Headers, TCP_RST},
};

use crate::{BACKEND_STATS, BACKENDS, CONFIG, FLOWS, MAGLEV, MAGLEV_SIZE, VIP_STATS, VIPS};

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

/// The backend chosen for a packet.
pub struct Choice {
    pub id: u32,
    pub backend: Backend,
    /// The flow hash; it also becomes the outer IPv6 flow label, so it is computed on hits
    /// too (a label that changed after the first packet would let ECMP split the flow).
    pub hash: u32,
    /// Whether the flow was newly remembered.
    pub new_flow: bool,
    /// Whether the flow table answered.
    pub hit: bool,
}

/// Finds the backend of a flow: the remembered one if it still keeps flows, otherwise the
/// VIP's Maglev choice, which is then remembered (except for a TCP RST, which ends the
/// flow it belongs to). `None` when the VIP has no backend for new flows.
#[inline(never)]
pub fn choose_backend(flow: &FlowKey, vip: &VipInfo, tcp_flags: u8) -> Option<Choice> {
    let hash = flow_hash(flow);
    // SAFETY: FlowValue is plain integers, copied out at once.
    if let Some(v) = unsafe { FLOWS.get(flow) } {
        let v = *v;
        if let Some(b) = BACKENDS.get(v.backend)
            && b.keeps_flow(v.generation)
        {
            return Some(Choice {
                id: v.backend,
                backend: *b,
                hash,
                new_flow: false,
                hit: true,
            });
        }
    }
    let index = table_index(vip.table, MAGLEV_SIZE.load(), hash);
    let id = MAGLEV.get(index >> 1)?[(index & 1) as usize];
    let backend = *BACKENDS.get(id)?;
    if id == 0 || backend.state == lb_common::BACKEND_UNUSED {
        return None;
    }
    let remember = flow.proto != lb_common::PROTO_TCP || tcp_flags & TCP_RST == 0;
    let new_flow = remember
        && FLOWS
            .insert(
                flow,
                FlowValue {
                    backend: id,
                    generation: backend.generation,
                },
                0,
            )
            .is_ok();
    Some(Choice {
        id,
        backend,
        hash,
        new_flow,
        hit: false,
    })
}

/// Counts a forwarded packet of `ip_len` bytes for its VIP and backend.
#[inline(always)]
pub fn count(vip: &VipInfo, choice: &Choice, ip_len: u16) {
    let bytes = u64::from(ip_len);
    if let Some(s) = VIP_STATS.get_ptr_mut(vip.id) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs one packet at a time per
        // CPU, so no other writer interleaves.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(choice.new_flow);
            (*s).flow_hits += u64::from(choice.hit);
            (*s).flow_misses += u64::from(!choice.hit);
        }
    }
    bump_backend(&BACKEND_STATS, choice.id, bytes, choice.new_flow);
}

#[inline(always)]
fn bump_backend(stats: &PerCpuArray<lb_common::BackendStats>, id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = stats.get_ptr_mut(id) {
        // SAFETY: as in `count`.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(new_flow);
        }
    }
}
