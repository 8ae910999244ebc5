//! Building replies from a [`ReplyPlan`]: headers common to every answer
//! about an object, a whole object from memory, and a large object streamed
//! slice by slice from the disk tier (never collected).

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use weir_core::InternalEvent;
use weir_schemas::CacheOutcome;

use crate::edge::Edge;
use crate::events::ResponseCut;
use crate::fill::SliceData;
use crate::keys::ObjectKey;
use crate::lookup::{origin_error, Fail, ObjectRequest};
use crate::origin::{ObjectMeta, OriginError};
use crate::plan::{plan, Plan};
use crate::ranges::ByteRange;
use crate::tiers::{CachedObject, ObjectHead};

/// An answer before access accounting.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: ReplyBody,
    pub(crate) cache: CacheOutcome,
    pub(crate) object_size: Option<u64>,
    pub(crate) origin_us: u64,
}

/// The body of a [`Reply`].
pub(crate) enum ReplyBody {
    Empty,
    Bytes(Bytes),
    Stream(BoxStream<'static, Result<Bytes, std::io::Error>>),
}

/// What a lookup found about an object, and how it found it.
pub(crate) struct Found {
    /// The version being answered.
    pub(crate) meta: ObjectMeta,
    /// When the origin last confirmed it (for `Age`).
    pub(crate) checked_at: Instant,
    /// How the lookup went.
    pub(crate) cache: CacheOutcome,
    /// Time spent waiting on the origin, µs.
    pub(crate) origin_us: u64,
}

/// A header value from text that may not be one (then empty).
pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An `Age` value; the first minute's (most hits' within the default
/// `fresh_for`) are rendered once.
fn age_value(secs: u64) -> HeaderValue {
    use std::sync::OnceLock;
    const KEPT: usize = 64;
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let ages = AGES.get_or_init(|| (0..KEPT as u64).map(HeaderValue::from).collect());
    match ages.get(secs as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

impl Found {
    fn reply(&self, status: StatusCode, headers: HeaderMap, body: ReplyBody) -> Reply {
        Reply {
            status,
            headers,
            body,
            cache: self.cache,
            object_size: Some(self.meta.size),
            origin_us: self.origin_us,
        }
    }
}

impl Edge {
    /// Headers of every answer about an object (validators, caching), plus
    /// those `plan` adds (type, length, range), from its rendered values.
    fn object_headers(
        &self,
        size: u64,
        head: &ObjectHead,
        checked_at: Instant,
        plan: Plan,
    ) -> HeaderMap {
        // Room for these and the few the server adds (x-request-id,
        // x-cache, date) without growing.
        let mut h = HeaderMap::with_capacity(16);
        h.insert(header::ETAG, head.etag.clone());
        if let Some(lm) = &head.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        // Nothing about a 412 may be cached: no Cache-Control, no Age.
        if plan != Plan::PreconditionFailed {
            h.insert(header::CACHE_CONTROL, self.cache_control.clone());
            h.insert(header::AGE, age_value(checked_at.elapsed().as_secs()));
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        match plan {
            Plan::NotModified => {}
            Plan::PreconditionFailed => {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            Plan::Unsatisfiable => {
                h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            Plan::Full => {
                h.insert(header::CONTENT_TYPE, head.content_type.clone());
                h.insert(header::CONTENT_LENGTH, head.full_length.clone());
            }
            Plan::Partial(r) => {
                h.insert(header::CONTENT_TYPE, head.content_type.clone());
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                h.insert(
                    header::CONTENT_RANGE,
                    hv(&format!("bytes {}-{}/{size}", r.start, r.end)),
                );
            }
        }
        h
    }

    /// Answers from a whole object held in memory.
    pub(crate) fn reply_memory(
        &self,
        req: &ObjectRequest<'_>,
        o: &CachedObject,
        cache: CacheOutcome,
        origin_us: u64,
    ) -> Reply {
        let p = plan(&o.meta, &req.conditions, req.head);
        let headers = self.object_headers(o.meta.size, &o.head, o.checked_at, p.plan);
        let body = match p.plan.bytes(o.meta.size) {
            Some(r) if p.body => ReplyBody::Bytes(o.body.slice(r.start as usize..=r.end as usize)),
            _ => ReplyBody::Empty,
        };
        Reply {
            status: p.plan.status(),
            headers,
            body,
            cache,
            object_size: Some(o.meta.size),
            origin_us,
        }
    }

    /// Answers about a large object, streaming its slices from the disk
    /// tier (fetched once each, with `If-Match` on `found`'s ETag).
    pub(crate) async fn reply_large(
        self: &Arc<Self>,
        req: &ObjectRequest<'_>,
        found: Found,
    ) -> Result<Reply, Fail> {
        let p = plan(&found.meta, &req.conditions, req.head);
        let head = ObjectHead::of(&found.meta);
        let headers = self.object_headers(found.meta.size, &head, found.checked_at, p.plan);
        let r = match p.plan.bytes(found.meta.size) {
            Some(r) if p.body => r,
            _ => return Ok(found.reply(p.plan.status(), headers, ReplyBody::Empty)),
        };
        let first = r.start / self.cfg.slice_size;
        // The first slice is fetched before answering, so that a failure
        // becomes a proper status rather than a cut response.
        let first_data = match self.slice(&req.obj, &found.meta, first).await {
            Ok(d) => d,
            Err(OriginError::Changed) => return Err(Fail::Changed),
            Err(e) => return Err(origin_error(e).into()),
        };
        let stream = slice_stream(
            self.clone(),
            req.obj.clone(),
            found.meta.clone(),
            r,
            first_data,
        );
        Ok(found.reply(p.plan.status(), headers, ReplyBody::Stream(stream)))
    }
}

/// Bytes sent per chunk of a streamed response. With the connection's write
/// buffer capped at one chunk (`weir_core::listener`,
/// `ConnLimits::max_buf_size`), a client that stops reading holds about one
/// block and one chunk of memory, not a slice.
pub(crate) const CHUNK: u64 = 64 * 1024;

/// Bytes read from the disk tier at once (one blocking-pool task), then sent
/// as chunks; each block in flight is counted in `edge.inflight_budget`
/// until its last chunk is handed to the connection. Only while more than
/// half the budget is free ([`Edge::read_size`]); else one chunk at a time. (64 KiB reads cost a
/// blocking-pool round trip per chunk: a fifth of a warm large object's
/// time.)
pub(crate) const BLOCK: u64 = 4 * CHUNK;

/// The bytes `r` asks for, slice after slice, the first slice given, with
/// `edge.read_ahead` slices of read-ahead (the next ones are fetched, or
/// found on disk, while this one is sent: a cold object streams at the rate
/// of several origin requests at once, as one whole GET would). Ends with an error (cutting the response
/// short, the only honest answer once headers are sent: the client sees an
/// incomplete body, never bytes of two versions) when a slice fails.
fn slice_stream(
    edge: Arc<Edge>,
    obj: ObjectKey,
    meta: ObjectMeta,
    r: ByteRange,
    first_data: SliceData,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let s = edge.cfg.slice_size;
    let (first, last) = (r.start / s, r.end / s);
    async_stream::stream! {
        let fetch = |i: u64| {
            let (e, o, m) = (edge.clone(), obj.clone(), meta.clone());
            tokio::spawn(async move { e.slice(&o, &m, i).await })
        };
        let ahead = edge.cfg.read_ahead.max(1);
        // Slices fetched ahead, in order: first + 1 ..= fetched.
        let mut next = std::collections::VecDeque::with_capacity(ahead as usize);
        let mut fetched = first;
        while fetched < last && (fetched - first) < ahead {
            fetched += 1;
            next.push_back(fetch(fetched));
        }
        let mut current: Result<SliceData, OriginError> = Ok(first_data);
        let mut i = first;
        loop {
            let data = match current {
                Ok(d) => d,
                Err(e) => {
                    ResponseCut { key: &obj.key, slice: i, error: &e }.emit();
                    for t in next.drain(..) { t.abort(); }
                    yield Err(std::io::Error::other(e.to_string()));
                    break;
                }
            };
            // The part of slice `i` within the range.
            let slice_start = i * s;
            let from = r.start.saturating_sub(slice_start);
            let to = (r.end + 1 - slice_start).min(s);
            let mut reader = SliceReader::new(data, from, to);
            loop {
                let len = edge.read_size(reader.next_len(), CHUNK);
                let permit = edge.reserve(len).await;
                match reader.next_block(len).await {
                    Ok(Some(block)) => {
                        let _permit = permit;
                        let mut at = 0;
                        while at < block.len() {
                            let n = (CHUNK as usize).min(block.len() - at);
                            yield Ok(block.slice(at..at + n));
                            at += n;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                }
            }
            let Some(task) = next.pop_front() else { break };
            current = task.await.unwrap_or_else(|e| Err(OriginError::Unavailable(e.to_string())));
            i += 1;
            if fetched < last {
                fetched += 1;
                next.push_back(fetch(fetched));
            }
        }
    }
    .boxed()
}

/// Reads `from..to` of one slice in blocks of [`BLOCK`].
struct SliceReader {
    data: SliceData,
    pos: u64,
    to: u64,
}

impl SliceReader {
    fn new(data: SliceData, from: u64, to: u64) -> SliceReader {
        SliceReader {
            data,
            pos: from,
            to,
        }
    }

    /// Length of the next block (0 at the end).
    fn next_len(&self) -> u64 {
        BLOCK.min(self.to.saturating_sub(self.pos))
    }

    /// The next `len` bytes at most ([`SliceReader::next_len`] or less).
    async fn next_block(&mut self, len: u64) -> std::io::Result<Option<Bytes>> {
        if self.pos >= self.to {
            return Ok(None);
        }
        let n = self.next_len().min(len.max(1));
        let chunk = match &self.data {
            SliceData::Bytes(b) => b.slice(self.pos as usize..(self.pos + n) as usize),
            SliceData::File { file, base } => {
                let at = base + self.pos;
                let mut buf = vec![0u8; n as usize];
                // What the page cache holds is read here, on the
                // connection's own task; only the rest goes to the
                // blocking pool, whose round trip (a wake-up and a switch
                // per block) was a third of a warm large object's time.
                let cached = read_cached(file, &mut buf, at);
                if cached == buf.len() {
                    Bytes::from(buf)
                } else {
                    let file = file.clone();
                    tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        file.read_exact_at(&mut buf[cached..], at + cached as u64)
                            .map(|()| Bytes::from(buf))
                    })
                    .await
                    .map_err(std::io::Error::other)??
                }
            }
        };
        self.pos += n;
        Ok(Some(chunk))
    }
}

/// Reads into `buf` from `at` what the page cache already holds, without
/// waiting for the disk: `preadv2` with `RWF_NOWAIT` answers `EAGAIN`
/// rather than block the runtime's thread on a read from the device.
/// Returns how many bytes it read (0 when nothing was cached, at the end
/// of the file, or where the kernel or file system does not support the
/// flag); the caller reads the rest on the blocking pool.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, buf: &mut [u8], at: u64) -> usize {
    use rustix::io::{preadv2, ReadWriteFlags};
    let mut done = 0;
    while done < buf.len() {
        let mut iov = [std::io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(file, &mut iov, at + done as u64, ReadWriteFlags::NOWAIT) {
            Ok(n) if n > 0 => done += n,
            // The end of the file, EAGAIN (not cached), EOPNOTSUPP
            // (no RWF_NOWAIT here), or an error the blocking read will
            // meet and report.
            _ => break,
        }
    }
    done
}

/// Elsewhere every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _buf: &mut [u8], _at: u64) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A slice file: a 6-byte header, then `len` bytes of a pattern.
    fn slice_file(len: usize) -> (TempFile, Vec<u8>) {
        let path = std::env::temp_dir().join(weir_testkit::unique("weir-reply-test"));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = std::fs::File::create(&path).expect("temp file");
        f.write_all(b"HEADER").expect("write");
        f.write_all(&data).expect("write");
        f.flush().expect("flush");
        (TempFile(path), data)
    }

    async fn read_all(mut r: SliceReader, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = r.next_block(len).await.expect("read") {
            assert!(b.len() as u64 <= len.max(1));
            out.extend_from_slice(&b);
        }
        out
    }

    #[tokio::test]
    async fn a_file_slice_reads_back_exactly_in_blocks_and_chunks() {
        let (f, data) = slice_file(3 * BLOCK as usize + 12_345);
        let file = Arc::new(std::fs::File::open(f.path()).expect("open"));
        for (from, to) in [
            (0u64, data.len() as u64),
            (1, data.len() as u64 - 1),
            (BLOCK - 1, 2 * BLOCK + 1),
            (5, 5),
        ] {
            for len in [BLOCK, CHUNK, 1] {
                let data_of = SliceData::File {
                    file: file.clone(),
                    base: 6,
                };
                let got = read_all(SliceReader::new(data_of, from, to), len).await;
                assert_eq!(
                    got,
                    &data[from as usize..to as usize],
                    "{from}..{to} in reads of {len}"
                );
            }
        }
    }

    #[test]
    fn read_cached_never_reads_past_the_end_or_more_than_asked() {
        let (f, data) = slice_file(100_000);
        let file = std::fs::File::open(f.path()).expect("open");
        // Just written: in the page cache, so all of it is read here
        // where the file system supports RWF_NOWAIT, none where not.
        let mut buf = vec![0u8; 50_000];
        let n = read_cached(&file, &mut buf, 6);
        assert!(n == 0 || n == buf.len(), "{n}");
        if n > 0 {
            assert_eq!(buf, &data[..50_000]);
        }
        // Past the end: nothing, and the buffer is untouched beyond.
        let mut buf = vec![9u8; 1000];
        let n = read_cached(&file, &mut buf, 6 + data.len() as u64 - 10);
        assert!(n <= 10, "{n}");
        assert!(buf[n..].iter().all(|&b| b == 9));
        let mut empty = [];
        assert_eq!(read_cached(&file, &mut empty, 0), 0);
    }
}
