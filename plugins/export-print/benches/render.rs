//! A 5,000-pair key sheet rendered through the plugin's boundary. Target: under 5 s.

use abi_stable::std_types::{ROption, RString};
use criterion::{criterion_group, criterion_main, Criterion};
use export_print::ExportPrint;
use vprov_sdk::testing::FakeHost;
use vprov_sdk::{ExportRequest, KeyPair};

fn five_thousand(c: &mut Criterion) {
    let host = FakeHost::default();
    let plugin = host
        .instantiate::<ExportPrint>("", &std::env::temp_dir())
        .unwrap();
    let request = ExportRequest {
        format: "pdf".into(),
        options_json: "{}".into(),
        batch_id: 1,
        batch_comment: "bench".into(),
        batch_created_unix_ms: 1_764_000_000_000,
        server_address: "10.0.0.5".into(),
        server_port: 9971,
        provisioning_password: ROption::RNone,
        destination: ROption::RNone,
        pairs: (0..5000)
            .map(|i| KeyPair {
                pid: format!("{i:08}").into(),
                pps: RString::from("NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ"),
            })
            .collect(),
    };
    let mut group = c.benchmark_group("export-print");
    group.sample_size(10);
    group.bench_function("pdf 5000 pairs", |b| {
        b.iter(|| plugin.export_keys(&request).unwrap())
    });
    group.finish();
}

criterion_group!(benches, five_thousand);
criterion_main!(benches);
