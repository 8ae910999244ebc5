//! Errors of the inventory API as `application/problem+json` (RFC 9457):
//! `type`, `title`, `status`, `detail`, and `field` naming the offending
//! field, parameter or header, so that a client (or an operator reading a
//! script's output) knows what to fix without guessing.
//!
//! Store failures become 503 with a generic detail; the cause is logged
//! once, here, and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;

/// The media type of every error body of the inventory API.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem, as sent.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:weir:problem:…`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed summary of the kind.
    pub title: &'static str,
    /// The HTTP status, repeated for clients that only keep the body.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The field (`name`, `tags[3]`), query parameter (`cursor`) or header
    /// (`If-Match`) at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:weir:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// The same problem naming `field`.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: a field of the body is invalid.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            "A field of the request is invalid",
            detail,
        )
        .at(field)
    }

    /// 400: the body is not a JSON document of the expected shape.
    pub fn bad_body(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "The request body is not acceptable",
            detail,
        )
    }

    /// 400: a query parameter or header is invalid.
    pub fn bad_parameter(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "A parameter of the request is invalid",
            detail,
        )
        .at(name)
    }

    /// 404: no such server.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such server", detail)
    }

    /// 409: the server already exists.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            "The server already exists",
            detail,
        )
        .at("id")
    }

    /// 428: a write that needs `If-Match` came without it.
    pub fn precondition_required() -> Self {
        Self::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition-required",
            "If-Match is required",
            "send If-Match with the ETag of the version you read (GET the server first), so that no one else's change is overwritten",
        )
        .at("If-Match")
    }

    /// 412: the version sent in `If-Match` is not the current one.
    pub fn precondition_failed(current: i64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "The server changed since it was read",
            format!(
                "If-Match does not name the current version (ETag \"{current}\"); GET the server again, re-apply your change and retry"
            ),
        )
        .at("If-Match")
    }

    /// 413: the body exceeds the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "The request body is too large",
            format!("bodies are limited to {limit} bytes"),
        )
    }

    /// 415: the body's media type is not the one the method takes.
    pub fn unsupported_media_type(wanted: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("send the body as Content-Type: {wanted}"),
        )
        .at("Content-Type")
    }

    /// 503: a store is down; the cause is logged here, not sent.
    pub fn unavailable(dependency: &'static str, cause: impl std::fmt::Display) -> Self {
        warn!(dependency, error = %cause, "inventory: dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A store is unavailable",
            format!("{dependency} is unavailable; retry shortly"),
        )
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Middleware: answers that other layers made for the inventory's routes
/// (the auth layer's 401/403/503, axum's 405) in the same problem+json
/// shape as the inventory's own, keeping their headers
/// (`WWW-Authenticate`, `Retry-After`, `Allow`).
pub async fn as_problem(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // The other layers' bodies are small JSON (`{"error": {code, message}}`)
    // or empty; anything larger is not one of them.
    let bytes = axum::body::to_bytes(body, 16 * 1024)
        .await
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = doc["error"]["code"].as_str().unwrap_or("http-error");
    let detail = doc["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let p = Problem {
        kind: format!("urn:weir:problem:{}", code.replace('_', "-")),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        field: (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
            .then(|| "Authorization".to_string()),
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&p).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Problem::unavailable("postgres", e)
    }
}

impl From<redis::RedisError> for Problem {
    fn from(e: redis::RedisError) -> Self {
        Problem::unavailable("redis", e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            h.insert(
                "accept-patch",
                HeaderValue::from_static("application/merge-patch+json"),
            );
        }
        resp
    }
}
