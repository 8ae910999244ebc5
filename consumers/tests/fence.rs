//! The offset fence under a backlog: when another owner moves a partition's
//! stored offset while a member is pipelining batches, exactly one batch is
//! fenced. The batch collected while the fenced one was in flight read the
//! same stale offsets; it must be dropped and re-read, not fenced again.
//!
//! The foreign owner is simulated by moving the stored offset in
//! PostgreSQL, as a member that took the partition over would: it is
//! deterministic where a real rebalance is a matter of timing.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgConnection;
use weir_consumers::{migrations, Aggregator, ConsumerConfig, GroupRuntime, Record, StoreError};
use weir_schemas::AccessEvent;
use weir_testkit::{eventually, stack, unique, TestDb, TestTopics};

mod support;
use support::{kafka, produce_raw, stored, wait_stored, Member};

/// Applies nothing: only the delivery matters here.
struct Nothing;

impl Aggregator for Nothing {
    type Event = AccessEvent;
    fn role(&self) -> &'static str {
        "fence-probe"
    }
    async fn apply(
        &self,
        _tx: &mut PgConnection,
        _b: &[Record<AccessEvent>],
    ) -> Result<(), StoreError> {
        // A little work per batch, so that batches overlap as in production.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_offset_move_fences_one_batch_not_two() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 1).await;
    let db = TestDb::create(&s).await;
    let pool = db.pool().await;
    migrations::runtime().run(&pool).await.expect("migrations");
    const N: i64 = 20_000;
    let ev = serde_json::to_vec(&AccessEvent::example("n1", 1, Utc::now())).expect("json");
    let records: Vec<(String, Vec<u8>)> = (0..N).map(|_| ("n1".to_string(), ev.clone())).collect();
    produce_raw(&topics.access, &records).await;

    let group = unique("fence");
    let runtime = GroupRuntime::builder(Nothing, &topics.access, pool.clone())
        .config(ConsumerConfig {
            group: group.clone(),
            batch_max_records: 200,
            batch_max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        })
        .kafka(kafka())
        .dead_letter_topic(&topics.dlq)
        .build()
        .expect("runtime");
    let member = Member::spawn(runtime);

    eventually(Duration::from_secs(60), "a few batches committed", || {
        let (pool, group) = (pool.clone(), group.clone());
        async move {
            stored(&pool, &group)
                .await
                .filter(|o| *o >= 1000)
                .map(|_| ())
        }
    })
    .await;
    // Another owner applies 1 000 records past what this member stored.
    let moved = sqlx::query(
        "UPDATE consumer_offsets SET next_offset = next_offset + 1000 WHERE group_id = $1",
    )
    .bind(&group)
    .execute(&pool)
    .await
    .expect("move");
    assert_eq!(moved.rows_affected(), 1);
    wait_stored(&pool, &group, N, Duration::from_secs(90)).await;
    let report = member.stop().await;
    assert_eq!(report.fenced, 1, "one fence per foreign move: {report:?}");
    assert!(
        report.skipped > 0,
        "the moved-over records were skipped after the reload"
    );
}
