//! The edge's internal events: each type writes its log line and its metric
//! together ([`weir_core::telemetry`]), so a log and its counter never
//! disagree. Events on the request path ([`RequestsServed`],
//! [`OriginRequests`], [`AccessShed`]) are registered once, when the edge is
//! built, and emit through handles that hold their counters; the others are
//! rare and emitted where they happen.

use std::fmt::Display;
use std::time::Duration;

use metrics::{Counter, Histogram};
use tracing::{debug, info, warn};
use weir_core::{InternalEvent, InternalEventHandle, RegisterInternalEvent};
use weir_schemas::CacheOutcome;

const OUTCOMES: [CacheOutcome; 7] = [
    CacheOutcome::Hit,
    CacheOutcome::Miss,
    CacheOutcome::Stream,
    CacheOutcome::Coalesced,
    CacheOutcome::Stale,
    CacheOutcome::Revalidated,
    CacheOutcome::Bypass,
];

/// Statuses the edge answers; their counters are registered up front.
const STATUSES: [u16; 13] = [
    200, 206, 304, 400, 404, 405, 412, 416, 500, 502, 503, 504, 413,
];

/// The `cache` label (and `x-cache` header) of an outcome.
pub fn outcome_label(c: CacheOutcome) -> &'static str {
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

fn outcome_index(c: CacheOutcome) -> usize {
    OUTCOMES.iter().position(|o| *o == c).unwrap_or(0)
}

/// Client requests answered: `weir_edge_requests_total{cache, status}` and
/// `weir_edge_request_duration_seconds{cache}`.
pub struct RequestsServed;

/// Cached handles of [`RequestsServed`].
pub struct RequestsHandle {
    /// By outcome, then status, in the order of `OUTCOMES` and `STATUSES`:
    /// found by index, not by hashing, on every request.
    counters: Vec<Counter>,
    durations: Vec<Histogram>,
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// How the lookup went.
    pub cache: CacheOutcome,
    /// Status answered.
    pub status: u16,
    /// Time to the reply's head.
    pub duration: Duration,
}

fn requests_counter(cache: CacheOutcome, status: u16) -> Counter {
    metrics::counter!("weir_edge_requests_total", "cache" => outcome_label(cache), "status" => status.to_string())
}

impl RegisterInternalEvent for RequestsServed {
    type Handle = RequestsHandle;
    fn register(self) -> RequestsHandle {
        let counters = OUTCOMES
            .iter()
            .flat_map(|o| STATUSES.iter().map(|s| requests_counter(*o, *s)))
            .collect();
        let durations = OUTCOMES
            .iter()
            .map(|o| metrics::histogram!("weir_edge_request_duration_seconds", "cache" => outcome_label(*o)))
            .collect();
        RequestsHandle {
            counters,
            durations,
        }
    }
}

impl InternalEventHandle for RequestsHandle {
    type Data = Served;
    fn emit(&self, s: Served) {
        let i = outcome_index(s.cache);
        let counter = STATUSES
            .iter()
            .position(|x| *x == s.status)
            .and_then(|j| self.counters.get(i * STATUSES.len() + j));
        match counter {
            Some(c) => c.increment(1),
            // A status the edge does not normally answer: registered on the
            // spot, which is rare enough not to matter.
            None => requests_counter(s.cache, s.status).increment(1),
        }
        if let Some(h) = self.durations.get(i) {
            h.record(s.duration.as_secs_f64());
        }
        debug!(status = s.status, cache = outcome_label(s.cache), duration = ?s.duration, "request answered");
    }
}

/// Why the edge asked the origin: `weir_edge_origin_requests_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFetch {
    /// A cold object's first slice.
    Fill,
    /// The rest of a small object whose first slice was not all of it.
    Rest,
    /// One slice of a large object.
    Slice,
}

/// Origin requests made.
pub struct OriginRequests;

/// Cached handles of [`OriginRequests`].
pub struct OriginRequestsHandle {
    fill: Counter,
    rest: Counter,
    slice: Counter,
}

impl RegisterInternalEvent for OriginRequests {
    type Handle = OriginRequestsHandle;
    fn register(self) -> OriginRequestsHandle {
        let c = |kind: &'static str| metrics::counter!("weir_edge_origin_requests_total", "kind" => kind);
        OriginRequestsHandle {
            fill: c("fill"),
            rest: c("rest"),
            slice: c("slice"),
        }
    }
}

impl InternalEventHandle for OriginRequestsHandle {
    type Data = OriginFetch;
    fn emit(&self, kind: OriginFetch) {
        match kind {
            OriginFetch::Fill => self.fill.increment(1),
            OriginFetch::Rest => self.rest.increment(1),
            OriginFetch::Slice => self.slice.increment(1),
        }
        debug!(?kind, "origin request");
    }
}

/// Access events not queued: `weir_edge_access_events_shed_total{reason}`.
pub struct AccessShed;

/// Why an access event was not queued.
#[derive(Debug)]
pub enum ShedReason {
    /// The producer's queue is full.
    QueueFull,
    /// The producer refused it.
    Error(String),
}

/// Cached handles of [`AccessShed`].
pub struct AccessShedHandle {
    queue_full: Counter,
    error: Counter,
}

impl RegisterInternalEvent for AccessShed {
    type Handle = AccessShedHandle;
    fn register(self) -> AccessShedHandle {
        let c = |reason: &'static str| metrics::counter!("weir_edge_access_events_shed_total", "reason" => reason);
        AccessShedHandle {
            queue_full: c("queue_full"),
            error: c("error"),
        }
    }
}

impl InternalEventHandle for AccessShedHandle {
    type Data = ShedReason;
    fn emit(&self, reason: ShedReason) {
        match reason {
            ShedReason::QueueFull => self.queue_full.increment(1),
            ShedReason::Error(e) => {
                self.error.increment(1);
                debug!(error = %e, "access event not queued");
            }
        }
    }
}

/// A slice could not be written to the disk tier (served anyway):
/// `weir_edge_disk_errors_total`.
pub struct DiskWriteFailed<'a> {
    /// The I/O error.
    pub error: &'a std::io::Error,
}

impl InternalEvent for DiskWriteFailed<'_> {
    fn emit(self) {
        warn!(error = %self.error, "disk tier write failed");
        metrics::counter!("weir_edge_disk_errors_total").increment(1);
    }
}

/// The origin failed and a stale copy was served within `edge.stale_grace`:
/// `weir_edge_stale_served_total{tier}`.
pub struct StaleServed<'a> {
    /// Object key.
    pub key: &'a str,
    /// The origin's failure.
    pub error: &'a dyn Display,
    /// `memory` (a whole object) or `disk` (slices).
    pub tier: &'static str,
}

impl InternalEvent for StaleServed<'_> {
    fn emit(self) {
        warn!(error = %self.error, key = self.key, tier = self.tier, "origin failed; serving a stale copy");
        metrics::counter!("weir_edge_stale_served_total", "tier" => self.tier).increment(1);
    }
}

/// An object changed at the origin while it was being served or filled; its
/// metadata was forgotten: `weir_edge_objects_changed_total`.
pub struct ObjectChanged<'a> {
    /// Object key.
    pub key: &'a str,
}

impl InternalEvent for ObjectChanged<'_> {
    fn emit(self) {
        info!(
            key = self.key,
            "object changed at the origin; forgetting its metadata"
        );
        metrics::counter!("weir_edge_objects_changed_total").increment(1);
    }
}

/// A streamed response was cut short because a slice failed after the
/// headers were sent: `weir_edge_responses_cut_total`.
pub struct ResponseCut<'a> {
    /// Object key.
    pub key: &'a str,
    /// Index of the slice that failed.
    pub slice: u64,
    /// Why.
    pub error: &'a dyn Display,
}

impl InternalEvent for ResponseCut<'_> {
    fn emit(self) {
        warn!(error = %self.error, key = self.key, slice = self.slice, "slice failed mid-response; response cut short");
        metrics::counter!("weir_edge_responses_cut_total").increment(1);
    }
}

/// A Redis command failed; Redis is skipped for `edge.redis_backoff`:
/// `weir_edge_redis_errors_total`.
pub struct RedisFailed<'a> {
    /// The failure.
    pub error: &'a dyn Display,
    /// How long Redis is skipped.
    pub backoff: Duration,
    /// Whether this failure starts a backoff period (logged only then, so a
    /// dead Redis writes one line per period, not one per request).
    pub starts_backoff: bool,
}

impl InternalEvent for RedisFailed<'_> {
    fn emit(self) {
        if self.starts_backoff {
            warn!(error = %self.error, backoff = ?self.backoff, "Redis failed; serving without shared metadata for a while");
        }
        metrics::counter!("weir_edge_redis_errors_total").increment(1);
    }
}

/// Help text of the edge's metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "weir_edge_requests_total",
        "Client requests by cache outcome and status"
    );
    describe_histogram!(
        "weir_edge_request_duration_seconds",
        Unit::Seconds,
        "Time from a client request to its reply's head, by cache outcome"
    );
    describe_counter!(
        "weir_edge_origin_requests_total",
        "Requests to the S3 origin by kind"
    );
    describe_counter!(
        "weir_edge_access_events_shed_total",
        "Access events not produced, by reason (the limiter shed them, the queue was full, ...)"
    );
    describe_counter!(
        "weir_edge_disk_errors_total",
        "Failed writes to the disk tier"
    );
    describe_counter!(
        "weir_edge_stale_served_total",
        "Stale copies served because the origin failed, by tier"
    );
    describe_counter!(
        "weir_edge_objects_changed_total",
        "Objects found changed at the origin while cached"
    );
    describe_counter!(
        "weir_edge_responses_cut_total",
        "Responses cut short by a slice failing mid-body"
    );
    describe_counter!(
        "weir_edge_redis_errors_total",
        "Redis failures of the shared metadata (the edge then serves without it for a while)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_cached_handles() {
        let h = RequestsServed.register();
        assert_eq!(h.durations.len(), OUTCOMES.len());
        assert_eq!(h.counters.len(), OUTCOMES.len() * STATUSES.len());
        let labels: std::collections::HashSet<_> =
            OUTCOMES.iter().map(|o| outcome_label(*o)).collect();
        assert_eq!(labels.len(), OUTCOMES.len());
        for o in OUTCOMES {
            assert_eq!(OUTCOMES[outcome_index(o)], o);
        }
    }
}
