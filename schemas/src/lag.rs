//! The lag signal: what `weir lag export` publishes to Redis for producers,
//! and the status vocabulary it shares with `weir lag`.
//!
//! It crosses processes (the exporter writes it, every producer's limiter
//! and the dashboard read it), so it is defined here, beside the events.
//! Producers only need a few numbers to pace themselves: how much lag per
//! partition the group has, against which threshold, and how fresh it is.

use serde::{Deserialize, Serialize};

/// A partition's or group's status, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LagStatus {
    /// Keeping up (or nothing to do).
    Ok,
    /// Lag growing over the window while the group consumes.
    Warning,
    /// The committed offset went backwards.
    Rewinding,
    /// Members present, lag > 0, committed offset not moving.
    Stalled,
    /// No member, lag > 0, committed offset not moving.
    Stopped,
}

impl LagStatus {
    /// Lowercase name, as printed and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "ok",
            LagStatus::Warning => "warning",
            LagStatus::Rewinding => "rewinding",
            LagStatus::Stalled => "stalled",
            LagStatus::Stopped => "stopped",
        }
    }

    /// Every status, best first.
    pub const ALL: [LagStatus; 5] = [
        LagStatus::Ok,
        LagStatus::Warning,
        LagStatus::Rewinding,
        LagStatus::Stalled,
        LagStatus::Stopped,
    ];
}

impl std::fmt::Display for LagStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One group's lag, as published every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSignal {
    /// Group id.
    pub group: String,
    /// Sum of the partitions' lag (messages).
    pub total_lag: i64,
    /// Partitions counted.
    pub partitions: usize,
    /// Largest lag of one partition.
    pub max_partition_lag: i64,
    /// Largest lag in seconds, when known.
    pub max_lag_seconds: Option<f64>,
    /// Threshold per partition in force at the exporter.
    pub threshold: u64,
    /// Group status.
    pub status: LagStatus,
    /// Members in the group.
    pub members: usize,
    /// When the offsets were read (unix ms).
    pub at_ms: i64,
    /// Per topic the group reads: the sums of its partitions' log-end and
    /// committed offsets, so that a reader of two signals can tell the
    /// produce and consume rates (the dashboard does). Absent from signals
    /// of exporters older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicOffsets>,
}

/// Offsets of one topic summed over its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffsets {
    /// Topic.
    pub topic: String,
    /// Sum of the log-end offsets: records ever produced (less deleted).
    pub end: i64,
    /// Sum of the committed offsets (partitions never committed count 0).
    pub committed: i64,
}

/// Log-end offsets of a deployment's own topics (health, access, dead
/// letters), written by `weir lag export` each interval to
/// [`crate::RedisKeys::topic_ends`]; the dead-letter topic has no group, so
/// no [`LagSignal`] would carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicEnds {
    /// When the offsets were read (unix ms).
    pub at_ms: i64,
    /// (topic, sum of its partitions' log-end offsets).
    pub topics: Vec<(String, i64)>,
}

/// What a producer's limiter is doing, written by its signal follower each
/// interval to [`crate::RedisKeys::limiters`] (a hash, one field per
/// producer), for the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimiterState {
    /// The producer (its node id).
    pub source: String,
    /// The group whose lag paces it.
    pub group: String,
    /// Fraction of sheddable events admitted (1 = none shed).
    pub fraction: f64,
    /// When it was written (unix ms).
    pub at_ms: i64,
}

impl LagSignal {
    /// Mean lag per partition (0 without partitions).
    pub fn lag_per_partition(&self) -> f64 {
        if self.partitions == 0 {
            0.0
        } else {
            self.total_lag as f64 / self.partitions as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_averages() {
        let s = LagSignal {
            group: "g".into(),
            total_lag: 900,
            partitions: 3,
            max_partition_lag: 500,
            max_lag_seconds: Some(1.5),
            threshold: 200,
            status: LagStatus::Warning,
            members: 1,
            at_ms: 1,
            topics: vec![TopicOffsets {
                topic: "t".into(),
                end: 10,
                committed: 4,
            }],
        };
        let text = serde_json::to_string(&s).expect("json");
        assert!(text.contains("\"status\":\"warning\""), "{text}");
        let back: LagSignal = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, s);
        assert_eq!(s.lag_per_partition(), 300.0);
        // Signals of older exporters (no `topics`) still parse.
        let old = text.replace(r#","topics":[{"topic":"t","end":10,"committed":4}]"#, "");
        assert!(!old.contains("topics"), "{old}");
        let back: LagSignal = serde_json::from_str(&old).expect("parse old");
        assert!(back.topics.is_empty());
        let empty = LagSignal { partitions: 0, ..s };
        assert_eq!(empty.lag_per_partition(), 0.0);
    }
}
