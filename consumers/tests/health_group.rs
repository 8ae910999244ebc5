//! The health group against real Kafka, Redis and PostgreSQL: effects,
//! uptime from data, dead letters, and a PostgreSQL outage.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use weir_center::UptimeQuery;
use weir_consumers::runtime::header_text;
use weir_consumers::{ConsumerConfig, GroupRuntime, HealthAggregator, RunReport, MIGRATOR};
use weir_core::{DatabaseConfig, RedisConfig, RedisHandle};
use weir_producers::{EventProducer, KafkaConfig};
use weir_schemas::topics::dlq_headers;
use weir_schemas::HealthEvent;
use weir_testkit::{eventually, stack, PrivateService, TestDb, TestRedis, TestTopics};

struct Member {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<RunReport>,
}

fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: stack().kafka,
        ..KafkaConfig::default()
    }
}

async fn start_member(topics: &TestTopics, db_url: &str, redis: &TestRedis, group: &str) -> Member {
    let pool = DatabaseConfig {
        url: db_url.to_string(),
        connect_timeout: Duration::from_secs(2),
        ..DatabaseConfig::default()
    }
    .pool()
    .expect("pool");
    MIGRATOR.run(&pool).await.expect("migrations");
    let rcfg = RedisConfig {
        url: redis.url.clone(),
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    };
    let agg = HealthAggregator::new(
        Arc::new(RedisHandle::new(&rcfg).expect("redis")),
        rcfg.keys(),
    );
    let cfg = ConsumerConfig {
        group: group.to_string(),
        batch_max_wait: Duration::from_millis(50),
        session_timeout: Duration::from_secs(6),
        retry_backoff_max: Duration::from_millis(500),
        ..ConsumerConfig::default()
    };
    let dlq = EventProducer::new(&kafka(), "dlq").expect("producer");
    let rt = GroupRuntime::builder(agg, &topics.health, pool)
        .config(cfg)
        .kafka(kafka())
        .dead_letter_topic(&topics.dlq)
        .dead_letter_producer(dlq)
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { rt.run(s).await.expect("runtime") });
    Member { shutdown, task }
}

impl Member {
    async fn stop(self) -> RunReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("member stops within 30 s")
            .expect("member task")
    }
}

fn at(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    base + chrono::Duration::seconds(secs)
}

async fn produce(events: &[HealthEvent], topic: &str) {
    let p = EventProducer::new(&kafka(), "test").expect("producer");
    let pending: Vec<_> = events
        .iter()
        .map(|e| p.enqueue(topic, e).expect("queued"))
        .collect();
    for d in pending {
        d.await.expect("delivered");
    }
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
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 3).await;
    let db = TestDb::create(&s).await;
    let redis = TestRedis::new(&s);
    let member = start_member(&topics, &db.url, &redis, &weir_testkit::unique("g")).await;

    // A node that reported every second for 60 s, an hour ago, then stopped;
    // and a live node reporting now.
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut events: Vec<HealthEvent> = (0..60)
        .map(|i| HealthEvent::example("half-node", i as u64 + 1, at(base, i)))
        .collect();
    events.push(HealthEvent::example("live-node", 1, Utc::now()));
    produce(&events, &topics.health).await;

    let pool = db.pool().await;
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
    let mut conn = redis.conn().await;
    let keys = RedisConfig {
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    }
    .keys();
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
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 1).await;
    let db = TestDb::create(&s).await;
    let redis = TestRedis::new(&s);
    let member = start_member(&topics, &db.url, &redis, &weir_testkit::unique("g")).await;

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
        p.enqueue_raw(&topics.health, Some(b"dl-node"), bytes, None, "test")
            .expect("queued")
            .await
            .expect("delivered");
    }

    let pool = db.pool().await;
    eventually(Duration::from_secs(30), "good records applied", || {
        let pool = pool.clone();
        async move { (servers_reports(&pool, "dl-node").await == Some(2)).then_some(()) }
    })
    .await;

    // Read the dead-letter topic from the start.
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack().kafka)
        .set("group.id", weir_testkit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&topics.dlq]).expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("dead letters arrive")
            .expect("record");
        seen.push((
            header_text(&m, dlq_headers::REASON).unwrap_or_default(),
            header_text(&m, dlq_headers::SOURCE_TOPIC).unwrap_or_default(),
            header_text(&m, dlq_headers::SOURCE_PARTITION).unwrap_or_default(),
            header_text(&m, dlq_headers::SOURCE_OFFSET).unwrap_or_default(),
            m.payload().map(<[u8]>::len).unwrap_or(0),
            header_text(&m, "weir.dlq.payload.original_size"),
        ));
    }
    let reasons: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(reasons, vec!["not_json", "schema", "schema", "too_large"]);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            (s.1.as_str(), s.2.as_str(), s.3.as_str()),
            (topics.health.as_str(), "0", i.to_string().as_str())
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
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 2).await;
    let redis = TestRedis::new(&s);
    let mut pg = PrivateService::start("postgres");
    let db = TestDb::create_on(&pg.url()).await;
    let member = start_member(&topics, &db.url, &redis, &weir_testkit::unique("g")).await;

    let batch = |from: u64, to: u64| -> Vec<HealthEvent> {
        (from..to)
            .map(|i| HealthEvent::example(&format!("pg-node-{}", i % 4), i + 1, Utc::now()))
            .collect()
    };
    produce(&batch(0, 200), &topics.health).await;
    let pool = db.pool().await;
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
    produce(&batch(200, 500), &topics.health).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart();

    let pool = db.pool().await;
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
