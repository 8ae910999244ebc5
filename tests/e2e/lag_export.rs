//! `weir lag export` against the real Kafka and Redis: each interval the
//! group's signal lands in its Redis key (expiring) and on the lag channel,
//! and the gauges show on `/metrics`; a commit shows up at the next interval.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use weir_testkit::groups::{commit_without_joining, produce};
use weir_testkit::{eventually, free_addr, Proc, TestWorld};

use crate::weir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_redis_signal_and_metrics() {
    let world = TestWorld::create(1).await;
    let (st, redis, group) = (&world.stack, &world.redis, &world.group);
    let topic = world.topics.health.clone();
    produce(&st.kafka, &topic, 0, 10).await;
    commit_without_joining(&st.kafka, group, &[(&topic, 0, 4)]);

    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(format!("{}:lag:signals", redis.prefix))
        .await
        .expect("subscribe");
    let metrics = free_addr();
    let mut proc = Proc::spawn(
        "lag-export",
        weir(),
        &["lag", "export", "--group", group],
        &world.env_with(&[
            ("WEIR_METRICS_ADDR", &metrics.to_string()),
            ("WEIR_LAG_INTERVAL", "200ms"),
            ("WEIR_LAG_WINDOW", "2s"),
        ]),
    );

    // The channel carries the signal.
    let msg = tokio::time::timeout(Duration::from_secs(30), pubsub.on_message().next())
        .await
        .expect("a signal within 30 s")
        .expect("message");
    let signal: Value = serde_json::from_slice(msg.get_payload_bytes()).expect("json");
    assert_eq!(signal["group"], group.as_str());
    assert_eq!(signal["total_lag"], 6);
    assert_eq!(signal["status"], "stopped", "lag and no member");
    assert_eq!(signal["threshold"], 200);

    // The key holds it, with an expiry.
    let mut conn = redis.conn().await;
    let key = format!("{}:lag:{group}", redis.prefix);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 600, "expiry {ttl} ms");

    // Prometheus gauges, labelled by group and topic.
    let url = format!("http://{metrics}/metrics");
    let line = format!("weir_lag_messages{{group=\"{group}\",topic=\"{topic}\"}} 6");
    eventually(Duration::from_secs(20), "the lag gauge", || {
        let (url, line) = (url.clone(), line.clone());
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            body.contains(&line).then_some(())
        }
    })
    .await;

    // The group catches up: the next signals say so.
    commit_without_joining(&st.kafka, group, &[(&topic, 0, 10)]);
    eventually(Duration::from_secs(20), "a caught-up signal", || {
        let (key, mut conn) = (key.clone(), conn.clone());
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .ok()?;
            let s: Value = serde_json::from_str(&v?).ok()?;
            (s["total_lag"] == 0 && s["status"] == "ok").then_some(())
        }
    })
    .await;

    let status = proc
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{}", proc.output());
}
