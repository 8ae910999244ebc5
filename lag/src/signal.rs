//! The compact lag signal `weir lag export` writes to Redis for producers:
//! one key per group (expiring, so a dead exporter leaves no stale signal)
//! and the same JSON on one pub/sub channel. Its shape is a cross-process
//! contract and lives in `weir-schemas`; this module only builds it from a
//! report.

pub use weir_schemas::LagSignal;

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
        }
    }
}
