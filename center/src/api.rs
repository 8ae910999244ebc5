//! The center's HTTP API: configuration, shared state, the router and the
//! fleet endpoints (nodes, fleet split, uptime, readiness).

use std::sync::Arc;
use std::time::Duration;
use weir_core::config::{parse_addr, ConfigError, Validate};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_auth::{auth_routes, require_admin, require_read, AdminAuth};
use weir_core::http::{track_metrics, ApiError};
use weir_core::RedisHandle;
use weir_schemas::{HealthEvent, RedisKeys};

use crate::dashboard::{DashboardTopics, Hub};
use crate::live::{feed_changes, stream, Change};
use crate::reports::ReportSink;
use crate::uptime::{NodeUptime, UptimeQuery};

/// Settings of `weir center`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CenterConfig {
    /// Listen address of the API.
    pub addr: String,
    /// Interval of SSE keep-alive comments (keeps proxies from closing idle
    /// streams).
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Live-stream events buffered per client before a slow client is told
    /// it lagged (the dashboard's client gets a fresh snapshot instead).
    pub stream_buffer: usize,
    /// The dashboard merges changes and pushes at most one delta per client
    /// this often.
    #[serde(with = "humantime_serde")]
    pub push_interval: Duration,
    /// Dashboard deltas kept for clients that reconnect with
    /// `Last-Event-ID`; one that missed more gets a fresh snapshot.
    pub replay: usize,
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            addr: "127.0.0.1:8081".into(),
            keepalive: Duration::from_secs(15),
            stream_buffer: 1024,
            push_interval: Duration::from_millis(500),
            replay: 256,
        }
    }
}

impl Validate for CenterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("center.addr", &self.addr)?;
        // Zero would send keep-alive comments in a busy loop.
        if self.keepalive < Duration::from_millis(100) || self.keepalive > Duration::from_secs(3600)
        {
            return Err(ConfigError::new(
                "center.keepalive",
                "must be between 100ms and 1h",
            ));
        }
        if !(1..=1_000_000).contains(&self.stream_buffer) {
            return Err(ConfigError::new(
                "center.stream_buffer",
                "must be between 1 and 1000000",
            ));
        }
        // Faster floods every client; slower makes the page lag its nodes.
        if self.push_interval < Duration::from_millis(50)
            || self.push_interval > Duration::from_secs(10)
        {
            return Err(ConfigError::new(
                "center.push_interval",
                "must be between 50ms and 10s",
            ));
        }
        if !(1..=100_000).contains(&self.replay) {
            return Err(ConfigError::new(
                "center.replay",
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}

/// Shared state of the center's handlers.
#[derive(Clone)]
pub struct CenterState {
    pub(crate) redis: Arc<RedisHandle>,
    pub(crate) keys: RedisKeys,
    pool: PgPool,
    pub(crate) changes: broadcast::Sender<Change>,
    /// Ends live streams at shutdown, so that graceful shutdown does not
    /// wait forever on clients that never disconnect.
    pub(crate) shutdown: CancellationToken,
    /// The dashboard's live model.
    pub(crate) hub: Arc<Hub>,
    push_interval: Duration,
    /// Who may call admin endpoints (and reads, with `auth.protect_reads`).
    pub(crate) auth: Arc<AdminAuth>,
    /// Where report requests go (`POST /api/v1/reports`); without it the
    /// endpoint answers 503.
    pub(crate) reports: Option<ReportSink>,
}

impl CenterState {
    /// State over the given stores.
    pub fn new(redis: Arc<RedisHandle>, keys: RedisKeys, pool: PgPool, cfg: &CenterConfig) -> Self {
        let (changes, _) = broadcast::channel(cfg.stream_buffer.max(16));
        CenterState {
            redis,
            keys,
            pool,
            changes,
            shutdown: CancellationToken::new(),
            hub: Arc::new(Hub::new(
                DashboardTopics::default(),
                cfg.replay,
                cfg.stream_buffer,
            )),
            push_interval: cfg.push_interval,
            auth: AdminAuth::unconfigured("center"),
            reports: None,
        }
    }

    /// The same state with `auth` deciding who may call admin endpoints;
    /// without it every admin endpoint answers 503 (never open by
    /// accident).
    pub fn with_auth(mut self, auth: Arc<AdminAuth>) -> Self {
        self.auth = auth;
        self
    }

    /// The same state taking report requests into `sink`.
    pub fn with_reports(mut self, sink: ReportSink) -> Self {
        self.reports = Some(sink);
        self
    }

    /// The same state naming the deployment's topics on the dashboard.
    pub fn with_topics(mut self, topics: DashboardTopics) -> Self {
        let cfg_replay = self.hub_replay();
        self.hub = Arc::new(Hub::new(topics, cfg_replay.0, cfg_replay.1));
        self
    }

    fn hub_replay(&self) -> (usize, usize) {
        self.hub.sizes()
    }

    /// The dashboard's live model.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// One node as the API shows it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Node id.
    pub node_id: String,
    /// `up` while its live key exists, `down` once it expired.
    pub status: &'static str,
    /// Last report time.
    pub last_seen: Option<DateTime<Utc>>,
    /// The latest report (absent once the node is down).
    pub health: Option<HealthEvent>,
}

/// The whole fleet, split.
#[derive(Debug, Serialize)]
pub struct FleetView {
    /// Nodes known.
    pub total: usize,
    /// Nodes reporting.
    pub healthy_count: usize,
    /// Nodes known but not reporting.
    pub unhealthy_count: usize,
    /// Ids of healthy nodes.
    pub healthy: Vec<String>,
    /// Ids of unhealthy nodes.
    pub unhealthy: Vec<String>,
}

/// The API's routes over a state.
pub fn router(state: CenterState, keepalive: Duration) -> Router {
    let auth = state.auth.clone();
    // Fleet reads: open unless `auth.protect_reads`.
    let reads = Router::new()
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{id}", get(get_node))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/uptime", get(uptime))
        .route(
            "/api/v1/stream",
            get(move |s: State<CenterState>| stream(s, keepalive)),
        )
        .route("/api/v1/dashboard", get(crate::dashboard::snapshot))
        .route(
            "/api/v1/dashboard/stream",
            get(move |s: State<CenterState>, h: axum::http::HeaderMap, q| {
                crate::dashboard::stream(s, h, q, keepalive)
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_read,
        ));
    // Admin: a report request makes mail go out.
    let admin = Router::new()
        .route("/api/v1/reports", post(crate::reports::post_report))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::reports::MAX_BODY_BYTES,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_admin,
        ));
    Router::new()
        // The page and its assets hold no fleet data: always open.
        .route("/", get(crate::page::index))
        .route("/assets/{name}", get(crate::page::asset))
        .merge(reads)
        .merge(crate::inventory::routes(auth.clone()))
        .merge(admin)
        .merge(auth_routes(auth))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(|req, next| {
            track_metrics("center", req, next)
        }))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` fires; also runs the
/// Redis subscription that feeds the live stream.
pub async fn serve(
    listener: TcpListener,
    mut state: CenterState,
    cfg: &CenterConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    state.shutdown = shutdown.clone();
    let feeder = tokio::spawn(feed_changes(state.clone(), shutdown.clone()));
    let inventory = tokio::spawn(crate::inventory::sync_decommissioned(
        state.clone(),
        shutdown.clone(),
    ));
    let dashboard = tokio::spawn(crate::dashboard::run(
        state.clone(),
        state.push_interval,
        shutdown.clone(),
    ));
    let app = router(state, cfg.keepalive);
    info!(addr = %listener.local_addr()?, "center listening");
    let stop = shutdown.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    let mut server = tokio::spawn(async move { server.await });
    let res = tokio::select! {
        r = &mut server => r.map_err(std::io::Error::other).and_then(|r| r),
        _ = shutdown.cancelled() => {
            // In-flight requests get a bounded drain; live streams end at once.
            match tokio::time::timeout(Duration::from_secs(10), server).await {
                Ok(r) => r.map_err(std::io::Error::other).and_then(|r| r),
                Err(_) => {
                    warn!("center drain deadline passed; closing remaining connections");
                    Ok(())
                }
            }
        }
    };
    shutdown.cancel();
    feeder.abort();
    dashboard.abort();
    inventory.abort();
    info!("center stopped");
    res
}

async fn index(state: &CenterState) -> Result<Vec<(String, i64)>, ApiError> {
    let mut conn = state.redis.conn().await?;
    let ids: Vec<(String, f64)> = conn.zrange_withscores(state.keys.nodes(), 0, -1).await?;
    Ok(ids.into_iter().map(|(id, s)| (id, s as i64)).collect())
}

fn to_time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

pub(crate) async fn load_nodes(state: &CenterState) -> Result<Vec<NodeView>, ApiError> {
    let idx = index(state).await?;
    let mut out = Vec::with_capacity(idx.len());
    let mut conn = state.redis.conn().await?;
    for chunk in idx.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|(id, _)| state.keys.node(id)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for ((id, score), v) in chunk.iter().zip(values) {
            let health = v.and_then(|s| match serde_json::from_str::<HealthEvent>(&s) {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(node_id = %id, error = %e, "unreadable live state in Redis");
                    None
                }
            });
            out.push(NodeView {
                node_id: id.clone(),
                status: if health.is_some() { "up" } else { "down" },
                last_seen: to_time(*score),
                health,
            });
        }
    }
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

async fn list_nodes(State(state): State<CenterState>) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(load_nodes(&state).await?))
}

async fn get_node(
    State(state): State<CenterState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    check_node_id("the node id", &id)?;
    let mut conn = state.redis.conn().await?;
    let score: Option<f64> = conn.zscore(state.keys.nodes(), &id).await?;
    let Some(score) = score else {
        return Err(ApiError::not_found(format!(
            "no node {id:?} has ever reported"
        )));
    };
    let raw: Option<String> = conn.get(state.keys.node(&id)).await?;
    let health = raw.and_then(|s| serde_json::from_str::<HealthEvent>(&s).ok());
    Ok(Json(NodeView {
        node_id: id,
        status: if health.is_some() { "up" } else { "down" },
        last_seen: to_time(score as i64),
        health,
    }))
}

async fn fleet(State(state): State<CenterState>) -> Result<Json<FleetView>, ApiError> {
    let nodes = load_nodes(&state).await?;
    let (healthy, unhealthy): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| n.status == "up");
    Ok(Json(FleetView {
        total: healthy.len() + unhealthy.len(),
        healthy_count: healthy.len(),
        unhealthy_count: unhealthy.len(),
        healthy: healthy.into_iter().map(|n| n.node_id).collect(),
        unhealthy: unhealthy.into_iter().map(|n| n.node_id).collect(),
    }))
}

/// Query of `/api/v1/uptime`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UptimeParams {
    from: Option<String>,
    to: Option<String>,
    /// One node id, or several separated by commas.
    node: Option<String>,
    /// Nodes per page (default 100, at most 1000).
    limit: Option<i64>,
    /// Cursor: the `next` of the previous page.
    after: Option<String>,
}

/// Most node ids one `node=` parameter may name.
const UPTIME_MAX_NODES: usize = 100;
/// Nodes per page of `/api/v1/uptime` by default, and at most.
const UPTIME_PAGE: (i64, i64) = (100, 1000);

/// A node id as the API accepts it: 1 to 255 bytes, no control characters.
fn check_node_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be node ids of 1 to 255 bytes without control characters"
        )));
    }
    Ok(())
}

/// Parses RFC 3339 or unix seconds.
fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs.abs() < 1.0e11 {
            if let Some(t) = DateTime::from_timestamp_millis((secs * 1000.0) as i64) {
                return Ok(t);
            }
        }
    }
    Err(ApiError::bad_request(format!(
        "{name}={v:?} is not a time: use RFC 3339 (2026-11-23T10:00:00Z) or unix seconds"
    )))
}

#[derive(Serialize)]
struct UptimeView {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    nodes: Vec<NodeUptime>,
    /// Cursor of the next page (`after=`), absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

async fn uptime(
    State(state): State<CenterState>,
    params: Result<Query<UptimeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UptimeView>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let to = match &p.to {
        Some(v) => parse_time("to", v)?,
        None => Utc::now(),
    };
    let from = match &p.from {
        Some(v) => parse_time("from", v)?,
        None => to - chrono::Duration::days(1),
    };
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    if to - from > chrono::Duration::days(400) {
        return Err(ApiError::bad_request("the window may not exceed 400 days"));
    }
    let wanted: Option<Vec<String>> = match &p.node {
        None => None,
        Some(list) => {
            let ids: Vec<String> = list.split(',').map(str::to_owned).collect();
            if ids.len() > UPTIME_MAX_NODES {
                return Err(ApiError::bad_request(format!(
                    "node may name at most {UPTIME_MAX_NODES} nodes (got {}); page through all nodes with limit and after instead",
                    ids.len()
                )));
            }
            for id in &ids {
                check_node_id("node", id)?;
            }
            Some(ids)
        }
    };
    if let Some(a) = &p.after {
        check_node_id("after", a)?;
    }
    let limit = p.limit.unwrap_or(UPTIME_PAGE.0);
    if !(1..=UPTIME_PAGE.1).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {}",
            UPTIME_PAGE.1
        )));
    }
    let nodes = UptimeQuery { pool: &state.pool }
        .page(from, to, wanted.as_deref(), p.after.as_deref(), limit)
        .await?;
    let next = (nodes.len() as i64 == limit)
        .then(|| nodes.last().map(|n| n.node_id.clone()))
        .flatten();
    Ok(Json(UptimeView {
        from,
        to,
        nodes,
        next,
    }))
}

async fn ready(State(state): State<CenterState>) -> impl IntoResponse {
    let redis_ok = match state.redis.conn().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    };
    let pg_ok = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let status = if redis_ok && pg_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"redis": redis_ok, "postgres": pg_ok})),
    )
}
