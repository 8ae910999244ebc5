//! Runs `examples/custom_aggregator.rs` (its very code, included below)
//! against the real stack: an aggregator written outside this crate, with its
//! own table and migration, counts every event exactly once and stops
//! cleanly; a second run of the same group finds nothing left to do.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use weir_consumers::ConsumerConfig;
use weir_schemas::AccessEvent;
use weir_testkit::{eventually, unique};

#[allow(dead_code)] // its `main` is the example binary's, not the test's
#[path = "../examples/custom_aggregator.rs"]
mod custom_aggregator;

mod support;
use support::{kafka, produce, stored, Member, Rig};

async fn counts(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT node_id, requests FROM example_node_requests")
        .fetch_all(pool)
        .await
        .map(|rows| rows.into_iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_aggregator_counts_each_event_once_and_stops_cleanly() {
    let rig = Rig::new(3).await;
    let group = unique("example");

    const N: u64 = 600;
    let events: Vec<_> = (1..=N)
        .map(|seq| AccessEvent::example(&format!("node-{}", seq % 3), seq, Utc::now()))
        .collect();
    produce(&rig.topics.access, &events).await;
    let want: BTreeMap<String, i64> = (0..3)
        .map(|n| (format!("node-{n}"), N as i64 / 3))
        .collect();

    let pool = rig.pool.clone();
    let cfg = ConsumerConfig {
        group: group.clone(),
        batch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    // The example's own wiring: its migrations, then the builder.
    let start = || async {
        let builder = custom_aggregator::member(pool.clone(), &rig.topics.access)
            .await
            .expect("the example migrates");
        let runtime = builder.kafka(kafka()).config(cfg.clone()).build();
        Member::spawn(runtime.expect("the example builds"))
    };
    let member = start().await;
    eventually(Duration::from_secs(60), "every event counted", || {
        let (pool, want) = (pool.clone(), want.clone());
        async move { (counts(&pool).await == want).then_some(()) }
    })
    .await;
    let report = member.stop().await;
    assert_eq!(report.applied, N);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(
        stored(&pool, &group).await,
        Some(N as i64),
        "the runtime's offsets cover every record"
    );

    // The same group again: the stored offsets say everything is done.
    let member = start().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let again = member.stop().await;
    assert_eq!(again.applied, 0, "nothing applied twice");
    assert_eq!(counts(&pool).await, want);
}
