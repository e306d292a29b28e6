//! Bounds-checked access to the packet of an XDP or a TC context.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use lb_common::parse::PacketBytes;

/// The largest offset `XdpPacket::ptr` accepts: XDP frames without fragments fit in a
/// page.
pub const MAX_OFFSET: usize = 0x3fff;

/// The packet of a context whose 4-byte fields at offsets `DATA` and `END` are its start
/// and end pointers: [`XdpPacket`] for an XDP context, [`SkbPacket`] for a TC one (the
/// linear part of its socket buffer).
///
/// Every access goes through [`Packet::ptr`], which compares `start + offset + size` with
/// `data_end` as pointers: that comparison is what the verifier needs to see before it
/// allows an access, so it is written once, here.
///
/// `data_end` is re-read from the context (volatile) at every check. Otherwise LLVM may
/// prove a check redundant from earlier arithmetic on lengths (`offset + 20 <= total_len <=
/// data_end - data`) and delete it, and the verifier, which does not follow scalar lengths
/// back to packet pointers, would refuse the access.
#[derive(Clone, Copy)]
pub struct Packet<const DATA: usize, const END: usize> {
    ctx: *mut c_void,
    start: usize,
}

/// The packet of an [`XdpContext`] (`xdp_md.data`, `xdp_md.data_end`).
pub type XdpPacket =
    Packet<{ core::mem::offset_of!(xdp_md, data) }, { core::mem::offset_of!(xdp_md, data_end) }>;

/// The linear part of a [`TcContext`]'s socket buffer (`__sk_buff.data`,
/// `__sk_buff.data_end`).
pub type SkbPacket = Packet<
    { core::mem::offset_of!(__sk_buff, data) },
    { core::mem::offset_of!(__sk_buff, data_end) },
>;

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        // SAFETY: the context pointer the kernel passed to the program, an `xdp_md`.
        unsafe { Self::of_ctx(ctx.ctx.cast()) }
    }
}

impl SkbPacket {
    /// The linear part of `ctx`'s socket buffer, as it is now (after a helper that may
    /// move the data, such as `bpf_skb_adjust_room`, take it again).
    #[inline(always)]
    pub fn of_skb(ctx: &TcContext) -> Self {
        // SAFETY: the context pointer the kernel passed to the program, a `__sk_buff`.
        unsafe { Self::of_ctx(ctx.skb.skb.cast()) }
    }
}

impl<const DATA: usize, const END: usize> Packet<DATA, END> {
    /// The packet of `ctx` as it is now.
    ///
    /// # Safety
    /// `ctx` is the context pointer the kernel passed to the program, of a type with 4-byte
    /// packet pointer fields at `DATA` and `END`.
    #[inline(always)]
    unsafe fn of_ctx(ctx: *mut c_void) -> Self {
        // SAFETY: the caller's.
        let start = unsafe { load_field::<DATA>(ctx) };
        Self { ctx, start }
    }

    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: `self.ctx` is the context pointer the kernel passed to the program.
        unsafe { load_field::<END>(self.ctx) }
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

    /// Writes `N` bytes at `offset`, in as few stores as it can; `false` if they do not
    /// fit.
    #[inline(always)]
    pub fn write<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool {
        let Some(p) = self.ptr::<[u8; N]>(offset) else {
            return false;
        };
        let p = p as usize;
        let mut i = 0;
        // SAFETY (every store): `ptr` checked that the N bytes lie inside the packet, which
        // the program owns for the duration of the call; each store is within them.
        while i + 8 <= N {
            let w = [
                bytes[i],
                bytes[i + 1],
                bytes[i + 2],
                bytes[i + 3],
                bytes[i + 4],
                bytes[i + 5],
                bytes[i + 6],
                bytes[i + 7],
            ];
            unsafe { word::store64(p + i, u64::from_ne_bytes(w)) };
            i += 8;
        }
        if i + 4 <= N {
            let w = [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
            unsafe { word::store32(p + i, u32::from_ne_bytes(w)) };
            i += 4;
        }
        if i + 2 <= N {
            unsafe { word::store16(p + i, u16::from_ne_bytes([bytes[i], bytes[i + 1]])) };
            i += 2;
        }
        if i < N {
            unsafe { ((p + i) as *mut u8).write(bytes[i]) };
        }
        true
    }
}

impl<const DATA: usize, const END: usize> Packet<DATA, END> {
    /// Writes the `N` 32-bit words at `offset`, each as it is in memory (native byte order):
    /// one bounds check and one store per word; `false` if they do not fit.
    #[inline(always)]
    pub fn write_words<const N: usize>(&self, offset: usize, words: &[u32; N]) -> bool {
        let Some(p) = self.ptr::<[u32; N]>(offset) else {
            return false;
        };
        let p = p as usize;
        let mut i = 0;
        while i < N {
            // SAFETY: `ptr` checked that the N words lie inside the packet, which the program
            // owns for the duration of the call.
            unsafe { word::store32(p + 4 * i, words[i]) };
            i += 1;
        }
        true
    }

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

impl<const DATA: usize, const END: usize> Packet<DATA, END> {
    /// The one's-complement sum of the `len` bytes at `offset` (up to 4 KiB), as 32-bit
    /// words read in host (little-endian) order and not folded; `None` if the packet is
    /// shorter or `len` larger. Compare `lb_common::admit::fold16` of it with 0xffff to check
    /// a checksum. Whole 256- and 32-byte chunks are summed by `bpf_csum_diff`, the rest
    /// word by word; every loop is bounded for the verifier.
    #[inline(always)]
    pub fn ones_sum(&self, offset: usize, len: usize) -> Option<u64> {
        let (mut off, mut left, mut sum) = (offset, len, 0u64);
        for _ in 0..16 {
            if left < 256 {
                break;
            }
            sum += u64::from(self.chunk_sum::<256>(off)?);
            off += 256;
            left -= 256;
        }
        if left >= 256 {
            return None;
        }
        for _ in 0..7 {
            if left < 32 {
                break;
            }
            sum += u64::from(self.chunk_sum::<32>(off)?);
            off += 32;
            left -= 32;
        }
        for _ in 0..7 {
            if left < 4 {
                break;
            }
            sum += u64::from(u32::from_le_bytes(self.bytes::<4>(off)?));
            off += 4;
            left -= 4;
        }
        // The last one to three bytes, as the first bytes of a little-endian word padded
        // with zeros (the Internet checksum pads an odd message with a zero byte).
        if left >= 2 {
            sum += u64::from(u16::from_le_bytes(self.bytes::<2>(off)?));
            off += 2;
            left -= 2;
        }
        if left == 1 && off > 0 {
            // Read with the byte before it: for a one-byte read LLVM turns the bounds check
            // `p + 1 > end` into `p >= end`, from which the verifier learns no range for an
            // offset of 0 ("offset is outside of the packet").
            sum += u64::from(self.bytes::<2>(off - 1)?[1]);
        } else if left == 1 {
            return None;
        }
        Some(sum)
    }

    /// `bpf_csum_diff`'s 32-bit sum of the `N` bytes at `offset` (`N` a multiple of 4, at
    /// most 512).
    #[inline(always)]
    fn chunk_sum<const N: usize>(&self, offset: usize) -> Option<u32> {
        let p = self.ptr::<[u8; N]>(offset)?;
        // SAFETY: `ptr` checked that the N bytes lie inside the packet; the helper only
        // reads them.
        let wsum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), N as u32, 0) };
        if wsum < 0 { None } else { Some(wsum as u32) }
    }
}

/// Reads the context's 4-byte field at `OFFSET`, which the kernel rewrites into a load of
/// a packet pointer (`data`, `data_end`). Volatile on purpose: with a plain read LLVM may
/// hoist the load into the caller of a BPF subprogram and pass the value as a 32-bit
/// argument, which the callee zero-extends (the verifier refuses such arithmetic on packet
/// pointers), or merge two reads of `data_end` that a helper call in between separates.
///
/// # Safety
/// `ctx` is the context pointer the kernel passed to the program, of a type with a 4-byte
/// packet pointer field at `OFFSET`.
#[inline(always)]
unsafe fn load_field<const OFFSET: usize>(ctx: *mut c_void) -> usize {
    // SAFETY: the caller's.
    unsafe { core::ptr::read_volatile(ctx.cast::<u8>().add(OFFSET).cast::<u32>()) as usize }
}

impl<const DATA: usize, const END: usize> lb_common::nat::PacketWrite for Packet<DATA, END> {
    /// The inherent `Packet::write`: the packet is written through the context's
    /// pointers, so `&mut` is only the trait's.
    #[inline(always)]
    fn write<const N: usize>(&mut self, offset: usize, bytes: &[u8; N]) -> bool {
        Packet::write(self, offset, bytes)
    }
}

impl<const DATA: usize, const END: usize> PacketBytes for Packet<DATA, END> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end() - self.start
    }

    /// One bounds check, then one 4-byte load per word (BPF's 4-byte load zero-extends).
    #[inline(always)]
    fn words<const N: usize>(&self, offset: usize) -> Option<[u64; N]> {
        let p = self.ptr::<[u32; N]>(offset)? as usize;
        let mut out = [0u64; N];
        let mut i = 0;
        while i < N {
            // SAFETY: `ptr` checked that the N words lie inside the packet.
            out[i] = unsafe { word::load32_wide(p + 4 * i) };
            i += 1;
        }
        Some(out)
    }

    /// The `N` bytes at `offset`, read in as few loads as it can.
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let p = self.ptr::<[u8; N]>(offset)? as usize;
        let mut out = [0u8; N];
        let mut i = 0;
        // SAFETY (every load): `ptr` checked that the N bytes lie inside the packet; each
        // load is within them.
        while i + 8 <= N {
            let w = unsafe { word::load64(p + i) }.to_ne_bytes();
            out[i..i + 8].copy_from_slice(&w);
            i += 8;
        }
        if i + 4 <= N {
            let w = unsafe { word::load32(p + i) }.to_ne_bytes();
            out[i..i + 4].copy_from_slice(&w);
            i += 4;
        }
        if i + 2 <= N {
            let w = unsafe { word::load16(p + i) }.to_ne_bytes();
            out[i..i + 2].copy_from_slice(&w);
            i += 2;
        }
        if i < N {
            out[i] = unsafe { (p as *const u8).add(i).read() };
        }
        Some(out)
    }
}

/// Loads and stores of 2, 4 and 8 bytes at packet addresses of any alignment.
///
/// Packet headers sit at addresses with no alignment (an IP header is 14 bytes into the
/// frame), so Rust's typed accesses, which need alignment, compile to one byte per
/// instruction. BPF's own load and store instructions take any address: the verifier
/// accepts them on packet pointers where the CPU handles misaligned access (x86, arm64),
/// and the JIT emits plain moves. They are written in assembly because LLVM emits them
/// only for accesses it can prove aligned. (Its `+allows-misaligned-mem-access` feature
/// would do this everywhere, but also for stack slots, which the verifier refuses.)
pub mod word {
    use core::arch::asm;

    macro_rules! access {
        ($load:ident, $store:ident, $t:ty, $load_asm:literal, $store_asm:literal) => {
            /// # Safety
            /// `p` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $load(p: usize) -> $t {
                let v: u64;
                // SAFETY: the caller's; the instruction reads nothing else.
                unsafe {
                    asm!($load_asm, v = lateout(reg) v, p = in(reg) p,
                         options(nostack, readonly, preserves_flags))
                };
                v as $t
            }

            /// # Safety
            /// `p` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $store(p: usize, v: $t) {
                // SAFETY: the caller's; the instruction writes nothing else.
                unsafe {
                    asm!($store_asm, p = in(reg) p, v = in(reg) u64::from(v),
                         options(nostack, preserves_flags))
                };
            }
        };
    }

    /// A 4-byte load into a 64-bit register, which BPF zero-extends: no truncation for the
    /// compiler to undo with shifts.
    ///
    /// # Safety
    /// `p` must be a packet address with the whole value inside the packet.
    #[inline(always)]
    pub unsafe fn load32_wide(p: usize) -> u64 {
        let v: u64;
        // SAFETY: the caller's; the instruction reads nothing else.
        unsafe {
            asm!("{v} = *(u32 *)({p} + 0)", v = lateout(reg) v, p = in(reg) p,
                 options(nostack, readonly, preserves_flags))
        };
        v
    }

    macro_rules! access_at {
        ($load:ident, $store:ident, $t:ty, $load_asm:literal, $store_asm:literal) => {
            /// At the constant offset `OFF` from `p`, which the instruction itself carries
            /// (no address arithmetic).
            ///
            /// # Safety
            /// `p + OFF` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $load<const OFF: i16>(p: usize) -> $t {
                let v: u64;
                // SAFETY: the caller's; the instruction reads nothing else.
                unsafe {
                    asm!($load_asm, v = lateout(reg) v, p = in(reg) p, off = const OFF,
                         options(nostack, readonly, preserves_flags))
                };
                v as $t
            }

            /// At the constant offset `OFF` from `p`, which the instruction itself carries.
            ///
            /// # Safety
            /// `p + OFF` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $store<const OFF: i16>(p: usize, v: $t) {
                // SAFETY: the caller's; the instruction writes nothing else.
                unsafe {
                    asm!($store_asm, p = in(reg) p, v = in(reg) u64::from(v), off = const OFF,
                         options(nostack, preserves_flags))
                };
            }
        };
    }

    macro_rules! load_wide_at {
        ($load:ident, $asm:literal) => {
            /// A load at the constant offset `OFF` from `p` into a 64-bit register, which BPF
            /// zero-extends: no truncation for the compiler to undo with shifts or masks.
            ///
            /// # Safety
            /// `p + OFF` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $load<const OFF: i16>(p: usize) -> u64 {
                let v: u64;
                // SAFETY: the caller's; the instruction reads nothing else.
                unsafe {
                    asm!($asm, v = lateout(reg) v, p = in(reg) p, off = const OFF,
                         options(nostack, readonly, preserves_flags))
                };
                v
            }
        };
    }

    macro_rules! store_wide_at {
        ($store:ident, $asm:literal) => {
            /// A store of the low bytes of `v` at the constant offset `OFF` from `p`: the
            /// instruction truncates, so the compiler need not mask `v` first.
            ///
            /// # Safety
            /// `p + OFF` must be a packet address with the whole value inside the packet.
            #[inline(always)]
            pub unsafe fn $store<const OFF: i16>(p: usize, v: u64) {
                // SAFETY: the caller's; the instruction writes nothing else.
                unsafe {
                    asm!($asm, p = in(reg) p, v = in(reg) v, off = const OFF,
                         options(nostack, preserves_flags))
                };
            }
        };
    }

    store_wide_at!(store16_wide_at, "*(u16 *)({p} + {off}) = {v}");
    store_wide_at!(store32_wide_at, "*(u32 *)({p} + {off}) = {v}");

    load_wide_at!(load8_wide_at, "{v} = *(u8 *)({p} + {off})");
    load_wide_at!(load16_wide_at, "{v} = *(u16 *)({p} + {off})");
    load_wide_at!(load32_wide_at, "{v} = *(u32 *)({p} + {off})");

    access_at!(
        load16_at,
        store16_at,
        u16,
        "{v} = *(u16 *)({p} + {off})",
        "*(u16 *)({p} + {off}) = {v}"
    );
    access_at!(
        load32_at,
        store32_at,
        u32,
        "{v} = *(u32 *)({p} + {off})",
        "*(u32 *)({p} + {off}) = {v}"
    );
    access_at!(
        load64_at,
        store64_at,
        u64,
        "{v} = *(u64 *)({p} + {off})",
        "*(u64 *)({p} + {off}) = {v}"
    );

    access!(
        load16,
        store16,
        u16,
        "{v} = *(u16 *)({p} + 0)",
        "*(u16 *)({p} + 0) = {v}"
    );
    access!(
        load32,
        store32,
        u32,
        "{v} = *(u32 *)({p} + 0)",
        "*(u32 *)({p} + 0) = {v}"
    );
    access!(
        load64,
        store64,
        u64,
        "{v} = *(u64 *)({p} + 0)",
        "*(u64 *)({p} + 0) = {v}"
    );
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
