//! `weir center`: the fleet API and live stream, the manual trigger of the
//! daily report and, with report.schedule, its schedule.

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_center::{serve, CenterState, DashboardTopics, ReportSink};

use super::{migrate, pool, producer, redis, PRODUCER_DRAIN};
use crate::config::{parse_addr, Config};

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
    let redis = redis(cfg)?;
    let auth = super::auth::admin_auth(cfg, redis.clone(), "center")?;
    // Report requests (`POST /api/v1/reports`, the schedule) go to Kafka;
    // creating the producer does not connect, so a center without Kafka
    // still serves the fleet and answers 503 to report requests.
    let reports = producer(cfg, "report")?;
    let schedule =
        super::report::spawn_schedule(cfg, pool.clone(), reports.clone(), shutdown.clone()).await?;
    let state = CenterState::new(redis, cfg.redis.keys(), pool, &cfg.center)
        .with_topics(DashboardTopics {
            health: cfg.topics.health.clone(),
            access: cfg.topics.access.clone(),
            dlq: cfg.topics.dlq.clone(),
        })
        .with_auth(auth)
        .with_reports(ReportSink {
            producer: reports.clone(),
            topic: cfg.topics.report.clone(),
            default_recipients: cfg.report.recipients.clone(),
            default_tz: cfg.report.tz.clone(),
        });
    let served = serve(listener, state, &cfg.center, shutdown.clone())
        .await
        .context("center server");
    shutdown.cancel();
    if let Some(s) = schedule {
        let _ = s.await;
    }
    let _ = tokio::task::spawn_blocking(move || reports.flush(PRODUCER_DRAIN)).await;
    served
}
