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

/// Rows per record, so that a record applied twice shows.
struct Rows;

impl Aggregator for Rows {
    type Event = AccessEvent;
    fn role(&self) -> &'static str {
        "fence-rows"
    }
    async fn apply(
        &self,
        tx: &mut PgConnection,
        batch: &[Record<AccessEvent>],
    ) -> Result<(), StoreError> {
        let part: Vec<i32> = batch.iter().map(|r| r.partition).collect();
        let off: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        // Slow enough that the backlog outlasts the second member's join.
        tokio::time::sleep(Duration::from_millis(80)).await;
        sqlx::query("INSERT INTO rows SELECT * FROM UNNEST($1::int[], $2::bigint[])")
            .bind(&part)
            .bind(&off)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// The brief's check: a backlog and one rebalance (a second member joins
/// while the first is pipelining). Partitions move with batches in flight;
/// the fenced counter must not repeat, and every record is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_under_a_backlog_fences_at_most_once_and_applies_each_record_once() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 6).await;
    let db = TestDb::create(&s).await;
    let pool = db.pool().await;
    migrations::runtime().run(&pool).await.expect("migrations");
    sqlx::query("CREATE TABLE rows (p int, o bigint)")
        .execute(&pool)
        .await
        .expect("rows table");
    const N: i64 = 30_000;
    let ev = serde_json::to_vec(&AccessEvent::example("n1", 1, Utc::now())).expect("json");
    let records: Vec<(String, Vec<u8>)> = (0..N).map(|i| (format!("n{i}"), ev.clone())).collect();
    produce_raw(&topics.access, &records).await;

    let group = unique("rebalance");
    let member = || {
        let runtime = GroupRuntime::builder(Rows, &topics.access, pool.clone())
            .config(ConsumerConfig {
                group: group.clone(),
                batch_max_records: 300,
                batch_max_wait: Duration::from_millis(50),
                session_timeout: Duration::from_secs(6),
                ..ConsumerConfig::default()
            })
            .kafka(kafka())
            .dead_letter_topic(&topics.dlq)
            .build()
            .expect("runtime");
        Member::spawn(runtime)
    };
    let first = member();
    eventually(Duration::from_secs(60), "the first member is busy", || {
        let (pool, group) = (pool.clone(), group.clone());
        async move {
            stored(&pool, &group)
                .await
                .filter(|o| *o >= 3000)
                .map(|_| ())
        }
    })
    .await;
    let second = member();
    wait_stored(&pool, &group, N, Duration::from_secs(120)).await;
    let (a, b) = (first.stop().await, second.stop().await);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (p, o)) FROM rows")
            .fetch_one(&pool)
            .await
            .expect("rows");
    assert_eq!((rows, distinct), (N, N), "each record applied once");
    eprintln!(
        "rebalance under backlog: fenced {} + {}, applied {} + {}, batches {} + {}",
        a.fenced, b.fenced, a.applied, b.applied, a.batches, b.batches
    );
    assert!(b.applied > 0, "the second member took partitions over");
    assert!(
        a.fenced + b.fenced <= 1,
        "the fence did not repeat: {a:?} {b:?}"
    );
}
