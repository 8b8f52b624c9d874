//! A 20,000-pair setup.bin (the size Intel's notes quote for a 10 MB key): build the
//! records and encode the file. Target: under 1 s.

use criterion::{criterion_group, criterion_main, Criterion};
use setupbin::{encode_ipv4, var, Entry, Record, SetupBin};

fn twenty_thousand(c: &mut Criterion) {
    let mut group = c.benchmark_group("setupbin");
    group.sample_size(10);
    group.bench_function("encode 20000 records", |b| {
        b.iter(|| {
            let mut file = SetupBin::new(2, true).unwrap();
            file.records = (1..=20_000u32)
                .map(|n| Record {
                    number: n,
                    valid: true,
                    scrambled: true,
                    entries: vec![
                        Entry::new(var::CURRENT_MEBX_PASSWORD, *b"admin"),
                        Entry::new(var::NEW_MEBX_PASSWORD, *b"Str0ng!Provisioning"),
                        Entry::new(var::MANAGEABILITY_SELECTION, [1]),
                        Entry::new(var::PID, format!("{n:08}").into_bytes()),
                        Entry::new(var::PPS, vec![b'A'; 32]),
                        Entry::new(var::PROVISIONING_MODE, [1]),
                        Entry::new(var::SERVER_IPV4, encode_ipv4([10, 0, 0, 1].into())),
                        Entry::new(var::SERVER_PORT, 9971u16.to_le_bytes()),
                    ],
                })
                .collect();
            file.encode().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, twenty_thousand);
criterion_main!(benches);
