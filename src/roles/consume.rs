//! `weir consume health|access`: one member of a consumer group.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use weir_consumers::{AccessAggregator, Aggregator, GroupRuntime, HealthAggregator, RunReport};
use weir_producers::EventProducer;

use super::{migrate, pool, redis, PRODUCER_DRAIN};
use crate::config::Config;

/// One member of a consumer group running `aggregator` on `topic`.
async fn consume<A: Aggregator>(
    cfg: &Config,
    topic: &str,
    aggregator: A,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    let pool = pool(cfg)?;
    migrate(&pool, &shutdown).await?;
    let dlq = EventProducer::new(&cfg.kafka, "dlq").context("creating the dead-letter producer")?;
    let runtime = GroupRuntime::builder(aggregator, topic, pool)
        .config(cfg.consumer.clone())
        .kafka(cfg.kafka.clone())
        .dead_letter_topic(&cfg.topics.dlq)
        .dead_letter_producer(dlq.clone())
        .build()?;
    let role = runtime.group().to_string();
    let report = runtime
        .run(shutdown)
        .await
        .with_context(|| format!("consumer group {role}"))?;
    let _ = tokio::task::spawn_blocking(move || dlq.flush(PRODUCER_DRAIN)).await;
    Ok(report)
}

/// `weir consume health`: one member of the health group.
pub async fn consume_health(
    cfg: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    let aggregator = HealthAggregator::new(redis(cfg)?, cfg.redis.keys());
    consume(cfg, &cfg.topics.health, aggregator, shutdown).await
}

/// `weir consume access`: one member of the access group.
pub async fn consume_access(
    cfg: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    let aggregator = AccessAggregator::new(redis(cfg)?, cfg.redis.keys());
    consume(cfg, &cfg.topics.access, aggregator, shutdown).await
}
