//! `weir agent`: reports this host's health to Kafka every interval.

use tokio_util::sync::CancellationToken;
use weir_producers::{run_agent, AgentReport};

use super::{producer, require_topic, PRODUCER_DRAIN};
use crate::config::Config;

/// `weir agent`.
pub async fn agent(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<AgentReport> {
    let producer = producer(cfg, "agent")?;
    require_topic(&producer, &cfg.topics.health, "topics.health").await?;
    let report = run_agent(
        cfg.agent.clone(),
        cfg.topics.health.clone(),
        producer,
        shutdown,
        PRODUCER_DRAIN,
    )
    .await;
    Ok(report)
}
