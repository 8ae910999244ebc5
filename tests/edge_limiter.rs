//! The closed loop wired end to end in the edge: with `limiter.enabled`, a
//! lag signal in Redis saying the access group is far behind makes `weir
//! edge` shed access events (counted), while every request is still served.
//! (The controller itself is proven in tests/lag_closed_loop.rs.)

use std::path::Path;
use std::time::Duration;

use redis::AsyncCommands;
use weir_core::RedisConfig;
use weir_schemas::{LagSignal, LagStatus};
use weir_testkit::{eventually, free_addr, stack, unique, Proc, TestRedis, TestTopics};

fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sheds_access_events_when_the_access_group_is_behind() {
    let s = stack();
    s.require_redis().require_kafka();
    let endpoint =
        std::env::var("WEIR_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:19000".into());
    let topics = TestTopics::create(&s, 1).await;
    let redis = TestRedis::new(&s);
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
    };
    let mut conn = redis.conn().await;
    let _: () = conn
        .set(
            keys.lag(&group),
            serde_json::to_string(&signal).expect("json"),
        )
        .await
        .expect("set signal");

    let (addr, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(unique("weir-edge-limiter"));
    let mut env = topics.env();
    for (k, v) in [
        ("WEIR_S3_ENDPOINT", endpoint),
        ("WEIR_S3_BUCKET", "weir".into()),
        ("WEIR_S3_ACCESS_KEY_ID", "test".into()),
        ("WEIR_S3_SECRET_ACCESS_KEY", "test".into()),
        ("WEIR_KAFKA_BROKERS", s.kafka.clone()),
        ("WEIR_REDIS_URL", redis.url.clone()),
        ("WEIR_REDIS_KEY_PREFIX", redis.prefix.clone()),
        ("WEIR_EDGE_ADDR", addr.to_string()),
        ("WEIR_EDGE_ADMIN_ADDR", admin.to_string()),
        ("WEIR_EDGE_DISK_DIR", dir.display().to_string()),
        ("WEIR_METRICS_ADDR", String::new()),
        ("WEIR_LIMITER_ENABLED", "true".into()),
        ("WEIR_LIMITER_GROUP", group.clone()),
        ("WEIR_LAG_INTERVAL", "200ms".into()),
    ] {
        env.push((k.to_string(), v));
    }
    let _edge = Proc::spawn(
        "edge",
        Path::new(env!("CARGO_BIN_EXE_weir")),
        &["edge"],
        &env,
    );
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{admin}/metrics");
    eventually(Duration::from_secs(30), "edge answers", || {
        let (http, url) = (http.clone(), format!("http://{admin}/livez"));
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    // Let the limiter read the signal a few times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut served = 0;
    for i in 0..300 {
        let r = http
            .get(format!("http://{addr}/limiter-test/missing-{i}"))
            .send()
            .await
            .expect("request");
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
        || {
            let (http, url) = (http.clone(), metrics_url.clone());
            async move {
                let t = http.get(url).send().await.ok()?.text().await.ok()?;
                (metric_sum(&t, "weir_limiter_decisions_total", "decision=\"shed\"") > 0.0)
                    .then_some(t)
            }
        },
    )
    .await;
    let shed = metric_sum(&text, "weir_limiter_decisions_total", "decision=\"shed\"");
    let admitted = metric_sum(&text, "weir_limiter_decisions_total", "decision=\"admit");
    assert_eq!(served, 300);
    assert!(shed > 100.0, "most access events shed with the group 100 000 behind: shed {shed}, admitted {admitted}\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
