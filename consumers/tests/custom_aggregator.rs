//! Runs `examples/custom_aggregator.rs` (its very code, included below)
//! against the real stack: an aggregator written outside this crate, with its
//! own table and migration, counts every event exactly once and stops
//! cleanly; a second run of the same group finds nothing left to do.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use weir_consumers::ConsumerConfig;
use weir_core::KafkaConfig;
use weir_producers::EventProducer;
use weir_schemas::AccessEvent;
use weir_testkit::{eventually, stack, unique, TestDb, TestTopics};

#[allow(dead_code)] // its `main` is the example binary's, not the test's
#[path = "../examples/custom_aggregator.rs"]
mod custom_aggregator;

async fn counts(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT node_id, requests FROM example_node_requests")
        .fetch_all(pool)
        .await
        .map(|rows| rows.into_iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_aggregator_counts_each_event_once_and_stops_cleanly() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 3).await;
    let db = TestDb::create(&s).await;
    let kafka = KafkaConfig {
        brokers: s.kafka.clone(),
        ..KafkaConfig::default()
    };
    let group = unique("example");

    const N: u64 = 600;
    let producer = EventProducer::new(&kafka, "test").expect("producer");
    let pending: Vec<_> = (1..=N)
        .map(|seq| {
            let ev = AccessEvent::example(&format!("node-{}", seq % 3), seq, Utc::now());
            producer.enqueue(&topics.access, &ev).expect("queued")
        })
        .collect();
    for d in pending {
        d.await.expect("delivered");
    }
    let want: BTreeMap<String, i64> = (0..3)
        .map(|n| (format!("node-{n}"), N as i64 / 3))
        .collect();

    let pool = db.pool().await;
    let run = |shutdown: CancellationToken| {
        let (kafka, pool, topic) = (kafka.clone(), pool.clone(), topics.access.clone());
        let cfg = ConsumerConfig {
            group: group.clone(),
            batch_max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        };
        tokio::spawn(async move {
            let builder = custom_aggregator::member(pool, &topic).await?;
            builder
                .kafka(kafka)
                .config(cfg)
                .build()?
                .run(shutdown)
                .await
        })
    };
    let shutdown = CancellationToken::new();
    let member = run(shutdown.clone());
    eventually(Duration::from_secs(60), "every event counted", || {
        let (pool, want) = (pool.clone(), want.clone());
        async move { (counts(&pool).await == want).then_some(()) }
    })
    .await;
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), member)
        .await
        .expect("stops within 30 s")
        .expect("task")
        .expect("runs without error");
    assert_eq!(report.applied, N);
    assert_eq!(report.dead_lettered, 0);
    let stored: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE group_id = $1",
    )
    .bind(&group)
    .fetch_one(&pool)
    .await
    .expect("offsets");
    assert_eq!(stored, N as i64, "the runtime's offsets cover every record");

    // The same group again: the stored offsets say everything is done.
    let shutdown = CancellationToken::new();
    let member = run(shutdown.clone());
    tokio::time::sleep(Duration::from_secs(8)).await;
    shutdown.cancel();
    let again = tokio::time::timeout(Duration::from_secs(30), member)
        .await
        .expect("stops within 30 s")
        .expect("task")
        .expect("runs without error");
    assert_eq!(again.applied, 0, "nothing applied twice");
    assert_eq!(counts(&pool).await, want);
}
