//! Follows the lag signal `weir lag export` writes to Redis and feeds it to
//! a producer's [`LagLimiter`], closing the loop from consumer lag to
//! producer rate.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::RedisHandle;
use weir_schemas::{LagSignal, LimiterState, RedisKeys};

use crate::limiter::LagLimiter;

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
    follow_signal_reporting(redis, keys, group, limiter, interval, None, shutdown).await
}

/// [`follow_signal`], and each interval also writes the limiter's admitted
/// fraction as `source` (a [`LimiterState`] in the `limiters` hash), so the
/// dashboard can show what the loop is doing to each producer. Best effort:
/// a failed write is logged at debug and tried again next interval.
pub async fn follow_signal_reporting(
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
    group: String,
    limiter: Arc<LagLimiter>,
    interval: Duration,
    source: Option<String>,
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
        if let Some(source) = &source {
            let state = LimiterState {
                source: source.clone(),
                group: group.clone(),
                fraction: limiter.fraction(),
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            let wrote: Result<(), redis::RedisError> = async {
                let json = serde_json::to_string(&state).unwrap_or_default();
                let mut c = redis.conn().await?;
                redis::cmd("HSET")
                    .arg(keys.limiters())
                    .arg(source)
                    .arg(json)
                    .query_async::<()>(&mut c)
                    .await
            }
            .await;
            if let Err(e) = wrote {
                tracing::debug!(error = %e, "cannot write the limiter's state");
            }
        }
    }
}
