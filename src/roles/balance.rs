//! `weir balance` wired from its config: the listeners (the client one with
//! `SO_REUSEPORT`, so a new process can take the port over), Redis for the
//! fleet state, `/metrics` on the admin port.

use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_balance::FleetSource;
use weir_core::RedisHandle;

use crate::config::{parse_addr, Config};

/// Binds the client and admin addresses.
pub async fn bind(cfg: &Config) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let b = &cfg.balance;
    let addr = parse_addr("balance.addr", &b.addr)?;
    let client = weir_balance::server::bind(addr, b.reuse_port)
        .with_context(|| format!("balance.addr {addr}: cannot listen"))?;
    let admin = if b.admin_addr.is_empty() {
        None
    } else {
        let a = parse_addr("balance.admin_addr", &b.admin_addr)?;
        Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("balance.admin_addr {a}: cannot listen"))?,
        )
    };
    Ok((client, admin))
}

/// Runs the balancer until `shutdown`, then drains.
pub async fn run(
    cfg: &Config,
    client: TcpListener,
    admin: Option<TcpListener>,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = Arc::new(RedisHandle::new(&cfg.redis).context("redis.url")?);
    let extra = match metrics {
        Some(m) => Router::new().route("/metrics", get(move || std::future::ready(m.render()))),
        None => Router::new(),
    };
    weir_balance::run(
        cfg.balance.clone(),
        FleetSource {
            redis,
            keys: cfg.redis.keys(),
            timeout: cfg.redis.timeout,
        },
        client,
        admin,
        extra,
        shutdown,
    )
    .await
    .context("balance server")
}
