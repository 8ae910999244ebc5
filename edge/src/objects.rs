//! `weir edge`: S3 objects served over HTTP from a memory tier and a disk
//! tier, with one origin request per cold object or slice.
//!
//! Lookup order for `GET`/`HEAD /{key}`: memory tier (whole objects up to
//! `edge.memory_object_max`) → metadata known locally or in Redis (negative
//! entries answer 404 without the origin; large objects go straight to their
//! slices) → one coalesced origin fill. The fill asks for the first slice
//! only (`Range: bytes=0-{slice_size-1}`): a small object arrives whole in
//! that one request, and a large one is never pulled whole. Large objects are
//! served slice by slice from the disk tier, each slice fetched with
//! `If-Match` on the ETag the response started with, so a client never gets
//! bytes from two versions: when the object changes mid-stream the response
//! is cut short instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_core::RedisHandle;
use weir_schemas::CacheOutcome;

use crate::access::{AccessLog, AccessRecord};
use crate::flight::{Flights, Role};
use crate::keys::{object_key, ObjectKey};
use crate::meta::{MetaStore, SharedMeta};
use crate::origin::{Fetched, ObjectMeta, Origin, OriginError, S3Config};
use crate::ranges::{
    decide_range, if_range_holds, none_match_hits, not_modified_since, ByteRange, RangeDecision,
};
use crate::tiers::{memory_tier, slice_id, CachedObject, DiskTier, MemoryTier};
use weir_core::http::ApiError;

const MIB: u64 = 1024 * 1024;

/// Settings of `weir edge` (`[edge]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Client traffic listen address.
    pub addr: String,
    /// Admin listen address (purge, `/livez`, `/readyz`, `/metrics`): kept
    /// apart from client traffic so it can stay on a private interface.
    pub admin_addr: String,
    /// When non-empty, paths are `/{bucket}/{key}` and only these buckets
    /// are served; when empty, `/{key}` in `s3.bucket`.
    pub buckets: Vec<String>,
    /// `Cache-Control` sent to clients.
    pub cache_control: String,
    /// How long a cached object or metadata entry is used without asking
    /// the origin again.
    #[serde(with = "humantime_serde")]
    pub fresh_for: Duration,
    /// How long past `fresh_for` a cached object may still be served while
    /// the origin is failing.
    #[serde(with = "humantime_serde")]
    pub stale_grace: Duration,
    /// How long a missing key is answered 404 without asking the origin.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TTL of the metadata entries shared in Redis.
    #[serde(with = "humantime_serde")]
    pub meta_ttl: Duration,
    /// After a Redis failure, how long to serve without it before trying
    /// again.
    #[serde(with = "humantime_serde")]
    pub redis_backoff: Duration,
    /// Byte budget of the memory tier.
    pub memory_budget: u64,
    /// Objects up to this size are kept whole in memory; larger ones are
    /// sliced to disk.
    pub memory_object_max: u64,
    /// Size of the slices large objects are fetched and cached in.
    pub slice_size: u64,
    /// Directory of the disk tier (`weir-slices` is created inside and
    /// emptied at start); empty: a per-process directory under the system
    /// temporary directory.
    pub disk_dir: String,
    /// Byte budget of the disk tier.
    pub disk_budget: u64,
    /// Largest body `POST /upload` and `POST /fetch` accept.
    pub upload_max: u64,
    /// Redirects `POST /fetch` follows.
    pub fetch_max_redirects: usize,
    /// Bound on a whole `POST /fetch` download.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Base of the URLs answered for uploaded objects; empty:
    /// `http://{edge.addr}`.
    pub public_url: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:8082".into(),
            buckets: Vec::new(),
            cache_control: "public, max-age=60".into(),
            fresh_for: Duration::from_secs(60),
            stale_grace: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(60),
            redis_backoff: Duration::from_secs(5),
            memory_budget: 256 * MIB,
            memory_object_max: 50_000_000,
            slice_size: 4 * MIB,
            disk_dir: String::new(),
            disk_budget: 10 * 1024 * MIB,
            upload_max: 100 * MIB,
            fetch_max_redirects: 3,
            fetch_timeout: Duration::from_secs(30),
            public_url: String::new(),
        }
    }
}

impl EdgeConfig {
    /// The disk tier's directory, resolving the empty default.
    pub fn resolved_disk_dir(&self) -> std::path::PathBuf {
        if self.disk_dir.is_empty() {
            std::env::temp_dir().join(format!("weir-edge-{}", std::process::id()))
        } else {
            self.disk_dir.clone().into()
        }
    }
}

fn public_url(cfg: &EdgeConfig) -> String {
    if cfg.public_url.is_empty() {
        format!("http://{}", cfg.addr)
    } else {
        cfg.public_url.trim_end_matches('/').to_string()
    }
}

/// Metadata remembered by this node, positive or negative.
#[derive(Debug)]
struct MetaEntry {
    meta: Option<ObjectMeta>,
    checked_at: Instant,
}

/// Result of a coalesced fill.
#[derive(Debug, Clone)]
enum Fill {
    Missing,
    Memory(Arc<CachedObject>),
    Large(ObjectMeta),
}

/// Why one attempt at serving failed.
enum Fail {
    Api(ApiError),
    /// The object changed between its metadata and its first slice: retry
    /// once with fresh metadata.
    Changed,
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail::Api(e)
    }
}

fn origin_error(e: OriginError) -> ApiError {
    match e {
        OriginError::Timeout => ApiError::gateway_timeout(),
        other => ApiError::bad_gateway(other),
    }
}

/// An answer before access accounting.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: ReplyBody,
    cache: CacheOutcome,
    object_size: Option<u64>,
    origin_us: u64,
}

enum ReplyBody {
    Empty,
    Bytes(Bytes),
    Stream(BoxStream<'static, Result<Bytes, std::io::Error>>),
}

/// What to send, decided from metadata and request headers.
enum Plan {
    NotModified,
    Full,
    Partial(ByteRange),
    Unsatisfiable,
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn plan(meta: &ObjectMeta, h: &HeaderMap) -> Plan {
    // RFC 9110 §13.2.2: If-None-Match, when present, replaces
    // If-Modified-Since.
    if let Some(inm) = header_str(h, header::IF_NONE_MATCH) {
        if none_match_hits(inm, &meta.etag) {
            return Plan::NotModified;
        }
    } else if let Some(ims) = header_str(h, header::IF_MODIFIED_SINCE) {
        if not_modified_since(ims, meta.last_modified) {
            return Plan::NotModified;
        }
    }
    let Some(range) = header_str(h, header::RANGE) else {
        return Plan::Full;
    };
    if let Some(ir) = header_str(h, header::IF_RANGE) {
        if !if_range_holds(ir, &meta.etag, meta.last_modified) {
            return Plan::Full;
        }
    }
    match decide_range(range, meta.size) {
        RangeDecision::Full => Plan::Full,
        RangeDecision::Partial(r) => Plan::Partial(r),
        RangeDecision::Unsatisfiable => Plan::Unsatisfiable,
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The edge: tiers, origin, shared metadata and access log.
pub struct Edge {
    cfg: EdgeConfig,
    bucket: String,
    origin: Origin,
    memory: MemoryTier,
    disk: DiskTier,
    meta: Cache<String, Arc<MetaEntry>>,
    shared: Option<Arc<MetaStore>>,
    objects: Flights<String, Fill>,
    slices: Flights<String, Bytes>,
    heads: Flights<String, Option<ObjectMeta>>,
    access: Option<AccessLog>,
    fetcher: reqwest::Client,
    public_url: String,
}

impl Edge {
    /// Builds the edge; opens (and empties) the disk tier. `redis` with its
    /// key prefix enables shared metadata; `access` enables access events.
    pub fn new(
        cfg: EdgeConfig,
        s3: &S3Config,
        redis: Option<(Arc<RedisHandle>, String)>,
        access: Option<AccessLog>,
    ) -> std::io::Result<Arc<Edge>> {
        let disk = DiskTier::open(&cfg.resolved_disk_dir(), cfg.disk_budget)?;
        let shared = redis.map(|(handle, prefix)| {
            Arc::new(MetaStore::new(
                handle,
                &prefix,
                cfg.meta_ttl,
                cfg.negative_ttl,
                cfg.redis_backoff,
            ))
        });
        let meta = Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(cfg.fresh_for.max(cfg.negative_ttl) + cfg.stale_grace)
            .support_invalidation_closures()
            .build();
        let fetcher = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(cfg.fetch_max_redirects))
            .timeout(cfg.fetch_timeout)
            .connect_timeout(cfg.fetch_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(Edge {
            fetcher,
            public_url: public_url(&cfg),
            memory: memory_tier(cfg.memory_budget),
            bucket: s3.bucket.clone(),
            origin: Origin::new(s3),
            disk,
            meta,
            shared,
            objects: Flights::default(),
            slices: Flights::default(),
            heads: Flights::default(),
            access,
            cfg,
        }))
    }

    /// The S3 client (uploads, tests).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Bucket served at `/{key}`.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Buckets served at `/{bucket}/{key}` (empty: single-bucket paths).
    pub fn buckets(&self) -> &[String] {
        &self.cfg.buckets
    }

    /// `edge.upload_max`.
    pub fn upload_max(&self) -> u64 {
        self.cfg.upload_max
    }

    /// HTTP client of `POST /fetch` (redirect and time limits applied).
    pub fn fetcher(&self) -> &reqwest::Client {
        &self.fetcher
    }

    /// The edge URL of an object, percent-encoded.
    pub fn url_of(&self, obj: &ObjectKey) -> String {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~')
            .remove(b'/');
        let key = percent_encoding::utf8_percent_encode(&obj.key, SEGMENT);
        if self.cfg.buckets.is_empty() {
            format!("{}/{key}", self.public_url)
        } else {
            format!("{}/{}/{key}", self.public_url, obj.bucket)
        }
    }

    async fn remember(&self, obj: &ObjectKey, meta: Option<ObjectMeta>) {
        if let Some(s) = &self.shared {
            s.put(
                obj,
                meta.clone()
                    .map(SharedMeta::Found)
                    .unwrap_or(SharedMeta::Missing),
            );
        }
        self.meta
            .insert(
                obj.cache_id(),
                Arc::new(MetaEntry {
                    meta,
                    checked_at: Instant::now(),
                }),
            )
            .await;
    }

    /// Forgets what this node and Redis know about an object (changed at
    /// the origin, or purged).
    async fn forget(&self, obj: &ObjectKey) -> bool {
        let id = obj.cache_id();
        self.memory.invalidate(&id).await;
        self.meta.invalidate(&id).await;
        self.disk.invalidate_prefix(format!("{id}\u{0}"));
        match &self.shared {
            Some(s) => s.remove(obj).await.is_ok(),
            None => true,
        }
    }

    async fn serve(
        self: &Arc<Self>,
        obj: &ObjectKey,
        h: &HeaderMap,
        head: bool,
    ) -> Result<Reply, ApiError> {
        match self.serve_once(obj, h, head).await {
            Ok(r) => Ok(r),
            Err(Fail::Api(e)) => Err(e),
            Err(Fail::Changed) => match self.serve_once(obj, h, head).await {
                Ok(r) => Ok(r),
                Err(Fail::Api(e)) => Err(e),
                Err(Fail::Changed) => Err(origin_error(OriginError::Changed)),
            },
        }
    }

    async fn serve_once(
        self: &Arc<Self>,
        obj: &ObjectKey,
        h: &HeaderMap,
        head: bool,
    ) -> Result<Reply, Fail> {
        let id = obj.cache_id();
        let max = self.cfg.memory_object_max;
        let grace = self.cfg.fresh_for + self.cfg.stale_grace;
        if let Some(o) = self.memory.get(&id).await {
            let age = o.checked_at.elapsed();
            if age < self.cfg.fresh_for {
                return Ok(self.reply_memory(&o, h, head, CacheOutcome::Hit, 0));
            }
            let t = Instant::now();
            let (res, _) = {
                let (edge, obj) = (self.clone(), obj.clone());
                self.heads
                    .run(
                        id.clone(),
                        move || async move { edge.origin.head(&obj).await },
                    )
                    .await
            };
            let origin_us = t.elapsed().as_micros() as u64;
            match res {
                Ok(Some(m)) if m.etag == o.meta.etag => {
                    self.remember(obj, Some(m)).await;
                    let fresh = Arc::new(CachedObject {
                        meta: o.meta.clone(),
                        body: o.body.clone(),
                        checked_at: Instant::now(),
                    });
                    self.memory.insert(id.clone(), fresh.clone()).await;
                    return Ok(self.reply_memory(
                        &fresh,
                        h,
                        head,
                        CacheOutcome::Revalidated,
                        origin_us,
                    ));
                }
                Ok(_) => {
                    self.forget(obj).await;
                }
                Err(e) if age < grace => {
                    warn!(error = %e, key = %obj.key, "origin failed; serving a stale copy");
                    return Ok(self.reply_memory(&o, h, head, CacheOutcome::Stale, origin_us));
                }
                Err(e) => return Err(origin_error(e).into()),
            }
        }
        let local = self.meta.get(&id).await;
        if let Some(e) = &local {
            let ttl = if e.meta.is_some() {
                self.cfg.fresh_for
            } else {
                self.cfg.negative_ttl
            };
            if e.checked_at.elapsed() < ttl {
                match &e.meta {
                    None => return Err(ApiError::not_found("no such object").into()),
                    Some(m) if m.size > max => {
                        return self
                            .serve_large(
                                obj,
                                m.clone(),
                                e.checked_at,
                                h,
                                head,
                                CacheOutcome::Hit,
                                0,
                            )
                            .await
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(shared) = &self.shared {
            match shared.get(obj).await {
                Some(SharedMeta::Missing) => {
                    self.meta
                        .insert(
                            id.clone(),
                            Arc::new(MetaEntry {
                                meta: None,
                                checked_at: Instant::now(),
                            }),
                        )
                        .await;
                    return Err(ApiError::not_found("no such object").into());
                }
                Some(SharedMeta::Found(m)) if m.size > max => {
                    let now = Instant::now();
                    self.meta
                        .insert(
                            id.clone(),
                            Arc::new(MetaEntry {
                                meta: Some(m.clone()),
                                checked_at: now,
                            }),
                        )
                        .await;
                    return self
                        .serve_large(obj, m, now, h, head, CacheOutcome::Hit, 0)
                        .await;
                }
                _ => {}
            }
        }
        let t = Instant::now();
        let (res, role) = {
            let (edge, o) = (self.clone(), obj.clone());
            self.objects
                .run(id.clone(), move || async move { edge.fill(o).await })
                .await
        };
        let origin_us = t.elapsed().as_micros() as u64;
        let outcome = match role {
            Role::Leader => CacheOutcome::Miss,
            Role::Waiter => CacheOutcome::Coalesced,
        };
        match res {
            Ok(Fill::Missing) => Err(ApiError::not_found("no such object").into()),
            Ok(Fill::Memory(o)) => Ok(self.reply_memory(&o, h, head, outcome, origin_us)),
            Ok(Fill::Large(m)) => {
                let outcome = if outcome == CacheOutcome::Miss {
                    CacheOutcome::Stream
                } else {
                    outcome
                };
                self.serve_large(obj, m, Instant::now(), h, head, outcome, origin_us)
                    .await
            }
            // The object changed between the two requests of a fill:
            // retried once with whatever it is now.
            Err(OriginError::Changed) => Err(Fail::Changed),
            Err(e) => {
                // A large object whose metadata went stale: its slices on
                // disk are still good within the grace period.
                if let Some(entry) = &local {
                    if let Some(m) = &entry.meta {
                        if m.size > max && entry.checked_at.elapsed() < grace {
                            warn!(error = %e, key = %obj.key, "origin failed; serving stale slices");
                            return self
                                .serve_large(
                                    obj,
                                    m.clone(),
                                    entry.checked_at,
                                    h,
                                    head,
                                    CacheOutcome::Stale,
                                    origin_us,
                                )
                                .await;
                        }
                    }
                }
                Err(origin_error(e).into())
            }
        }
    }

    /// The one origin request for a cold object: its first slice, which is
    /// the whole object when it is small.
    async fn fill(self: Arc<Self>, obj: ObjectKey) -> Result<Fill, OriginError> {
        let id = obj.cache_id();
        if let Some(o) = self.memory.get(&id).await {
            // Filled by a flight that ended just before this one started.
            if o.checked_at.elapsed() < self.cfg.fresh_for {
                return Ok(Fill::Memory(o));
            }
        }
        let s = self.cfg.slice_size;
        metrics::counter!("weir_edge_origin_requests_total", "kind" => "fill").increment(1);
        let first = self
            .origin
            .get(&obj, Some(format!("bytes=0-{}", s - 1)), None)
            .await;
        let (meta, body) = match first {
            Ok(Fetched::Found { meta, body }) => (meta, body),
            Ok(Fetched::Missing) => {
                self.remember(&obj, None).await;
                return Ok(Fill::Missing);
            }
            // An empty object has no byte 0: S3 answers 416.
            Ok(Fetched::Unsatisfiable) => match self.origin.get(&obj, None, None).await? {
                Fetched::Found { meta, body } => (meta, body),
                Fetched::Missing | Fetched::Unsatisfiable => {
                    self.remember(&obj, None).await;
                    return Ok(Fill::Missing);
                }
            },
            Err(e) => return Err(e),
        };
        self.remember(&obj, Some(meta.clone())).await;
        if meta.size > self.cfg.memory_object_max {
            if body.len() as u64 == s {
                if let Err(e) = self.disk.put(slice_id(&id, &meta.etag, 0), &body).await {
                    warn!(error = %e, "disk tier write failed");
                }
            }
            return Ok(Fill::Large(meta));
        }
        let body = if (body.len() as u64) < meta.size {
            metrics::counter!("weir_edge_origin_requests_total", "kind" => "rest").increment(1);
            let rest = self
                .origin
                .get(
                    &obj,
                    Some(format!("bytes={}-", body.len())),
                    Some(&meta.etag),
                )
                .await?;
            let Fetched::Found { body: rest, .. } = rest else {
                return Err(OriginError::Changed);
            };
            let mut whole = BytesMut::with_capacity(meta.size as usize);
            whole.extend_from_slice(&body);
            whole.extend_from_slice(&rest);
            whole.freeze()
        } else {
            body
        };
        if body.len() as u64 != meta.size {
            return Err(OriginError::Unavailable(format!(
                "got {} bytes of {}",
                body.len(),
                meta.size
            )));
        }
        let o = Arc::new(CachedObject {
            meta,
            body,
            checked_at: Instant::now(),
        });
        self.memory.insert(id, o.clone()).await;
        Ok(Fill::Memory(o))
    }

    /// Slice `index` of the version `meta` describes: from disk, or fetched
    /// once with `If-Match`.
    async fn slice(
        self: &Arc<Self>,
        obj: &ObjectKey,
        meta: &ObjectMeta,
        index: u64,
    ) -> Result<Bytes, OriginError> {
        let s = self.cfg.slice_size;
        let start = index * s;
        let end = (start + s).min(meta.size) - 1;
        let len = end - start + 1;
        let id = slice_id(&obj.cache_id(), &meta.etag, index);
        if let Some(b) = self.disk.get(&id, len).await {
            return Ok(b);
        }
        let (edge, o, etag, sid) = (self.clone(), obj.clone(), meta.etag.clone(), id.clone());
        let (res, _) = self
            .slices
            .run(id, move || async move {
                if let Some(b) = edge.disk.get(&sid, len).await {
                    return Ok(b);
                }
                metrics::counter!("weir_edge_origin_requests_total", "kind" => "slice")
                    .increment(1);
                match edge
                    .origin
                    .get(&o, Some(format!("bytes={start}-{end}")), Some(&etag))
                    .await?
                {
                    Fetched::Found { meta: m, body }
                        if m.etag == etag && body.len() as u64 == len =>
                    {
                        if let Err(e) = edge.disk.put(sid, &body).await {
                            warn!(error = %e, "disk tier write failed");
                        }
                        Ok(body)
                    }
                    _ => Err(OriginError::Changed),
                }
            })
            .await;
        if res == Err(OriginError::Changed) {
            info!(key = %obj.key, "object changed at the origin; forgetting its metadata");
            self.forget(obj).await;
        }
        res
    }

    fn base_headers(&self, meta: &ObjectMeta, checked_at: Instant) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, hv(&meta.etag));
        if let Some(lm) = meta.last_modified {
            h.insert(header::LAST_MODIFIED, hv(&httpdate::fmt_http_date(lm)));
        }
        h.insert(header::CACHE_CONTROL, hv(&self.cfg.cache_control));
        h.insert(
            header::AGE,
            HeaderValue::from(checked_at.elapsed().as_secs()),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h
    }

    fn reply_memory(
        &self,
        o: &CachedObject,
        h: &HeaderMap,
        head: bool,
        cache: CacheOutcome,
        origin_us: u64,
    ) -> Reply {
        let mut headers = self.base_headers(&o.meta, o.checked_at);
        let size = o.meta.size;
        let (status, body) = match plan(&o.meta, h) {
            Plan::NotModified => (StatusCode::NOT_MODIFIED, ReplyBody::Empty),
            Plan::Unsatisfiable => {
                headers.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                (StatusCode::RANGE_NOT_SATISFIABLE, ReplyBody::Empty)
            }
            Plan::Full => {
                headers.insert(header::CONTENT_TYPE, hv(&o.meta.content_type));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                (StatusCode::OK, ReplyBody::Bytes(o.body.clone()))
            }
            Plan::Partial(r) => {
                headers.insert(header::CONTENT_TYPE, hv(&o.meta.content_type));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                headers.insert(
                    header::CONTENT_RANGE,
                    hv(&format!("bytes {}-{}/{size}", r.start, r.end)),
                );
                let b = o.body.slice(r.start as usize..=r.end as usize);
                (StatusCode::PARTIAL_CONTENT, ReplyBody::Bytes(b))
            }
        };
        Reply {
            status,
            headers,
            body: if head { ReplyBody::Empty } else { body },
            cache,
            object_size: Some(size),
            origin_us,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve_large(
        self: &Arc<Self>,
        obj: &ObjectKey,
        meta: ObjectMeta,
        checked_at: Instant,
        h: &HeaderMap,
        head: bool,
        cache: CacheOutcome,
        origin_us: u64,
    ) -> Result<Reply, Fail> {
        let mut headers = self.base_headers(&meta, checked_at);
        let size = meta.size;
        let reply = |status, headers, body| Reply {
            status,
            headers,
            body,
            cache,
            object_size: Some(size),
            origin_us,
        };
        let (status, r) = match plan(&meta, h) {
            Plan::NotModified => {
                return Ok(reply(StatusCode::NOT_MODIFIED, headers, ReplyBody::Empty))
            }
            Plan::Unsatisfiable => {
                headers.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Ok(reply(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    headers,
                    ReplyBody::Empty,
                ));
            }
            Plan::Full => (
                StatusCode::OK,
                ByteRange {
                    start: 0,
                    end: size - 1,
                },
            ),
            Plan::Partial(r) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    hv(&format!("bytes {}-{}/{size}", r.start, r.end)),
                );
                (StatusCode::PARTIAL_CONTENT, r)
            }
        };
        headers.insert(header::CONTENT_TYPE, hv(&meta.content_type));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
        if head {
            return Ok(reply(status, headers, ReplyBody::Empty));
        }
        let s = self.cfg.slice_size;
        let (first, last) = (r.start / s, r.end / s);
        // The first slice is fetched before answering, so that a failure
        // becomes a proper status rather than a cut response.
        let first_bytes = match self.slice(obj, &meta, first).await {
            Ok(b) => b,
            Err(OriginError::Changed) => return Err(Fail::Changed),
            Err(e) => return Err(origin_error(e).into()),
        };
        let cut = move |b: Bytes, i: u64| -> Bytes {
            let slice_start = i * s;
            let from = r.start.saturating_sub(slice_start) as usize;
            let to = ((r.end + 1 - slice_start) as usize).min(b.len());
            b.slice(from..to)
        };
        let (edge, obj) = (self.clone(), obj.clone());
        let stream = async_stream::stream! {
            yield Ok(cut(first_bytes, first));
            // One slice of read-ahead: the next slice is on its way while
            // this one is sent. Memory per response stays at two slices.
            let mut next = (first < last).then(|| {
                let (e, o, m) = (edge.clone(), obj.clone(), meta.clone());
                tokio::spawn(async move { e.slice(&o, &m, first + 1).await })
            });
            let mut i = first + 1;
            while let Some(task) = next.take() {
                let res = task.await.unwrap_or_else(|e| Err(OriginError::Unavailable(e.to_string())));
                if i < last {
                    let (e, o, m) = (edge.clone(), obj.clone(), meta.clone());
                    next = Some(tokio::spawn(async move { e.slice(&o, &m, i + 1).await }));
                }
                match res {
                    Ok(b) => yield Ok(cut(b, i)),
                    Err(e) => {
                        // Cutting the response short is the only honest
                        // answer once headers are sent: the client sees an
                        // incomplete body, never bytes of two versions.
                        warn!(error = %e, key = %obj.key, slice = i, "slice failed mid-response");
                        if let Some(t) = next.take() { t.abort(); }
                        yield Err(std::io::Error::other(e.to_string()));
                        break;
                    }
                }
                i += 1;
            }
        };
        Ok(reply(status, headers, ReplyBody::Stream(stream.boxed())))
    }

    /// Purges one object from every tier; false when Redis could not be
    /// reached (the local tiers are purged regardless).
    pub async fn purge(&self, obj: &ObjectKey) -> bool {
        self.forget(obj).await
    }

    /// Purges every object of `bucket` whose key starts with `prefix`;
    /// returns the Redis entries removed, or `None` when Redis failed.
    pub async fn purge_prefix(&self, bucket: &str, prefix: &str) -> Option<u64> {
        let p = format!("{bucket}\u{0}{prefix}");
        let p2 = p.clone();
        let _ = self
            .memory
            .invalidate_entries_if(move |k, _| k.starts_with(&p2));
        let p3 = p.clone();
        let _ = self
            .meta
            .invalidate_entries_if(move |k, _| k.starts_with(&p3));
        self.disk.invalidate_prefix(p);
        match &self.shared {
            Some(s) => s.remove_prefix(bucket, prefix).await.ok(),
            None => Some(0),
        }
    }
}

/// Serves client traffic on `client` and admin endpoints (plus
/// `extra_admin`, e.g. `/metrics`) on `admin` until `shutdown`.
pub async fn serve(
    client: TcpListener,
    admin: TcpListener,
    edge: Arc<Edge>,
    extra_admin: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .fallback(client_request)
        .with_state(edge.clone());
    let admin_app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/cache", delete(purge_prefix))
        .route("/cache/{*key}", delete(purge_one))
        .route(
            "/upload",
            post(crate::upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/fetch", post(crate::upload::fetch))
        .with_state(edge)
        .merge(extra_admin);
    info!(client = %client.local_addr()?, admin = %admin.local_addr()?, "edge listening");
    let (s1, s2) = (shutdown.clone(), shutdown);
    let c = axum::serve(
        client,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { s1.cancelled().await });
    let a =
        axum::serve(admin, admin_app).with_graceful_shutdown(async move { s2.cancelled().await });
    tokio::try_join!(
        std::future::IntoFuture::into_future(c),
        std::future::IntoFuture::into_future(a)
    )?;
    Ok(())
}

/// A request id unique across processes and restarts without a random
/// number per request: a random process prefix and a counter.
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    format!("{prefix}{:016x}", N.fetch_add(1, Ordering::Relaxed))
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

async fn client_request(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let start = Instant::now();
    let ts = Utc::now();
    let request_id = next_request_id();
    let method = req.method().clone();
    let headers = req.headers();
    let raw_path = req.uri().path();
    let range = header_str(headers, header::RANGE).map(str::to_string);
    let mut key_for_log = raw_path.to_string();
    let result = if method != Method::GET && method != Method::HEAD {
        Err(ApiError::method_not_allowed())
    } else {
        match object_key(raw_path, &edge.bucket, &edge.cfg.buckets) {
            Err(e) => Err(ApiError::bad_request(e.to_string())),
            Ok(obj) => {
                key_for_log = obj.key.clone();
                edge.serve(&obj, headers, method == Method::HEAD).await
            }
        }
    };
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            let resp = e.into_response();
            let (parts, body) = resp.into_parts();
            let body = axum::body::to_bytes(body, 64 * 1024)
                .await
                .unwrap_or_default();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: if method == Method::HEAD {
                    ReplyBody::Empty
                } else {
                    ReplyBody::Bytes(body)
                },
                cache: CacheOutcome::Bypass,
                object_size: None,
                origin_us: 0,
            }
        }
    };
    let status = reply.status;
    let cache = reply.cache;
    metrics::counter!("weir_edge_requests_total", "cache" => outcome_label(cache), "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!("weir_edge_request_duration_seconds", "cache" => outcome_label(cache))
        .record(start.elapsed().as_secs_f64());
    let record = edge.access.as_ref().map(|_| AccessRecord {
        ts,
        request_id: request_id.clone(),
        method: method.to_string(),
        object_key: key_for_log,
        range,
        status: status.as_u16(),
        bytes_sent: 0,
        object_size: reply.object_size,
        cache,
        origin_latency_us: reply.origin_us,
        total_latency_us: 0,
        client_addr: peer.ip().to_string(),
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
    resp.headers_mut().insert("x-request-id", hv(&request_id));
    resp.headers_mut()
        .insert("x-cache", HeaderValue::from_static(outcome_label(cache)));
    resp
}

fn outcome_label(c: CacheOutcome) -> &'static str {
    match c {
        CacheOutcome::Hit => "hit",
        CacheOutcome::Miss => "miss",
        CacheOutcome::Stream => "stream",
        CacheOutcome::Coalesced => "coalesced",
        CacheOutcome::Stale => "stale",
        CacheOutcome::Revalidated => "revalidated",
        CacheOutcome::Bypass => "bypass",
    }
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
