//! The benchmark's entry points: `xlb_balancer_bench` restores a template frame and then
//! balances it exactly as `xlb_balancer` does; `xlb_bench_restore` only restores it (the
//! floor to subtract). With `BPF_PROG_TEST_RUN` the kernel reuses the frame between runs
//! (repeat > 1, live frames), so without the restore every run after the first would see
//! the previous run's output. Never attached.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use lb_common::{BenchTemplate, parse::PacketBytes};
use lb_ebpf::packet::XdpPacket;

/// Entry 0: the benchmark's template (`lb_common::BenchTemplate`). Unused in production.
#[map]
static BENCH: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Puts a frame the balancer rewrote back to the benchmark's template: encapsulation only
/// grows the head and overwrites only the original L2 header, so moving the head back and
/// rewriting that header restores the frame. Returns false if it cannot. (A subprogram, so
/// its frame is not under the balancer's.)
#[inline(never)]
fn restore_template(ctx: *mut xdp_md) -> bool {
    let ctx = &XdpContext::new(ctx);
    let Some(t) = BENCH.get(0) else { return false };
    let len = XdpPacket::new(ctx).len();
    let grown = len as i64 - i64::from(t.len);
    if grown > 0 && grown <= 64 && lb_ebpf::packet::adjust_head(ctx, grown as i32).is_none() {
        return false;
    }
    let pkt = XdpPacket::new(ctx);
    if t.l2_len == 18 {
        let l2: [u8; 18] = [
            t.l2[0], t.l2[1], t.l2[2], t.l2[3], t.l2[4], t.l2[5], t.l2[6], t.l2[7], t.l2[8],
            t.l2[9], t.l2[10], t.l2[11], t.l2[12], t.l2[13], t.l2[14], t.l2[15], t.l2[16],
            t.l2[17],
        ];
        pkt.write(0, &l2)
    } else {
        let l2: [u8; 14] = [
            t.l2[0], t.l2[1], t.l2[2], t.l2[3], t.l2[4], t.l2[5], t.l2[6], t.l2[7], t.l2[8],
            t.l2[9], t.l2[10], t.l2[11], t.l2[12], t.l2[13],
        ];
        pkt.write(0, &l2)
    }
}

/// Benchmark entry point: restores the frame to the template, then balances it.
#[xdp]
pub fn xlb_balancer_bench(ctx: XdpContext) -> u32 {
    if !restore_template(ctx.ctx) {
        return xdp_action::XDP_DROP;
    }
    crate::run(&ctx)
}

/// The benchmark's floor for `xlb_balancer_bench`: the same restore, then `XDP_TX`.
#[xdp]
pub fn xlb_bench_restore(ctx: XdpContext) -> u32 {
    if !restore_template(ctx.ctx) {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}
