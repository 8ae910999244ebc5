//! The producers' internal events: each writes its log line and its metric
//! together (`weir_core::telemetry`). Per-record counters come from caches
//! keyed by their labels, registered once.

use weir_core::{CounterCache, InternalEvent};

/// `weir_producer_events_total{kind,outcome}`.
static PRODUCED: CounterCache<2> =
    CounterCache::new("weir_producer_events_total", ["kind", "outcome"]);

/// `weir_limiter_decisions_total{kind,decision}`.
static DECIDED: CounterCache<2> =
    CounterCache::new("weir_limiter_decisions_total", ["kind", "decision"]);

/// What became of one record handed to the producer.
pub(crate) struct RecordProduced {
    /// Event kind (`health`, `access`, `dead_letter`, …).
    pub kind: &'static str,
    /// `delivered`, `failed`, `invalid` or `queue_full`.
    pub outcome: &'static str,
}

impl InternalEvent for RecordProduced {
    fn emit(self) {
        if matches!(self.outcome, "failed" | "invalid") {
            tracing::debug!(
                kind = self.kind,
                outcome = self.outcome,
                "record not produced"
            );
        }
        PRODUCED.get([self.kind, self.outcome]).increment(1);
    }
}

/// The limiter's decision for one event.
pub(crate) struct LimiterDecided {
    pub kind: &'static str,
    pub decision: &'static str,
}

impl InternalEvent for LimiterDecided {
    fn emit(self) {
        DECIDED.get([self.kind, self.decision]).increment(1);
    }
}

/// The limiter took a new lag reading and set its admitted fraction.
pub(crate) struct LimiterUpdated {
    pub fraction: f64,
    pub lag_per_partition: f64,
}

impl InternalEvent for LimiterUpdated {
    fn emit(self) {
        tracing::debug!(
            fraction = self.fraction,
            lag_per_partition = self.lag_per_partition,
            "limiter updated"
        );
        metrics::gauge!("weir_limiter_fraction_ratio").set(self.fraction);
        metrics::gauge!("weir_limiter_lag_messages").set(self.lag_per_partition);
    }
}

/// The agent queued one health report.
pub(crate) struct ReportQueued;

impl InternalEvent for ReportQueued {
    fn emit(self) {
        metrics::counter!("weir_agent_reports_total").increment(1);
    }
}

/// The gateway did not take some reports (`weir agent --via`): they are
/// held and sent again. `status` 0 means no answer (refused connection,
/// timeout).
pub(crate) struct GatewayRefused<'a> {
    pub status: u16,
    pub reports: usize,
    pub detail: &'a str,
}

impl InternalEvent for GatewayRefused<'_> {
    fn emit(self) {
        tracing::warn!(
            status = self.status,
            reports = self.reports,
            detail = self.detail,
            "the gateway did not take the reports; backing off"
        );
        metrics::counter!("weir_agent_gateway_refusals_total").increment(1);
    }
}

/// Help text of the producers', limiter's and agent's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "weir_producer_events_total",
        "Events offered to Kafka by kind and outcome (delivered, failed, queue_full, invalid, shed, ...)"
    );
    metrics::describe_counter!(
        "weir_limiter_decisions_total",
        "Lag-aware limiter decisions by event kind and decision (admitted, shed, exempt)"
    );
    metrics::describe_gauge!(
        "weir_limiter_fraction_ratio",
        "Fraction of sheddable events the limiter admits (1 = none shed)"
    );
    metrics::describe_gauge!(
        "weir_limiter_lag_messages",
        "Lag per partition of the pacing group, as the limiter last read it"
    );
    metrics::describe_counter!(
        "weir_agent_gateway_refusals_total",
        "Posts of reports the ingest gateway did not take (sent again after a backoff)"
    );
    metrics::describe_counter!(
        "weir_agent_reports_total",
        "Health reports the agent queued"
    );
}
