//! Maglev lookup tables: which backend of a VIP each of the table's `m` slots sends new
//! flows to.
//!
//! The data plane reduces a flow's hash to a slot with
//! [`lb_common::hash::maglev_slot`] and forwards to the backend id stored there (0 = no
//! backend). This module builds the table; nothing here runs per packet.
//!
//! # The algorithm
//!
//! Classic Maglev (Eisenbud et al., NSDI 2016), with weights. Each backend has its own
//! preference order over the slots, `offset, offset + skip, offset + 2·skip, … (mod m)`,
//! derived from a hash of its address and port (see [`BackendKey`]) and a seed. Backends
//! take turns; on its turn a backend claims the first slot in its order that is still
//! free. With equal weights every backend plays once per round, in a canonical order (by
//! hash, not by list position), until the table is full, so every backend ends with
//! `floor(m/n)` or `ceil(m/n)` slots — as even as `m` slots can be.
//!
//! Weights: backend `i` gets a quota of exactly `m · wᵢ / W` slots rounded by largest
//! remainder (so its share is within one slot of its weight's share), and plays its `k`-th
//! turn at virtual time `k / wᵢ`. With equal weights that is the round-robin above.
//! Weight 0 keeps a backend known but out of the table.
//!
//! The table is a function of the *set* of backends, their weights and the seed only: the
//! order of the list, the ids and the host play no part (ids only label the slots), so
//! every load balancer behind one ECMP group computes the same table.
//!
//! # Disruption: the lockstep variant and anchored tables
//!
//! When one of `n` backends leaves, its slots must move, and in Maglev some slots also
//! move between the backends that stay ("collateral" moves, see [`disruption`]): for
//! `m = 65537`, removing one of 100 backends changes 1.56% of the slots where 1% must
//! change, one of 1,000 changes 0.68% where 0.1% must.
//!
//! [`Variant::Lockstep`] changes how backends claim slots: on its turn a backend looks
//! only at its next choice and waits for its next turn if that slot is taken, instead of
//! walking on to the next free one. Slots then go to (backend, position) pairs in order of
//! position, a stable matching that does not depend on the order of events, and about 45%
//! fewer slots move between the backends that stay (1.29% and 0.44% in the cases above),
//! with the same exact balance and the same cost. Its tables differ from classic ones:
//! all hosts of a VIP must use the same variant.
//!
//! [`build_anchored`] removes collateral moves altogether for the common case of a
//! backend that is configured but not serving (failed health check, drained): it builds
//! the table of the whole configured list, then hands only the slots of non-serving
//! backends to the serving ones, each up to its exact share. A configured list every host
//! shares, not the history of one host, is what the table rests on, so it stays
//! deterministic across hosts, and hosts that disagree about one backend's health
//! disagree only about that backend's slots.
//!
//! # Cost
//!
//! A build is dominated by the end of the fill, where few slots are free and a backend
//! steps over many taken ones. For 1,000 backends and 65,537 slots it takes about 0.8 to
//! 1.2 ms on the 2-core test machine (AVX-512), either variant; without AVX-512 about 1.4
//! ms (classic) and 2.3 ms (lockstep). See `benches/maglev.rs`, and the `fill` module for
//! what keeps it there.

mod fill;
mod hash;
mod lockstep;
mod order;
mod quality;
mod simd;
mod size;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use fill::{Board, Filler, Walker};
use order::{Ranked, apportion, group, rank};
pub use quality::{Disruption, Quality, disruption, quality};
use size::check_prime_size;
pub use size::{check_table_size, is_prime, next_prime};

/// The usual table size: a prime, enough for 655 backends at 100 slots each.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// The largest table size accepted (the largest prime below 2^24, 64 MiB per table).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// Slots per backend a table must have at least: below that, one backend more or less
/// moves a noticeable share of the flows of the others, and weights are rounded coarsely.
pub const MIN_SLOTS_PER_BACKEND: u32 = 100;

/// Identity of a backend for hashing: the same on every host, independent of list order
/// and of the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Address the balancer forwards to.
    pub addr: IpAddr,
    /// Port, or 0 when the backend is addressed only by its address.
    pub port: u16,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where the backend sits in every backend's preference order.
    pub key: BackendKey,
    /// Relative share of the table; 0 = known but takes no new flows.
    pub weight: u32,
    /// The value written into its slots (the data plane's backend id); 0 is invalid.
    pub id: u32,
}

/// Errors of table sizes and backend lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("maglev table size {m} is not prime; use {suggested}")]
    NotPrime { m: u32, suggested: u32 },
    #[error(
        "maglev table size {m} is too small for {backends} backends (at least \
         {MIN_SLOTS_PER_BACKEND} slots per backend are needed); use {suggested}"
    )]
    TooSmall {
        m: u32,
        backends: usize,
        suggested: u32,
    },
    #[error("maglev table size {m} is larger than the maximum {MAX_TABLE_SIZE}")]
    TooLarge { m: u32 },
    #[error(
        "{backends} backends need a maglev table of at least {MIN_SLOTS_PER_BACKEND} slots \
         each, more than the maximum size {MAX_TABLE_SIZE}; split them over fewer per VIP"
    )]
    TooManyBackends { backends: usize },
    #[error("backend {key} is listed twice")]
    DuplicateBackend { key: BackendKey },
    #[error("backend {key} has id 0; backend ids start at 1")]
    ZeroId { key: BackendKey },
    #[error("backend id {id} is given to both {first} and {second}")]
    DuplicateId {
        id: u32,
        first: BackendKey,
        second: BackendKey,
    },
}

/// Builds the weighted Maglev table of size `m` for `entries` under `seed`.
///
/// `m` must pass [`check_table_size`] for `entries.len()` backends (weight-0 backends
/// count: they may come back). Keys and ids must be unique and ids non-zero. The result
/// has `m` slots; every slot holds the id of a backend of non-zero weight, each such
/// backend holding `m · weight / total weight` slots rounded to a neighbouring integer;
/// if no backend has a weight, every slot is 0.
pub fn build(entries: &[Entry], m: u32, seed: u64) -> Result<Vec<u32>, MaglevError> {
    Builder::new(m, seed).build(entries)
}

/// The table of the backends of `entries` for which `serving` holds, anchored on all of
/// them: the table of [`build`] for the whole list, in which only the slots of backends
/// that are not serving are handed to serving ones, each up to its exact weighted share.
///
/// With every backend serving this is [`build`]. When a backend stops serving only its
/// own slots move (no collateral moves); when it comes back the table is again that of
/// [`build`]. Hosts agree on the table as long as they agree on the list and on which
/// backends serve. Removing a backend from the list, or changing a weight, changes the
/// anchor and moves as many slots as [`build`] does, so a drain that should move nothing
/// but the drained backend's flows is best expressed as "configured with its weight, not
/// serving" rather than as weight 0.
pub fn build_anchored(
    entries: &[Entry],
    m: u32,
    seed: u64,
    serving: impl Fn(&Entry) -> bool,
) -> Result<Vec<u32>, MaglevError> {
    Builder::new(m, seed).build_anchored(entries, serving)
}

crate::words::words! {
/// How backends claim slots. Both give every backend its exact weighted share and depend
/// only on the set of backends and the seed; they differ in how many slots move between
/// the backends that stay when one leaves the list. (Configurations default to lockstep:
/// `config::DEFAULT_MAGLEV_VARIANT`.)
pub enum Variant expecting "\"lockstep\" or \"classic\"" {
    /// Maglev as published: on its turn a backend claims the next free slot in its order.
    /// Removing one of 100 backends moves about 1.56% of the slots, 0.56% between backends
    /// that stay; one of 1,000 about 0.68%, 0.58% between those that stay (m = 65,537).
    Classic = "classic",
    /// On its turn a backend looks at its next choice only, and claims it if free (see
    /// the `lockstep` module): slots go to (backend, position) pairs in order of
    /// position, so a backend's good slots do not depend on how others fared earlier.
    /// Removing one of 100 backends moves about 1.31% of the slots (0.31% collateral), one
    /// of 1,000 about 0.43% (0.33% collateral): about 45% fewer collateral moves than
    /// [`Variant::Classic`], with the same balance. Its tables differ from classic ones.
    Lockstep = "lockstep",
}
}

/// Table size, seed, variant and checks, for building several tables alike; [`build`]
/// and [`build_anchored`] are shorthands for the classic variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builder {
    m: u32,
    seed: u64,
    variant: Variant,
    size_rule: bool,
}

impl Builder {
    /// Classic tables of size `m` under `seed`, with every check of
    /// [`check_table_size`].
    pub fn new(m: u32, seed: u64) -> Self {
        Self {
            m,
            seed,
            variant: Variant::Classic,
            size_rule: true,
        }
    }

    /// Tables built the way `variant` says.
    pub fn variant(self, variant: Variant) -> Self {
        Self { variant, ..self }
    }

    /// Drops the rule of [`MIN_SLOTS_PER_BACKEND`] slots per backend (`m` must still be a
    /// prime within [`MAX_TABLE_SIZE`]): for benchmarks and experiments with more
    /// backends than a table of this size should serve. Such tables are built the same
    /// way; they are only coarser.
    pub fn without_size_rule(self) -> Self {
        Self {
            size_rule: false,
            ..self
        }
    }

    /// See [`build`].
    pub fn build(&self, entries: &[Entry]) -> Result<Vec<u32>, MaglevError> {
        let ranked = self.prepare(entries)?;
        Ok(fill_base(entries, &ranked, self.m, self.variant, Label::Id).0)
    }

    /// See [`build_anchored`].
    pub fn build_anchored(
        &self,
        entries: &[Entry],
        serving: impl Fn(&Entry) -> bool,
    ) -> Result<Vec<u32>, MaglevError> {
        let m = self.m;
        let ranked = self.prepare(entries)?;
        // The anchor labels each slot with 1 + the index of its backend in `entries`.
        let (mut table, base) = fill_base(entries, &ranked, m, self.variant, Label::Index);
        let up: Vec<bool> = entries.iter().map(|e| e.weight > 0 && serving(e)).collect();
        let serving_ranked: Vec<&Ranked> = ranked.iter().filter(|r| up[r.index]).collect();
        if serving_ranked.is_empty() {
            return Ok(vec![0; m as usize]);
        }

        // Each serving backend's share of the whole table among the serving ones; the
        // spare slots of the rounding go first to those that already hold more than the
        // rounded-down share in the anchor, so that none has to give a slot away if it
        // can be helped.
        let weights: Vec<u64> = serving_ranked
            .iter()
            .map(|r| u64::from(entries[r.index].weight))
            .collect();
        let targets = apportion(m, &weights, |i, floor| {
            base[serving_ranked[i].index] > floor
        });
        let mut surplus = vec![0u32; entries.len()];
        let mut deficit = vec![0u32; entries.len()];
        for (r, &target) in serving_ranked.iter().zip(&targets) {
            let had = base[r.index];
            surplus[r.index] = had.saturating_sub(target);
            deficit[r.index] = target.saturating_sub(had);
        }
        if deficit.iter().all(|&d| d == 0) {
            // Everyone serves, or those who do not hold no slots.
            return Ok(relabel(table, entries));
        }

        // Label l (entry l - 1) stays if serving, else becomes 0: one lookup, no branch.
        let kept: Vec<u32> = std::iter::once(0)
            .chain((0..entries.len()).map(|i| if up[i] { label_of(i) } else { 0 }))
            .collect();
        for slot in &mut table {
            *slot = kept[*slot as usize];
        }
        for r in serving_ranked.iter().filter(|r| surplus[r.index] > 0) {
            release_last_claimed(&mut table, r, surplus[r.index], m);
        }

        // Backends short of their share claim the freed slots Maglev-style: each takes
        // the first free slot in its own order, largest deficits first in every round.
        let mut takers: Vec<&&Ranked> = serving_ranked
            .iter()
            .filter(|r| deficit[r.index] > 0)
            .collect();
        takers.sort_by_key(|r| std::cmp::Reverse(deficit[r.index]));
        let mut walkers: Vec<Walker> = takers
            .iter()
            .map(|r| {
                let label = label_of(r.index);
                Walker::new(r.place.offset, r.place.skip, label, deficit[r.index])
            })
            .collect();
        let needs: Vec<u32> = takers.iter().map(|r| deficit[r.index]).collect();
        let weights: Vec<u64> = needs.iter().map(|&d| u64::from(d)).collect();
        let mut filler = Filler::from_table(table);
        filler.run(&mut walkers, &group(&weights, &needs));
        debug_assert_eq!(filler.free(), 0);
        Ok(relabel(filler.into_table(), entries))
    }

    /// Checks the size and the list, and puts the list in canonical order.
    fn prepare(&self, entries: &[Entry]) -> Result<Vec<Ranked>, MaglevError> {
        if self.size_rule {
            check_table_size(self.m, entries.len())?;
        } else {
            check_prime_size(self.m)?;
        }
        rank(entries, self.m, self.seed)
    }
}

/// What a table under construction holds in its slots.
#[derive(Clone, Copy)]
enum Label {
    /// The backend's id.
    Id,
    /// 1 + the backend's index in the caller's list (see [`label_of`]).
    Index,
}

/// Fills a table with the backends of non-zero weight, and returns it with every entry's
/// number of slots.
fn fill_base(
    entries: &[Entry],
    ranked: &[Ranked],
    m: u32,
    variant: Variant,
    label: Label,
) -> (Vec<u32>, Vec<u32>) {
    let mut quotas = vec![0u32; entries.len()];
    let active: Vec<&Ranked> = ranked
        .iter()
        .filter(|r| entries[r.index].weight > 0)
        .collect();
    if active.is_empty() {
        return (vec![0; m as usize], quotas);
    }
    let weights: Vec<u64> = active
        .iter()
        .map(|r| u64::from(entries[r.index].weight))
        .collect();
    let shares = apportion(m, &weights, |_, _| false);
    for (r, &q) in active.iter().zip(&shares) {
        quotas[r.index] = q;
    }
    // Heavier backends first; within a weight, those with a spare slot (a prefix in rank
    // order, as equal weights have equal remainders) before the others.
    let mut order: Vec<usize> = (0..active.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
    let mut walkers: Vec<Walker> = order
        .iter()
        .map(|&i| {
            let r = active[i];
            let l = match label {
                Label::Id => entries[r.index].id,
                Label::Index => label_of(r.index),
            };
            Walker::new(r.place.offset, r.place.skip, l, shares[i])
        })
        .collect();
    let classes = group(
        &order.iter().map(|&i| weights[i]).collect::<Vec<_>>(),
        &order.iter().map(|&i| shares[i]).collect::<Vec<_>>(),
    );
    let table = match variant {
        Variant::Classic => {
            let mut filler = Filler::new(m);
            filler.run(&mut walkers, &classes);
            debug_assert_eq!(filler.free(), 0);
            filler.into_table()
        }
        Variant::Lockstep => {
            let mut board = Board::new(m);
            lockstep::run(&mut board, m, &walkers, &classes);
            board.into_table()
        }
    };
    (table, quotas)
}

/// The internal label of entry `index`.
fn label_of(index: usize) -> u32 {
    u32::try_from(index + 1).expect("fewer than 2^32 entries")
}

/// Replaces internal labels with the entries' ids.
fn relabel(mut table: Vec<u32>, entries: &[Entry]) -> Vec<u32> {
    let ids: Vec<u32> = std::iter::once(0)
        .chain(entries.iter().map(|e| e.id))
        .collect();
    for slot in &mut table {
        *slot = ids[*slot as usize];
    }
    table
}

/// Frees the `count` slots of backend `r` that come last in its preference order (those it
/// would have claimed last).
fn release_last_claimed(table: &mut [u32], r: &Ranked, count: u32, m: u32) {
    let label = label_of(r.index);
    let inv = fill::mod_inverse(r.place.skip, m);
    let mut mine: Vec<(u64, usize)> = table
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l == label)
        .map(|(s, _)| {
            let ahead = (s as u64 + u64::from(m) - u64::from(r.place.offset)) % u64::from(m);
            (ahead * u64::from(inv) % u64::from(m), s)
        })
        .collect();
    mine.sort_unstable_by(|a, b| b.cmp(a));
    for &(_, s) in mine.iter().take(count as usize) {
        table[s] = 0;
    }
}
