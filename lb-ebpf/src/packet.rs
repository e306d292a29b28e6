//! Bounds-checked access to the packet of an XDP context.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::parse::PacketBytes;

/// The largest offset `XdpPacket::ptr` accepts: XDP frames without fragments fit in a
/// page.
pub const MAX_OFFSET: usize = 0x3fff;

/// The packet of an [`XdpContext`].
///
/// Every access goes through [`XdpPacket::ptr`], which compares `start + offset + size` with
/// `data_end` as pointers: that comparison is what the verifier needs to see before it
/// allows an access, so it is written once, here.
///
/// `data_end` is re-read from the context (volatile) at every check. Otherwise LLVM may
/// prove a check redundant from earlier arithmetic on lengths (`offset + 20 <= total_len <=
/// data_end - data`) and delete it, and the verifier, which does not follow scalar lengths
/// back to packet pointers, would refuse the access.
#[derive(Clone, Copy)]
pub struct XdpPacket {
    ctx: *mut xdp_md,
    start: usize,
}

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            ctx: ctx.ctx,
            start: load_data(ctx.ctx),
        }
    }

    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: `self.ctx` is the context pointer the kernel passed to the program; the
        // kernel rewrites this field load into a load of the packet end pointer.
        unsafe { core::ptr::read_volatile(&raw const (*self.ctx).data_end) as usize }
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
    ///
    /// The offset is masked with `MAX_OFFSET` first: the verifier tracks a packet pointer's
    /// variable offset only below 64 KiB, so an offset read back from memory (a u16 of
    /// `Headers`) needs a bound, and a mask gives one in a single instruction. It changes no
    /// offset a frame can have (frames fit in a page).
    #[inline(always)]
    pub fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let p = self.start + (offset & MAX_OFFSET);
        if p + size_of::<T>() > self.end() {
            return None;
        }
        Some(p as *mut T)
    }

    /// Writes `N` bytes at `offset`; `false` if they do not fit.
    #[inline(always)]
    pub fn write<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool {
        match self.ptr::<[u8; N]>(offset) {
            Some(p) => {
                // SAFETY: `ptr` checked that the N bytes lie inside the packet, which the
                // program owns for the duration of the call; `[u8; N]` has alignment 1.
                unsafe { p.write(*bytes) };
                true
            }
            None => false,
        }
    }
}

impl XdpPacket {
    /// The one's-complement sum of the `N` bytes at `offset` as big-endian 16-bit words
    /// (not folded, not complemented): what `lb_common::csum::sum_packet` computes, done by
    /// the kernel's `bpf_csum_diff` in one call. (Summed here word by word, LLVM issues
    /// every load first and spills each result to its own stack slot.) `N` must be a
    /// multiple of 4 and at most 512.
    #[inline(always)]
    pub fn checksum_sum<const N: usize>(&self, offset: usize) -> Option<u32> {
        let p = self.ptr::<[u8; N]>(offset)?;
        // SAFETY: `ptr` checked that the N bytes lie inside the packet; the helper only
        // reads them.
        let wsum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), N as u32, 0) };
        if wsum < 0 {
            return None;
        }
        // The helper adds 32-bit words in host order; folded to 16 bits that is the sum of
        // the big-endian 16-bit words with its bytes in host order.
        let mut f = wsum as u64;
        f = (f & 0xffff) + (f >> 16);
        f = (f & 0xffff) + (f >> 16);
        f = (f & 0xffff) + (f >> 16);
        Some(u32::from(u16::from_be(f as u16)))
    }
}

/// Reads `ctx->data`. Volatile on purpose: with a plain read LLVM may hoist the load into
/// the caller of a BPF subprogram and pass the value as a 32-bit argument, which the callee
/// zero-extends; the verifier refuses such arithmetic on packet pointers.
#[inline(always)]
fn load_data(ctx: *mut xdp_md) -> usize {
    // SAFETY: `ctx` is the context pointer the kernel passed to the program; the kernel
    // rewrites this field load into a load of the packet start pointer.
    unsafe { core::ptr::read_volatile(&raw const (*ctx).data) as usize }
}

impl PacketBytes for XdpPacket {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end() - self.start
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let p = self.ptr::<[u8; N]>(offset)?;
        // SAFETY: `ptr` checked that the N bytes lie inside the packet; `[u8; N]` has
        // alignment 1.
        Some(unsafe { p.read() })
    }
}

/// Moves the start of the packet by `delta` bytes (negative grows it at the front) and
/// returns the new packet, or `None` if the kernel refused (no headroom, or too short).
/// Every earlier [`XdpPacket`] is invalid afterwards.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<XdpPacket> {
    // SAFETY: the helper only needs the context pointer the kernel gave us.
    let rc = unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) };
    if rc != 0 {
        return None;
    }
    Some(XdpPacket::new(ctx))
}
