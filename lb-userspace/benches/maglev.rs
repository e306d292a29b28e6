//! Maglev table builds: time to build a 65,537-slot table for 100, 1,000 and 10,000
//! backends, and — printed first — the quality of the tables (balance, weighted shares,
//! disruption when one backend goes), for the classic and the anchored builders.
//!
//! `cargo bench -p xlb --bench maglev`; `-- build` runs only the timings.
//!
//! With 100 slots per backend required, a 65,537-slot table serves at most 655 backends,
//! so the 1,000- and 10,000-backend cases go through `Builder::without_size_rule`, which
//! builds the same way without that check.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
};

use criterion::{BenchmarkId, Criterion, Throughput};
use xlb::maglev::{self, BackendKey, Builder, DEFAULT_TABLE_SIZE, Entry, Variant};

const M: u32 = DEFAULT_TABLE_SIZE;

/// `n` backends in 198.18.0.0/15 with weights from `weight(i)` and ids 1..=n.
fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            key: BackendKey {
                addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)),
                port: 80,
            },
            weight: weight(i),
            id: i + 1,
        })
        .collect()
}

fn builder(variant: Variant) -> Builder {
    Builder::new(M, 0).without_size_rule().variant(variant)
}

/// Mean disruption of removing each of `trials` backends spread over the list: from the
/// list, and from service with the anchored builder (it stays configured).
fn removal(variant: Variant, entries: &[Entry], trials: u32) -> [f64; 4] {
    let b = builder(variant);
    let full = b.build(entries).expect("valid");
    let mut sums = [0.0; 4];
    let n = entries.len() as u32;
    for k in 0..trials {
        let gone = (k * (n / trials) + k) % n;
        let mut rest = entries.to_vec();
        rest.remove(gone as usize);
        let removed = maglev::disruption(&full, &b.build(&rest).expect("valid"));
        let gone_id = entries[gone as usize].id;
        let anchored = b
            .build_anchored(entries, |e| e.id != gone_id)
            .expect("valid");
        let anchored = maglev::disruption(&full, &anchored);
        for (s, v) in sums.iter_mut().zip([
            removed.changed_fraction(),
            removed.collateral_fraction(),
            anchored.changed_fraction(),
            anchored.collateral_fraction(),
        ]) {
            *s += 100.0 * v / f64::from(trials);
        }
    }
    sums
}

/// Prints balance, weighted shares and disruption.
fn report() {
    println!("maglev table quality, m = {M}; disruption: mean of 20 single removals, % of slots");
    println!(
        "{:<9} {:>5} {:>9} {:>9} {:>11} {:>15} {:>11}",
        "variant", "n", "max/mean", "moved", "collateral", "anchored moved", "collateral"
    );
    for variant in [Variant::Classic, Variant::Lockstep] {
        for n in [100, 1_000] {
            let entries = backends(n, |_| 1);
            let table = builder(variant).build(&entries).expect("valid");
            let q = maglev::quality(&table, &entries);
            let [c, cc, a, ac] = removal(variant, &entries, 20);
            println!(
                "{:<9} {n:>5} {:>9.5} {c:>8.3}% {cc:>10.3}% {a:>14.3}% {ac:>10.3}%",
                format!("{variant:?}"),
                q.max_over_fair
            );
        }
    }
    for variant in [Variant::Classic, Variant::Lockstep] {
        for n in [100, 655] {
            let entries = backends(n, |i| 1 + i % 4);
            let table = builder(variant).build(&entries).expect("valid");
            let q = maglev::quality(&table, &entries);
            println!(
                "{variant:?}, weights 1..4, n = {n}: largest share error {:.3}% of the \
                 backend's share ({:.2} slots)",
                100.0 * q.max_relative_error,
                q.max_slot_error
            );
        }
    }
    println!();
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.throughput(Throughput::Elements(u64::from(M)));
    for variant in [Variant::Classic, Variant::Lockstep] {
        let name = format!("{variant:?}").to_lowercase();
        let b = builder(variant);
        for n in [100, 1_000, 10_000] {
            let entries = backends(n, |_| 1);
            g.bench_with_input(BenchmarkId::new(&name, n), &entries, |bench, e| {
                bench.iter(|| b.build(black_box(e)).expect("valid"));
            });
        }
        let entries = backends(1_000, |i| 1 + i % 4);
        g.bench_with_input(
            BenchmarkId::new(format!("{name}_weighted"), 1_000),
            &entries,
            |bench, e| bench.iter(|| b.build(black_box(e)).expect("valid")),
        );
        let entries = backends(1_000, |_| 1);
        g.bench_with_input(
            BenchmarkId::new(format!("{name}_anchored_one_down"), 1_000),
            &entries,
            |bench, e| {
                bench.iter(|| {
                    b.build_anchored(black_box(e), |b| b.id != 500)
                        .expect("valid")
                })
            },
        );
    }
    g.finish();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and only checks
    // that the benchmarks run.
    if std::env::args().any(|a| a == "--bench") {
        report();
    }
    let mut c = Criterion::default().configure_from_args();
    bench_build(&mut c);
    c.final_summary();
}
