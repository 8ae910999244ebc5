//! The compact lag signal `weir lag export` writes to Redis for producers:
//! one key per group (expiring, so a dead exporter leaves no stale signal)
//! and the same JSON on one pub/sub channel.
//!
//! Producers only need a few numbers to pace themselves: how much lag per
//! partition the group has, against which threshold, and how fresh it is.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use weir_producers::LagLimiter;

use super::monitor::GroupReport;
use super::status::LagStatus;
use crate::stores::{RedisHandle, RedisKeys};

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
}

impl LagSignal {
    /// The signal of a report, against `threshold` messages per partition.
    pub fn from_report(r: &GroupReport, threshold: u64) -> Self {
        LagSignal {
            group: r.group.clone(),
            total_lag: r.total_lag,
            partitions: r.partitions.len(),
            max_partition_lag: r.partitions.iter().filter_map(|p| p.lag).max().unwrap_or(0),
            max_lag_seconds: r.max_lag_seconds,
            threshold,
            status: r.status,
            members: r.members,
            at_ms: r.at_ms,
        }
    }

    /// Mean lag per partition (0 without partitions).
    pub fn lag_per_partition(&self) -> f64 {
        if self.partitions == 0 {
            0.0
        } else {
            self.total_lag as f64 / self.partitions as f64
        }
    }
}

/// Feeds `limiter` from `group`'s signal in Redis every `interval` until
/// `shutdown`. The key is read (not the channel subscribed): a reader that
/// reconnects never misses "the latest", and an expired key means the
/// exporter is gone, which the limiter answers by failing open once its
/// `stale_after` passes. Redis errors are logged and retried next interval.
pub async fn follow_signal(
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
    group: String,
    limiter: Arc<LagLimiter>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let key = keys.lag(&group);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let got: Result<Option<String>, redis::RedisError> = async {
            let mut c = redis.conn().await?;
            redis::cmd("GET").arg(&key).query_async(&mut c).await
        }
        .await;
        match got {
            Ok(Some(text)) => match serde_json::from_str::<LagSignal>(&text) {
                Ok(s) => limiter.update(s.lag_per_partition(), std::time::Instant::now()),
                Err(e) => tracing::warn!(%key, error = %e, "unreadable lag signal"),
            },
            Ok(None) => tracing::debug!(%key, "no lag signal (exporter not running?)"),
            Err(e) => tracing::warn!(%key, error = %e, "cannot read the lag signal"),
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
        };
        let text = serde_json::to_string(&s).expect("json");
        assert!(text.contains("\"status\":\"warning\""), "{text}");
        let back: LagSignal = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, s);
        assert_eq!(s.lag_per_partition(), 300.0);
        let empty = LagSignal { partitions: 0, ..s };
        assert_eq!(empty.lag_per_partition(), 0.0);
    }
}
