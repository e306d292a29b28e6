//! Per-CPU counter updates.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to counter `index` of a per-CPU `u64` array.
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = counters.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's own slot of a per-CPU array, valid for the
        // whole program run; XDP runs in NAPI context, one packet at a time per CPU, so no
        // other writer can interleave with this increment.
        unsafe { *c += 1 };
    }
}
