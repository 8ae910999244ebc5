//! A batch of access events as a member handles it before its one upsert:
//! decoding each record (JSON, validation) and pre-aggregating the batch
//! into rollup rows, sorted by the table's key. Run:
//! `cargo bench -p weir-consumers --bench rollup`.

use chrono::{TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use weir_consumers::access::{rollup, rollup_rows};
use weir_schemas::{decode, encode, AccessEvent};

fn batch(n: usize) -> Vec<AccessEvent> {
    let start = Utc::now();
    (0..n)
        .map(|i| {
            let mut e = AccessEvent::example(
                &format!("edge-{:03}", i % 50),
                i as u64 + 1,
                start + TimeDelta::milliseconds(i as i64 * 10),
            );
            // A skewed popularity: a few hot objects, a long tail.
            let obj = if i % 4 == 0 { i % 5000 } else { i % 20 };
            e.object_key = format!("videos/object-{obj:05}.mp4");
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = batch(5000);
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| encode(e).expect("valid")).collect();
    let mut g = c.benchmark_group("rollup");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("5000_events", |b| {
        b.iter(|| rollup(black_box(events.iter())).len())
    });
    g.bench_function("5000_events_sorted_rows", |b| {
        b.iter(|| rollup_rows(black_box(events.iter())).len())
    });
    // What a member does per batch before PostgreSQL: decode every record,
    // then merge into sorted rows.
    g.bench_function("decode_and_merge_5000_records", |b| {
        b.iter(|| {
            let decoded: Vec<AccessEvent> = black_box(&payloads)
                .iter()
                .map(|p| decode::<AccessEvent>(Some(p)).expect("decodes"))
                .collect();
            rollup_rows(decoded.iter()).len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
