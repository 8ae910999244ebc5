//! The edge's HTTP surface: the client router (`GET`/`HEAD` of objects, one
//! access event per request) and the admin router (purge, upload, fetch,
//! `/livez`, `/readyz`), as plain functions so tests drive them in process,
//! and [`serve`] which runs both on their listeners until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};
use weir_auth::{auth_routes, require_admin, AdminAuth};
use weir_core::http::ApiError;
use weir_core::InternalEventHandle;
use weir_schemas::CacheOutcome;

use crate::access::{loggable_key, AccessRecord};
use crate::edge::Edge;
use crate::events::{outcome_label, Served};
use crate::keys::object_key;
use crate::lookup::ObjectRequest;
use crate::plan::Conditions;
use crate::reply::{hv, Reply, ReplyBody};

/// The client router: every path is an object (`GET` and `HEAD`).
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new().fallback(client_request).with_state(edge)
}

/// The admin router: purge, upload and fetch behind `auth` (an admin-scope
/// token, not revoked), health open, and the auth routes (logout, JWKS).
pub fn admin_router(edge: Arc<Edge>, auth: Arc<AdminAuth>) -> Router {
    let writes = Router::new()
        .route("/cache", delete(purge_prefix))
        .route("/cache/{*key}", delete(purge_one))
        .route(
            "/upload",
            post(crate::upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/fetch", post(crate::upload::fetch))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_admin,
        ));
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .merge(writes)
        .merge(auth_routes(auth))
        .layer(axum::middleware::from_fn(crate::upload::same_origin_only))
        .with_state(edge)
}

/// Serves client traffic on `client` and admin endpoints (plus
/// `extra_admin`, e.g. `/metrics`) on `admin`, authenticated by `auth`,
/// until `shutdown`.
pub async fn serve(
    client: TcpListener,
    admin: TcpListener,
    edge: Arc<Edge>,
    extra_admin: Router,
    auth: Arc<AdminAuth>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(edge.clone());
    let limits = edge.conn_limits();
    let admin_app = admin_router(edge, auth).merge(extra_admin);
    info!(client = %client.local_addr()?, admin = %admin.local_addr()?, "edge listening");
    let (s1, s2) = (shutdown.clone(), shutdown);
    let c = weir_core::listener::serve_limited(client, app, limits, s1);
    let a =
        axum::serve(admin, admin_app).with_graceful_shutdown(async move { s2.cancelled().await });
    tokio::try_join!(c, std::future::IntoFuture::into_future(a))?;
    Ok(())
}

/// `x-request-id`, a constant rather than a name parsed on every request.
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
/// `x-cache`.
static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");

/// A request id unique across processes and restarts without a random
/// number per request: a random process prefix and a counter.
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    let n = N.fetch_add(1, Ordering::Relaxed);
    // `{prefix}{n:016x}`, without the formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    for shift in (0..16).rev() {
        id.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

/// Records the access event when the body is done (or dropped).
struct AccessGuard {
    edge: Arc<Edge>,
    record: Option<AccessRecord>,
    sent: u64,
    start: Instant,
}

impl Drop for AccessGuard {
    fn drop(&mut self) {
        if let (Some(log), Some(mut r)) = (&self.edge.access, self.record.take()) {
            r.bytes_sent = self.sent;
            r.total_latency_us = self.start.elapsed().as_micros() as u64;
            log.record(r);
        }
    }
}

/// An error as a [`Reply`], so that it is accounted like any answer.
async fn error_reply(e: ApiError, head: bool) -> Reply {
    let (mut parts, body) = e.into_response().into_parts();
    if parts.status == StatusCode::METHOD_NOT_ALLOWED {
        parts
            .headers
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: if head {
            ReplyBody::Empty
        } else {
            ReplyBody::Bytes(body)
        },
        cache: CacheOutcome::Bypass,
        object_size: None,
        origin_us: 0,
    }
}

/// One client request, inside a span carrying its request id, method and
/// (once decoded) key, so every log line of its lookup and fill names it.
async fn client_request(State(edge): State<Arc<Edge>>, req: Request) -> Response {
    let request_id = next_request_id();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        key = tracing::field::Empty,
    );
    answer(edge, req, request_id).instrument(span).await
}

async fn answer(edge: Arc<Edge>, req: Request, request_id: String) -> Response {
    let start = Instant::now();
    let ts = Utc::now();
    // Absent when the router is driven without a socket (tests).
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let headers = req.headers();
    let raw_path = req.uri().path();
    let conditions = Conditions::from_headers(headers);
    let range = conditions.range.map(str::to_string);
    // The decoded key once there is one, else the raw path.
    let mut decoded_key: Option<String> = None;
    let result = if method != Method::GET && !head {
        Err(ApiError::method_not_allowed())
    } else {
        match object_key(raw_path, &edge.bucket, &edge.cfg.buckets) {
            Err(e) => Err(ApiError::bad_request(e.to_string())),
            Ok(obj) => {
                tracing::Span::current().record("key", obj.key.as_str());
                decoded_key = Some(obj.key.clone());
                let req = ObjectRequest {
                    obj,
                    conditions,
                    head,
                };
                edge.serve(&req).await
            }
        }
    };
    let reply = match result {
        Ok(r) => r,
        Err(e) => error_reply(e, head).await,
    };
    let status = reply.status;
    let cache = reply.cache;
    edge.requests.emit(Served {
        cache,
        status: status.as_u16(),
        duration: start.elapsed(),
    });
    let request_id_value = hv(&request_id);
    let record = edge.access.as_ref().map(|_| AccessRecord {
        ts,
        request_id,
        method: method.to_string(),
        object_key: loggable_key(decoded_key.as_deref().unwrap_or(raw_path)),
        range,
        status: status.as_u16(),
        bytes_sent: 0,
        object_size: reply.object_size,
        cache,
        origin_latency_us: reply.origin_us,
        total_latency_us: 0,
        client_addr: peer,
    });
    let mut guard = AccessGuard {
        edge: edge.clone(),
        record,
        sent: 0,
        start,
    };
    let body = match reply.body {
        ReplyBody::Empty => Body::empty(),
        ReplyBody::Bytes(b) => {
            guard.sent = b.len() as u64;
            drop(guard);
            Body::from(b)
        }
        ReplyBody::Stream(mut s) => Body::from_stream(async_stream::stream! {
            let mut guard = guard;
            while let Some(item) = s.next().await {
                if let Ok(b) = &item {
                    guard.sent += b.len() as u64;
                }
                yield item;
            }
        }),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = reply.headers;
    resp.headers_mut().insert(&X_REQUEST_ID, request_id_value);
    resp.headers_mut()
        .insert(&X_CACHE, HeaderValue::from_static(outcome_label(cache)));
    resp
}

/// `DELETE /cache?prefix=…&bucket=…`.
#[derive(Debug, Deserialize)]
struct PurgeQuery {
    prefix: Option<String>,
    bucket: Option<String>,
}

async fn purge_prefix(
    State(edge): State<Arc<Edge>>,
    Query(q): Query<PurgeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let prefix = q
        .prefix
        .ok_or_else(|| ApiError::bad_request("prefix is required (use prefix= for everything)"))?;
    let bucket = q.bucket.unwrap_or_else(|| edge.bucket.clone());
    if !edge.cfg.buckets.is_empty() && !edge.cfg.buckets.contains(&bucket) {
        return Err(ApiError::bad_request("unknown bucket"));
    }
    let shared = edge.purge_prefix(&bucket, &prefix).await;
    Ok(Json(json!({
        "purged_prefix": prefix,
        "bucket": bucket,
        "redis_entries": shared,
        "redis": shared.is_some(),
    })))
}

/// `DELETE /cache/{key}` (the key as in a client URL).
async fn purge_one(
    State(edge): State<Arc<Edge>>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/cache").unwrap_or(path);
    let obj = object_key(rest, &edge.bucket, &edge.cfg.buckets)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let redis = edge.purge(&obj).await;
    Ok(Json(
        json!({ "purged": obj.key, "bucket": obj.bucket, "redis": redis }),
    ))
}
