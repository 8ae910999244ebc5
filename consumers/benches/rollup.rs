//! Pre-aggregation of a batch of access events into rollup rows, the work a
//! member does in memory before its one upsert. Run: `cargo bench -p weir-consumers`.

use chrono::{TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use weir_consumers::access::rollup;
use weir_schemas::AccessEvent;

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
    let mut g = c.benchmark_group("rollup");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("5000_events", |b| {
        b.iter(|| rollup(black_box(events.iter())).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
