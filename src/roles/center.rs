//! `weir center`: the fleet API and live stream.

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_center::{serve, CenterState, DashboardTopics};

use super::{migrate, pool, redis};
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
    let state = CenterState::new(redis, cfg.redis.keys(), pool, &cfg.center)
        .with_topics(DashboardTopics {
            health: cfg.topics.health.clone(),
            access: cfg.topics.access.clone(),
            dlq: cfg.topics.dlq.clone(),
        })
        .with_auth(auth);
    serve(listener, state, &cfg.center, shutdown)
        .await
        .context("center server")
}
