//! Logs (`tracing`) and metrics (`/metrics` in the Prometheus format) for
//! every role.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, DEFAULT_METRICS_ADDR};

/// Initialises logging to stderr. `RUST_LOG` wins over `log.level`.
pub fn init_logs(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // librdkafka's own log lines come through the `rdkafka` target and
        // are noisy at info while a broker restarts.
        .add_directive("librdkafka=warn".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global metrics recorder.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    describe_metrics();
    Ok(handle)
}

/// Binds the metrics address. The default address falls back to an
/// ephemeral port when taken (several roles on one host); an explicit one
/// must be free.
pub async fn bind_metrics(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let sock: SocketAddr = addr.parse()?;
    match TcpListener::bind(sock).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr == DEFAULT_METRICS_ADDR => {
            let l = TcpListener::bind((sock.ip(), 0)).await?;
            warn!(wanted = addr, using = %l.local_addr()?, "metrics port taken; using an ephemeral one (set WEIR_METRICS_ADDR)");
            Ok(Some(l))
        }
        Err(e) => Err(anyhow::anyhow!("metrics.addr {addr}: {e}")),
    }
}

/// Serves `/metrics`, `/livez` and `/readyz` until shutdown.
pub fn spawn_metrics_server(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "metrics listening");
    }
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
}

/// Gives every metric Weir emits its `# HELP` text (each crate describes its
/// own, beside its internal events), so that the exposition passes
/// `promtool check metrics`.
pub fn describe_metrics() {
    weir_core::http::describe_metrics();
    weir_producers::describe_metrics();
    weir_consumers::runtime::describe_metrics();
    weir_consumers::health::describe_metrics();
    weir_lag::events::describe_metrics();
    weir_edge::events::describe_metrics();
    weir_center::describe_metrics();
    weir_report::describe_metrics();
}
