//! The classic fill: backends take turns, and on its turn a backend claims the first
//! still-free slot in its own preference order; the types the lockstep fill shares.
//!
//! Finding that slot, three ways with the same answer:
//!
//! - While most slots are free, the backend steps through its order and tests a bitmap of
//!   taken slots (8 KiB for a 65,537-slot table, so it stays in the L1 cache); positions
//!   advance by an addition and a conditional subtraction, never a division.
//! - Once half the slots are taken, walks get longer — with `f` free slots about `m / f`
//!   steps — and on CPUs with AVX-512 [`super::simd`] tests sixteen steps at once.
//! - For the last few hundred slots the engine keeps a list of them and computes, for each,
//!   how many steps ahead of the backend it lies ([`Walker::nearest`]): the nearest one is
//!   where the walk would stop. Without this, those slots alone would cost more than the
//!   rest of the table.

use std::{cmp::Ordering, collections::BinaryHeap, ops::Range};

/// One backend's progress through its preference order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Walker {
    /// The next slot it will look at.
    pub pos: u32,
    /// Step between its choices, in `[1, m)`.
    pub skip: u32,
    /// The value written into the slots it claims.
    pub label: u32,
    /// Slots it is still to claim (used by [`super::lockstep`]).
    pub left: u32,
    /// `skip⁻¹ mod m`, computed the first time a scan needs it (0 = not yet).
    inv: u32,
}

impl Walker {
    /// A backend that starts at `offset`, moves by `skip`, writes `label` and is to claim
    /// `quota` slots.
    pub fn new(offset: u32, skip: u32, label: u32, quota: u32) -> Self {
        Self {
            pos: offset,
            skip,
            label,
            left: quota,
            inv: 0,
        }
    }

    /// Steps from the walker's position to slot `e` along its order:
    /// `(e - pos) · skip⁻¹ mod m`.
    #[inline]
    pub fn steps_to(&mut self, e: u32, m: u32, barrett: u64) -> u32 {
        if self.inv == 0 {
            self.inv = mod_inverse(self.skip, m);
        }
        let ahead = if e >= self.pos {
            e - self.pos
        } else {
            e + m - self.pos
        };
        barrett_mod(u64::from(ahead) * u64::from(self.inv), m, barrett)
    }

    /// The free slot of `empties` (non-empty) that the walker reaches first, as (steps,
    /// index in `empties`).
    pub fn nearest(&mut self, empties: &[u32], m: u32, barrett: u64) -> (u32, usize) {
        let mut best = (u32::MAX, 0);
        for (i, &e) in empties.iter().enumerate() {
            let steps = self.steps_to(e, m, barrett);
            if steps < best.0 {
                best = (steps, i);
            }
        }
        best
    }
}

/// Walkers of one scheduling weight, which take their turns together.
#[derive(Clone, Debug)]
pub(super) struct Class {
    /// The class's `k`-th turn (from 0) comes at virtual time `k / weight`; classes due at
    /// the same time go in the order of the class list.
    pub weight: u64,
    /// Its walkers: a range of the walker slice, in the order they play within a turn.
    pub members: Range<usize>,
    /// Turns every member takes.
    pub turns: u32,
    /// The first `extra` members take one turn more.
    pub extra: usize,
}

impl Class {
    /// Whether the class plays turn `k`.
    fn has_turn(&self, k: u64) -> bool {
        k < u64::from(self.turns) || (k == u64::from(self.turns) && self.extra > 0)
    }
}

/// A class's next turn, ordered by virtual time `k / weight`, then by class index.
#[derive(PartialEq, Eq)]
pub(super) struct Turn {
    pub k: u64,
    pub weight: u64,
    pub class: usize,
}

impl Turn {
    /// The first turns of `classes`, for those that `play(class)`.
    pub fn first(classes: &[Class], play: impl Fn(usize) -> bool) -> BinaryHeap<Turn> {
        classes
            .iter()
            .enumerate()
            .filter(|&(class, _)| play(class))
            .map(|(class, c)| Turn {
                k: 0,
                weight: c.weight,
                class,
            })
            .collect()
    }
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // Turns and weights are below 2^32, so the cross products fit in 64 bits.
        let lhs = self.k * other.weight;
        let rhs = other.k * self.weight;
        // Reversed: `BinaryHeap` is a max-heap and the earliest turn must come out first.
        rhs.cmp(&lhs).then(other.class.cmp(&self.class))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The table and a bitmap of its taken slots: what a walk reads and writes.
pub(super) struct Board {
    pub m: u32,
    /// The `m` slots and one more, at index `m`, that branch-free code writes to instead of
    /// not writing.
    pub table: Vec<u32>,
    /// Bit `s % 32` of word `s / 32` set = slot `s` taken. 32-bit words, so that
    /// [`super::simd`] can gather them; 8 KiB for a 65,537-slot table, which stays in the
    /// L1 cache.
    pub taken: Vec<u32>,
}

impl Board {
    /// An empty table of size `m` (`2 <= m < 2^31`).
    pub fn new(m: u32) -> Self {
        debug_assert!(m >= 2);
        Self {
            m,
            table: vec![0; m as usize + 1],
            taken: vec![0; (m as usize).div_ceil(32)],
        }
    }

    /// `table`, whose non-zero slots are taken, and the number of free ones.
    pub fn from_table(mut table: Vec<u32>) -> (Self, u32) {
        let m = u32::try_from(table.len()).expect("table size fits in u32");
        debug_assert!(m >= 2);
        // A word of the bitmap per 32 slots, without a branch per slot.
        let taken: Vec<u32> = table
            .chunks(32)
            .map(|chunk| {
                (chunk.iter().enumerate()).fold(0, |w, (j, &v)| w | u32::from(v != 0) << j)
            })
            .collect();
        let free = m - taken.iter().map(|w| w.count_ones()).sum::<u32>();
        table.push(0);
        (Self { m, table, taken }, free)
    }

    /// The `m` slots.
    pub fn into_table(mut self) -> Vec<u32> {
        self.table.truncate(self.m as usize);
        self.table
    }

    #[inline]
    pub fn is_free(&self, p: u32) -> bool {
        self.taken[p as usize / 32] & (1 << (p % 32)) == 0
    }

    /// Gives free slot `p` to `w`, whose next choice is then the one after `p`.
    #[inline]
    pub fn claim(&mut self, w: &mut Walker, p: u32) {
        self.taken[p as usize / 32] |= 1 << (p % 32);
        self.table[p as usize] = w.label;
        w.pos = add_mod(p, w.skip, self.m);
    }

    /// Gives `w` the first free slot in its order from its current position on (there
    /// must be one), one step at a time.
    #[inline]
    fn walk(&mut self, w: &mut Walker) {
        let mut p = w.pos;
        while !self.is_free(p) {
            p = add_mod(p, w.skip, self.m);
        }
        self.claim(w, p);
    }

    /// One turn for each of `ws`, in order; `wide` uses [`super::simd`] (which the caller
    /// has checked is available).
    pub fn walk_all(&mut self, ws: &mut [Walker], wide: bool) {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: `wide` is only set when the CPU has AVX-512F (`simd::available`).
            unsafe { super::simd::walk_all(self, ws) };
            return;
        }
        debug_assert!(!wide);
        for w in ws {
            self.walk(w);
        }
    }
}

/// A table being filled.
pub(super) struct Filler {
    board: Board,
    /// Slots still free.
    free: u32,
    /// Switch to scanning the free list when at most this many slots are free.
    scan_below: u32,
    /// The free slots, once scanning (then `board.taken` is no longer kept up to date).
    empties: Option<Vec<u32>>,
    /// `floor(2^64 / m)`, for Barrett reduction modulo `m`.
    barrett: u64,
    /// Whether walks may use [`super::simd`].
    wide: bool,
}

impl Filler {
    /// An empty table of size `m` (`2 <= m < 2^31`).
    pub fn new(m: u32) -> Self {
        Self::with_board(Board::new(m), m)
    }

    /// Continues filling `table`, whose non-zero slots are already taken.
    pub fn from_table(table: Vec<u32>) -> Self {
        let (board, free) = Board::from_table(table);
        Self::with_board(board, free)
    }

    fn with_board(board: Board, free: u32) -> Self {
        Self {
            scan_below: scan_threshold(board.m),
            barrett: u64::MAX / u64::from(board.m),
            board,
            free,
            empties: None,
            wide: super::simd::available() && !narrow(),
        }
    }

    /// Slots still free.
    pub fn free(&self) -> u32 {
        self.free
    }

    /// The table: every slot claimed by a walker holds its label, the others 0.
    pub fn into_table(self) -> Vec<u32> {
        self.board.into_table()
    }

    /// Plays every class's turns in order of virtual time. The quotas of the classes
    /// must not exceed the free slots.
    pub fn run(&mut self, walkers: &mut [Walker], classes: &[Class]) {
        let mut turns = Turn::first(classes, |c| classes[c].has_turn(0));
        while let Some(mut turn) = turns.pop() {
            let c = &classes[turn.class];
            let players = if turn.k < u64::from(c.turns) {
                c.members.clone()
            } else {
                c.members.start..c.members.start + c.extra
            };
            self.play(&mut walkers[players]);
            turn.k += 1;
            if c.has_turn(turn.k) {
                turns.push(turn);
            }
        }
    }

    /// One turn for each of `ws`, in order.
    fn play(&mut self, ws: &mut [Walker]) {
        let n = u32::try_from(ws.len()).expect("fewer than 2^32 walkers");
        debug_assert!(n <= self.free, "more turns than free slots");
        if self.empties.is_none() && self.free - n >= self.scan_below {
            // Wide steps pay once first choices are often taken.
            let wide = self.wide && u64::from(self.free) * 2 < u64::from(self.board.m);
            self.board.walk_all(ws, wide);
            self.free -= n;
        } else {
            for w in ws {
                if self.empties.is_none() && self.free > self.scan_below {
                    self.board.walk_all(std::slice::from_mut(w), self.wide);
                } else {
                    self.take_by_scan(w);
                }
                self.free -= 1;
            }
        }
    }

    /// Gives `w` its next free slot when few are left: the free slot the fewest steps
    /// ahead of it ([`Walker::nearest`]) is the one its walk would reach first.
    #[cold]
    fn take_by_scan(&mut self, w: &mut Walker) {
        let board = &mut self.board;
        let empties = self
            .empties
            .get_or_insert_with(|| free_slots(&board.taken, board.m));
        let (_, i) = w.nearest(empties, board.m, self.barrett);
        let slot = empties.swap_remove(i);
        board.table[slot as usize] = w.label;
        w.pos = add_mod(slot, w.skip, board.m);
    }
}

/// The slots below `m` whose bit in `taken` is clear, in increasing order.
pub(super) fn free_slots(taken: &[u32], m: u32) -> Vec<u32> {
    let mut slots = Vec::new();
    for (i, &word) in taken.iter().enumerate() {
        let mut free = !word;
        while free != 0 {
            let s = i as u32 * 32 + free.trailing_zeros();
            if s < m {
                slots.push(s);
            }
            free &= free - 1;
        }
    }
    slots
}

#[cfg(test)]
thread_local! {
    /// Set by tests to run the plain code on a CPU that has AVX-512.
    pub(super) static NARROW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a test asked for the plain code.
pub(super) fn narrow() -> bool {
    #[cfg(test)]
    return NARROW.get();
    #[cfg(not(test))]
    false
}

/// `x mod m` by Barrett reduction with `barrett = floor(2^64 / m)`: one 64×64-bit
/// multiplication instead of a division; the estimate of the quotient is low by at most
/// one.
#[inline]
pub(super) fn barrett_mod(x: u64, m: u32, barrett: u64) -> u32 {
    let q = ((u128::from(x) * u128::from(barrett)) >> 64) as u64;
    let r = x - q * u64::from(m);
    r.min(r.wrapping_sub(u64::from(m))) as u32
}

/// `(a + b) mod m` for `a, b < m < 2^31`, without a branch: when the sum is below `m`,
/// subtracting `m` wraps around to a larger number and the minimum keeps the sum.
#[inline]
pub(super) fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let c = a + b;
    c.min(c.wrapping_sub(m))
}

/// Free slots below which scanning the free list beats walking: a walk costs about
/// `m / free` cheap steps and a scan `free` multiplications, which cross near
/// `sqrt(m / 4)`.
pub(super) fn scan_threshold(m: u32) -> u32 {
    (m / 4).isqrt().max(8)
}

/// `a⁻¹ mod m` for a prime `m` and `0 < a < m` (extended Euclid).
pub(super) fn mod_inverse(a: u32, m: u32) -> u32 {
    let (mut t, mut next_t) = (0i64, 1i64);
    let (mut r, mut next_r) = (i64::from(m), i64::from(a));
    while next_r != 0 {
        let q = r / next_r;
        (t, next_t) = (next_t, t - q * next_t);
        (r, next_r) = (next_r, r - q * next_r);
    }
    debug_assert_eq!(r, 1, "{a} has no inverse modulo {m}");
    if t < 0 {
        t += i64::from(m);
    }
    t as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse() {
        for m in [2u32, 3, 13, 65_537, 1_048_573] {
            for a in [1, 2, m / 2, m - 1].into_iter().filter(|&a| a > 0 && a < m) {
                let inv = mod_inverse(a, m);
                assert_eq!(
                    u64::from(a) * u64::from(inv) % u64::from(m),
                    1,
                    "{a} mod {m}"
                );
            }
        }
    }

    #[test]
    fn barrett_reduction() {
        for m in [2u32, 13, 65_537, 16_777_213] {
            let barrett = u64::MAX / u64::from(m);
            let mm = u64::from(m) - 1;
            for x in [0, 1, mm, mm + 1, mm * mm, mm * mm - 1, 12_345_678_901] {
                assert_eq!(
                    u64::from(barrett_mod(x, m, barrett)),
                    x % u64::from(m),
                    "{x} mod {m}"
                );
            }
        }
    }

    /// Scanning the free list and the wide walk pick exactly the slot the plain walk
    /// reaches.
    #[test]
    fn shortcuts_agree_with_walk() {
        let m = 1_009;
        let mut start: Vec<u32> = (0..m).map(|s| u32::from(s % 7 != 3)).collect();
        start[500] = 0;
        let fillers = || {
            let mut walk = Filler::from_table(start.clone());
            walk.scan_below = 0;
            walk.wide = false;
            let mut scan = Filler::from_table(start.clone());
            scan.scan_below = m;
            let mut wide = Filler::from_table(start.clone());
            wide.scan_below = 0;
            [walk, scan, wide]
        };
        let mut fs = fillers();
        let mut ws = [[Walker::new(17, 123, 5, 0), Walker::new(900, 1, 6, 0)]; 3];
        while fs[0].free() > 0 {
            for i in 0..2 {
                if fs[0].free() > 0 {
                    for (f, w) in fs.iter_mut().zip(&mut ws) {
                        f.play(&mut w[i..=i]);
                    }
                    assert_eq!(ws[0][i].pos, ws[1][i].pos);
                    assert_eq!(ws[0][i].pos, ws[2][i].pos);
                }
            }
        }
        let [walk, scan, wide] = fs.map(Filler::into_table);
        assert_eq!(walk, scan);
        assert_eq!(walk, wide);
    }
}
