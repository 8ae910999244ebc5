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

use axum::http::HeaderValue;
use bytes::Bytes;
use moka::future::Cache;
use nix::fcntl::{Flock, FlockArg};

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
    /// Its header values, rendered once rather than on every hit.
    pub head: ObjectHead,
}

impl CachedObject {
    /// An object and its rendered headers.
    pub fn new(meta: ObjectMeta, body: Bytes, checked_at: Instant) -> CachedObject {
        CachedObject {
            head: ObjectHead::of(&meta),
            meta,
            body,
            checked_at,
        }
    }

    /// The same object, confirmed by the origin at `checked_at` (body and
    /// rendered headers shared, not copied).
    pub fn confirmed(&self, checked_at: Instant) -> CachedObject {
        CachedObject {
            meta: self.meta.clone(),
            body: self.body.clone(),
            checked_at,
            head: self.head.clone(),
        }
    }
}

/// The header values an answer about one version of an object carries,
/// rendered from its [`ObjectMeta`]: kept with a memory-tier object, so a
/// hit formats no date and validates no header value. Cloning one shares
/// the rendered bytes.
#[derive(Debug, Clone)]
pub struct ObjectHead {
    /// `ETag`.
    pub etag: HeaderValue,
    /// `Last-Modified`, when known.
    pub last_modified: Option<HeaderValue>,
    /// `Content-Type`.
    pub content_type: HeaderValue,
    /// `Content-Length` of the whole object.
    pub full_length: HeaderValue,
}

impl ObjectHead {
    /// Renders `meta`'s header values (a value that cannot be a header is
    /// empty, as before).
    pub fn of(meta: &ObjectMeta) -> ObjectHead {
        use crate::reply::hv;
        ObjectHead {
            etag: hv(&meta.etag),
            last_modified: meta
                .last_modified
                .map(|lm| hv(&httpdate::fmt_http_date(lm))),
            content_type: hv(&meta.content_type),
            full_length: HeaderValue::from(meta.size),
        }
    }
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
///
/// The directory belongs to one process: [`DiskTier::open`] takes an
/// exclusive lock (`flock`) on `weir-slices.lock` beside it, held as long
/// as the tier lives, and refuses a directory another process holds —
/// rather than emptying it under that process, or overwriting its slices.
/// Each slice file also starts with the slice's identity (cache id, ETag,
/// index), checked on every read, so a file that is not the slice asked for
/// is a miss, never wrong bytes.
#[derive(Clone)]
pub struct DiskTier {
    dir: PathBuf,
    index: Cache<String, Arc<SliceFile>>,
    next: Arc<AtomicU64>,
    _lock: Arc<Flock<std::fs::File>>,
}

/// First bytes of every slice file; followed by the id's length (u32, big
/// endian), the id, then the slice's bytes.
const MAGIC: &[u8; 8] = b"WEIRSLC1";

fn slice_header(id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(MAGIC.len() + 4 + id.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(id.len() as u32).to_be_bytes());
    h.extend_from_slice(id.as_bytes());
    h
}

impl DiskTier {
    /// Uses `dir/weir-slices` (created if missing) with a budget of
    /// `budget` bytes. The slices a previous run left there are indexed
    /// again, newest kept when they exceed the budget, so a restarted edge
    /// does not fetch from the origin what it already has on disk; anything
    /// else in the directory (a half-written slice, a foreign or damaged
    /// file) is deleted. Fails when another process uses `dir`.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<DiskTier> {
        std::fs::create_dir_all(dir)?;
        let lock_path = dir.join("weir-slices.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another process ({e}); give each edge its own edge.disk_dir",
                    lock_path.display()
                ),
            )
        })?;
        let dir = dir.join("weir-slices");
        std::fs::create_dir_all(&dir)?;
        let index = Cache::builder()
            .max_capacity(budget)
            .weigher(|_k: &String, v: &Arc<SliceFile>| u32::try_from(v.len).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .eviction_listener(|_k, v: Arc<SliceFile>, _cause| {
                let _ = std::fs::remove_file(&v.path);
            })
            .build();
        let next = restore(&dir, &index, budget)?;
        Ok(DiskTier {
            dir,
            index,
            next: Arc::new(AtomicU64::new(next)),
            _lock: Arc::new(lock),
        })
    }

    /// A slice's bytes, or `None` when not on disk (or unreadable, which is
    /// treated as a miss).
    pub async fn get(&self, id: &str, expected_len: u64) -> Option<Bytes> {
        let f = self.index.get(id).await?;
        let header = slice_header(id);
        match tokio::fs::read(&f.path).await {
            Ok(b)
                if b.len() as u64 == header.len() as u64 + expected_len
                    && b.starts_with(&header) =>
            {
                Some(Bytes::from(b).slice(header.len()..))
            }
            _ => {
                self.index.invalidate(id).await;
                None
            }
        }
    }

    /// Whether a slice is indexed (its file may still turn out unusable).
    pub async fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// A slice's file and the offset of its first byte, after checking that
    /// it is the slice asked for; `None` as [`DiskTier::get`]. Streaming
    /// from the file (positioned reads, no buffer kept between them) keeps a
    /// response's memory at one chunk, not one slice.
    pub async fn open_slice(
        &self,
        id: &str,
        expected_len: u64,
    ) -> Option<(Arc<std::fs::File>, u64)> {
        use tokio::io::AsyncReadExt;
        let f = self.index.get(id).await?;
        let header = slice_header(id);
        let checked = async {
            let mut file = tokio::fs::File::open(&f.path).await.ok()?;
            let len = file.metadata().await.ok()?.len();
            let mut got = vec![0u8; header.len()];
            file.read_exact(&mut got).await.ok()?;
            if got != header || len != header.len() as u64 + expected_len {
                return None;
            }
            Some((Arc::new(file.into_std().await), header.len() as u64))
        }
        .await;
        if checked.is_none() {
            self.index.invalidate(id).await;
        }
        checked
    }

    /// Writes a slice (to a temporary name, then renamed, so a reader never
    /// sees half a file) and indexes it.
    pub async fn put(&self, id: String, body: &Bytes) -> std::io::Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{n}.tmp"));
        let path = self.dir.join(format!("{n}.slice"));
        let mut file = slice_header(&id);
        file.extend_from_slice(body);
        tokio::fs::write(&tmp, file).await?;
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

/// The longest slice id a slice file may name (ids are a cache id, an ETag
/// and an index: far shorter); a longer length field marks a damaged file.
const MAX_ID_LEN: u32 = 64 * 1024;

/// A slice file's id and the length of the slice it holds, or `None` when
/// the file is not a complete slice file.
fn read_slice_header(path: &Path) -> Option<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = [0u8; 12];
    f.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let id_len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if id_len > MAX_ID_LEN || 12 + u64::from(id_len) > len {
        return None;
    }
    let mut id = vec![0u8; id_len as usize];
    f.read_exact(&mut id).ok()?;
    let header_len = 12 + u64::from(id_len);
    Some((String::from_utf8(id).ok()?, len - header_len))
}

/// Indexes the slice files in `dir` (`N.slice`, written by
/// [`DiskTier::put`]), the most recently written first, as many as the
/// budget holds; deletes the older ones beyond it and every entry that is
/// not a slice file. Returns the next free file number.
fn restore(dir: &Path, index: &Cache<String, Arc<SliceFile>>, budget: u64) -> std::io::Result<u64> {
    let mut found = Vec::new();
    let mut next = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".slice"))
            .and_then(|n| n.parse::<u64>().ok());
        let slice = match (n, entry.file_type()) {
            (Some(n), Ok(t)) if t.is_file() => read_slice_header(&path).map(|h| (n, h)),
            _ => None,
        };
        match slice {
            Some((n, (id, len))) => {
                next = next.max(n.saturating_add(1));
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                found.push((modified, n, id, path, len));
            }
            None => {
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = removed {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a stray entry of the disk tier");
                }
            }
        }
    }
    // Newest first; equal times by file number, also newest first.
    found.sort_by_key(|(modified, n, ..)| std::cmp::Reverse((*modified, *n)));
    let mut kept = Vec::new();
    let mut total = 0u64;
    for (_, _, id, path, len) in found {
        if total.saturating_add(len) <= budget {
            total += len;
            kept.push((id, path, len));
        } else if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a slice beyond the disk budget");
        }
    }
    // moka's future cache needs no runtime of its own to insert: the index
    // is filled before anything else can use it.
    futures::executor::block_on(async {
        for (id, path, len) in kept.into_iter().rev() {
            index.insert(id, Arc::new(SliceFile { path, len })).await;
        }
        index.run_pending_tasks().await;
    });
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reopened_disk_tier_serves_what_it_had_and_drops_what_is_not_a_slice() {
        let dir = std::env::temp_dir().join(format!("weir-tier-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tier = DiskTier::open(&dir, 1 << 20).expect("open");
        for i in 0..5u8 {
            tier.put(format!("obj\u{0}etag\u{0}{i}"), &Bytes::from(vec![i; 1000]))
                .await
                .expect("put");
        }
        drop(tier);
        let slices = dir.join("weir-slices");
        // What a crash or another hand leaves behind.
        std::fs::write(slices.join("99.tmp"), b"half a slice").expect("tmp");
        std::fs::write(slices.join("notes.txt"), b"foreign").expect("foreign");
        std::fs::write(slices.join("7.slice"), b"WEIRSLC1\xff\xff\xff\xff").expect("damaged");
        std::fs::write(slices.join("8.slice"), b"WEIRSL").expect("short");
        let mut long_id = MAGIC.to_vec();
        long_id.extend_from_slice(&100u32.to_be_bytes());
        long_id.extend_from_slice(b"too short for its length");
        std::fs::write(slices.join("9.slice"), long_id).expect("lying length");
        std::fs::create_dir(slices.join("10.slice")).expect("a directory");
        // A link to a slice elsewhere, and a FIFO that would block a reader:
        // neither is opened, both are removed (the link, not its target).
        let outside = dir.join("outside.slice");
        std::fs::copy(slices.join("0.slice"), &outside).expect("copy");
        std::os::unix::fs::symlink(&outside, slices.join("11.slice")).expect("symlink");
        nix::unistd::mkfifo(
            &slices.join("12.slice"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");

        let tier = DiskTier::open(&dir, 1 << 20).expect("reopen");
        for i in 0..5u8 {
            assert_eq!(
                tier.get(&format!("obj\u{0}etag\u{0}{i}"), 1000).await,
                Some(Bytes::from(vec![i; 1000])),
                "slice {i} survives the restart"
            );
        }
        assert_eq!(tier.weighted_size().await, 5000);
        let mut left: Vec<String> = std::fs::read_dir(&slices)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["0.slice", "1.slice", "2.slice", "3.slice", "4.slice"]
        );
        assert!(outside.exists(), "a link's target is not deleted");
        // A new slice never takes a surviving one's file.
        tier.put("new".into(), &Bytes::from(vec![9u8; 10]))
            .await
            .expect("put");
        assert_eq!(
            tier.get("obj\u{0}etag\u{0}0", 1000).await,
            Some(Bytes::from(vec![0u8; 1000]))
        );
        assert_eq!(tier.get("new", 10).await, Some(Bytes::from(vec![9u8; 10])));
        drop(tier);

        // Reopened with a smaller budget: the newest that fit are kept
        // ("new", then slice 4, then 3 = 2010 bytes; 2 would pass 2500).
        let tier = DiskTier::open(&dir, 2500).expect("reopen smaller");
        assert_eq!(tier.weighted_size().await, 2010);
        assert_eq!(tier.get("new", 10).await, Some(Bytes::from(vec![9u8; 10])));
        for i in [3u8, 4] {
            assert_eq!(
                tier.get(&format!("obj\u{0}etag\u{0}{i}"), 1000).await,
                Some(Bytes::from(vec![i; 1000]))
            );
        }
        assert_eq!(tier.get("obj\u{0}etag\u{0}2", 1000).await, None);
        let files = std::fs::read_dir(&slices).expect("dir").count();
        assert_eq!(files, 3, "the older slices' files are deleted");
        let _ = std::fs::remove_dir_all(&dir);
    }

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

    #[tokio::test]
    async fn a_second_process_cannot_take_a_disk_dir_in_use() {
        let dir = std::env::temp_dir().join(format!("weir-tier-lock-{}", std::process::id()));
        let a = DiskTier::open(&dir, 1 << 20).expect("first open");
        let body = Bytes::from(vec![1u8; 100]);
        a.put("s".into(), &body).await.expect("put");
        let b = DiskTier::open(&dir, 1 << 20);
        let err = b.err().expect("the second open is refused");
        assert!(err.to_string().contains("in use"), "{err}");
        assert_eq!(
            a.get("s", 100).await,
            Some(body),
            "the first one's slices survive"
        );
        drop(a);
        assert!(
            DiskTier::open(&dir, 1 << 20).is_ok(),
            "free once the first is gone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_slice_file_holding_another_slice_is_a_miss() {
        let dir = std::env::temp_dir().join(format!("weir-tier-id-{}", std::process::id()));
        let tier = DiskTier::open(&dir, 1 << 20).expect("open");
        tier.put("one".into(), &Bytes::from(vec![1u8; 100]))
            .await
            .expect("put");
        tier.put("two".into(), &Bytes::from(vec![2u8; 100]))
            .await
            .expect("put");
        let path = |id: &str| {
            let t = tier.clone();
            let id = id.to_string();
            async move { t.index.get(&id).await.expect("indexed").path.clone() }
        };
        // Another writer replaced one's file with a slice of the same length.
        std::fs::copy(path("two").await, path("one").await).expect("overwrite");
        assert_eq!(tier.get("one", 100).await, None);
        assert_eq!(
            tier.get("two", 100).await,
            Some(Bytes::from(vec![2u8; 100]))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
