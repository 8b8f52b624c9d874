//! Benchmark: generate and store a batch of 100,000 PID/PPS pairs in a fresh store
//! (CSPRNG draws, check characters, AES-256-GCM sealing, SQLite inserts, commit).
//! Target: under 1 s on a 2-core machine. Run with `cargo bench -p vprov-core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vprov_core::store::{Store, StoreOptions};

fn generate_100k(c: &mut Criterion) {
    let mut group = c.benchmark_group("keys");
    group.sample_size(10);
    group.bench_function("generate_and_store_100k", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
                (dir, store)
            },
            |(dir, mut store)| {
                store
                    .generate_batch(100_000, None, "bench", |_| {})
                    .unwrap();
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, generate_100k);
criterion_main!(benches);
