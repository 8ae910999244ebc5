//! E8: storing objects into S3 through the edge — a client's multipart form
//! (`POST /upload`) or the body at a URL (`POST /fetch`) — answering the new
//! object's edge URL.
//!
//! Both are on the admin address: writing to the bucket is an operator's
//! action, and `/fetch` makes the edge request arbitrary URLs, which must not
//! be offered to the public. Bodies are streamed to S3 up to
//! `edge.upload_max` bytes (413 past it): one `PutObject` for a body of one
//! part ([`PART`]) or less, else a multipart upload whose parts are sent as
//! they fill, so an upload holds about one part in memory whatever its size,
//! and is completed only once the whole body (and form) has been read; a
//! failed or refused upload is aborted and leaves no object. A fetch follows at
//! most `edge.fetch_max_redirects` redirects and gives up after
//! `edge.fetch_timeout`; it never goes to an internal address unless
//! `edge.fetch_allow` says so ([`crate::destination`]), and admin writes from
//! another site's web page are refused ([`same_origin_only`]). Any cached copy of the key is purged, so the edge
//! serves the new object at once.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
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

/// Bytes of one part of a streamed upload: S3 wants at least 5 MiB in every
/// part but the last.
pub(crate) const PART: usize = 8 * 1024 * 1024;

/// An object being written to S3 as its body arrives.
struct Upload<'a> {
    edge: &'a Arc<Edge>,
    obj: ObjectKey,
    content_type: Option<String>,
    max: u64,
    buf: BytesMut,
    size: u64,
    /// The multipart upload, once the body outgrew one part.
    multipart: Option<(String, Vec<CompletedPart>)>,
}

impl<'a> Upload<'a> {
    fn new(edge: &'a Arc<Edge>, obj: ObjectKey, content_type: Option<String>) -> Upload<'a> {
        Upload {
            edge,
            obj,
            content_type,
            max: edge.upload_max(),
            buf: BytesMut::new(),
            size: 0,
            multipart: None,
        }
    }

    fn s3(&self) -> &aws_sdk_s3::Client {
        self.edge.origin().client()
    }

    /// Takes the next bytes of the body; sends every full part but the
    /// last (the last may be short, and only the end says which it is).
    async fn push(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(too_large(self.max));
        }
        self.buf.extend_from_slice(chunk);
        while self.buf.len() > PART {
            let part = self.buf.split_to(PART).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), ApiError> {
        let (id, parts) = match &mut self.multipart {
            Some(m) => m,
            None => {
                let created = self
                    .s3()
                    .create_multipart_upload()
                    .bucket(&self.obj.bucket)
                    .key(&self.obj.key)
                    .set_content_type(self.content_type.clone())
                    .send()
                    .await
                    .map_err(s3_error)?;
                let id = created
                    .upload_id()
                    .ok_or_else(|| ApiError::bad_gateway("S3 gave no upload id"))?;
                self.multipart.insert((id.to_string(), Vec::new()))
            }
        };
        let number = parts.len() as i32 + 1;
        let sent = self
            .edge
            .origin()
            .client()
            .upload_part()
            .bucket(&self.obj.bucket)
            .key(&self.obj.key)
            .upload_id(id.as_str())
            .part_number(number)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(s3_error)?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    /// Stores what was pushed: `PutObject`, or the last part and the
    /// multipart upload's completion. Answers the object's ETag.
    async fn finish(&mut self) -> Result<Option<String>, ApiError> {
        let rest = std::mem::take(&mut self.buf).freeze();
        if self.multipart.is_none() {
            let out = self
                .s3()
                .put_object()
                .bucket(&self.obj.bucket)
                .key(&self.obj.key)
                .set_content_type(self.content_type.clone())
                .body(ByteStream::from(rest))
                .send()
                .await
                .map_err(s3_error)?;
            return Ok(out.e_tag().map(str::to_string));
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let Some((id, parts)) = self.multipart.take() else {
            return Err(ApiError::bad_gateway("no multipart upload"));
        };
        let completed = self
            .s3()
            .complete_multipart_upload()
            .bucket(&self.obj.bucket)
            .key(&self.obj.key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(out) => Ok(out.e_tag().map(str::to_string)),
            Err(e) => {
                // Not completed: put it back for the caller's abort.
                self.multipart = Some((id, Vec::new()));
                Err(s3_error(e))
            }
        }
    }

    /// Gives up: a multipart upload started is aborted, so S3 keeps none
    /// of its parts (and no object appears).
    async fn abort(&mut self) {
        if let Some(abort) = self.abort_request() {
            if let Err(e) = abort.send().await {
                tracing::warn!(key = %self.obj.key, error = %aws_sdk_s3::error::DisplayErrorContext(e), "could not abort a multipart upload; S3's lifecycle rules must clean it up");
            }
        }
    }

    /// The request that aborts the multipart upload started, if any (and
    /// forgets it).
    fn abort_request(
        &mut self,
    ) -> Option<
        aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder,
    > {
        let (id, _) = self.multipart.take()?;
        Some(
            self.s3()
                .abort_multipart_upload()
                .bucket(&self.obj.bucket)
                .key(&self.obj.key)
                .upload_id(id),
        )
    }

    /// Finishes (or, on an error, aborts) and answers the new object's URL.
    async fn store(mut self, body: Result<(), ApiError>) -> Result<Response, ApiError> {
        let etag = match body {
            Ok(()) => self.finish().await,
            Err(e) => Err(e),
        };
        let etag = match etag {
            Ok(t) => t,
            Err(e) => {
                self.abort().await;
                return Err(e);
            }
        };
        let edge = self.edge;
        let obj = self.obj.clone();
        edge.purge(&obj).await;
        let url = edge.url_of(&obj);
        Ok((
            StatusCode::CREATED,
            [(axum::http::header::LOCATION, url.clone())],
            Json(json!({
                "url": url,
                "bucket": obj.bucket,
                "key": obj.key,
                "size": self.size,
                "etag": etag,
            })),
        )
            .into_response())
    }
}

impl Drop for Upload<'_> {
    /// A client that goes away mid-upload drops the handler, and this with
    /// it: the multipart upload started is aborted in the background, so S3
    /// does not keep its parts.
    fn drop(&mut self) {
        if let (Some(abort), Ok(rt)) = (self.abort_request(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                let _ = abort.send().await;
            });
        }
    }
}

fn s3_error<E: std::error::Error + 'static>(e: aws_sdk_s3::error::SdkError<E>) -> ApiError {
    ApiError::bad_gateway(aws_sdk_s3::error::DisplayErrorContext(e))
}

/// `POST /upload`: a multipart form with a `file` part and an optional
/// `key` field (default: the file name). The file is streamed to S3 as it
/// arrives; a `key` field after the file still names it when the file fits
/// in one part, but a larger file must come after its key (its multipart
/// upload has started under the file name by then: 400, nothing stored).
pub async fn upload(
    State(edge): State<Arc<Edge>>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let mut key: Option<String> = None;
    let mut up: Option<Upload<'_>> = None;
    let read = async {
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("form: {e}")))?
        {
            match field.name() {
                Some("key") => {
                    let k = field
                        .text()
                        .await
                        .map_err(|e| ApiError::bad_request(format!("key: {e}")))?;
                    if let Some(u) = &mut up {
                        if u.multipart.is_some() {
                            return Err(ApiError::bad_request(format!(
                                "send the `key` field before a file larger than {PART} bytes"
                            )));
                        }
                        u.obj = key_of(&edge, &k)?;
                    }
                    key = Some(k);
                }
                Some("file") => {
                    if up.is_some() {
                        return Err(ApiError::bad_request(
                            "the form has more than one `file` part",
                        ));
                    }
                    let name = field.file_name().map(str::to_string);
                    let ctype = field.content_type().map(str::to_string);
                    let k = key.clone().or(name).ok_or_else(|| {
                        ApiError::bad_request("no `key` field before the file and no file name")
                    })?;
                    let u = up.insert(Upload::new(&edge, key_of(&edge, &k)?, ctype));
                    while let Some(chunk) = field
                        .chunk()
                        .await
                        .map_err(|e| ApiError::bad_request(format!("file: {e}")))?
                    {
                        u.push(&chunk).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    match up {
        Some(u) => u.store(read).await,
        None => Err(read
            .err()
            .unwrap_or_else(|| ApiError::bad_request("the form has no `file` part"))),
    }
}

/// `POST /fetch`: reads `url` (following a few redirects, within the size
/// limit and the timeout) and streams it to S3 under `key`. Every hop's
/// destination is resolved and checked here ([`crate::destination`]) and
/// the connection is pinned to the checked addresses.
pub async fn fetch(
    State(edge): State<Arc<Edge>>,
    Json(req): Json<FetchRequest>,
) -> Result<Response, ApiError> {
    let obj = key_of(&edge, &req.key)?;
    let (max_redirects, timeout) = edge.fetch_limits();
    let mut up: Option<Upload<'_>> = None;
    let read = tokio::time::timeout(timeout, async {
        let resp = source(&edge, &req.url, max_redirects).await?;
        let ctype = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let u = up.insert(Upload::new(&edge, obj, ctype));
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            u.push(&chunk.map_err(ApiError::bad_gateway)?).await?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(ApiError::gateway_timeout()));
    match up {
        Some(u) => u.store(read).await,
        None => Err(read
            .err()
            .unwrap_or_else(|| ApiError::bad_gateway("the source gave no body"))),
    }
}

fn refused(e: Refused) -> ApiError {
    match e {
        Refused::Forbidden { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The source's successful response, after the redirects and the checks of
/// every hop, its announced length within `edge.upload_max`.
async fn source(
    edge: &Edge,
    url: &str,
    max_redirects: usize,
) -> Result<reqwest::Response, ApiError> {
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
    Ok(resp)
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
