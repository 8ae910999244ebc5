//! What the runtime's integration tests share: the stack's Kafka, raw
//! produce, a running member, and the group's stored offsets.
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_consumers::{Aggregator, GroupRuntime, RunReport};
use weir_core::KafkaConfig;
use weir_producers::EventProducer;
use weir_testkit::{eventually, stack};

/// The local stack's Kafka.
pub fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: stack().kafka,
        ..KafkaConfig::default()
    }
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

/// The sum of the group's stored next offsets (one partition: its offset).
pub async fn stored(pool: &sqlx::PgPool, group: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE group_id = $1")
        .bind(group)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
}

/// Waits until the group's stored offsets add up to `total`.
pub async fn wait_stored(pool: &sqlx::PgPool, group: &str, total: i64, timeout: Duration) {
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
