//! The lockstep fill ([`super::Variant::Lockstep`]): backends step through their
//! preference orders together, one choice per turn, and a backend whose choice is taken
//! waits for its next turn instead of moving on to its next choice at once.
//!
//! Equivalently: every (backend, position in its order) pair has the score "position /
//! weight", and slots go to pairs in order of score (ties by the canonical order of
//! backends), each backend up to its quota. Slots and backends then agree on who prefers
//! whom, so the result is the unique stable matching of that ranking, a function of the set
//! of backends alone. When a backend leaves, a slot that changes hands does so because a
//! backend's quota grew or its better slot was taken by a better pair, and such chains
//! are shorter than Maglev's, where every later choice of every backend shifts: the
//! collateral moves fall by about 45% (measured in the tests and the benchmark report).
//!
//! A plain turn has no data-dependent branch: a look at one slot, a bit set either way, a
//! store that goes to a spare slot when the choice was taken; [`super::simd`] plays
//! sixteen backends at once. The last few hundred free slots are handed out by computing,
//! for each backend, when it reaches its nearest free slot.

use std::{cmp::Ordering, collections::BinaryHeap};

use super::fill::{Board, Class, Turn, Walker, add_mod, free_slots, scan_threshold};

/// The walkers of one class that still have slots to claim, field by field (so that
/// sixteen positions can be loaded at once), in play order.
pub(super) struct Team {
    pub pos: Vec<u32>,
    pub skip: Vec<u32>,
    pub label: Vec<u32>,
    /// Slots each is still to claim; members at 0 stay until the next [`Team::compact`]
    /// and play no more.
    pub left: Vec<u32>,
    /// Members at 0.
    done: usize,
}

impl Team {
    fn new(ws: &[Walker]) -> Self {
        let ws: Vec<&Walker> = ws.iter().filter(|w| w.left > 0).collect();
        Self {
            pos: ws.iter().map(|w| w.pos).collect(),
            skip: ws.iter().map(|w| w.skip).collect(),
            label: ws.iter().map(|w| w.label).collect(),
            left: ws.iter().map(|w| w.left).collect(),
            done: 0,
        }
    }

    fn len(&self) -> usize {
        self.pos.len()
    }

    /// Counts member `i` as done if it has no slot left to claim (call once per claim).
    #[inline]
    pub fn note_done(&mut self, i: usize) {
        self.done += usize::from(self.left[i] == 0);
    }

    /// Drops the members that are done, keeping the order of the others.
    fn compact(&mut self) {
        let mut kept = 0;
        for i in 0..self.len() {
            self.pos[kept] = self.pos[i];
            self.skip[kept] = self.skip[i];
            self.label[kept] = self.label[i];
            self.left[kept] = self.left[i];
            kept += usize::from(self.left[i] > 0);
        }
        for v in [
            &mut self.pos,
            &mut self.skip,
            &mut self.label,
            &mut self.left,
        ] {
            v.truncate(kept);
        }
        self.done = 0;
    }
}

/// Fills the free slots of `board` (`free` of them). Each walker claims `left` slots,
/// the quotas adding up to `free`; the classes say who plays when, as for the classic fill.
pub(super) fn run(board: &mut Board, mut free: u32, walkers: &[Walker], classes: &[Class]) {
    debug_assert_eq!(
        walkers.iter().map(|w| u64::from(w.left)).sum::<u64>(),
        u64::from(free)
    );
    let mut teams: Vec<Team> = classes
        .iter()
        .map(|c| Team::new(&walkers[c.members.clone()]))
        .collect();
    let mut turns = Turn::first(classes, |c| teams[c].len() > 0);
    let threshold = scan_threshold(board.m);
    let wide = super::simd::available() && !super::fill::narrow();
    while let Some(mut turn) = turns.pop() {
        if free <= threshold {
            turns.push(turn);
            finish(board, free, &teams, classes, turns);
            return;
        }
        let team = &mut teams[turn.class];
        free -= round(board, team, wide);
        if team.done * 4 > team.len() {
            team.compact();
        }
        turn.k += 1;
        if team.done < team.len() {
            turns.push(turn);
        }
    }
    debug_assert_eq!(free, 0);
}

/// One turn of `team`: each member with slots left looks at its next choice and claims it
/// if free. Returns the number of slots claimed.
fn round(board: &mut Board, team: &mut Team, wide: bool) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` is only set when the CPU has AVX-512F (`simd::available`).
        return unsafe { super::simd::lockstep_round(board, team) };
    }
    debug_assert!(!wide);
    let m = board.m;
    let mut took = 0;
    for i in 0..team.len() {
        let p = team.pos[i];
        let word = p as usize / 32;
        let bit = 1 << (p % 32);
        let claim = board.taken[word] & bit == 0 && team.left[i] > 0;
        // Without a branch: the bit is set and the label stored only on a claim; else the
        // label goes to the spare slot at index m.
        let mask = u32::from(claim).wrapping_neg();
        board.taken[word] |= bit & mask;
        board.table[(m ^ ((p ^ m) & mask)) as usize] = team.label[i];
        team.left[i] -= u32::from(claim);
        team.done += usize::from(claim & (team.left[i] == 0));
        team.pos[i] = add_mod(p, team.skip[i], m);
        took += u32::from(claim);
    }
    took
}
/// A walker's next claim: at its `k`-th look (counted from its first), in class `class`
/// of weight `weight`, at position `member` of the class, slot `slot`.
#[derive(PartialEq, Eq)]
struct Hit {
    k: u64,
    weight: u64,
    class: usize,
    member: usize,
    slot: u32,
}

impl Ord for Hit {
    /// Earliest first in a max-heap: by virtual time `k / weight`, class, member.
    fn cmp(&self, other: &Self) -> Ordering {
        let lhs = u128::from(self.k) * u128::from(other.weight);
        let rhs = u128::from(other.k) * u128::from(self.weight);
        rhs.cmp(&lhs)
            .then(other.class.cmp(&self.class))
            .then(other.member.cmp(&self.member))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Plays the remaining turns as events: for each active walker, the look at which it
/// reaches its nearest free slot. Looks before that hit taken slots and change nothing,
/// so they are skipped; a hit on a slot claimed meanwhile only moves the walker on.
fn finish(
    board: &mut Board,
    mut free: u32,
    teams: &[Team],
    classes: &[Class],
    turns: BinaryHeap<Turn>,
) {
    let m = board.m;
    let barrett = u64::MAX / u64::from(m);
    let mut empties = free_slots(&board.taken, m);
    let next_hit = |w: &mut Walker, empties: &[u32], k: u64, class: usize, member: usize| {
        let (steps, i) = w.nearest(empties, m, barrett);
        Hit {
            k: k + u64::from(steps),
            weight: classes[class].weight,
            class,
            member,
            slot: empties[i],
        }
    };
    // Walkers by class and index in the team.
    let mut walkers: Vec<Vec<Walker>> = teams.iter().map(|_| Vec::new()).collect();
    let mut hits = BinaryHeap::new();
    for turn in turns {
        let team = &teams[turn.class];
        walkers[turn.class] = (0..team.len())
            .map(|i| Walker::new(team.pos[i], team.skip[i], team.label[i], team.left[i]))
            .collect();
        for (member, w) in walkers[turn.class].iter_mut().enumerate() {
            if w.left > 0 {
                hits.push(next_hit(w, &empties, turn.k, turn.class, member));
            }
        }
    }
    while free > 0 {
        let hit = hits
            .pop()
            .expect("a walker with slots left while slots are free");
        let w = &mut walkers[hit.class][hit.member];
        if board.is_free(hit.slot) {
            board.claim(w, hit.slot);
            let i = empties
                .iter()
                .position(|&e| e == hit.slot)
                .expect("a free slot is listed");
            empties.swap_remove(i);
            w.left -= 1;
            free -= 1;
        } else {
            w.pos = add_mod(hit.slot, w.skip, m);
        }
        if w.left > 0 && free > 0 {
            hits.push(next_hit(w, &empties, hit.k + 1, hit.class, hit.member));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{
        Builder, Entry, Ranked, Variant, apportion, fill, rank,
        tests::{arb_entries, assert_exact_shares, weighted},
    };

    /// A plain model of the lockstep fill, one look at a time: look `k` of a backend comes
    /// at virtual time `k / weight`, ties going to heavier backends, then to the canonical
    /// order.
    fn lockstep_model(entries: &[Entry], m: u32, seed: u64) -> Vec<u32> {
        let ranked = rank(entries, m, seed).expect("valid");
        let active: Vec<&Ranked> = ranked
            .iter()
            .filter(|r| entries[r.index].weight > 0)
            .collect();
        let mut table = vec![0; m as usize];
        if active.is_empty() {
            return table;
        }
        let weights: Vec<u64> = active
            .iter()
            .map(|r| u64::from(entries[r.index].weight))
            .collect();
        let mut left = apportion(m, &weights, |_, _| false);
        let mut order: Vec<usize> = (0..active.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
        // (k, weight, position in `order`), earliest first.
        let mut looks: Vec<(u64, u64, usize)> = order
            .iter()
            .enumerate()
            .filter(|&(_, &i)| left[i] > 0)
            .map(|(pos, &i)| (0, weights[i], pos))
            .collect();
        while !looks.is_empty() {
            let (at, &(k, w, pos)) = looks
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| {
                    (u128::from(a.0) * u128::from(b.1))
                        .cmp(&(u128::from(b.0) * u128::from(a.1)))
                        .then(a.2.cmp(&b.2))
                })
                .expect("non-empty");
            let i = order[pos];
            let p = &active[i].place;
            let slot = (u64::from(p.offset) + k * u64::from(p.skip)) % u64::from(m);
            let slot = slot as usize;
            if table[slot] == 0 {
                table[slot] = entries[active[i].index].id;
                left[i] -= 1;
            }
            if left[i] > 0 {
                looks[at] = (k + 1, w, pos);
            } else {
                looks.swap_remove(at);
            }
        }
        table
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The lockstep fill (rounds, then events for the last free slots) is the model.
        #[test]
        fn lockstep_matches_its_model(entries in arb_entries(12), seed in any::<u64>()) {
            let m = 1_201;
            let b = Builder::new(m, seed).variant(Variant::Lockstep);
            prop_assert_eq!(b.build(&entries).expect("valid"), lockstep_model(&entries, m, seed));
        }

        /// Same properties as the classic variant: exact shares, independent of list order.
        #[test]
        fn lockstep_full_exact_and_order_independent(
            entries in arb_entries(40),
            seed in any::<u64>(),
        ) {
            let b = Builder::new(4_001, seed).variant(Variant::Lockstep);
            let table = b.build(&entries).expect("valid");
            assert_exact_shares(&table, &entries);
            let mut shuffled = entries.clone();
            shuffled.reverse();
            prop_assert_eq!(b.build(&shuffled).expect("valid"), table);
        }
    }

    #[test]
    fn lockstep_matches_its_model_at_full_size() {
        let m = 7_919;
        let entries = weighted(60);
        let b = Builder::new(m, 9).variant(Variant::Lockstep);
        let model = lockstep_model(&entries, m, 9);
        for narrow in [false, true] {
            fill::NARROW.set(narrow);
            assert_eq!(b.build(&entries).expect("valid"), model, "narrow: {narrow}");
        }
    }
}
