//! E8: storing objects into S3 through the edge — a client's multipart form
//! (`POST /upload`) or the body at a URL (`POST /fetch`) — answering the new
//! object's edge URL.
//!
//! Both are on the admin address: writing to the bucket is an operator's
//! action, and `/fetch` makes the edge request arbitrary URLs, which must not
//! be offered to the public. Bodies are read up to `edge.upload_max` bytes
//! (413 past it) and then stored with one `PutObject`; a fetch follows at
//! most `edge.fetch_max_redirects` redirects and gives up after
//! `edge.fetch_timeout`; it never goes to an internal address unless
//! `edge.fetch_allow` says so ([`crate::destination`]), and admin writes from
//! another site's web page are refused ([`same_origin_only`]). Any cached copy of the key is purged, so the edge
//! serves the new object at once.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::destination::Refused;
use crate::edge::Edge;
use crate::keys::{object_key, ObjectKey};
use weir_core::http::ApiError;

/// `POST /fetch` body.
#[derive(Debug, Deserialize)]
pub struct FetchRequest {
    /// `http://` URL to read the object from.
    pub url: String,
    /// Key to store it under (as in an edge URL path, without the leading
    /// `/`, not percent-encoded).
    pub key: String,
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than edge.upload_max ({max} bytes)"),
    )
}

/// Validates a key given in a form or JSON (not percent-encoded) with the
/// same rules as request paths.
fn key_of(edge: &Edge, key: &str) -> Result<ObjectKey, ApiError> {
    // Keys are taken literally: `%` in a form key is a percent sign.
    let obj = object_key(
        &format!("/{}", key.replace('%', "%25")),
        edge.bucket(),
        edge.buckets(),
    )
    .map_err(|e| ApiError::bad_request(format!("key: {e}")))?;
    Ok(obj)
}

async fn store(
    edge: &Arc<Edge>,
    obj: ObjectKey,
    body: Bytes,
    content_type: Option<String>,
) -> Result<Response, ApiError> {
    let size = body.len();
    let out = edge
        .origin()
        .client()
        .put_object()
        .bucket(&obj.bucket)
        .key(&obj.key)
        .set_content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| ApiError::bad_gateway(aws_sdk_s3::error::DisplayErrorContext(e)))?;
    edge.purge(&obj).await;
    let url = edge.url_of(&obj);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, url.clone())],
        Json(json!({
            "url": url,
            "bucket": obj.bucket,
            "key": obj.key,
            "size": size,
            "etag": out.e_tag(),
        })),
    )
        .into_response())
}

/// `POST /upload`: a multipart form with a `file` part and an optional
/// `key` field (default: the file name).
pub async fn upload(
    State(edge): State<Arc<Edge>>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let max = edge.upload_max();
    let mut key: Option<String> = None;
    let mut file: Option<(Option<String>, Option<String>, Bytes)> = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("form: {e}")))?
    {
        match field.name() {
            Some("key") => {
                key = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| ApiError::bad_request(format!("key: {e}")))?,
                );
            }
            Some("file") => {
                let name = field.file_name().map(str::to_string);
                let ctype = field.content_type().map(str::to_string);
                let mut buf = BytesMut::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("file: {e}")))?
                {
                    if (buf.len() + chunk.len()) as u64 > max {
                        return Err(too_large(max));
                    }
                    buf.extend_from_slice(&chunk);
                }
                file = Some((name, ctype, buf.freeze()));
            }
            _ => {}
        }
    }
    let (name, ctype, body) =
        file.ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
    let key = key
        .or(name)
        .ok_or_else(|| ApiError::bad_request("no `key` field and no file name"))?;
    let obj = key_of(&edge, &key)?;
    store(&edge, obj, body, ctype).await
}

/// `POST /fetch`: reads `url` (following a few redirects, within the size
/// limit and the timeout) and stores it under `key`. Every hop's
/// destination is resolved and checked here ([`crate::destination`]) and
/// the connection is pinned to the checked addresses.
pub async fn fetch(
    State(edge): State<Arc<Edge>>,
    Json(req): Json<FetchRequest>,
) -> Result<Response, ApiError> {
    let obj = key_of(&edge, &req.key)?;
    let (max_redirects, timeout) = edge.fetch_limits();
    let (body, ctype) = tokio::time::timeout(timeout, download(&edge, &req.url, max_redirects))
        .await
        .map_err(|_| ApiError::gateway_timeout())??;
    store(&edge, obj, body, ctype).await
}

fn refused(e: Refused) -> ApiError {
    match e {
        Refused::Forbidden { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

async fn download(
    edge: &Edge,
    url: &str,
    max_redirects: usize,
) -> Result<(Bytes, Option<String>), ApiError> {
    let mut url =
        reqwest::Url::parse(url).map_err(|e| ApiError::bad_request(format!("url: {e}")))?;
    let max = edge.upload_max();
    let mut hops = 0;
    let resp = loop {
        let (host, addrs) = edge.fetch_policy().resolve(&url).await.map_err(refused)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .no_proxy()
            .build()
            .map_err(ApiError::bad_gateway)?;
        let resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(ApiError::bad_gateway)?;
        if !resp.status().is_redirection() {
            break resp;
        }
        let Some(next) = resp
            .headers()
            .get(axum::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok())
        else {
            break resp;
        };
        hops += 1;
        if hops > max_redirects {
            return Err(ApiError::bad_request("url: too many redirects"));
        }
        url = next;
    };
    if !resp.status().is_success() {
        return Err(ApiError::bad_gateway(format!(
            "source answered {}",
            resp.status()
        )));
    }
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let ctype = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ApiError::bad_gateway)?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), ctype))
}

/// Refuses admin writes a browser sends on behalf of another site (a form
/// on a web page posting to the admin address): `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` whose host is not the one
/// addressed. Clients that are not browsers send neither and pass.
pub async fn same_origin_only(req: axum::extract::Request, next: Next) -> Response {
    use axum::http::header;
    let h = req.headers();
    let text = |n: header::HeaderName| h.get(n).map(|v| v.to_str().unwrap_or("\u{0}"));
    let cross_site = match text(header::HeaderName::from_static("sec-fetch-site")) {
        Some(site) => !matches!(site, "same-origin" | "none"),
        None => false,
    };
    let foreign_origin = match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), host) => {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            origin_host.is_none() || origin_host != host
        }
        (None, _) => false,
    };
    let writes =
        req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    if writes && (cross_site || foreign_origin) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "admin writes are not accepted from another site",
        )
        .into_response();
    }
    next.run(req).await
}
