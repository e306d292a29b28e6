//! How good a table is: how close each backend's share is to its weight's share, and how
//! many slots change between two tables. Used by the tests, the benchmark report and
//! anyone who wants to see what a configuration change will cost.

use std::collections::{HashMap, HashSet};

use super::Entry;

/// Balance of a table against the weights of its backends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quality {
    /// Slots in the table.
    pub slots: u32,
    /// Slots holding 0 (no backend).
    pub empty: u32,
    /// Slots holding an id that is not a backend of non-zero weight.
    pub strays: u32,
    /// Largest `slots held / fair share` over the backends of non-zero weight, where the
    /// fair share is `slots · weight / total weight`. With `n` equal weights the best any
    /// table can do is `ceil(m / n) / (m / n)`.
    pub max_over_fair: f64,
    /// Smallest `slots held / fair share`.
    pub min_over_fair: f64,
    /// Largest `|slots held − fair share|`, in slots.
    pub max_slot_error: f64,
    /// Largest `|slots held − fair share| / fair share`: the relative error of a
    /// backend's share of new flows.
    pub max_relative_error: f64,
}

/// Measures `table` against the weights of `entries` (backends of weight 0 should hold
/// nothing and are not counted).
pub fn quality(table: &[u32], entries: &[Entry]) -> Quality {
    let total: u64 = entries.iter().map(|e| u64::from(e.weight)).sum();
    let mut held: HashMap<u32, u32> = entries
        .iter()
        .filter(|e| e.weight > 0)
        .map(|e| (e.id, 0))
        .collect();
    let (mut empty, mut strays) = (0, 0);
    for &id in table {
        match held.get_mut(&id) {
            Some(n) => *n += 1,
            None if id == 0 => empty += 1,
            None => strays += 1,
        }
    }
    let mut q = Quality {
        slots: u32::try_from(table.len()).expect("table size fits in u32"),
        empty,
        strays,
        max_over_fair: 0.0,
        min_over_fair: f64::INFINITY,
        max_slot_error: 0.0,
        max_relative_error: 0.0,
    };
    for e in entries.iter().filter(|e| e.weight > 0) {
        let fair = table.len() as f64 * f64::from(e.weight) / total as f64;
        let got = f64::from(held[&e.id]);
        q.max_over_fair = q.max_over_fair.max(got / fair);
        q.min_over_fair = q.min_over_fair.min(got / fair);
        q.max_slot_error = q.max_slot_error.max((got - fair).abs());
        q.max_relative_error = q.max_relative_error.max((got - fair).abs() / fair);
    }
    if q.min_over_fair.is_infinite() {
        q.min_over_fair = 0.0;
    }
    q
}

/// What changes between two tables of the same size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disruption {
    /// Slots in each table.
    pub slots: u32,
    /// Slots whose backend differs.
    pub changed: u32,
    /// Changed slots that move between two backends present in both tables: moves no
    /// change of membership forced (when a backend leaves, its own slots must move; these
    /// are the others).
    pub collateral: u32,
}

impl Disruption {
    /// Share of the table that changed, in `[0, 1]`.
    pub fn changed_fraction(&self) -> f64 {
        f64::from(self.changed) / f64::from(self.slots.max(1))
    }

    /// Share of the table that moved between surviving backends, in `[0, 1]`.
    pub fn collateral_fraction(&self) -> f64 {
        f64::from(self.collateral) / f64::from(self.slots.max(1))
    }
}

/// Compares two tables of the same size slot by slot.
///
/// # Panics
///
/// If the tables differ in size.
pub fn disruption(before: &[u32], after: &[u32]) -> Disruption {
    assert_eq!(
        before.len(),
        after.len(),
        "tables of different sizes cannot be compared slot by slot"
    );
    let in_before: HashSet<u32> = before.iter().copied().filter(|&id| id != 0).collect();
    let in_after: HashSet<u32> = after.iter().copied().filter(|&id| id != 0).collect();
    let mut d = Disruption {
        slots: u32::try_from(before.len()).expect("table size fits in u32"),
        changed: 0,
        collateral: 0,
    };
    for (&b, &a) in before.iter().zip(after) {
        if a != b {
            d.changed += 1;
            if in_after.contains(&b) && in_before.contains(&a) {
                d.collateral += 1;
            }
        }
    }
    d
}
