//! `weir edge` wired from its config: Redis for shared metadata, the shared
//! Kafka producer for access events, the S3 origin, then the client and
//! admin servers until the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_core::RedisHandle;
use weir_edge::access::AccessLog;
use weir_edge::meta::SharedRedis;
use weir_edge::Edge;
use weir_producers::EventProducer;
use weir_producers::LagLimiter;

use crate::config::{parse_addr, Config};

/// How long access events get to reach Kafka at shutdown.
const PRODUCER_DRAIN: Duration = Duration::from_secs(5);

/// Binds the client and admin addresses.
pub async fn bind(cfg: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let client = parse_addr("edge.addr", &cfg.edge.addr)?;
    let admin = parse_addr("edge.admin_addr", &cfg.edge.admin_addr)?;
    let c = TcpListener::bind(client)
        .await
        .with_context(|| format!("edge.addr {client}: cannot listen"))?;
    let a = TcpListener::bind(admin)
        .await
        .with_context(|| format!("edge.admin_addr {admin}: cannot listen"))?;
    Ok((c, a))
}

/// Runs the edge until `shutdown`, then flushes access events.
pub async fn run(
    cfg: &Config,
    client: TcpListener,
    admin: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = Arc::new(RedisHandle::new(&cfg.redis).context("redis.url")?);
    let mut producer =
        EventProducer::new(&cfg.kafka, "edge").context("creating the Kafka producer")?;
    if cfg.limiter.enabled {
        // Close the loop: the access group's lag (published by `weir lag
        // export`) paces the access events this edge produces.
        let limiter = Arc::new(LagLimiter::new(cfg.limiter.clone()));
        let group = if cfg.limiter.group.is_empty() {
            cfg.consumer.group_for("access")
        } else {
            cfg.limiter.group.clone()
        };
        tracing::info!(%group, threshold = cfg.limiter.threshold, "lag-aware limiting of access events on");
        tokio::spawn(weir_producers::follow_signal_reporting(
            redis.clone(),
            cfg.redis.keys(),
            group,
            limiter.clone(),
            cfg.lag.interval,
            Some(cfg.agent.resolved_node_id()),
            shutdown.clone(),
        ));
        producer = producer.with_limiter(limiter);
    }
    let producer = Arc::new(producer);
    // The edge reports under the same node identity as the host's agent.
    let access = AccessLog::new(
        producer.clone(),
        cfg.topics.access.clone(),
        cfg.agent.resolved_node_id(),
    );
    let auth = super::auth::admin_auth(cfg, redis.clone(), "edge")?;
    let edge = Edge::new(
        cfg.edge.clone(),
        &cfg.s3,
        Some(SharedRedis {
            handle: redis,
            key_prefix: cfg.redis.key_prefix.clone(),
        }),
        Some(access),
    )
    .with_context(|| {
        format!(
            "edge.disk_dir {}: cannot prepare the disk tier",
            cfg.edge.resolved_disk_dir().display()
        )
    })?;
    let extra = match metrics {
        Some(m) => Router::new().route("/metrics", get(move || std::future::ready(m.render()))),
        None => Router::new(),
    };
    weir_edge::serve(client, admin, edge, extra, auth, shutdown)
        .await
        .context("edge server")?;
    let _ = tokio::task::spawn_blocking(move || producer.flush(PRODUCER_DRAIN)).await;
    if cfg.edge.disk_dir.is_empty() {
        // The default directory is this process's own: nothing else will
        // ever read it.
        let _ = std::fs::remove_dir_all(cfg.edge.resolved_disk_dir());
    }
    Ok(())
}
