//! The server inventory (issue 12, M1): `/api/v1/servers`, the operators'
//! side of the fleet beside what the health group measures.
//!
//! - `GET /api/v1/servers`: filters (`status`, `service`, `cdn_type`,
//!   `tag`, `q`), `sort` from an allow-list, cursor pagination
//!   (`limit`, `cursor`); a read (open unless `auth.protect_reads`);
//! - `POST /api/v1/servers`: registers a server, 201 + `Location`;
//! - `GET /api/v1/servers/{id}`: one server with its `ETag` (the version
//!   counter), 304 on a matching `If-None-Match`;
//! - `PATCH /api/v1/servers/{id}`: a JSON merge patch (RFC 7396,
//!   `application/merge-patch+json`) of the operator fields, only with
//!   `If-Match` (428 without, 412 when stale; the check is the `UPDATE`'s
//!   own `WHERE version = …`, see [`store`]);
//! - `DELETE /api/v1/servers/{id}`: decommissions it (kept for history):
//!   it leaves the fleet view in Redis, which the center, the dashboard and
//!   the balancer read, and the health group refuses its reports.
//!
//! Writes need an admin token (`weir-auth`'s `require_admin`). Every error
//! is `application/problem+json` naming the field at fault ([`problem`]),
//! the auth layer's refusals included.

pub mod cursor;
pub mod fields;
pub mod problem;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_auth::{require_admin, require_read, AdminAuth};
use weir_core::InternalEvent;

use crate::api::CenterState;
use crate::events::ServerChanged;
use cursor::{Cursor, Sort, SortField};
use fields::{check_id, check_text, parse_create, FieldError, OperatorFields, MAX_BODY};
use problem::Problem;
use store::{Filter, ServerView};

/// Servers per page by default.
pub const PAGE_DEFAULT: i64 = 50;
/// Most servers per page.
pub const PAGE_MAX: i64 = 500;
/// Longest filter value (`q` included).
const MAX_FILTER: usize = 255;
/// The media type of a merge patch.
pub const MERGE_PATCH_JSON: &str = "application/merge-patch+json";

/// What an id keeps unescaped in a `Location` (RFC 3986 unreserved).
const ID_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl From<FieldError> for Problem {
    fn from(e: FieldError) -> Self {
        Problem::invalid(e.field, e.detail)
    }
}

/// The inventory's routes: reads behind `require_read`, writes behind
/// `require_admin`, bodies bounded by [`MAX_BODY`].
pub fn routes(auth: Arc<AdminAuth>) -> Router<CenterState> {
    let reads = Router::new()
        .route("/api/v1/servers", get(list))
        .route("/api/v1/servers/{id}", get(show))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_read,
        ));
    let writes = Router::new()
        .route("/api/v1/servers", axum::routing::post(create))
        .route(
            "/api/v1/servers/{id}",
            axum::routing::patch(update).delete(decommission),
        )
        .route_layer(axum::middleware::from_fn_with_state(auth, require_admin));
    reads
        .merge(writes)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Outermost: the auth layer's refusals come out as problems too.
        .layer(axum::middleware::from_fn(problem::as_problem))
}

/// The strong ETag of a version.
fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// What a conditional header names.
#[derive(Debug, PartialEq)]
enum Condition {
    /// `*`: any current version.
    Any,
    /// The versions of the entity tags listed (weak ones and tags this
    /// server never made match nothing).
    Versions(Vec<i64>),
}

impl Condition {
    fn matches(&self, version: i64) -> bool {
        match self {
            Condition::Any => true,
            Condition::Versions(v) => v.contains(&version),
        }
    }
}

/// Parses `If-Match` / `If-None-Match`; `None` when absent. With `weak`
/// (If-None-Match), `W/"3"` matches version 3, as RFC 9110's weak
/// comparison says; If-Match compares strongly.
fn condition(
    headers: &HeaderMap,
    name: &'static str,
    weak: bool,
) -> Result<Option<Condition>, Problem> {
    let Some(raw) = headers.get(name) else {
        return Ok(None);
    };
    let bad = || {
        Problem::bad_parameter(
            name,
            format!("{name} must be * or a list of entity tags such as \"3\""),
        )
    };
    let text = raw.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(Condition::Any));
    }
    let mut versions = Vec::new();
    for tag in text.split(',').map(str::trim) {
        let (is_weak, quoted) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let inner = quoted
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(bad)?;
        if is_weak && !weak {
            continue;
        }
        if let Ok(v) = inner.parse::<i64>() {
            versions.push(v);
        }
    }
    Ok(Some(Condition::Versions(versions)))
}

/// The body as JSON, or the problem with it.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, Problem> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(MAX_BODY)
        } else {
            Problem::bad_body(e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_body(format!(
            "the body is not valid JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            // serde's own words, without echoing the input back.
            match e.classify() {
                serde_json::error::Category::Eof => "it ends too early".to_string(),
                _ => e
                    .to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            }
        ))
    })
}

/// Refuses a body whose `Content-Type` is not `wanted`.
fn require_media_type(headers: &HeaderMap, wanted: &'static str) -> Result<(), Problem> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted));
    if ok {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(wanted))
    }
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(id) = p.map_err(|e| Problem::bad_parameter("id", e.body_text()))?;
    check_id("id", &id).map_err(|e| Problem::bad_parameter("id", e.detail))?;
    Ok(id)
}

/// A server with its ETag.
fn with_etag(status: StatusCode, view: &ServerView) -> Response {
    let mut resp = (status, Json(view)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(view.version));
    resp
}

/// A page of servers.
#[derive(Serialize)]
struct Page {
    servers: Vec<ServerView>,
    /// `cursor=` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The query parameters of a list, each checked by name.
const LIST_PARAMS: [&str; 8] = [
    "status", "service", "cdn_type", "tag", "q", "sort", "limit", "cursor",
];

async fn list(
    State(state): State<CenterState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(p) = query.map_err(|e| Problem::bad_parameter("query", e.body_text()))?;
    if let Some(k) = p.keys().find(|k| !LIST_PARAMS.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(Problem::bad_parameter(
            shown.clone(),
            format!(
                "unknown parameter {shown:?}; the parameters are {}",
                LIST_PARAMS.join(", ")
            ),
        ));
    }
    let filter_value = |name: &str| -> Result<Option<String>, Problem> {
        match p.get(name) {
            None => Ok(None),
            Some(v) => {
                check_text(name, v, MAX_FILTER, false)
                    .map_err(|e| Problem::bad_parameter(name, e.detail))?;
                Ok(Some(v.clone()))
            }
        }
    };
    let status = filter_value("status")?;
    if let Some(s) = &status {
        if s != "active" && s != "decommissioned" {
            return Err(Problem::bad_parameter(
                "status",
                "status must be active or decommissioned",
            ));
        }
    }
    let filter = Filter {
        status,
        service: filter_value("service")?,
        cdn_type: filter_value("cdn_type")?,
        tag: filter_value("tag")?,
        q: filter_value("q")?,
    };
    let sort = match p.get("sort") {
        None => Sort::default(),
        Some(s) => Sort::parse(s).ok_or_else(|| {
            let names: Vec<&str> = SortField::ALL.iter().map(|f| f.as_str()).collect();
            Problem::bad_parameter(
                "sort",
                format!(
                    "sort must be one of {} (a leading - sorts descending)",
                    names.join(", ")
                ),
            )
        })?,
    };
    let limit = match p.get("limit") {
        None => PAGE_DEFAULT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                Problem::bad_parameter(
                    "limit",
                    format!("limit must be a whole number from 1 to {PAGE_MAX}"),
                )
            })?,
    };
    let after = match p.get("cursor") {
        None => None,
        Some(c) => {
            let c =
                Cursor::decode(c).map_err(|e| Problem::bad_parameter("cursor", e.to_string()))?;
            if c.sort != sort {
                return Err(Problem::bad_parameter(
                    "cursor",
                    format!(
                        "this cursor pages sort={}, not sort={}; send the same sort with it",
                        c.sort.as_param(),
                        sort.as_param()
                    ),
                ));
            }
            Some(c)
        }
    };
    let (servers, more) = store::list(state.pool(), &filter, sort, after.as_ref(), limit).await?;
    let next_cursor = more.then(|| servers.last()).flatten().map(|last| {
        Cursor {
            sort,
            key: last.sort_key(sort.field),
            id: last.id.clone(),
        }
        .encode()
    });
    Ok(Json(Page {
        servers,
        next_cursor,
    })
    .into_response())
}

async fn show(
    State(state): State<CenterState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let unless = condition(&headers, "If-None-Match", true)?;
    let view = store::get(state.pool(), &id).await?.ok_or_else(|| {
        Problem::not_found(format!("no server {id:?} is registered or reporting"))
    })?;
    if unless.is_some_and(|c| c.matches(view.version)) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag(view.version));
        return Ok(resp);
    }
    Ok(with_etag(StatusCode::OK, &view))
}

async fn create(
    State(state): State<CenterState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    require_media_type(&headers, "application/json")?;
    let doc = json_body(body)?;
    let (id, fields) = parse_create(&doc)?;
    if !store::insert(state.pool(), &id, &fields).await? {
        return Err(Problem::conflict(format!(
            "server {id:?} is registered already (decommissioned servers keep their id); PATCH it instead"
        )));
    }
    let view = store::get(state.pool(), &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("server {id:?} vanished")))?;
    ServerChanged {
        action: "created",
        id: &id,
        version: view.version,
    }
    .emit();
    let mut resp = with_etag(StatusCode::CREATED, &view);
    let location = format!("/api/v1/servers/{}", utf8_percent_encode(&id, ID_ESCAPE));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn update(
    State(state): State<CenterState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let wanted =
        condition(&headers, "If-Match", false)?.ok_or_else(Problem::precondition_required)?;
    require_media_type(&headers, MERGE_PATCH_JSON)?;
    let patch = json_body(body)?;
    if !patch.is_object() {
        return Err(Problem::bad_body(
            "a merge patch of a server must be a JSON object of the fields to change (null removes one)",
        ));
    }
    let cur = store::get(state.pool(), &id).await?.ok_or_else(|| {
        Problem::not_found(format!("no server {id:?} is registered or reporting"))
    })?;
    if !wanted.matches(cur.version) {
        return Err(Problem::precondition_failed(cur.version));
    }
    let mut doc = cur.fields.to_json();
    fields::merge_patch(&mut doc, &patch);
    let Value::Object(obj) = &doc else {
        return Err(Problem::bad_body("the patched server is not an object"));
    };
    let next: OperatorFields = OperatorFields::from_json(obj)?;
    let Some(version) = store::update(state.pool(), &id, cur.version, &next).await? else {
        // Someone wrote between our read and our write: theirs stands.
        let now = store::get(state.pool(), &id)
            .await?
            .map_or(cur.version, |v| v.version);
        return Err(Problem::precondition_failed(now));
    };
    ServerChanged {
        action: "patched",
        id: &id,
        version,
    }
    .emit();
    let view = store::get(state.pool(), &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("server {id:?} vanished")))?;
    Ok(with_etag(StatusCode::OK, &view))
}

async fn decommission(
    State(state): State<CenterState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let wanted = condition(&headers, "If-Match", false)?;
    let cur = store::get(state.pool(), &id).await?.ok_or_else(|| {
        Problem::not_found(format!("no server {id:?} is registered or reporting"))
    })?;
    if let Some(w) = &wanted {
        if !w.matches(cur.version) {
            return Err(Problem::precondition_failed(cur.version));
        }
    }
    if !cur.decommissioned() {
        let expect = match wanted {
            Some(Condition::Versions(_)) => Some(cur.version),
            _ => None,
        };
        match store::decommission(state.pool(), &id, expect).await? {
            Some(version) => ServerChanged {
                action: "decommissioned",
                id: &id,
                version,
            }
            .emit(),
            None => {
                let now = store::get(state.pool(), &id).await?;
                if !now.as_ref().is_some_and(ServerView::decommissioned) {
                    return Err(Problem::precondition_failed(
                        now.map_or(cur.version, |v| v.version),
                    ));
                }
            }
        }
    }
    // Also when it was decommissioned already: a retry repairs Redis after
    // a failure there.
    leave_fleet(&state, std::slice::from_ref(&id)).await?;
    let view = store::get(state.pool(), &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("server {id:?} vanished")))?;
    Ok(with_etag(StatusCode::OK, &view))
}

/// Takes decommissioned servers out of the fleet view in Redis, in one
/// transaction: into the decommissioned set (which the health group's
/// script checks before it writes), out of the index and the live keys.
/// And out of this center's dashboard.
async fn leave_fleet(state: &CenterState, ids: &[String]) -> Result<(), Problem> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = state.redis.conn().await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("SADD")
        .arg(state.keys.decommissioned())
        .arg(ids)
        .ignore();
    pipe.cmd("ZREM").arg(state.keys.nodes()).arg(ids).ignore();
    let live: Vec<String> = ids.iter().map(|id| state.keys.node(id)).collect();
    pipe.cmd("DEL").arg(&live).ignore();
    let () = pipe.query_async(&mut conn).await?;
    for id in ids {
        state.hub.forget(id);
    }
    Ok(())
}

/// Copies the decommissioned servers of PostgreSQL (the truth) into Redis
/// at start, retrying until it succeeds or `shutdown`: a Redis that lost
/// its data must not let a decommissioned server back into the fleet.
pub(crate) async fn sync_decommissioned(state: CenterState, shutdown: CancellationToken) {
    loop {
        let attempt = async {
            let ids = store::decommissioned(state.pool()).await?;
            for chunk in ids.chunks(1000) {
                leave_fleet(&state, chunk).await?;
            }
            Ok::<usize, Problem>(ids.len())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(n)) => {
                info!(servers = n, "decommissioned servers copied to Redis");
                return;
            }
            Ok(Err(p)) => {
                warn!(detail = %p.detail, "cannot copy decommissioned servers to Redis yet")
            }
            Err(_) => warn!("copying decommissioned servers to Redis timed out"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn conditions_parse_entity_tags() {
        let c = |v: &str, weak: bool| condition(&headers("if-match", v), "If-Match", weak);
        assert_eq!(c("*", false).expect("ok"), Some(Condition::Any));
        assert_eq!(
            c("\"3\", \"5\"", false).expect("ok"),
            Some(Condition::Versions(vec![3, 5]))
        );
        // If-Match compares strongly: a weak tag matches nothing.
        assert_eq!(
            c("W/\"3\"", false).expect("ok"),
            Some(Condition::Versions(vec![]))
        );
        assert_eq!(
            c("W/\"3\"", true).expect("ok"),
            Some(Condition::Versions(vec![3]))
        );
        // A tag this server never made is valid and matches nothing.
        assert_eq!(
            c("\"abc\"", false).expect("ok"),
            Some(Condition::Versions(vec![]))
        );
        for bad in ["3", "\"3", "", "W/3"] {
            let e = c(bad, false).expect_err(bad);
            assert_eq!(e.field.as_deref(), Some("If-Match"), "{bad}");
        }
        assert_eq!(
            condition(&HeaderMap::new(), "If-Match", false).expect("ok"),
            None
        );
    }
}
