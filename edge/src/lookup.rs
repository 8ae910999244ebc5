//! Looking an object up: memory tier (whole objects up to
//! `edge.memory_object_max`) → metadata known locally or in Redis (negative
//! entries answer 404 without the origin; large objects go straight to their
//! slices) → one coalesced origin fill ([`crate::fill`]). A copy past
//! `fresh_for` is revalidated with a `HEAD`, and served stale within
//! `stale_grace` while the origin fails.

use std::sync::Arc;
use std::time::Instant;

use weir_core::http::ApiError;
use weir_core::InternalEvent;
use weir_schemas::CacheOutcome;

use crate::edge::Edge;
use crate::events::StaleServed;
use crate::fill::Fill;
use crate::flight::Role;
use crate::keys::ObjectKey;
use crate::meta::SharedMeta;
use crate::origin::OriginError;
use crate::plan::Conditions;
use crate::reply::{Found, Reply};
use crate::tiers::CachedObject;

/// A `GET` or `HEAD` of one object.
pub(crate) struct ObjectRequest<'a> {
    /// The object named.
    pub(crate) obj: ObjectKey,
    /// Its deciding headers.
    pub(crate) conditions: Conditions<'a>,
    /// `HEAD`: answer as `GET`, without the body.
    pub(crate) head: bool,
}

/// Why one attempt at serving failed.
pub(crate) enum Fail {
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

/// 504 for a timeout, 502 for anything else.
pub(crate) fn origin_error(e: OriginError) -> ApiError {
    match e {
        OriginError::Timeout => ApiError::gateway_timeout(),
        other => ApiError::bad_gateway(other),
    }
}

fn not_found() -> Fail {
    Fail::Api(ApiError::not_found("no such object"))
}

impl Edge {
    /// Answers a `GET` or `HEAD`, retrying once when the object changed
    /// under the first attempt.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        req: &ObjectRequest<'_>,
    ) -> Result<Reply, ApiError> {
        for _ in 0..2 {
            match self.serve_once(req).await {
                Ok(r) => return Ok(r),
                Err(Fail::Api(e)) => return Err(e),
                Err(Fail::Changed) => {}
            }
        }
        Err(origin_error(OriginError::Changed))
    }

    async fn serve_once(self: &Arc<Self>, req: &ObjectRequest<'_>) -> Result<Reply, Fail> {
        let obj = &req.obj;
        let id = obj.cache_id();
        let max = self.cfg.memory_object_max;
        let grace = self.cfg.fresh_for + self.cfg.stale_grace;
        if let Some(o) = self.memory.get(&id).await {
            if o.checked_at.elapsed() < self.cfg.fresh_for {
                return Ok(self.reply_memory(req, &o, CacheOutcome::Hit, 0));
            }
            if let Some(r) = self.revalidate(req, &o).await? {
                return Ok(r);
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
                    None => return Err(not_found()),
                    Some(m) if m.size > max => {
                        let found = Found {
                            meta: m.clone(),
                            checked_at: e.checked_at,
                            cache: CacheOutcome::Hit,
                            origin_us: 0,
                        };
                        return self.reply_large(req, found).await;
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(shared) = &self.shared {
            match shared.get(obj).await {
                Some(SharedMeta::Missing) => {
                    self.remember_locally(id.clone(), None, Instant::now())
                        .await;
                    return Err(not_found());
                }
                Some(SharedMeta::Found(m)) if m.size > max => {
                    let now = Instant::now();
                    self.remember_locally(id.clone(), Some(m.clone()), now)
                        .await;
                    let found = Found {
                        meta: m,
                        checked_at: now,
                        cache: CacheOutcome::Hit,
                        origin_us: 0,
                    };
                    return self.reply_large(req, found).await;
                }
                _ => {}
            }
        }
        let t = Instant::now();
        // Keyed by purge generation too: a request after a purge never
        // joins a fill that started before it.
        let gen = self.generations.current(&id);
        let (res, role) = {
            let (edge, o) = (self.clone(), obj.clone());
            self.objects
                .run(
                    (id.clone(), gen),
                    move || async move { edge.fill(o, gen).await },
                )
                .await
        };
        let origin_us = t.elapsed().as_micros() as u64;
        let outcome = match role {
            Role::Leader => CacheOutcome::Miss,
            Role::Waiter => CacheOutcome::Coalesced,
        };
        match res {
            Ok(Fill::Missing) => Err(not_found()),
            Ok(Fill::Memory(o)) => Ok(self.reply_memory(req, &o, outcome, origin_us)),
            Ok(Fill::Large(meta)) => {
                let cache = if outcome == CacheOutcome::Miss {
                    CacheOutcome::Stream
                } else {
                    outcome
                };
                let found = Found {
                    meta,
                    checked_at: Instant::now(),
                    cache,
                    origin_us,
                };
                self.reply_large(req, found).await
            }
            // The object changed between the two requests of a fill:
            // retried once with whatever it is now.
            Err(OriginError::Changed) => Err(Fail::Changed),
            Err(e) => {
                // A large object whose metadata went stale: its slices on
                // disk are still good within the grace period.
                let stale = local.as_ref().and_then(|entry| {
                    let m = entry.meta.as_ref()?;
                    (m.size > max && entry.checked_at.elapsed() < grace)
                        .then(|| (m.clone(), entry.checked_at))
                });
                let Some((meta, checked_at)) = stale else {
                    return Err(origin_error(e).into());
                };
                StaleServed {
                    key: &obj.key,
                    error: &e,
                    tier: "disk",
                }
                .emit();
                let found = Found {
                    meta,
                    checked_at,
                    cache: CacheOutcome::Stale,
                    origin_us,
                };
                self.reply_large(req, found).await
            }
        }
    }

    /// A memory copy past `fresh_for`: asks the origin (one `HEAD` for all
    /// callers) whether it still holds. `None`: it changed and was
    /// forgotten; look it up again.
    async fn revalidate(
        self: &Arc<Self>,
        req: &ObjectRequest<'_>,
        o: &Arc<CachedObject>,
    ) -> Result<Option<Reply>, Fail> {
        let (obj, id) = (&req.obj, req.obj.cache_id());
        let age = o.checked_at.elapsed();
        let gen = self.generations.current(&id);
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
                self.remember(obj, Some(m), gen).await;
                let fresh = Arc::new(o.confirmed(Instant::now()));
                self.keep_in_memory(id, fresh.clone(), gen).await;
                Ok(Some(self.reply_memory(
                    req,
                    &fresh,
                    CacheOutcome::Revalidated,
                    origin_us,
                )))
            }
            Ok(_) => {
                self.forget(obj).await;
                Ok(None)
            }
            Err(e) if age < self.cfg.fresh_for + self.cfg.stale_grace => {
                StaleServed {
                    key: &obj.key,
                    error: &e,
                    tier: "memory",
                }
                .emit();
                Ok(Some(self.reply_memory(
                    req,
                    o,
                    CacheOutcome::Stale,
                    origin_us,
                )))
            }
            Err(e) => Err(origin_error(e).into()),
        }
    }
}
