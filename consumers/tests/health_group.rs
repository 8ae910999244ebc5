//! The health group against real Kafka, Redis and PostgreSQL: effects,
//! uptime from data, dead letters, and a PostgreSQL outage.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use weir_center::UptimeQuery;
use weir_consumers::ConsumerConfig;
use weir_producers::EventProducer;
use weir_schemas::topics::dlq_headers;
use weir_schemas::HealthEvent;
use weir_testkit::{eventually, unique, PrivateService, TestDb};

mod support;
use support::{header, kafka, produce, Member, Rig};

/// Migrates, then starts a health member of a fresh group, with a short
/// session and retries.
async fn start_member(rig: &Rig) -> Member {
    rig.migrate().await;
    let cfg = ConsumerConfig {
        group: unique("g"),
        batch_max_wait: Duration::from_millis(50),
        session_timeout: Duration::from_secs(6),
        retry_backoff_max: Duration::from_millis(500),
        ..ConsumerConfig::default()
    };
    rig.member(rig.health(), &rig.topics.health, cfg)
}

fn at(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    base + chrono::Duration::seconds(secs)
}

async fn servers_reports(pool: &sqlx::PgPool, node: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT reports FROM servers WHERE node_id = $1")
        .bind(node)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_is_computed_from_reports_and_state_reaches_redis() {
    let rig = Rig::new(3).await;
    let member = start_member(&rig).await;

    // A node that reported every second for 60 s, an hour ago, then stopped;
    // and a live node reporting now.
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut events: Vec<HealthEvent> = (0..60)
        .map(|i| HealthEvent::example("half-node", i as u64 + 1, at(base, i)))
        .collect();
    events.push(HealthEvent::example("live-node", 1, Utc::now()));
    produce(&rig.topics.health, &events).await;

    let pool = rig.db.pool().await;
    eventually(Duration::from_secs(30), "all reports in PostgreSQL", || {
        let pool = pool.clone();
        async move { (servers_reports(&pool, "half-node").await == Some(60)).then_some(()) }
    })
    .await;

    let up = UptimeQuery { pool: &pool }
        .run(base, at(base, 120), Some("half-node"))
        .await
        .expect("uptime");
    assert_eq!(up.len(), 1);
    let u = up[0].uptime.expect("observed");
    assert!(
        (u - 0.5).abs() <= 1.0 / 120.0,
        "uptime {u} is not 50 % ± one interval"
    );
    assert_eq!(up[0].status, "down");
    assert_eq!(up[0].reports, 60);

    // Live state: the live node has a key with a TTL and every field; the
    // old node is in the index but has no live key (its reports are stale).
    let mut conn = rig.redis.conn().await;
    let keys = rig.redis_config().keys();
    let live: String = eventually(Duration::from_secs(10), "live node in Redis", || {
        let mut c = conn.clone();
        let k = keys.node("live-node");
        async move { c.get::<_, Option<String>>(k).await.ok().flatten() }
    })
    .await;
    let ev: HealthEvent = serde_json::from_str(&live).expect("state is a HealthEvent");
    assert_eq!(ev, events[60]);
    let ttl: i64 = conn.pttl(keys.node("live-node")).await.expect("pttl");
    assert!(
        ttl > 0 && ttl <= 3000,
        "expiry is 3 intervals, got {ttl} ms"
    );
    let half: Option<String> = conn.get(keys.node("half-node")).await.expect("get");
    assert!(
        half.is_none(),
        "an hour-old report must not make a node look up"
    );
    let score: Option<f64> = conn
        .zscore(keys.nodes(), "half-node")
        .await
        .expect("zscore");
    assert_eq!(
        score.map(|s| s as i64),
        Some(at(base, 59).timestamp_millis())
    );

    let report = member.stop().await;
    assert_eq!(report.applied, 61);
    let stored: i64 = sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM consumer_offsets")
        .fetch_one(&pool)
        .await
        .expect("offsets");
    assert_eq!(stored, 61, "stored offsets cover every record exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic_and_the_group_goes_on() {
    let rig = Rig::new(1).await;
    let member = start_member(&rig).await;

    let good = serde_json::to_value(HealthEvent::example("dl-node", 1, Utc::now())).expect("json");
    let mut wrong_type = good.clone();
    wrong_type["cores"] = serde_json::json!("eight");
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("node_id");
    let mut future = good.clone();
    future["seq"] = serde_json::json!(2);
    future["added_in_v1_7"] = serde_json::json!({"gpu": true});
    let garbage: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let payloads: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"this is not json".to_vec(), Some("not_json")),
        (
            serde_json::to_vec(&wrong_type).expect("bytes"),
            Some("schema"),
        ),
        (serde_json::to_vec(&missing).expect("bytes"), Some("schema")),
        (garbage, Some("too_large")),
        (serde_json::to_vec(&future).expect("bytes"), None),
        (serde_json::to_vec(&good).expect("bytes"), None),
    ];
    let mut big = kafka();
    big.rdkafka
        .insert("message.max.bytes".into(), "2000000".into());
    let p = EventProducer::new(&big, "test").expect("producer");
    for (bytes, _) in &payloads {
        p.enqueue_raw(&rig.topics.health, Some(b"dl-node"), bytes, None, "test")
            .expect("queued")
            .await
            .expect("delivered");
    }

    let pool = rig.db.pool().await;
    eventually(Duration::from_secs(30), "good records applied", || {
        let pool = pool.clone();
        async move { (servers_reports(&pool, "dl-node").await == Some(2)).then_some(()) }
    })
    .await;

    let seen: Vec<_> = rig
        .dead_letters(4)
        .iter()
        .map(|d| {
            let h = |name| header(d, name);
            let size = Some(h("weir.dlq.payload.original_size")).filter(|v| !v.is_empty());
            let source = h(dlq_headers::SOURCE_TOPIC);
            let place = (
                h(dlq_headers::SOURCE_PARTITION),
                h(dlq_headers::SOURCE_OFFSET),
            );
            (
                h(dlq_headers::REASON),
                source,
                place.0,
                place.1,
                d.payload_len,
                size,
            )
        })
        .collect();
    let reasons: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(reasons, vec!["not_json", "schema", "schema", "too_large"]);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            (s.1.as_str(), s.2.as_str(), s.3.as_str()),
            (rig.topics.health.as_str(), "0", i.to_string().as_str())
        );
    }
    assert_eq!(
        seen[0].4,
        b"this is not json".len(),
        "payload kept as produced"
    );
    assert_eq!(
        seen[3].5.as_deref(),
        Some("1000000"),
        "truncated payload records its size"
    );

    let report = member.stop().await;
    assert_eq!((report.applied, report.dead_lettered), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_pauses_the_group_and_loses_nothing() {
    let mut pg = PrivateService::start("postgres");
    let rig = Rig::with_db(2, TestDb::create_on(&pg.url()).await).await;
    let member = start_member(&rig).await;

    let batch = |from: u64, to: u64| -> Vec<HealthEvent> {
        (from..to)
            .map(|i| HealthEvent::example(&format!("pg-node-{}", i % 4), i + 1, Utc::now()))
            .collect()
    };
    produce(&rig.topics.health, &batch(0, 200)).await;
    let pool = rig.db.pool().await;
    let total = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, Option<i64>>("SELECT sum(reports)::bigint FROM servers")
            .fetch_one(&pool)
            .await
            .ok()
            .flatten()
    };
    eventually(Duration::from_secs(30), "first 200 applied", || {
        let p = pool.clone();
        async move { (total(p).await == Some(200)).then_some(()) }
    })
    .await;
    pool.close().await;

    // PostgreSQL goes away hard while more events arrive.
    pg.stop(true);
    produce(&rig.topics.health, &batch(200, 500)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart();

    let pool = rig.db.pool().await;
    eventually(
        Duration::from_secs(60),
        "all 500 applied after PostgreSQL returned",
        || {
            let p = pool.clone();
            async move { (total(p).await == Some(500)).then_some(()) }
        },
    )
    .await;
    let report = member.stop().await;
    assert_eq!(report.applied, 500, "nothing applied twice, nothing lost");
    assert!(report.store_errors > 0, "the outage was seen and retried");
    let offsets: i64 = sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM consumer_offsets")
        .fetch_one(&pool)
        .await
        .expect("offsets");
    assert_eq!(offsets, 500);
}
