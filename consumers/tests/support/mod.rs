//! What the runtime's integration tests share: one test's slice of the
//! stack (`Rig`), raw and typed produce, a running member, a probe
//! aggregator that writes a row per record, and the group's stored offsets.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use weir_consumers::{AccessAggregator, Aggregator, Applied, ConsumerConfig, GroupRuntime};
use weir_consumers::{HealthAggregator, Record, RunReport};
use weir_core::{DatabaseConfig, KafkaConfig, RedisConfig, RedisHandle};
use weir_producers::EventProducer;
use weir_schemas::{AccessEvent, Event};
use weir_testkit::{eventually, read_dead_letters, stack, DeadLetter};
use weir_testkit::{TestDb, TestRedis, TestTopics};

/// The local stack's Kafka.
pub fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: stack().kafka,
        ..KafkaConfig::default()
    }
}

/// One test's topics, database and Redis prefix, and a pool on the database
/// that connects lazily (so that a member outlives a PostgreSQL outage).
pub struct Rig {
    pub topics: TestTopics,
    pub db: TestDb,
    pub redis: TestRedis,
    pub pool: PgPool,
}

impl Rig {
    /// A rig on the shared stack whose topics have `partitions` partitions.
    pub async fn new(partitions: i32) -> Rig {
        let s = stack();
        let db = TestDb::create(&s).await;
        Self::with_db(partitions, db).await
    }

    /// A rig whose database is `db` (for instance on a private server).
    pub async fn with_db(partitions: i32, db: TestDb) -> Rig {
        weir_testkit::init_logs();
        let s = stack();
        let pool = DatabaseConfig {
            url: db.url.clone(),
            connect_timeout: Duration::from_secs(2),
            ..DatabaseConfig::default()
        }
        .pool()
        .expect("pool");
        Rig {
            topics: TestTopics::create(&s, partitions).await,
            redis: TestRedis::new(&s),
            db,
            pool,
        }
    }

    /// Runs every migration of the crate (runtime, health, access).
    pub async fn migrate(&self) -> &Self {
        weir_consumers::MIGRATOR
            .run(&self.pool)
            .await
            .expect("migrations");
        self
    }

    /// Creates `probe (node, p, o)`, whose `node` column has `check` (a
    /// column constraint, or "").
    pub async fn probe_table(&self, check: &str) {
        sqlx::query(&format!(
            "CREATE TABLE probe (node text {check}, p int, o bigint)"
        ))
        .execute(&self.pool)
        .await
        .expect("probe table");
    }

    /// (rows, distinct (partition, offset)) in `probe`.
    pub async fn probe_rows(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(DISTINCT (p, o)) FROM probe")
            .fetch_one(&self.pool)
            .await
            .expect("probe rows")
    }

    /// Redis settings on this rig's prefix.
    pub fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            url: self.redis.url.clone(),
            key_prefix: self.redis.prefix.clone(),
            ..RedisConfig::default()
        }
    }

    fn redis_handle(&self) -> Arc<RedisHandle> {
        Arc::new(RedisHandle::new(&self.redis_config()).expect("redis"))
    }

    /// The real access aggregator on this rig's Redis prefix.
    pub fn access(&self) -> AccessAggregator {
        AccessAggregator::new(self.redis_handle(), self.redis_config().keys())
    }

    /// The real health aggregator on this rig's Redis prefix.
    pub fn health(&self) -> HealthAggregator {
        HealthAggregator::new(self.redis_handle(), self.redis_config().keys())
    }

    /// A member of `cfg.group` running `agg` on `topic`, dead-lettering to
    /// this rig's DLQ topic.
    pub fn member<A: Aggregator>(&self, agg: A, topic: &str, cfg: ConsumerConfig) -> Member {
        let runtime = GroupRuntime::builder(agg, topic, self.pool.clone())
            .config(cfg)
            .kafka(kafka())
            .dead_letter_topic(&self.topics.dlq)
            .build()
            .expect("runtime");
        Member::spawn(runtime)
    }

    /// Every record of the DLQ topic, once `n` have arrived and no more came
    /// for two seconds.
    pub fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let dead = read_dead_letters(&stack().kafka, &self.topics.dlq, Duration::from_secs(2));
        assert_eq!(dead.len(), n, "dead letters: {dead:?}");
        dead
    }
}

/// A header of a dead letter, empty when absent.
pub fn header(d: &DeadLetter, name: &str) -> String {
    d.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Produces `(key, payload)` records as they are, bypassing the producer's
/// validation (as a broken or hostile producer would), and waits for them.
pub async fn produce_raw(topic: &str, records: &[(String, Vec<u8>)]) {
    let p = EventProducer::new(&kafka(), "test").expect("producer");
    let pending: Vec<_> = records
        .iter()
        .map(|(key, bytes)| {
            p.enqueue_raw(topic, Some(key.as_bytes()), bytes, None, "test")
                .expect("queued")
        })
        .collect();
    for d in pending {
        d.await.expect("delivered");
    }
}

/// Produces `events` through the producer (validated, keyed by node) and
/// waits for them.
pub async fn produce<E: Event>(topic: &str, events: &[E]) {
    let p = EventProducer::new(&kafka(), "test").expect("producer");
    let pending: Vec<_> = events
        .iter()
        .map(|e| p.enqueue(topic, e).expect("queued"))
        .collect();
    for d in pending {
        d.await.expect("delivered");
    }
}

/// `n` copies of one access event's JSON, keyed by `key(i)`.
pub fn access_records(n: i64, key: impl Fn(i64) -> String) -> Vec<(String, Vec<u8>)> {
    let ev = AccessEvent::example("n1", 1, chrono::Utc::now());
    let bytes = serde_json::to_vec(&ev).expect("json");
    (0..n).map(|i| (key(i), bytes.clone())).collect()
}

/// Writes one `probe` row per record (node, partition, offset), after
/// `delay` of pretend work per batch, so that batches overlap as in
/// production and a record applied twice shows as a repeated row.
pub struct Probe {
    pub delay: Duration,
}

impl Aggregator for Probe {
    type Event = AccessEvent;
    const ROLE: &'static str = "probe";
    async fn apply(&self, tx: &mut PgConnection, batch: &[Record<AccessEvent>]) -> Applied {
        tokio::time::sleep(self.delay).await;
        let node: Vec<&str> = batch.iter().map(|r| r.event.node_id.as_str()).collect();
        let part: Vec<i32> = batch.iter().map(|r| r.partition).collect();
        let off: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        sqlx::query("INSERT INTO probe SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[])")
            .bind(&node)
            .bind(&part)
            .bind(&off)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// The sum of the group's stored next offsets (one partition: its offset).
pub async fn stored(pool: &PgPool, group: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE group_id = $1")
        .bind(group)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
}

/// Waits until the group's stored offsets add up to at least `total`.
pub async fn wait_stored_at_least(pool: &PgPool, group: &str, total: i64, timeout: Duration) {
    eventually(
        timeout,
        &format!("offsets stored up to {total}"),
        || async move {
            stored(pool, group)
                .await
                .filter(|o| *o >= total)
                .map(|_| ())
        },
    )
    .await;
}

/// Waits until the group's stored offsets add up to `total`.
pub async fn wait_stored(pool: &PgPool, group: &str, total: i64, timeout: Duration) {
    eventually(
        timeout,
        &format!("offsets stored up to {total}"),
        || async move { (stored(pool, group).await == Some(total)).then_some(()) },
    )
    .await;
}

/// A member running in its own task.
pub struct Member {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<RunReport>,
}

impl Member {
    /// Starts `runtime`.
    pub fn spawn<A: Aggregator>(runtime: GroupRuntime<A>) -> Member {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { runtime.run(s).await.expect("runs") });
        Member { shutdown, task }
    }

    /// Stops it as a signal would; it must stop within 30 s.
    pub async fn stop(self) -> RunReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops within 30 s")
            .expect("member task")
    }
}
