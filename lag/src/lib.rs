//! Consumer lag: how far each group is behind, in messages and in seconds,
//! who owns each partition, and whether the group is keeping up.
//!
//! - [`reader`] reads groups, committed and log-end offsets from Kafka;
//! - [`seconds`] turns offsets into time with a per-partition table;
//! - [`status`] judges each partition from a sliding window;
//! - [`monitor`] keeps that state across readings and builds reports;
//! - [`signal`] is the compact form published to Redis for producers;
//! - [`advice`] applies the backlog playbook to measured rates.
//!
//! The binary's `weir lag` commands are thin wiring around these.
#![warn(missing_docs)]

pub mod advice;
mod describe;
pub mod events;
pub mod monitor;
pub mod reader;
pub mod seconds;
pub mod signal;
pub mod status;

use std::time::Duration;
use weir_core::config::{ConfigError, Validate};

use serde::{Deserialize, Serialize};

pub use monitor::{GroupReport, LagMonitor, PartitionReport};
pub use reader::{now_ms, GroupInfo, GroupSnapshot, LagError, LagReader, Member, PartitionOffsets};
pub use signal::LagSignal;
pub use status::LagStatus;

/// Settings of `weir lag`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// Time between two readings in `--watch` (and the exporter).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Length of the sliding window behind each status: a member must stay
    /// still this long to be called stalled, lag must grow across it to warn.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Bound on each request to Kafka.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Lag per partition above which a group is over its threshold
    /// (messages).
    pub threshold: u64,
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            interval: Duration::from_secs(2),
            window: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            threshold: 200,
        }
    }
}

impl Validate for LagConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let li = self.interval;
        if li < Duration::from_millis(100) || li > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "lag.interval",
                "must be between 100ms and 1h",
            ));
        }
        if self.window < li * 2 || self.window > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "lag.window",
                "must span at least two lag.interval readings and at most 24h",
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "lag.timeout",
                "must be between 100ms and 5m",
            ));
        }
        if self.threshold == 0 {
            return Err(ConfigError::new("lag.threshold", "must be at least 1"));
        }
        Ok(())
    }
}

/// Seeds `monitor`'s end-offset tables for the partitions of `snap` that have
/// lag, from the broker's time index (one batched request per probe time),
/// so that a single reading can already tell lag in seconds. Five probes
/// (10 s, 1 min, 10 min, 1 h, 1 day back), sent together, keep a one-shot
/// `describe` of a thousand partitions near 50 ms of broker time; they go
/// back a day; older backlogs show as "at least a day".
pub fn seed_from_time_index(
    reader: &LagReader,
    monitor: &mut LagMonitor,
    snap: &GroupSnapshot,
) -> Result<(), LagError> {
    const PROBES_S: [i64; 5] = [10, 60, 600, 3_600, 86_400];
    let todo = monitor.unseeded(snap);
    if todo.is_empty() {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let mut points: std::collections::HashMap<(String, i32), Vec<(i64, i64)>> =
        std::collections::HashMap::new();
    // The probes are independent requests: send them together, not one
    // after the other (librdkafka's client is thread-safe).
    let answers: Vec<(i64, Result<_, LagError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = PROBES_S
            .iter()
            .map(|s| {
                let at = snap.at_ms - s * 1000;
                let todo = &todo;
                (
                    at,
                    scope.spawn(move || reader.offsets_at_time(todo.iter(), at)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(at, h)| {
                let r = h.join().unwrap_or_else(|_| Ok(Default::default()));
                (at, r)
            })
            .collect()
    });
    for (at, answer) in answers {
        for (k, off) in answer? {
            points.entry(k).or_default().push((at, off));
        }
    }
    tracing::debug!(
        partitions = todo.len(),
        ms = t0.elapsed().as_millis() as u64,
        "time index read"
    );
    for (topic, partition) in todo {
        let pts = points
            .remove(&(topic.clone(), partition))
            .unwrap_or_default();
        monitor.seed(&topic, partition, pts);
    }
    Ok(())
}
