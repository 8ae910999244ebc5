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
                let (file, at) = (file.clone(), base + self.pos);
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n as usize];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)??
            }
        };
        self.pos += n;
        Ok(Some(chunk))
    }
}
