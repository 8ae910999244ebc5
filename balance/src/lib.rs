//! `weir balance`: an HTTP load balancer whose backends are the nodes the
//! fleet state (Redis, written by the health group) says are up, plus any
//! static ones, with passive health, retries and six algorithms.
//!
//! - [`config`]: `[balance]`, pools, routes, and their checks;
//! - [`fleet`]: the local snapshot of the fleet state and its follower;
//! - [`backend`]: one backend's counters, latency and passive health;
//! - [`algorithm`]: the algorithms;
//! - [`pool`]: membership, picking (panic mode, stickiness), retry budget;
//! - [`proxy`]: routing and proxying one request;
//! - [`server`]: the listener (`SO_REUSEPORT`, drain) and the admin router;
//! - [`upstream`]: kept-alive connections to the backends;
//! - [`events`]: internal events (logs and metrics).
#![warn(missing_docs)]

pub mod algorithm;
pub mod backend;
pub mod config;
pub mod direct;
pub mod events;
pub mod fleet;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weir_core::RedisHandle;
use weir_schemas::RedisKeys;

pub use config::{BalanceConfig, PoolConfig, RouteConfig};
pub use fleet::FleetView;
pub use proxy::Balancer;

/// Where the balancer reads the fleet state.
pub struct FleetSource {
    /// Redis.
    pub redis: Arc<RedisHandle>,
    /// Its key names.
    pub keys: RedisKeys,
    /// Bound on one Redis operation.
    pub timeout: Duration,
}

/// Runs the balancer on `client` (and its admin router, plus `extra`
/// routes such as `/metrics`, on `admin`) until `shutdown`, then drains.
pub async fn run(
    cfg: BalanceConfig,
    fleet: FleetSource,
    client: TcpListener,
    admin: Option<TcpListener>,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let balancer = Arc::new(Balancer::new(&cfg));
    let (tx, rx) = watch::channel(Arc::new(FleetView::default()));
    let (ready_tx, ready_rx) = watch::channel(!balancer.follows_fleet());
    if balancer.follows_fleet() {
        tokio::spawn(fleet::follow(
            fleet.redis,
            fleet.keys,
            fleet.timeout,
            cfg.resync_interval,
            tx,
            ready_tx,
            shutdown.clone(),
        ));
    }
    tokio::spawn(server::apply_fleet(balancer.clone(), rx.clone()));
    tokio::spawn(server::reap_idle(
        balancer.clone(),
        cfg.idle_timeout,
        shutdown.clone(),
    ));
    if let Some(admin) = admin {
        let app = server::admin_router(balancer.clone(), rx, ready_rx).merge(extra);
        let stop = shutdown.clone();
        if let Ok(a) = admin.local_addr() {
            tracing::info!(addr = %a, "balance admin listening");
        }
        tokio::spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }
    if let Ok(a) = client.local_addr() {
        tracing::info!(addr = %a, pools = balancer.pools().len(), "balancing");
    }
    server::serve(client, balancer, &cfg, shutdown).await
}
