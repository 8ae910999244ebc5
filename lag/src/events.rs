//! The lag exporter's internal events: each writes its log line and its
//! metrics together (`weir_core::telemetry`).

use weir_core::InternalEvent;

use crate::{GroupReport, LagStatus};

/// One reading of every exported group succeeded.
pub struct LagRead;

impl InternalEvent for LagRead {
    fn emit(self) {
        metrics::counter!("weir_lag_reads_total", "outcome" => "ok").increment(1);
    }
}

/// A reading failed; the exporter retries next interval.
pub struct LagReadFailed<'a> {
    /// Why.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for LagReadFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "cannot read consumer lag; retrying next interval");
        metrics::counter!("weir_lag_reads_total", "outcome" => "error").increment(1);
    }
}

/// The lag signal of a group was written to Redis, or not.
pub struct SignalPublished<'a> {
    /// Group.
    pub group: &'a str,
    /// `Err` with why it could not be written.
    pub result: Result<(), &'a dyn std::fmt::Display>,
}

impl InternalEvent for SignalPublished<'_> {
    fn emit(self) {
        let outcome = match self.result {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "cannot write the lag signal to Redis");
                "error"
            }
        };
        metrics::counter!("weir_lag_signals_total", "outcome" => outcome).increment(1);
    }
}

/// One exporter round took this long.
pub struct LagEvaluated {
    /// Time of the round.
    pub took: std::time::Duration,
}

impl InternalEvent for LagEvaluated {
    fn emit(self) {
        metrics::histogram!("weir_lag_evaluation_seconds").record(self.took.as_secs_f64());
    }
}

/// One group's report, as gauges.
pub struct GroupLagExported<'a> {
    /// The report.
    pub report: &'a GroupReport,
}

/// Gauges of one group. Labels stay low-cardinality: group and topic, never
/// partition (a thousand partitions would be a thousand series per group).
impl InternalEvent for GroupLagExported<'_> {
    fn emit(self) {
        let r = self.report;
        let mut by_topic: std::collections::BTreeMap<&str, (i64, f64)> = Default::default();
        for p in &r.partitions {
            let e = by_topic.entry(p.topic.as_str()).or_default();
            e.0 += p.lag.unwrap_or(0);
            e.1 = e.1.max(p.lag_seconds.unwrap_or(0.0));
        }
        for (topic, (lag, secs)) in by_topic {
            let labels = [("group", r.group.clone()), ("topic", topic.to_string())];
            metrics::gauge!("weir_lag_messages", &labels).set(lag as f64);
            metrics::gauge!("weir_lag_seconds", &labels).set(secs);
        }
        metrics::gauge!("weir_lag_members", "group" => r.group.clone()).set(r.members as f64);
        for s in LagStatus::ALL {
            let n = r.partitions.iter().filter(|p| p.status == s).count();
            metrics::gauge!("weir_lag_partitions", "group" => r.group.clone(), "status" => s.as_str())
            .set(n as f64);
            metrics::gauge!("weir_lag_group_status", "group" => r.group.clone(), "status" => s.as_str())
            .set(if r.status == s { 1.0 } else { 0.0 });
        }
    }
}

/// Help text of the lag exporter's metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "weir_lag_reads_total",
        "Readings of consumer lag by outcome (ok, error)"
    );
    describe_counter!(
        "weir_lag_signals_total",
        "Lag signals written to Redis by outcome (ok, error)"
    );
    describe_histogram!(
        "weir_lag_evaluation_seconds",
        Unit::Seconds,
        "Time to read and evaluate every exported group once"
    );
    describe_gauge!(
        "weir_lag_messages",
        "Lag in messages by group, topic and partition"
    );
    describe_gauge!(
        "weir_lag_seconds",
        "Lag in seconds by group, topic and partition (how old the next record to consume is)"
    );
    describe_gauge!("weir_lag_members", "Members of a consumer group");
    describe_gauge!(
        "weir_lag_partitions",
        "Partitions of a group in each status"
    );
    describe_gauge!(
        "weir_lag_group_status",
        "1 for the group's current status, 0 for the others"
    );
}
