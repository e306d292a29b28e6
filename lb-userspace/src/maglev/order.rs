//! The canonical order of backends and their quotas: who plays first within a turn, who
//! gets the slots left over when `m` does not divide evenly, and how many turns each gets.

use super::{Entry, MaglevError, fill::Class, hash::Placement};

/// A backend with its placement, in the canonical order.
#[derive(Clone, Copy)]
pub(super) struct Ranked {
    /// Index in the caller's list.
    pub index: usize,
    pub place: Placement,
}

/// The entries in canonical order (by placement rank, then key), after checking ids and
/// keys for uniqueness.
pub(super) fn rank(entries: &[Entry], m: u32, seed: u64) -> Result<Vec<Ranked>, MaglevError> {
    if let Some(e) = entries.iter().find(|e| e.id == 0) {
        return Err(MaglevError::ZeroId { key: e.key });
    }
    // Ids and list positions packed in one integer sort cheaply.
    let mut by_id: Vec<u64> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| u64::from(e.id) << 32 | i as u64)
        .collect();
    radix_sort(&mut by_id, |&v| v >> 32, 4);
    if let Some(w) = by_id.windows(2).find(|w| w[0] >> 32 == w[1] >> 32) {
        let first = entries[w[0] as u32 as usize];
        let second = entries[w[1] as u32 as usize];
        return Err(if first.key == second.key {
            MaglevError::DuplicateBackend { key: first.key }
        } else {
            MaglevError::DuplicateId {
                id: first.id,
                first: first.key,
                second: second.key,
            }
        });
    }
    let places: Vec<Placement> = entries
        .iter()
        .map(|e| Placement::new(&e.key, m, seed))
        .collect();
    // By the high half of the rank first, sorting (high half, index) pairs, which move
    // cheaply; the rare runs that share it (duplicates, or a 2^-32 coincidence) are then
    // ordered by the whole rank and the key.
    let mut order: Vec<u64> = places
        .iter()
        .enumerate()
        .map(|(i, p)| p.rank & !0xffff_ffff | i as u64)
        .collect();
    radix_sort(&mut order, |&v| v >> 32, 4);
    let mut ranked: Vec<Ranked> = order
        .iter()
        .map(|&v| {
            let index = v as u32 as usize;
            Ranked {
                index,
                place: places[index],
            }
        })
        .collect();
    let mut start = 0;
    while start < ranked.len() {
        let high = ranked[start].place.rank >> 32;
        let mut end = start + 1;
        while end < ranked.len() && ranked[end].place.rank >> 32 == high {
            end += 1;
        }
        if end - start > 1 {
            ranked[start..end].sort_unstable_by_key(|r| (r.place.rank, entries[r.index].key));
        }
        start = end;
    }
    if let Some(w) = ranked.windows(2).find(|w| {
        w[0].place.rank == w[1].place.rank && entries[w[0].index].key == entries[w[1].index].key
    }) {
        return Err(MaglevError::DuplicateBackend {
            key: entries[w[0].index].key,
        });
    }
    Ok(ranked)
}

/// Sorts `v` by the low `bytes` bytes of `key`, keeping the order of equal keys: a
/// least-significant-digit radix sort, a byte per pass, passes where every key has the
/// same byte skipped. Linear and without the branch mispredictions of comparison sorts,
/// which dominate sorting thousands of random keys.
fn radix_sort<T: Copy>(v: &mut Vec<T>, key: impl Fn(&T) -> u64, bytes: u32) {
    let mut other = v.clone();
    for shift in (0..bytes).map(|b| 8 * b) {
        let mut counts = [0usize; 256];
        for x in v.iter() {
            counts[(key(x) >> shift) as usize & 0xff] += 1;
        }
        if counts.contains(&v.len()) {
            continue;
        }
        let mut next = 0;
        for c in &mut counts {
            (*c, next) = (next, next + *c);
        }
        for x in v.iter() {
            let bucket = &mut counts[(key(x) >> shift) as usize & 0xff];
            other[*bucket] = *x;
            *bucket += 1;
        }
        std::mem::swap(v, &mut other);
    }
}

/// Splits walkers into classes of equal scheduling weight. `weights` and `quotas` (turns)
/// are given per walker in play order, equal weights adjacent; within a class quotas may
/// differ by one, the larger ones first.
pub(super) fn group(weights: &[u64], quotas: &[u32]) -> Vec<Class> {
    let quota_of = |i: usize| quotas[i];
    let mut classes = Vec::new();
    let mut start = 0;
    while start < weights.len() {
        let end = start
            + weights[start..]
                .iter()
                .take_while(|&&w| w == weights[start])
                .count();
        let turns = (start..end).map(quota_of).min().expect("non-empty class");
        let extra = (start..end).filter(|&i| quota_of(i) > turns).count();
        debug_assert!((start..end).all(|i| quota_of(i) <= turns + 1));
        debug_assert!((start..start + extra).all(|i| quota_of(i) == turns + 1));
        classes.push(Class {
            weight: weights[start],
            members: start..end,
            turns,
            extra,
        });
        start = end;
    }
    classes
}

/// Shares of `total` in proportion to `weights` (at least one non-zero): each share is
/// `total · w / W` rounded down, and the slots left over go one each to the entries with
/// `favoured(i, rounded_down_share)` first, then to the largest remainders, then in
/// list order.
pub(super) fn apportion(
    total: u32,
    weights: &[u64],
    favoured: impl Fn(usize, u32) -> bool,
) -> Vec<u32> {
    let sum: u64 = weights.iter().sum();
    let mut shares: Vec<u32> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(bool, u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        // total < 2^24 and w < 2^32, so the product fits.
        let exact = u64::from(total) * w;
        let floor = (exact / sum) as u32;
        shares.push(floor);
        remainders.push((favoured(i, floor), exact % sum, i));
    }
    let left = (total - shares.iter().sum::<u32>()) as usize;
    if left > 0 {
        // Only which `left` come first matters, not their order: a selection, not a sort.
        let order = |a: &(bool, u64, usize), b: &(bool, u64, usize)| {
            b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
        };
        remainders.select_nth_unstable_by(left - 1, order);
        for &(_, _, i) in &remainders[..left] {
            shares[i] += 1;
        }
    }
    shares
}
