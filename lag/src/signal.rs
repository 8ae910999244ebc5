//! The compact lag signal `weir lag export` writes to Redis for producers:
//! one key per group (expiring, so a dead exporter leaves no stale signal)
//! and the same JSON on one pub/sub channel. Its shape is a cross-process
//! contract and lives in `weir-schemas`; this module only builds it from a
//! report.

use std::collections::BTreeMap;

pub use weir_schemas::LagSignal;
use weir_schemas::TopicOffsets;

use crate::monitor::GroupReport;

impl GroupReport {
    /// The signal of this report, against `threshold` messages per partition.
    pub fn signal(&self, threshold: u64) -> LagSignal {
        LagSignal {
            group: self.group.clone(),
            total_lag: self.total_lag,
            partitions: self.partitions.len(),
            max_partition_lag: self
                .partitions
                .iter()
                .filter_map(|p| p.lag)
                .max()
                .unwrap_or(0),
            max_lag_seconds: self.max_lag_seconds,
            threshold,
            status: self.status,
            members: self.members,
            at_ms: self.at_ms,
            topics: self.topic_offsets(),
        }
    }

    /// Per topic, the sums of log-end and committed offsets.
    pub fn topic_offsets(&self) -> Vec<TopicOffsets> {
        let mut sums: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for p in &self.partitions {
            let s = sums.entry(p.topic.as_str()).or_default();
            s.0 = s.0.saturating_add(p.end);
            s.1 = s.1.saturating_add(p.committed.unwrap_or(0));
        }
        sums.into_iter()
            .map(|(topic, (end, committed))| TopicOffsets {
                topic: topic.to_owned(),
                end,
                committed,
            })
            .collect()
    }
}
