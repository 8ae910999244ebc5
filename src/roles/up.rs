//! `weir up`: every role in one process, for the local stack.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::agent::agent;
use super::center::{bind_center, center};
use super::consume::consume_health;
use super::{migrate, pool};
use crate::config::Config;

/// `weir up`: topics, migrations, the agent, N health members, the center
/// and the edge in one process.
pub async fn up(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    super::topics::ensure(&cfg.kafka, &cfg.topics)
        .await
        .context("ensuring topics (is Kafka running? try deploy/local/up)")?;
    let pool = pool(cfg)?;
    migrate(&pool, &shutdown).await?;
    let listener = bind_center(cfg).await?;
    let addr = listener.local_addr()?;
    let (edge_client, edge_admin) = super::edge::bind(cfg).await?;
    let edge_addr = edge_client.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move { center(&c, listener, s).await.map(|_| "center".to_string()) });
    }
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            super::edge::run(&c, edge_client, edge_admin, None, s)
                .await
                .map(|_| "edge".to_string())
        });
    }
    for i in 0..cfg.up.consumers {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            consume_health(&c, s).await.map(|r| {
                format!(
                    "health consumer {i}: applied {} records in {} batches",
                    r.applied, r.batches
                )
            })
        });
    }
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            agent(&c, s).await.map(|r| {
                format!(
                    "agent {}: {} reports delivered of {}",
                    r.node_id, r.delivered, r.queued
                )
            })
        });
    }
    print_banner(cfg, addr, edge_addr);
    let mut failed = false;
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(done)) => info!("{done}"),
            Ok(Err(e)) => {
                error!(
                    error = format!("{e:#}"),
                    "a role failed; stopping the others"
                );
                failed = true;
                shutdown.cancel();
            }
            Err(e) => {
                error!(error = %e, "a role panicked; stopping the others");
                failed = true;
                shutdown.cancel();
            }
        }
    }
    if failed {
        anyhow::bail!("weir up stopped because a role failed (see the log above)");
    }
    Ok(())
}

fn print_banner(cfg: &Config, addr: std::net::SocketAddr, edge: std::net::SocketAddr) {
    let node = cfg.agent.resolved_node_id();
    println!(
        "\nweir up: agent ({node}) → Kafka {brokers} → {n} health consumers → Redis + PostgreSQL → center\n\
         \n  Center API   http://{addr}/api/v1/nodes\n\
         \n  Try:\n    curl -s http://{addr}/api/v1/nodes | jq .\n    curl -s http://{addr}/api/v1/nodes/{node} | jq .\n    \
         curl -s http://{addr}/api/v1/fleet\n    curl -s 'http://{addr}/api/v1/uptime' | jq .\n    curl -N http://{addr}/api/v1/stream\n\
         \n  Edge         http://{edge}/<key>   (S3 {s3}, bucket {bucket}; purge on http://{admin}/cache)\n\
         \n  Lag          weir lag describe {group}   (weir lag list, weir lag advise {group})\n\
         \n  Metrics      http://{metrics}/metrics\n\
         \n  Ctrl-C stops every role cleanly.\n",
        brokers = cfg.kafka.brokers,
        n = cfg.up.consumers,
        s3 = cfg.s3.endpoint,
        bucket = cfg.s3.bucket,
        admin = cfg.edge.admin_addr,
        group = cfg.consumer.group_for("health"),
        metrics = if cfg.metrics.addr.is_empty() { "(disabled)" } else { cfg.metrics.addr.as_str() },
    );
}
