//! Decoding cost per event: the largest share of a consumer member's CPU
//! (see docs/benchmarks.md). Run: `cargo bench -p weir-schemas`.

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use weir_schemas::{decode, encode, AccessEvent, HealthEvent};

fn codec(c: &mut Criterion) {
    let health = encode(&HealthEvent::example("edge-042", 7, Utc::now())).expect("valid");
    let access = encode(&AccessEvent::example("edge-042", 7, Utc::now())).expect("valid");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("health", |b| {
        b.iter(|| decode::<HealthEvent>(Some(black_box(&health))).expect("decodes"))
    });
    g.bench_function("access", |b| {
        b.iter(|| decode::<AccessEvent>(Some(black_box(&access))).expect("decodes"))
    });
    g.bench_function("not_json", |b| {
        b.iter(|| decode::<AccessEvent>(Some(black_box(b"garbage"))).is_err())
    });
    g.finish();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("access", |b| {
        b.iter_batched(
            || AccessEvent::example("edge-042", 7, Utc::now()),
            |e| encode(black_box(&e)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
