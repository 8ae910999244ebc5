//! The closed loop wired end to end in the edge: with `limiter.enabled`, a
//! lag signal in Redis saying the access group is far behind makes `weir
//! edge` shed access events (counted), while every request is still served.
//! (The controller itself is proven in tests/e2e/lag_closed_loop.rs.)

use std::time::Duration;

use redis::AsyncCommands;
use weir_core::RedisConfig;
use weir_schemas::{LagSignal, LagStatus};
use weir_testkit::{eventually, unique, TestWorld};

use crate::{answer, Edge};

fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sheds_access_events_when_the_access_group_is_behind() {
    let world = TestWorld::create(1).await;
    let redis = &world.redis;
    let group = unique("access-group");
    let keys = RedisConfig {
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    }
    .keys();
    // What `weir lag export` publishes for a group 100 000 messages behind.
    let signal = LagSignal {
        group: group.clone(),
        total_lag: 100_000,
        partitions: 1,
        max_partition_lag: 100_000,
        max_lag_seconds: Some(120.0),
        threshold: 200,
        status: LagStatus::Warning,
        members: 1,
        at_ms: chrono::Utc::now().timestamp_millis(),
        topics: Vec::new(),
    };
    let mut conn = redis.conn().await;
    let _: () = conn
        .set(
            keys.lag(&group),
            serde_json::to_string(&signal).expect("json"),
        )
        .await
        .expect("set signal");

    let edge = Edge::start(&world.env_with(&[
        ("WEIR_LIMITER_ENABLED", "true"),
        ("WEIR_LIMITER_GROUP", &group),
        ("WEIR_LAG_INTERVAL", "200ms"),
    ]))
    .await;
    let (addr, http) = (edge.addr, reqwest::Client::new());
    // Let the limiter read the signal a few times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut served = 0;
    for i in 0..300 {
        let r = answer(http.get(format!("http://{addr}/limiter-test/missing-{i}"))).await;
        assert_eq!(
            r.status(),
            404,
            "requests are still served while events are shed"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = eventually(
        Duration::from_secs(10),
        "shed decisions in /metrics",
        || async {
            let t = edge.metrics().await;
            (metric_sum(&t, "weir_limiter_decisions_total", "decision=\"shed\"") > 0.0).then_some(t)
        },
    )
    .await;
    let shed = metric_sum(&text, "weir_limiter_decisions_total", "decision=\"shed\"");
    let admitted = metric_sum(&text, "weir_limiter_decisions_total", "decision=\"admit");
    assert_eq!(served, 300);
    assert!(shed > 100.0, "most access events shed with the group 100 000 behind: shed {shed}, admitted {admitted}\n{text}");
    // Every admitted event's delivery is counted, though the edge never
    // waits for its report (it used to be counted only when awaited).
    eventually(
        Duration::from_secs(10),
        "every admitted access event counted as delivered",
        || async {
            let t = edge.metrics().await;
            let admitted = metric_sum(&t, "weir_limiter_decisions_total", "decision=\"admit");
            let delivered = metric_sum(
                &t,
                "weir_producer_events_total",
                "kind=\"access\",outcome=\"delivered\"",
            );
            (admitted > 0.0 && delivered == admitted).then_some(())
        },
    )
    .await;
}
