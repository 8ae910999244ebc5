//! `weir ingest` wired from its config: a producer whose message timeout is
//! `ingest.ack_timeout` (so a record answered 503 is not delivered later
//! beside the agent's resend), the gateway on `ingest.addr` with `/metrics`
//! beside it, then a flush at shutdown.

use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_ingest::Ingest;
use weir_producers::EventProducer;

use super::{require_topic, PRODUCER_DRAIN};
use crate::config::{parse_addr, Config};

/// Binds `ingest.addr`.
pub async fn bind(cfg: &Config) -> anyhow::Result<TcpListener> {
    let addr = parse_addr("ingest.addr", &cfg.ingest.addr)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("ingest.addr {addr}: cannot listen"))
}

/// Runs the gateway until `shutdown`: stops accepting, lets open requests
/// receive their acknowledgements, flushes the producer.
pub async fn run(
    cfg: &Config,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut kafka = cfg.kafka.clone();
    kafka.message_timeout = cfg.ingest.ack_timeout;
    let producer =
        Arc::new(EventProducer::new(&kafka, "ingest").context("creating the Kafka producer")?);
    require_topic(&producer, &cfg.topics.health, "topics.health").await?;
    let ingest = Ingest::new(
        cfg.ingest.clone(),
        cfg.topics.health.clone(),
        producer.clone(),
    );
    let extra = match metrics {
        Some(m) => Router::new().route("/metrics", get(move || std::future::ready(m.render()))),
        None => Router::new(),
    };
    weir_ingest::serve(listener, ingest, extra, shutdown)
        .await
        .context("ingest server")?;
    let _ = tokio::task::spawn_blocking(move || producer.flush(PRODUCER_DRAIN)).await;
    tracing::info!("ingest stopped");
    Ok(())
}
