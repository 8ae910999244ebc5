//! Each role wired from its config: build, then run until the shutdown
//! token fires, then report how it ended.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use weir_center::{serve, CenterState};
use weir_consumers::{
    AccessAggregator, Aggregator, GroupRuntime, HealthAggregator, RunReport, MIGRATOR,
};
use weir_core::RedisHandle;
use weir_producers::{run_agent, AgentReport, EventProducer};

use crate::config::{parse_addr, Config};

/// How long producers get to flush at shutdown.
const PRODUCER_DRAIN: Duration = Duration::from_secs(10);

fn producer(cfg: &Config, role: &str) -> anyhow::Result<Arc<EventProducer>> {
    Ok(Arc::new(
        EventProducer::new(&cfg.kafka, role).context("creating the Kafka producer")?,
    ))
}

fn pool(cfg: &Config) -> anyhow::Result<PgPool> {
    cfg.database.pool().context("database.url")
}

fn redis(cfg: &Config) -> anyhow::Result<Arc<RedisHandle>> {
    Ok(Arc::new(RedisHandle::new(&cfg.redis).context("redis.url")?))
}

/// Runs the migrations, waiting for PostgreSQL to come up (it may be starting
/// alongside us) for a bounded time.
pub async fn migrate(pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() => {
                info!(error = %e, "PostgreSQL not ready for migrations; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("running PostgreSQL migrations (database.url)"),
        }
    }
}

/// Fails when `topic` is known not to exist; if Kafka cannot be reached yet,
/// goes on (the producer buffers and retries).
pub async fn require_topic(
    producer: &Arc<EventProducer>,
    topic: &str,
    key: &str,
) -> anyhow::Result<()> {
    let (p, t) = (producer.clone(), topic.to_string());
    match tokio::task::spawn_blocking(move || p.topic_exists(&t, Duration::from_secs(10))).await? {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "topic {topic} ({key}) does not exist: create it with `weir topics ensure`"
        ),
        Err(e) => {
            tracing::warn!(%topic, error = %e, "cannot check the topic yet; records are buffered until Kafka answers");
            Ok(())
        }
    }
}

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

/// Binds the center's address.
pub async fn bind_center(cfg: &Config) -> anyhow::Result<TcpListener> {
    let addr = parse_addr("center.addr", &cfg.center.addr)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("center.addr {addr}: cannot listen"))
}

/// `weir center`.
pub async fn center(
    cfg: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = pool(cfg)?;
    // The center reads tables the consumers own; make sure they exist so an
    // empty fleet answers `[]`, not an error.
    migrate(&pool, &shutdown).await?;
    let state = CenterState::new(redis(cfg)?, cfg.redis.keys(), pool, &cfg.center);
    serve(listener, state, &cfg.center, shutdown)
        .await
        .context("center server")
}

/// `weir up`: topics, migrations, the agent, N health members, the center
/// and the edge in one process.
pub async fn up(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::topics::ensure(&cfg.kafka, &cfg.topics)
        .await
        .context("ensuring topics (is Kafka running? try deploy/local/up)")?;
    let pool = pool(cfg)?;
    migrate(&pool, &shutdown).await?;
    let listener = bind_center(cfg).await?;
    let addr = listener.local_addr()?;
    let (edge_client, edge_admin) = crate::edge::bind(cfg).await?;
    let edge_addr = edge_client.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move { center(&c, listener, s).await.map(|_| "center".to_string()) });
    }
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::edge::run(&c, edge_client, edge_admin, None, s)
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
