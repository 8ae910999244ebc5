//! The edge's state: its tiers, origin, shared metadata, flights and access
//! log, built once from the config and shared by every request; and the
//! operations that change what it knows (remember, forget, purge).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_core::RegisterInternalEvent;

use crate::access::AccessLog;
use crate::config::EdgeConfig;
use crate::destination::FetchPolicy;
use crate::events::{OriginRequests, OriginRequestsHandle, RequestsHandle, RequestsServed};
use crate::fill::Fill;
use crate::flight::Flights;
use crate::generation::Generations;
use crate::keys::ObjectKey;
use crate::meta::{MetaStore, SharedMeta, SharedRedis};
use crate::origin::{ObjectMeta, Origin, S3Config};
use crate::tiers::{memory_tier, CachedObject, DiskTier, MemoryTier};

/// Metadata remembered by this node, positive or negative.
#[derive(Debug)]
pub(crate) struct MetaEntry {
    pub(crate) meta: Option<ObjectMeta>,
    pub(crate) checked_at: Instant,
}

/// The edge: tiers, origin, shared metadata and access log.
pub struct Edge {
    pub(crate) cfg: EdgeConfig,
    pub(crate) bucket: String,
    pub(crate) origin: Origin,
    pub(crate) memory: MemoryTier,
    pub(crate) disk: DiskTier,
    pub(crate) meta: Cache<String, Arc<MetaEntry>>,
    pub(crate) shared: Option<Arc<MetaStore>>,
    /// Fills by cache id and purge generation.
    pub(crate) objects: Flights<(String, u64), Fill>,
    pub(crate) generations: Arc<Generations>,
    /// Slice fetches; `None`: the slice is on disk.
    pub(crate) slices: Flights<String, Option<bytes::Bytes>>,
    /// `edge.inflight_budget`, in KiB.
    inflight: Arc<Semaphore>,
    pub(crate) heads: Flights<String, Option<ObjectMeta>>,
    pub(crate) access: Option<AccessLog>,
    /// Per-request metrics, registered once.
    pub(crate) requests: RequestsHandle,
    /// Origin request counters, registered once.
    pub(crate) origin_requests: OriginRequestsHandle,
    /// `edge.cache_control`, rendered once.
    pub(crate) cache_control: axum::http::HeaderValue,
    fetch_policy: FetchPolicy,
    public_url: String,
}

impl Edge {
    /// Builds the edge; opens the disk tier (indexing the slices a previous
    /// run left in `edge.disk_dir`). `redis` enables
    /// shared metadata; `access` enables access events.
    pub fn new(
        cfg: EdgeConfig,
        s3: &S3Config,
        redis: Option<SharedRedis>,
        access: Option<AccessLog>,
    ) -> std::io::Result<Arc<Edge>> {
        let disk = DiskTier::open(&cfg.resolved_disk_dir(), cfg.disk_budget)?;
        let shared = redis.map(|redis| {
            Arc::new(MetaStore::new(
                redis,
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
        let fetch_policy = FetchPolicy::parse(&cfg.fetch_allow).map_err(|m| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("edge.fetch_allow: {m}"),
            )
        })?;
        Ok(Arc::new(Edge {
            cache_control: crate::reply::hv(&cfg.cache_control),
            fetch_policy,
            public_url: cfg.resolved_public_url(),
            memory: memory_tier(cfg.memory_budget),
            bucket: s3.bucket.clone(),
            origin: Origin::new(s3),
            disk,
            meta,
            shared,
            objects: Flights::default(),
            generations: Arc::default(),
            slices: Flights::default(),
            inflight: Arc::new(Semaphore::new(
                usize::try_from(cfg.inflight_budget / 1024).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            heads: Flights::default(),
            access,
            requests: RequestsServed.register(),
            origin_requests: OriginRequests.register(),
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

    /// How much of a disk-tier read to take at once, at most `want`: all of
    /// it while more than half of `edge.inflight_budget` is free, else one
    /// chunk. A client that stops reading holds its last read until
    /// `edge.send_timeout`; at 256 KiB each, 500 such clients held a 64 MiB
    /// budget whole and everyone else waited for them to be cut. Under
    /// pressure each holds 64 KiB, as before the reads grew.
    pub(crate) fn read_size(&self, want: u64, chunk: u64) -> u64 {
        let free_kib = self.inflight.available_permits() as u64;
        if free_kib * 1024 > self.cfg.inflight_budget / 2 {
            want
        } else {
            want.min(chunk)
        }
    }

    /// Room for `bytes` more in flight (`edge.inflight_budget`): waits until
    /// there is. The room is given back when the permit is dropped.
    pub(crate) async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        // More than the whole budget: wait for all of it (the budget is at
        // least two slices, so this only happens for a large memory-tier
        // object on a small budget).
        let total = u32::try_from(self.cfg.inflight_budget / 1024).unwrap_or(u32::MAX);
        self.inflight
            .clone()
            .acquire_many_owned(kib.min(total))
            .await
            .ok()
    }

    /// The client listener's limits.
    pub fn conn_limits(&self) -> weir_core::listener::ConnLimits {
        self.cfg.conn_limits()
    }

    /// Where `POST /fetch` may go (`edge.fetch_allow`).
    pub fn fetch_policy(&self) -> &FetchPolicy {
        &self.fetch_policy
    }

    /// `edge.fetch_max_redirects` and `edge.fetch_timeout`.
    pub fn fetch_limits(&self) -> (usize, Duration) {
        (self.cfg.fetch_max_redirects, self.cfg.fetch_timeout)
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

    /// Records what the origin said about an object, here and in Redis,
    /// unless the object was purged since generation `gen` (when the
    /// origin was asked): then what was read is older than the purge.
    /// Returns whether it was recorded.
    pub(crate) async fn remember(
        &self,
        obj: &ObjectKey,
        meta: Option<ObjectMeta>,
        gen: u64,
    ) -> bool {
        let id = obj.cache_id();
        if self.generations.current(&id) != gen {
            return false;
        }
        if let Some(s) = &self.shared {
            let (generations, id) = (self.generations.clone(), id.clone());
            s.put(
                obj,
                meta.clone()
                    .map(SharedMeta::Found)
                    .unwrap_or(SharedMeta::Missing),
                move || generations.current(&id) == gen,
            );
        }
        self.remember_locally(id.clone(), meta, Instant::now())
            .await;
        if self.generations.current(&id) != gen {
            self.meta.invalidate(&id).await;
            return false;
        }
        true
    }

    /// Puts a whole object in the memory tier unless the object was purged
    /// since generation `gen` (checked after the insert, see
    /// [`crate::generation`]).
    pub(crate) async fn keep_in_memory(&self, id: String, o: Arc<CachedObject>, gen: u64) {
        if self.generations.current(&id) != gen {
            return;
        }
        self.memory.insert(id.clone(), o).await;
        if self.generations.current(&id) != gen {
            self.memory.invalidate(&id).await;
        }
    }

    /// Records metadata on this node only (learnt from Redis, say).
    pub(crate) async fn remember_locally(
        &self,
        id: String,
        meta: Option<ObjectMeta>,
        checked_at: Instant,
    ) {
        self.meta
            .insert(id, Arc::new(MetaEntry { meta, checked_at }))
            .await;
    }

    /// Forgets what this node and Redis know about an object (changed at
    /// the origin, or purged).
    pub(crate) async fn forget(&self, obj: &ObjectKey) -> bool {
        let id = obj.cache_id();
        self.memory.invalidate(&id).await;
        self.meta.invalidate(&id).await;
        self.disk.invalidate_prefix(format!("{id}\u{0}"));
        match &self.shared {
            Some(s) => s.remove(obj).await.is_ok(),
            None => true,
        }
    }

    /// Purges one object from every tier; false when Redis could not be
    /// reached (the local tiers are purged regardless). Fills that started
    /// before it will not store what they read.
    pub async fn purge(&self, obj: &ObjectKey) -> bool {
        self.generations.bump(&obj.cache_id());
        self.forget(obj).await
    }

    /// Purges every object of `bucket` whose key starts with `prefix`;
    /// returns the Redis entries removed, or `None` when Redis failed.
    pub async fn purge_prefix(&self, bucket: &str, prefix: &str) -> Option<u64> {
        self.generations.bump_all();
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
