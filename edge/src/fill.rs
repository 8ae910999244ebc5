//! Filling: the one origin request for a cold object (its first slice,
//! which is the whole object when it is small: a large one is never pulled
//! whole), and the slices of large objects, each fetched once with
//! `If-Match` on the ETag the response started with, so a client never gets
//! bytes from two versions.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use weir_core::{InternalEvent, InternalEventHandle};

use crate::edge::Edge;
use crate::events::{DiskWriteFailed, ObjectChanged, OriginFetch};
use crate::keys::ObjectKey;
use crate::origin::{Fetched, ObjectMeta, OriginError};
use crate::tiers::{slice_id, CachedObject};

/// Result of a coalesced fill.
#[derive(Debug, Clone)]
pub(crate) enum Fill {
    /// The origin has no such key.
    Missing,
    /// A small object, now in the memory tier.
    Memory(Arc<CachedObject>),
    /// A large object, served from its slices.
    Large(ObjectMeta),
}

impl Edge {
    /// The one origin request for a cold object: its first slice, which is
    /// the whole object when it is small.
    pub(crate) async fn fill(
        self: Arc<Self>,
        obj: ObjectKey,
        gen: u64,
    ) -> Result<Fill, OriginError> {
        let id = obj.cache_id();
        if let Some(o) = self.memory.get(&id).await {
            // Filled by a flight that ended just before this one started.
            if o.checked_at.elapsed() < self.cfg.fresh_for {
                return Ok(Fill::Memory(o));
            }
        }
        let s = self.cfg.slice_size;
        let _budget = self.reserve(s).await;
        self.origin_requests.emit(OriginFetch::Fill);
        let first = self
            .origin
            .get(&obj, Some(format!("bytes=0-{}", s - 1)), None)
            .await;
        let (meta, body) = match first {
            Ok(Fetched::Found { meta, body }) => (meta, body),
            Ok(Fetched::Missing) => {
                self.remember(&obj, None, gen).await;
                return Ok(Fill::Missing);
            }
            // An empty object has no byte 0: S3 answers 416.
            Ok(Fetched::Unsatisfiable) => match self.origin.get(&obj, None, None).await? {
                Fetched::Found { meta, body } => (meta, body),
                Fetched::Missing | Fetched::Unsatisfiable => {
                    self.remember(&obj, None, gen).await;
                    return Ok(Fill::Missing);
                }
            },
            Err(e) => return Err(e),
        };
        let current = self.remember(&obj, Some(meta.clone()), gen).await;
        if meta.size > self.cfg.memory_object_max {
            if current && body.len() as u64 == s {
                if let Err(e) = self.disk.put(slice_id(&id, &meta.etag, 0), &body).await {
                    DiskWriteFailed { error: &e }.emit();
                }
            }
            return Ok(Fill::Large(meta));
        }
        let body = if (body.len() as u64) < meta.size {
            let _rest_budget = self.reserve(meta.size - body.len() as u64).await;
            self.origin_requests.emit(OriginFetch::Rest);
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
        let o = Arc::new(CachedObject::new(meta, body, Instant::now()));
        self.keep_in_memory(id, o.clone(), gen).await;
        Ok(Fill::Memory(o))
    }

    /// Slice `index` of the version `meta` describes: from disk, or fetched
    /// once with `If-Match` (within the in-flight budget) and written to
    /// disk; handed out as the file when it is there.
    pub(crate) async fn slice(
        self: &Arc<Self>,
        obj: &ObjectKey,
        meta: &ObjectMeta,
        index: u64,
    ) -> Result<SliceData, OriginError> {
        let s = self.cfg.slice_size;
        let start = index * s;
        let end = (start + s).min(meta.size) - 1;
        let len = end - start + 1;
        let id = slice_id(&obj.cache_id(), &meta.etag, index);
        if let Some((file, base)) = self.disk.open_slice(&id, len).await {
            return Ok(SliceData::File { file, base });
        }
        let (edge, o, etag, sid) = (self.clone(), obj.clone(), meta.etag.clone(), id.clone());
        let (res, _) = self
            .slices
            .run(id.clone(), move || async move {
                if edge.disk.contains(&sid).await {
                    return Ok(None);
                }
                let _budget = edge.reserve(len).await;
                edge.origin_requests.emit(OriginFetch::Slice);
                match edge
                    .origin
                    .get(&o, Some(format!("bytes={start}-{end}")), Some(&etag))
                    .await?
                {
                    Fetched::Found { meta: m, body }
                        if m.etag == etag && body.len() as u64 == len =>
                    {
                        match edge.disk.put(sid, &body).await {
                            Ok(()) => Ok(None),
                            Err(e) => {
                                DiskWriteFailed { error: &e }.emit();
                                Ok(Some(body))
                            }
                        }
                    }
                    _ => Err(OriginError::Changed),
                }
            })
            .await;
        match res {
            Ok(Some(body)) => Ok(SliceData::Bytes(body)),
            Ok(None) => match self.disk.open_slice(&id, len).await {
                Some((file, base)) => Ok(SliceData::File { file, base }),
                None => Err(OriginError::Unavailable(
                    "slice left the disk tier before it was read".into(),
                )),
            },
            Err(OriginError::Changed) => {
                ObjectChanged { key: &obj.key }.emit();
                self.forget(obj).await;
                Err(OriginError::Changed)
            }
            Err(e) => Err(e),
        }
    }
}

/// One slice, ready to be sent.
pub(crate) enum SliceData {
    /// Its file in the disk tier, the slice's bytes starting at `base`.
    File {
        /// The open file (it stays readable if evicted meanwhile).
        file: Arc<std::fs::File>,
        /// Offset of the slice's first byte (past the identity header).
        base: u64,
    },
    /// Its bytes (when the disk tier could not take it).
    Bytes(Bytes),
}
