//! `weir agent`: reports this host's health every interval, to Kafka or,
//! with `--via URL` (`agent.via`), through a `weir ingest` gateway.

use tokio_util::sync::CancellationToken;
use weir_producers::{run_agent, run_agent_via, AgentReport};

use super::{producer, require_topic, PRODUCER_DRAIN};
use crate::config::Config;

/// `weir agent`.
pub async fn agent(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<AgentReport> {
    if !cfg.agent.via.is_empty() {
        return Ok(run_agent_via(cfg.agent.clone(), shutdown, PRODUCER_DRAIN).await);
    }
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
