//! E5: object metadata shared by every edge node through Redis, with a TTL,
//! and negative entries for missing keys.
//!
//! Redis is an accelerator, never a dependency: each command is bounded by
//! `redis.timeout`, and after a failure Redis is skipped for
//! `edge.redis_backoff` so that a dead Redis costs one timeout per backoff
//! period rather than one per request. Writes happen off the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use weir_core::{InternalEvent, RedisHandle};

use crate::events::RedisFailed;
use crate::keys::ObjectKey;
use crate::origin::ObjectMeta;

/// What Redis knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedMeta {
    /// The object exists with this metadata.
    Found(ObjectMeta),
    /// The origin said 404 recently.
    Missing,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    size: u64,
    etag: String,
    content_type: String,
    /// Unix seconds.
    last_modified: Option<u64>,
}

/// Redis as the edge uses it.
pub struct SharedRedis {
    /// The process's handle.
    pub handle: Arc<RedisHandle>,
    /// `redis.key_prefix`.
    pub key_prefix: String,
}

/// Reads and writes metadata entries in Redis.
pub struct MetaStore {
    redis: Arc<RedisHandle>,
    prefix: String,
    ttl: Duration,
    negative_ttl: Duration,
    backoff: Duration,
    /// Unix millis before which Redis is not tried.
    skip_until: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Escapes glob characters for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl MetaStore {
    /// Entries under `{key_prefix}:edge:meta:`.
    pub fn new(
        redis: SharedRedis,
        ttl: Duration,
        negative_ttl: Duration,
        backoff: Duration,
    ) -> MetaStore {
        MetaStore {
            redis: redis.handle,
            prefix: format!("{}:edge:meta:", redis.key_prefix),
            ttl,
            negative_ttl,
            backoff,
            skip_until: AtomicU64::new(0),
        }
    }

    fn key(&self, obj: &ObjectKey) -> String {
        // Bucket names cannot contain `:`.
        format!("{}{}:{}", self.prefix, obj.bucket, obj.key)
    }

    fn available(&self) -> bool {
        now_ms() >= self.skip_until.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &redis::RedisError) {
        RedisFailed {
            error: e,
            backoff: self.backoff,
            starts_backoff: self.available(),
        }
        .emit();
        self.skip_until.store(
            now_ms() + self.backoff.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// The shared entry, or `None` when there is none or Redis is down.
    pub async fn get(&self, obj: &ObjectKey) -> Option<SharedMeta> {
        if !self.available() {
            return None;
        }
        let res: Result<Option<String>, redis::RedisError> = async {
            let mut c = self.redis.conn().await?;
            c.get(self.key(obj)).await
        }
        .await;
        match res {
            Ok(Some(v)) if v == "missing" => Some(SharedMeta::Missing),
            Ok(Some(v)) => serde_json::from_str::<Stored>(&v).ok().map(|s| {
                SharedMeta::Found(ObjectMeta {
                    size: s.size,
                    etag: s.etag,
                    content_type: s.content_type,
                    last_modified: s.last_modified.map(|t| UNIX_EPOCH + Duration::from_secs(t)),
                })
            }),
            Ok(None) => None,
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Stores an entry in the background, and deletes it again when
    /// `still_current` says, once stored, that it was overtaken (purged
    /// meanwhile).
    pub fn put(
        self: &Arc<Self>,
        obj: &ObjectKey,
        meta: SharedMeta,
        still_current: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        if !self.available() {
            return;
        }
        let (this, key) = (self.clone(), self.key(obj));
        tokio::spawn(async move {
            let (value, ttl) = match meta {
                SharedMeta::Missing => ("missing".to_string(), this.negative_ttl),
                SharedMeta::Found(m) => {
                    let s = Stored {
                        size: m.size,
                        etag: m.etag,
                        content_type: m.content_type,
                        last_modified: m
                            .last_modified
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                    };
                    match serde_json::to_string(&s) {
                        Ok(v) => (v, this.ttl),
                        Err(_) => return,
                    }
                }
            };
            let res: Result<(), redis::RedisError> = async {
                let mut c = this.redis.conn().await?;
                let () = c
                    .pset_ex(&key, value, ttl.as_millis().max(1) as u64)
                    .await?;
                if !still_current() {
                    let () = c.del(&key).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = res {
                this.failed(&e);
            }
        });
    }

    /// Deletes one entry (purge, or an ETag found stale).
    pub async fn remove(&self, obj: &ObjectKey) -> Result<(), redis::RedisError> {
        let mut c = self.redis.conn().await?;
        c.del(self.key(obj)).await
    }

    /// Deletes every entry of `bucket` whose key starts with `prefix`;
    /// returns how many.
    pub async fn remove_prefix(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<u64, redis::RedisError> {
        let mut c = self.redis.conn().await?;
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}{bucket}:{prefix}", self.prefix))
        );
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                removed += keys.len() as u64;
                let _: () = c.del(keys).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
