//! Reference programs: `xlb_pass` (lets a veth peer receive `XDP_TX`/redirected frames,
//! which veth only delivers to a peer that has an XDP program), `xlb_drop` (the benchmark's
//! sink on the far side of a veth), and the floors the benchmark measures the balancer
//! against: `xlb_tx` (returns `XDP_TX`) and `xlb_macswap` (swaps the MAC addresses and
//! returns `XDP_TX`, the least a real forwarder does).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::parse::PacketBytes;
use lb_ebpf::packet::XdpPacket;

#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xlb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn xlb_macswap(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket::new(&ctx);
    let Some(macs) = pkt.bytes::<12>(0) else {
        return xdp_action::XDP_DROP;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    if !pkt.write(0, &swapped) {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that gets here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
