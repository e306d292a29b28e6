//! Properties of the tables: known answers, determinism, balance, weights, disruption,
//! validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

pub(super) fn v4(i: u32) -> BackendKey {
    BackendKey {
        addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)), // 198.18.0.0/15
        port: 8080,
    }
}

/// `n` backends of weight 1 with ids 1..=n.
pub(super) fn equal(n: u32) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            key: v4(i),
            weight: 1,
            id: i + 1,
        })
        .collect()
}

/// `n` backends of weights 1, 2, 3, 1, 2, 3, ... with ids 1..=n.
pub(super) fn weighted(n: u32) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            key: v4(i),
            weight: 1 + i % 3,
            id: i + 1,
        })
        .collect()
}

/// Slots held by `id`.
pub(super) fn count(table: &[u32], id: u32) -> usize {
    table.iter().filter(|&&v| v == id).count()
}

/// FNV-1a over the table's little-endian bytes: a stable fingerprint for known answers.
pub(super) fn fingerprint(table: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.iter().flat_map(|v| v.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(super) fn unchecked(m: u32) -> Builder {
    Builder::new(m, 0).without_size_rule()
}

/// Every backend of non-zero weight holds its exact share rounded up or down, and nothing
/// else is in the table.
pub(super) fn assert_exact_shares(table: &[u32], entries: &[Entry]) {
    let total: u64 = entries.iter().map(|e| u64::from(e.weight)).sum();
    let q = quality(table, entries);
    assert_eq!(
        q.strays, 0,
        "ids in the table that are not weighted backends"
    );
    if total == 0 {
        assert!(table.iter().all(|&v| v == 0));
        return;
    }
    assert_eq!(q.empty, 0, "empty slots with weighted backends present");
    assert!(
        q.max_slot_error < 1.0,
        "a share is off by a slot or more: {q:?}"
    );
    for e in entries.iter().filter(|e| e.weight == 0) {
        assert_eq!(
            count(table, e.id),
            0,
            "weight-0 backend {} in the table",
            e.key
        );
    }
}

// ---- known answers ----

/// The placement hash decides every flow's backend on every host: a change of these
/// values is a change of behaviour across a fleet and must be deliberate.
#[test]
fn known_hashes() {
    let v6 = BackendKey {
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        port: 443,
    };
    assert_eq!(hash::key_hash(&v4(0), 0), 0x19a6_b065_6a20_9316);
    assert_eq!(hash::key_hash(&v4(1), 0), 0xc68e_7dfa_ad77_ce9c);
    assert_eq!(hash::key_hash(&v4(0), 1), 0x3477_3c43_d233_8cdc);
    assert_eq!(hash::key_hash(&v6, 0), 0x95ce_9b7f_423f_e2ee);
    let p = hash::Placement::new(&v4(0), DEFAULT_TABLE_SIZE, 0);
    assert_eq!((p.offset, p.skip), (6_566, 27_169));
}

#[test]
fn known_small_table() {
    let entries = [
        Entry {
            key: v4(1),
            weight: 1,
            id: 1,
        },
        Entry {
            key: v4(2),
            weight: 2,
            id: 2,
        },
        Entry {
            key: v4(3),
            weight: 1,
            id: 3,
        },
    ];
    let table = build(&entries, 307, 0).expect("valid");
    assert_eq!(
        table[..32],
        [
            2, 1, 1, 1, 3, 3, 2, 2, 2, 2, 2, 2, 3, 1, 1, 3, 2, 2, 2, 3, 2, 2, 1, 1, 1, 3, 3, 2, 2,
            2, 2, 2
        ]
    );
    assert_eq!(fingerprint(&table), 0xb683_e10e_f209_3be5);
}

/// Also with the plain loops only, as on a CPU without AVX-512.
#[test]
fn known_large_tables() {
    let m = DEFAULT_TABLE_SIZE;
    let entries = equal(100);
    let lockstep = Builder::new(m, 0).variant(Variant::Lockstep);
    let some_down = |e: &Entry| e.id % 10 != 3;
    for narrow in [false, true] {
        fill::NARROW.set(narrow);
        let tables = [
            build(&entries, m, 0),
            build(&entries, m, 42),
            build_anchored(&entries, m, 0, some_down),
            lockstep.build(&entries),
            lockstep.build_anchored(&entries, some_down),
        ];
        let fingerprints = tables.map(|t| fingerprint(&t.expect("valid")));
        assert_eq!(
            fingerprints,
            [
                0xbed7_2de2_2a4c_9833,
                0xd25d_d212_5511_fd06,
                0x6b44_1bb9_4dc0_68cc,
                0xe4e6_ea3b_b20f_b773,
                0x5a3d_9f9f_2948_d2ec,
            ],
            "narrow: {narrow}"
        );
    }
}

// ---- determinism ----

pub(super) fn arb_entries(max: usize) -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::btree_map((any::<bool>(), any::<u32>(), any::<u16>()), 0u32..5, 1..max)
        .prop_map(|backends| {
            backends
                .into_iter()
                .enumerate()
                .map(|(i, ((six, a, port), weight))| Entry {
                    key: BackendKey {
                        addr: if six {
                            IpAddr::V6(Ipv6Addr::new(
                                0x2001,
                                0xdb8,
                                0,
                                0,
                                0,
                                0,
                                (a >> 16) as u16,
                                a as u16,
                            ))
                        } else {
                            IpAddr::V4(Ipv4Addr::from(a))
                        },
                        port,
                    },
                    weight,
                    id: i as u32 + 1,
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The table depends on the set of backends, not on the order of the list nor on the
    /// ids (which only label the slots).
    #[test]
    fn independent_of_order_and_ids(
        entries in arb_entries(40),
        rotate in 0usize..40,
        id_base in 1u32..1_000_000,
    ) {
        let m = 5_003;
        let table = build(&entries, m, 7).expect("valid");
        let mut shuffled = entries.clone();
        shuffled.reverse();
        shuffled.rotate_left(rotate % entries.len());
        prop_assert_eq!(&build(&shuffled, m, 7).expect("valid"), &table);

        let relabelled: Vec<Entry> =
            entries.iter().map(|e| Entry { id: e.id + id_base, ..*e }).collect();
        let expected: Vec<u32> =
            table.iter().map(|&v| if v == 0 { 0 } else { v + id_base }).collect();
        prop_assert_eq!(build(&relabelled, m, 7).expect("valid"), expected);
    }

    /// No empty slot while a backend has weight, each share exact to a slot, weight-0
    /// backends absent.
    #[test]
    fn full_and_exact(entries in arb_entries(40), seed in any::<u64>()) {
        let table = build(&entries, 4_001, seed).expect("valid");
        assert_exact_shares(&table, &entries);
    }

    /// Taking backends out of service in the anchored table moves only their slots, the
    /// rest keep their backend, and the shares of the serving ones are exact.
    #[test]
    fn anchored_moves_only_the_slots_of_the_down(
        entries in arb_entries(40),
        down_mask in any::<u64>(),
        lockstep in any::<bool>(),
    ) {
        let m = 4_001;
        let is_down = |e: &Entry| down_mask >> (e.id % 64) & 1 == 1;
        let variant = if lockstep { Variant::Lockstep } else { Variant::Classic };
        let b = Builder::new(m, 3).variant(variant);
        let base = b.build(&entries).expect("valid");
        let table = b.build_anchored(&entries, |e| !is_down(e)).expect("valid");
        let serving: Vec<Entry> = entries
            .iter()
            .map(|e| Entry { weight: if is_down(e) { 0 } else { e.weight }, ..*e })
            .collect();
        assert_exact_shares(&table, &serving);
        let down_ids: Vec<u32> = entries.iter().filter(|e| is_down(e)).map(|e| e.id).collect();
        for (&b, &a) in base.iter().zip(&table) {
            prop_assert!(a == b || down_ids.contains(&b), "slot of a serving backend moved");
        }
        let mut shuffled = entries.clone();
        shuffled.reverse();
        prop_assert_eq!(b.build_anchored(&shuffled, |e| !is_down(e)).expect("valid"), table);
    }
}

/// Tiny tables (the scanning and event phases from the start), both variants.
#[test]
fn tiny_tables() {
    for m in [2, 3, 5, 7, 11, 13, 101] {
        for n in 1..=m.min(6) {
            let mut entries = equal(n);
            entries[0].weight = 2;
            for variant in [Variant::Classic, Variant::Lockstep] {
                let b = Builder::new(m, 1).without_size_rule().variant(variant);
                let table = b.build(&entries).expect("valid");
                assert_exact_shares(&table, &entries);
                let table = b.build_anchored(&entries, |e| e.id != 1).expect("valid");
                assert!(table.iter().all(|&v| v != 0 && v != 1) || n == 1);
            }
        }
    }
}

#[test]
fn seed_changes_the_table() {
    let entries = equal(10);
    assert_ne!(
        build(&entries, 1_009, 0).expect("valid"),
        build(&entries, 1_009, 1).expect("valid")
    );
}

#[test]
fn ipv4_and_ipv4_mapped_ipv6_are_different_backends() {
    let a = v4(5);
    let IpAddr::V4(addr) = a.addr else {
        unreachable!()
    };
    let b = BackendKey {
        addr: IpAddr::V6(addr.to_ipv6_mapped()),
        port: a.port,
    };
    assert_ne!(hash::key_hash(&a, 0), hash::key_hash(&b, 0));
    let entries = [
        Entry {
            key: a,
            weight: 1,
            id: 1,
        },
        Entry {
            key: b,
            weight: 1,
            id: 2,
        },
    ];
    assert!(build(&entries, 211, 0).is_ok());
}

// ---- balance and weights ----

/// With equal weights every backend holds floor(m/n) or ceil(m/n) slots: the best any
/// table of m slots can do (max/mean about 1.001 at n = 100, 1.007 at n = 1000).
#[test]
fn equal_weights_balance() {
    let m = DEFAULT_TABLE_SIZE;
    for n in [100, 1_000] {
        let entries = equal(n);
        let table = unchecked(m).build(&entries).expect("valid");
        let q = quality(&table, &entries);
        let mean = f64::from(m) / f64::from(n);
        let best = mean.ceil() / mean;
        assert!(q.max_over_fair <= best + 1e-12, "n = {n}: {q:?}");
        assert_eq!(q.empty, 0);
        assert_exact_shares(&table, &entries);
    }
}

#[test]
fn weighted_shares_within_one_percent() {
    let m = DEFAULT_TABLE_SIZE;
    let entries: Vec<Entry> = (0..100)
        .map(|i| Entry {
            key: v4(i),
            weight: 1 + i % 4,
            id: i + 1,
        })
        .collect();
    let table = build(&entries, m, 0).expect("valid");
    let q = quality(&table, &entries);
    assert!(q.max_relative_error < 0.01, "{q:?}");
    assert_exact_shares(&table, &entries);

    // Very uneven weights: still exact to a slot.
    let mut uneven = equal(50);
    uneven[0].weight = 1_000;
    uneven[1].weight = 250;
    uneven[2].weight = 0;
    let table = build(&uneven, m, 0).expect("valid");
    assert_exact_shares(&table, &uneven);
}

#[test]
fn weight_zero_and_empty_lists() {
    let mut entries = equal(5);
    entries[2].weight = 0;
    let table = build(&entries, 1_009, 0).expect("valid");
    assert_eq!(count(&table, 3), 0);
    assert_exact_shares(&table, &entries);

    for e in &mut entries {
        e.weight = 0;
    }
    assert_eq!(build(&entries, 1_009, 0).expect("valid"), vec![0; 1_009]);
    assert_eq!(build(&[], 1_009, 0).expect("valid"), vec![0; 1_009]);
}

#[test]
fn many_backends_in_a_large_table() {
    let m = 1_048_573;
    let entries = weighted(4_096);
    let table = build(&entries, m, 0).expect("valid");
    assert_eq!(table.len(), m as usize);
    assert_exact_shares(&table, &entries);
}

// ---- disruption ----

/// Mean disruption (changed, collateral) over removing backends `0, step, 2·step, …`
/// (`trials` of them) one at a time from `n`, for the `variant` table and for the
/// anchored table built on it.
fn removal(variant: Variant, n: u32, trials: u32, step: u32) -> [f64; 4] {
    let m = DEFAULT_TABLE_SIZE;
    let b = unchecked(m).variant(variant);
    let entries = equal(n);
    let full = b.build(&entries).expect("valid");
    let mut sums = [0.0; 4];
    for k in 0..trials {
        let gone = (k * step) % n;
        let mut rest = entries.clone();
        rest.remove(gone as usize);
        let plain = disruption(&full, &b.build(&rest).expect("valid"));
        let anchored = b
            .build_anchored(&entries, |e| e.id != gone + 1)
            .expect("valid");
        let anchored = disruption(&full, &anchored);
        assert_eq!(anchored.changed as usize, count(&full, gone + 1));
        for (s, v) in sums.iter_mut().zip([
            plain.changed_fraction(),
            plain.collateral_fraction(),
            anchored.changed_fraction(),
            anchored.collateral_fraction(),
        ]) {
            *s += v / f64::from(trials);
        }
    }
    println!("{variant:?}, n = {n}: {sums:?}");
    sums
}

/// Removing one of 100 backends: classic Maglev moves about 1.56% of the slots (1% must
/// move), lockstep about 1.3%, the anchored table exactly the removed backend's 1%.
#[test]
fn disruption_at_100() {
    let [changed, collateral, a_changed, a_collateral] = removal(Variant::Classic, 100, 3, 37);
    assert!(changed < 0.0165, "classic changed {changed}");
    assert!(collateral < 0.0065, "classic collateral {collateral}");
    assert!(
        (a_changed - 0.01).abs() < 0.0002,
        "anchored changed {a_changed}"
    );
    assert_eq!(a_collateral, 0.0);

    let [changed, collateral, a_changed, a_collateral] = removal(Variant::Lockstep, 100, 3, 37);
    assert!(changed < 0.0140, "lockstep changed {changed}");
    assert!(collateral < 0.0040, "lockstep collateral {collateral}");
    assert!(
        (a_changed - 0.01).abs() < 0.0002,
        "anchored changed {a_changed}"
    );
    assert_eq!(a_collateral, 0.0);
}

/// Removing one of 1000 backends: classic about 0.68% (0.1% must move), lockstep about
/// 0.44%, anchored 0.1%.
#[test]
fn disruption_at_1000() {
    let [changed, collateral, a_changed, a_collateral] = removal(Variant::Classic, 1_000, 2, 373);
    assert!(changed < 0.0075, "classic changed {changed}");
    assert!(collateral < 0.0066, "classic collateral {collateral}");
    assert!(
        (a_changed - 0.001).abs() < 0.0001,
        "anchored changed {a_changed}"
    );
    assert_eq!(a_collateral, 0.0);

    let [changed, collateral, a_changed, a_collateral] = removal(Variant::Lockstep, 1_000, 2, 373);
    assert!(changed < 0.0052, "lockstep changed {changed}");
    assert!(collateral < 0.0042, "lockstep collateral {collateral}");
    assert!(
        (a_changed - 0.001).abs() < 0.0001,
        "anchored changed {a_changed}"
    );
    assert_eq!(a_collateral, 0.0);
}

#[test]
fn anchored_edge_cases() {
    let entries = equal(20);
    let m = 2_003;
    let full = build(&entries, m, 5).expect("valid");
    assert_eq!(
        build_anchored(&entries, m, 5, |_| true).expect("valid"),
        full
    );
    assert_eq!(
        build_anchored(&entries, m, 5, |_| false).expect("valid"),
        vec![0; m as usize]
    );
    // All but one down: the survivor holds everything.
    let one = build_anchored(&entries, m, 5, |e| e.id == 7).expect("valid");
    assert!(one.iter().all(|&v| v == 7));
    // Down and weight 0 mixed.
    let mut mixed = entries.clone();
    mixed[3].weight = 0;
    let table = build_anchored(&mixed, m, 5, |e| e.id % 5 != 0).expect("valid");
    let serving: Vec<Entry> = mixed
        .iter()
        .map(|e| Entry {
            weight: if e.id % 5 == 0 { 0 } else { e.weight },
            ..*e
        })
        .collect();
    assert_exact_shares(&table, &serving);
}

// ---- validation ----

#[test]
fn table_size_rules() {
    assert_eq!(check_table_size(DEFAULT_TABLE_SIZE, 655), Ok(()));
    assert_eq!(
        check_table_size(65_536, 10).unwrap_err().to_string(),
        "maglev table size 65536 is not prime; use 65537"
    );
    assert_eq!(
        check_table_size(DEFAULT_TABLE_SIZE, 1_000)
            .unwrap_err()
            .to_string(),
        "maglev table size 65537 is too small for 1000 backends (at least 100 slots per \
         backend are needed); use 100003"
    );
    // Neither prime nor large enough: the suggestion satisfies both.
    assert_eq!(
        check_table_size(1_000, 50),
        Err(MaglevError::NotPrime {
            m: 1_000,
            suggested: 5_003
        })
    );
    assert_eq!(
        check_table_size(MAX_TABLE_SIZE + 2, 1),
        Err(MaglevError::TooLarge {
            m: MAX_TABLE_SIZE + 2
        })
    );
    assert!(matches!(
        check_table_size(DEFAULT_TABLE_SIZE, 200_000),
        Err(MaglevError::TooManyBackends { backends: 200_000 })
    ));
    assert!(check_table_size(1_048_573, 4_096).is_ok());
    assert!(matches!(
        build(&equal(3), 65_536, 0),
        Err(MaglevError::NotPrime { .. })
    ));
    assert!(matches!(
        build(&equal(1_000), DEFAULT_TABLE_SIZE, 0),
        Err(MaglevError::TooSmall { .. })
    ));
}

#[test]
fn primes() {
    let slow = |n: u32| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    for n in 0..20_000 {
        assert_eq!(is_prime(n), slow(n), "{n}");
    }
    for n in [
        DEFAULT_TABLE_SIZE,
        1_048_573,
        MAX_TABLE_SIZE,
        4_294_967_291,
        2_147_483_647,
    ] {
        assert!(is_prime(n), "{n}");
    }
    // Strong pseudoprimes to some of the bases.
    for n in [3_215_031_751, 25_326_001] {
        assert_eq!(is_prime(n), slow(n), "{n}");
    }
    assert_eq!(next_prime(0), 2);
    assert_eq!(next_prime(2), 2);
    assert_eq!(next_prime(65_536), 65_537);
    assert_eq!(next_prime(100_000), 100_003);
    assert_eq!(next_prime(u32::MAX), 4_294_967_291);
}

#[test]
fn list_errors() {
    let mut entries = equal(3);
    entries[1].key = entries[0].key;
    let err = build(&entries, 307, 0).unwrap_err();
    assert_eq!(err, MaglevError::DuplicateBackend { key: v4(0) });
    assert_eq!(err.to_string(), "backend 198.18.0.0:8080 is listed twice");

    let mut entries = equal(3);
    entries[2].id = 1;
    assert_eq!(
        build(&entries, 307, 0).unwrap_err().to_string(),
        "backend id 1 is given to both 198.18.0.0:8080 and 198.18.0.2:8080"
    );

    let mut entries = equal(3);
    entries[1].id = 0;
    assert_eq!(
        build(&entries, 307, 0).unwrap_err().to_string(),
        "backend 198.18.0.1:8080 has id 0; backend ids start at 1"
    );

    let v6 = BackendKey {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        port: 80,
    };
    let twice = [
        Entry {
            key: v6,
            weight: 1,
            id: 4,
        },
        Entry {
            key: v6,
            weight: 2,
            id: 9,
        },
    ];
    assert_eq!(
        build(&twice, 211, 0).unwrap_err().to_string(),
        "backend [::1]:80 is listed twice"
    );
}
