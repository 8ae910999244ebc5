//! The access aggregator's live counters in a real Redis stay bounded by
//! time: a node's requests-per-second hash keeps a rolling window of
//! seconds whatever the traffic (it used to gain a field every second and
//! never lose one).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use redis::AsyncCommands;
use weir_consumers::access::{RPS_AHEAD_SECS, RPS_WINDOW_SECS};
use weir_consumers::{AccessAggregator, Aggregator, Record};
use weir_core::{RedisConfig, RedisHandle};
use weir_schemas::AccessEvent;
use weir_testkit::{stack, TestRedis};

fn records(node: &str, seconds: impl Iterator<Item = DateTime<Utc>>) -> Vec<Record<AccessEvent>> {
    seconds
        .enumerate()
        .map(|(i, ts)| Record {
            partition: 0,
            offset: i as i64,
            event: AccessEvent::example(node, i as u64 + 1, ts),
        })
        .collect()
}

#[tokio::test]
async fn a_nodes_requests_per_second_keep_only_the_rolling_window() {
    let s = stack();
    let redis = TestRedis::new(&s);
    let cfg = RedisConfig {
        url: redis.url.clone(),
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    };
    let keys = cfg.keys();
    let agg = AccessAggregator::new(
        Arc::new(RedisHandle::new(&cfg).expect("redis")),
        keys.clone(),
    );
    let mut conn = redis.conn().await;
    let key = keys.node_rps("busy");

    // A field left by an older build, long past the window.
    let stale = (Utc::now() - TimeDelta::hours(3)).timestamp();
    let _: () = conn.hset(&key, stale, 7).await.expect("hset");

    // Two hours of traffic, one request per second, in batches of 600, then
    // a burst of events stamped up to an hour in the future.
    let now = Utc::now();
    let start = now - TimeDelta::hours(2);
    let all: Vec<DateTime<Utc>> = (0..7200).map(|s| start + TimeDelta::seconds(s)).collect();
    for chunk in all.chunks(600) {
        agg.publish(&records("busy", chunk.iter().copied()))
            .await
            .expect("published");
    }
    let future = (1..=3600).map(|s| now + TimeDelta::seconds(s));
    agg.publish(&records("busy", future))
        .await
        .expect("published");

    let fields: Vec<i64> = conn.hkeys(&key).await.expect("hkeys");
    let max = (RPS_WINDOW_SECS + RPS_AHEAD_SECS + 1) as usize;
    assert!(
        !fields.is_empty() && fields.len() <= max,
        "{} fields, at most {max} allowed",
        fields.len()
    );
    let after = Utc::now().timestamp();
    for f in &fields {
        assert!(
            *f >= now.timestamp() - RPS_WINDOW_SECS - 1 && *f <= after + RPS_AHEAD_SECS,
            "second {f} is outside the window"
        );
    }
    assert!(!fields.contains(&stale), "older fields are trimmed");
    // The last minutes of real traffic are still counted, one per second.
    let last: i64 = conn
        .hget(&key, (now - TimeDelta::seconds(10)).timestamp())
        .await
        .expect("hget");
    assert_eq!(last, 1);
    let ttl: i64 = conn.ttl(&key).await.expect("ttl");
    assert!(ttl > 0 && ttl <= RPS_WINDOW_SECS, "expires: ttl {ttl}");
}
