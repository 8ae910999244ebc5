//! E2/E3: the memory tier (whole small objects) and the disk tier (slices of
//! large ones), each under its own byte budget.
//!
//! Both are `moka` caches weighed in bytes. moka implements TinyLFU admission
//! with a segmented LRU (the W-TinyLFU policy of Java's Caffeine), which keeps
//! popular objects when a scan of one-off objects passes through — the usual
//! CDN traffic shape — and it is maintained, concurrent and async-aware. The
//! disk tier uses moka as its index: an evicted or invalidated slice has its
//! file deleted by the eviction listener, so the files on disk always add up
//! to at most the budget (plus the slices being written).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use moka::future::Cache;

use crate::origin::ObjectMeta;

/// A whole object held in memory.
#[derive(Debug)]
pub struct CachedObject {
    /// Its metadata.
    pub meta: ObjectMeta,
    /// Its bytes.
    pub body: Bytes,
    /// When the origin last confirmed it (fetch or revalidation).
    pub checked_at: Instant,
}

/// Whole objects by cache id.
pub type MemoryTier = Cache<String, Arc<CachedObject>>;

/// Builds the memory tier with a budget of `budget` bytes.
pub fn memory_tier(budget: u64) -> MemoryTier {
    Cache::builder()
        .max_capacity(budget)
        .weigher(|k: &String, v: &Arc<CachedObject>| {
            let w = v.body.len() + k.len() + v.meta.etag.len() + 128;
            u32::try_from(w).unwrap_or(u32::MAX)
        })
        .support_invalidation_closures()
        .build()
}

/// Identifies one slice of one version of an object: cache id, ETag and
/// slice index. A new version has a new ETag, so its slices never mix with
/// the old one's.
pub fn slice_id(cache_id: &str, etag: &str, index: u64) -> String {
    format!("{cache_id}\u{0}{etag}\u{0}{index}")
}

#[derive(Debug)]
struct SliceFile {
    path: PathBuf,
    len: u64,
}

/// Slices of large objects in files under a directory, indexed in memory.
#[derive(Clone)]
pub struct DiskTier {
    dir: PathBuf,
    index: Cache<String, Arc<SliceFile>>,
    next: Arc<AtomicU64>,
}

impl DiskTier {
    /// Uses `dir/weir-slices` (created, and emptied: the index is not kept
    /// across restarts) with a budget of `budget` bytes.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<DiskTier> {
        let dir = dir.join("weir-slices");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let index = Cache::builder()
            .max_capacity(budget)
            .weigher(|_k: &String, v: &Arc<SliceFile>| u32::try_from(v.len).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .eviction_listener(|_k, v: Arc<SliceFile>, _cause| {
                let _ = std::fs::remove_file(&v.path);
            })
            .build();
        Ok(DiskTier {
            dir,
            index,
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A slice's bytes, or `None` when not on disk (or unreadable, which is
    /// treated as a miss).
    pub async fn get(&self, id: &str, expected_len: u64) -> Option<Bytes> {
        let f = self.index.get(id).await?;
        match tokio::fs::read(&f.path).await {
            Ok(b) if b.len() as u64 == expected_len => Some(Bytes::from(b)),
            _ => {
                self.index.invalidate(id).await;
                None
            }
        }
    }

    /// Writes a slice (to a temporary name, then renamed, so a reader never
    /// sees half a file) and indexes it.
    pub async fn put(&self, id: String, body: &Bytes) -> std::io::Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{n}.tmp"));
        let path = self.dir.join(format!("{n}.slice"));
        tokio::fs::write(&tmp, body).await?;
        tokio::fs::rename(&tmp, &path).await?;
        self.index
            .insert(
                id,
                Arc::new(SliceFile {
                    path,
                    len: body.len() as u64,
                }),
            )
            .await;
        Ok(())
    }

    /// Drops every slice whose id starts with `prefix`.
    pub fn invalidate_prefix(&self, prefix: String) {
        let _ = self
            .index
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix));
    }

    /// Bytes indexed (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.index.run_pending_tasks().await;
        self.index.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disk_tier_stays_under_budget_and_deletes_evicted_files() {
        let dir = std::env::temp_dir().join(format!("weir-tier-test-{}", std::process::id()));
        let tier = DiskTier::open(&dir, 10_000).expect("open");
        let body = Bytes::from(vec![7u8; 1000]);
        for i in 0..50 {
            tier.put(format!("k{i}"), &body).await.expect("put");
        }
        assert!(tier.weighted_size().await <= 10_000);
        let files = std::fs::read_dir(dir.join("weir-slices"))
            .expect("dir")
            .count();
        assert!(files <= 10, "{files} files for a budget of 10");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
