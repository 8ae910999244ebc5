//! Pieces every Weir HTTP server shares: the JSON error type that never leaks
//! internals, and request metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use crate::InternalEvent;

/// An error answered to an HTTP client as `{"error": {"code", "message"}}`.
/// Store failures become 503 with a generic message; the detail is logged
/// once, here, and not sent to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any status, with a machine-readable code and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a message naming the offending parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// 503 for a dependency that is down.
    pub fn unavailable(dependency: &'static str, detail: impl std::fmt::Display) -> Self {
        warn!(dependency, error = %detail, "dependency unavailable");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: format!("{dependency} is unavailable; retry shortly"),
        }
    }

    /// 405: the edge serves `GET` and `HEAD` only.
    pub fn method_not_allowed() -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "only GET and HEAD are served here".into(),
        }
    }

    /// 502: the origin failed or could not be reached.
    pub fn bad_gateway(detail: impl std::fmt::Display) -> Self {
        warn!(error = %detail, "origin failed");
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "bad_gateway",
            message: "the origin failed; retry shortly".into(),
        }
    }

    /// 504: the origin did not answer in time.
    pub fn gateway_timeout() -> Self {
        warn!("origin timed out");
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "gateway_timeout",
            message: "the origin did not answer in time".into(),
        }
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::unavailable("redis", e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::unavailable("postgres", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

/// Counts requests and their latency per route (the matched pattern, not the
/// raw path, so that labels stay few).
pub async fn track_metrics(server: &'static str, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    RequestServed {
        server,
        route,
        status: resp.status(),
        took: start.elapsed(),
    }
    .emit();
    resp
}

/// A request answered by one of Weir's API servers.
struct RequestServed {
    server: &'static str,
    route: String,
    status: StatusCode,
    took: std::time::Duration,
}

impl InternalEvent for RequestServed {
    fn emit(self) {
        tracing::debug!(
            server = self.server,
            route = %self.route,
            status = self.status.as_u16(),
            ms = self.took.as_millis() as u64,
            "request served"
        );
        metrics::counter!("weir_http_requests_total", "server" => self.server, "route" => self.route.clone(), "status" => self.status.as_u16().to_string())
            .increment(1);
        metrics::histogram!("weir_http_request_duration_seconds", "server" => self.server, "route" => self.route)
            .record(self.took.as_secs_f64());
    }
}

/// Help text of the API servers' request metrics (Prometheus `# HELP`;
/// `promtool check metrics` refuses metrics without it).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "weir_http_requests_total",
        "HTTP requests answered by an API server, by server, route and status"
    );
    metrics::describe_histogram!(
        "weir_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request of an API server, by server and route"
    );
}
