//! The balancer's internal events: each type writes its log line and its
//! metric together ([`weir_core::telemetry`]). Per-backend metrics are
//! registered once, when the backend is first seen ([`BackendMetrics`]);
//! the request path only touches their cached handles.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tracing::{info, warn};
use weir_core::{InternalEvent, InternalEventHandle, RegisterInternalEvent};

use crate::backend::Outcome;

/// Metric handles of one backend: `weir_balance_backend_requests_total
/// {pool, backend, outcome}`, `weir_balance_backend_duration_seconds`,
/// `weir_balance_backend_inflight`, `weir_balance_backend_state` (0 down,
/// 1 up, 2 ejected), `weir_balance_backend_weight`,
/// `weir_balance_backend_ejections_total`.
#[derive(Debug)]
pub struct BackendMetrics {
    outcomes: [Counter; 5],
    duration: Histogram,
    inflight: Gauge,
    state: Gauge,
    weight: Gauge,
    ejections: Counter,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Success,
    Outcome::ServerError,
    Outcome::ConnectFailed,
    Outcome::Timeout,
    Outcome::Broken,
];

/// Registers [`BackendMetrics`] for one backend of one pool.
pub struct BackendRegistered<'a> {
    /// Pool.
    pub pool: &'a str,
    /// Backend `host:port`.
    pub backend: &'a str,
}

impl RegisterInternalEvent for BackendRegistered<'_> {
    type Handle = BackendMetrics;
    fn register(self) -> BackendMetrics {
        let (p, b) = (self.pool.to_string(), self.backend.to_string());
        let outcomes = OUTCOMES.map(|o| {
            metrics::counter!("weir_balance_backend_requests_total",
                "pool" => p.clone(), "backend" => b.clone(), "outcome" => o.label())
        });
        BackendMetrics {
            outcomes,
            duration: metrics::histogram!("weir_balance_backend_duration_seconds",
                "pool" => p.clone(), "backend" => b.clone()),
            inflight: metrics::gauge!("weir_balance_backend_inflight",
                "pool" => p.clone(), "backend" => b.clone()),
            state: metrics::gauge!("weir_balance_backend_state",
                "pool" => p.clone(), "backend" => b.clone()),
            weight: metrics::gauge!("weir_balance_backend_weight",
                "pool" => p.clone(), "backend" => b.clone()),
            ejections: metrics::counter!("weir_balance_backend_ejections_total",
                "pool" => p, "backend" => b),
        }
    }
}

/// One attempt on a backend: its outcome and its time to the response
/// head.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    /// How it went.
    pub outcome: Outcome,
    /// Time to the response head (or the failure).
    pub duration: Duration,
}

impl InternalEventHandle for BackendMetrics {
    type Data = Attempted;
    fn emit(&self, a: Attempted) {
        let i = OUTCOMES.iter().position(|o| *o == a.outcome).unwrap_or(0);
        self.outcomes[i].increment(1);
        self.duration.record(a.duration.as_secs_f64());
    }
}

impl BackendMetrics {
    /// Registers the handles of `backend` in `pool`.
    pub fn register(pool: &str, backend: &str) -> BackendMetrics {
        BackendRegistered { pool, backend }.register()
    }

    pub(crate) fn inflight(&self, n: u64) {
        self.inflight.set(n as f64);
    }

    pub(crate) fn state(&self, s: f64) {
        self.state.set(s);
    }

    pub(crate) fn weight(&self, w: f64) {
        self.weight.set(w);
    }

    pub(crate) fn ejected(&self) {
        self.ejections.increment(1);
    }
}

/// A backend was ejected by passive health.
pub struct BackendEjected<'a> {
    /// Pool.
    pub pool: &'a str,
    /// Backend.
    pub backend: &'a str,
    /// For how long.
    pub length: Duration,
    /// The failure that tipped it.
    pub outcome: Outcome,
}

impl InternalEvent for BackendEjected<'_> {
    fn emit(self) {
        // The counter moved in `Backend::record`, under the lock that
        // decided the ejection.
        warn!(pool = self.pool, backend = self.backend, length = ?self.length,
            last_failure = self.outcome.label(), "backend ejected");
    }
}

/// A pool's membership changed (a node came up or went down, a report
/// changed a weight).
pub struct PoolChanged<'a> {
    /// Pool.
    pub pool: &'a str,
    /// Members now.
    pub members: usize,
    /// Joined since the last membership.
    pub joined: &'a [String],
    /// Left since the last membership.
    pub left: &'a [String],
}

impl InternalEvent for PoolChanged<'_> {
    fn emit(self) {
        if self.joined.is_empty() && self.left.is_empty() {
            return;
        }
        metrics::counter!("weir_balance_membership_changes_total", "pool" => self.pool.to_string())
            .increment(1);
        metrics::gauge!("weir_balance_pool_members", "pool" => self.pool.to_string())
            .set(self.members as f64);
        info!(
            pool = self.pool,
            members = self.members,
            joined = ?self.joined,
            left = ?self.left,
            "pool membership changed"
        );
    }
}

/// A request was retried on another backend, or could not be.
pub struct Retried<'a> {
    /// Pool.
    pub pool: &'a str,
    /// Retried (true) or refused by the retry budget (false).
    pub allowed: bool,
}

impl InternalEvent for Retried<'_> {
    fn emit(self) {
        let result = if self.allowed {
            "retried"
        } else {
            "budget_exhausted"
        };
        metrics::counter!("weir_balance_retries_total", "pool" => self.pool.to_string(), "result" => result)
            .increment(1);
    }
}

/// A client request answered by the balancer itself with an error.
pub struct RequestFailed<'a> {
    /// Pool (empty when no route matched).
    pub pool: &'a str,
    /// Status answered (502, 503, 504, 404).
    pub status: u16,
    /// Why.
    pub reason: &'static str,
}

impl InternalEvent for RequestFailed<'_> {
    fn emit(self) {
        metrics::counter!("weir_balance_failed_requests_total",
            "pool" => self.pool.to_string(), "status" => self.status.to_string(), "reason" => self.reason)
        .increment(1);
        tracing::debug!(
            pool = self.pool,
            status = self.status,
            reason = self.reason,
            "request failed"
        );
    }
}

/// The fleet snapshot was (re)loaded from Redis.
pub struct SnapshotLoaded {
    /// Nodes up in it.
    pub up: usize,
    /// Why it was loaded (`start`, `resubscribe`, `resync`).
    pub why: &'static str,
}

impl InternalEvent for SnapshotLoaded {
    fn emit(self) {
        metrics::counter!("weir_balance_snapshots_total", "why" => self.why).increment(1);
        metrics::gauge!("weir_balance_fleet_nodes_up").set(self.up as f64);
        tracing::debug!(up = self.up, why = self.why, "fleet snapshot loaded");
    }
}

/// Redis could not be read; the balancer serves from its last snapshot.
pub struct FleetUnreachable<'a> {
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for FleetUnreachable<'_> {
    fn emit(self) {
        metrics::counter!("weir_balance_fleet_errors_total").increment(1);
        metrics::gauge!("weir_balance_fleet_stale").set(1.0);
        warn!(
            error = self.error,
            "fleet state unreachable; serving from the last snapshot"
        );
    }
}

/// Redis answers again.
pub struct FleetReachable;

impl InternalEvent for FleetReachable {
    fn emit(self) {
        metrics::gauge!("weir_balance_fleet_stale").set(0.0);
        info!("fleet state reachable; following changes");
    }
}
