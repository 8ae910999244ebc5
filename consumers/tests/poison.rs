//! Poison records against the real stack: a record a store refuses for what
//! it is must not wedge its partition. It is isolated (the batch is split
//! until the offender stands alone), dead-lettered with the store's reason,
//! and everything else is applied exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use sqlx::PgConnection;
use weir_consumers::runtime::header_text;
use weir_consumers::{
    migrations, AccessAggregator, Aggregator, ConsumerConfig, GroupRuntime, Record, StoreError,
};
use weir_core::{RedisConfig, RedisHandle};
use weir_schemas::topics::dlq_headers;
use weir_schemas::AccessEvent;
use weir_testkit::{stack, unique, TestDb, TestRedis, TestTopics};

mod support;
use support::{kafka, produce_raw, wait_stored, Member};

/// Writes one row per record into a table whose CHECK refuses nodes named
/// `poison…` (SQLSTATE 23514, class 23: the record's fault).
struct Probe;

impl Aggregator for Probe {
    type Event = AccessEvent;
    fn role(&self) -> &'static str {
        "probe"
    }
    async fn apply(
        &self,
        tx: &mut PgConnection,
        batch: &[Record<AccessEvent>],
    ) -> Result<(), StoreError> {
        let node: Vec<&str> = batch.iter().map(|r| r.event.node_id.as_str()).collect();
        let part: Vec<i32> = batch.iter().map(|r| r.partition).collect();
        let off: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        sqlx::query("INSERT INTO probe SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[])")
            .bind(&node)
            .bind(&part)
            .bind(&off)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// Every dead letter of `topic` as (reason, store, sqlstate, key).
async fn dead_letters(topic: &str, n: usize) -> Vec<(String, String, String, String)> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack().kafka)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("dead letters arrive")
            .expect("record");
        let h = |name| header_text(&m, name).unwrap_or_default();
        seen.push((
            h(dlq_headers::REASON),
            h(dlq_headers::STORE),
            h(dlq_headers::SQLSTATE),
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        ));
    }
    // Nothing more than expected.
    let more = tokio::time::timeout(Duration::from_secs(2), c.recv()).await;
    assert!(more.is_err(), "more dead letters than expected");
    seen.sort();
    seen
}

fn event(node: &str, seq: u64) -> AccessEvent {
    AccessEvent::example(node, seq, Utc::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_store_refuses_is_dead_lettered_and_the_rest_applied_once() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 2).await;
    let db = TestDb::create(&s).await;
    let pool = db.pool().await;
    migrations::runtime().run(&pool).await.expect("migrations");
    sqlx::query("CREATE TABLE probe (node text CHECK (node NOT LIKE 'poison%'), p int, o bigint)")
        .execute(&pool)
        .await
        .expect("probe table");

    // 400 good records with 3 poison ones among them, in one backlog.
    let mut records = Vec::new();
    for seq in 1..=403u64 {
        let node = match seq {
            17 | 200 | 390 => format!("poison-{seq}"),
            _ => format!("node-{}", seq % 4),
        };
        records.push((
            node.clone(),
            serde_json::to_vec(&event(&node, seq)).expect("json"),
        ));
    }
    produce_raw(&topics.access, &records).await;

    let group = unique("probe");
    let cfg = ConsumerConfig {
        group: group.clone(),
        batch_max_wait: Duration::from_millis(200),
        retry_backoff_max: Duration::from_millis(200),
        ..ConsumerConfig::default()
    };
    let runtime = GroupRuntime::builder(Probe, &topics.access, pool.clone())
        .config(cfg)
        .kafka(kafka())
        .dead_letter_topic(&topics.dlq)
        .build()
        .expect("runtime");
    let member = Member::spawn(runtime);
    wait_stored(&pool, &group, 403, Duration::from_secs(60)).await;
    let (rows, distinct, poison): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (p, o)), count(*) FILTER (WHERE node LIKE 'poison%') FROM probe",
    )
    .fetch_one(&pool)
    .await
    .expect("probe counts");
    assert_eq!(
        (rows, distinct, poison),
        (400, 400, 0),
        "the good records, each once"
    );

    let dead = dead_letters(&topics.dlq, 3).await;
    let want: Vec<(String, String, String, String)> = [17, 200, 390]
        .iter()
        .map(|n| {
            (
                "store_rejected".into(),
                "postgres".into(),
                "23514".into(),
                format!("poison-{n}"),
            )
        })
        .collect();
    assert_eq!(dead, want);

    let report = member.stop().await;
    assert_eq!((report.applied, report.dead_lettered), (400, 3));
}

/// The reproduction, through the real access aggregator: a
/// 3 100-byte object key (wedged the group on main: "index row size 3128
/// exceeds btree version 4 maximum 2704"), NUL and escape characters, and
/// two byte counts near 2^63 in one rollup row. Each goes to the DLQ with a
/// reason; the good events are counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_access_events_are_dead_lettered_and_good_ones_counted_once() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 1).await;
    let db = TestDb::create(&s).await;
    let redis = TestRedis::new(&s);
    let pool = db.pool().await;
    weir_consumers::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations");

    let mut records = Vec::new();
    let mut seq = 0;
    let push = |records: &mut Vec<(String, Vec<u8>)>, ev: AccessEvent| {
        records.push((ev.node_id.clone(), serde_json::to_vec(&ev).expect("json")));
    };
    let mut next = |node: &str| {
        seq += 1;
        event(node, seq)
    };
    let mut long = next("edge-a");
    long.object_key = "k".repeat(3100);
    push(&mut records, long);
    for _ in 0..3 {
        let ev = next("edge-a");
        push(&mut records, ev);
    }
    let mut nul = next("edge-a");
    nul.object_key = "videos/a\u{0}b.mp4".into();
    push(&mut records, nul);
    let mut esc = next("edge-a");
    esc.method = "GET\u{1b}[2J".into();
    push(&mut records, esc);
    for n in 0..2 {
        let mut big = next("edge-a");
        big.bytes_sent = (1u64 << 63) - 1 - n;
        push(&mut records, big);
    }
    let mut nul_node = next("edge-a");
    nul_node.node_id = "edge\u{0}a".into();
    push(&mut records, nul_node);
    for _ in 0..3 {
        let ev = next("edge-b");
        push(&mut records, ev);
    }
    produce_raw(&topics.access, &records).await;

    let rcfg = RedisConfig {
        url: redis.url.clone(),
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    };
    let agg = AccessAggregator::new(
        Arc::new(RedisHandle::new(&rcfg).expect("redis")),
        rcfg.keys(),
    );
    let group = unique("access");
    let runtime = GroupRuntime::builder(agg, &topics.access, pool.clone())
        .config(ConsumerConfig {
            group: group.clone(),
            batch_max_wait: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(200),
            ..ConsumerConfig::default()
        })
        .kafka(kafka())
        .dead_letter_topic(&topics.dlq)
        .build()
        .expect("runtime");
    let member = Member::spawn(runtime);
    wait_stored(&pool, &group, records.len() as i64, Duration::from_secs(60)).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT node_id, sum(requests)::bigint FROM access_minute GROUP BY node_id")
            .fetch_all(&pool)
            .await
            .expect("rollups");
    let counted: BTreeMap<String, i64> = rows.into_iter().collect();
    assert_eq!(
        counted,
        BTreeMap::from([("edge-a".to_string(), 3), ("edge-b".to_string(), 3)]),
        "good events counted exactly once"
    );
    let dead = dead_letters(&topics.dlq, 6).await;
    assert!(
        dead.iter().all(|d| d.0 == "invalid"),
        "refused at decode time, with a reason: {dead:?}"
    );
    let report = member.stop().await;
    assert_eq!((report.applied, report.dead_lettered), (6, 6));
}

/// A Redis error reply on one node's live counters (its key holds another
/// type) is poison too: that node's records are isolated and dead-lettered
/// with `store = redis` after their rollups committed; the group goes on and
/// every rollup is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_redis_refuses_is_dead_lettered_and_the_group_goes_on() {
    weir_testkit::init_logs();
    let s = stack();
    let topics = TestTopics::create(&s, 1).await;
    let db = TestDb::create(&s).await;
    let redis = TestRedis::new(&s);
    let pool = db.pool().await;
    weir_consumers::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations");
    let rcfg = RedisConfig {
        url: redis.url.clone(),
        key_prefix: redis.prefix.clone(),
        ..RedisConfig::default()
    };
    let mut conn = redis.conn().await;
    let _: () =
        redis::AsyncCommands::set(&mut conn, rcfg.keys().node_rps("bad-node"), "not a hash")
            .await
            .expect("set");

    let mut records = Vec::new();
    for seq in 1..=8u64 {
        let node = if seq % 4 == 0 { "bad-node" } else { "edge-a" };
        records.push((
            node.to_string(),
            serde_json::to_vec(&event(node, seq)).expect("json"),
        ));
    }
    produce_raw(&topics.access, &records).await;

    let agg = AccessAggregator::new(
        Arc::new(RedisHandle::new(&rcfg).expect("redis")),
        rcfg.keys(),
    );
    let group = unique("access");
    let runtime = GroupRuntime::builder(agg, &topics.access, pool.clone())
        .config(ConsumerConfig {
            group: group.clone(),
            batch_max_wait: Duration::from_millis(300),
            retry_backoff_max: Duration::from_millis(200),
            ..ConsumerConfig::default()
        })
        .kafka(kafka())
        .dead_letter_topic(&topics.dlq)
        .build()
        .expect("runtime");
    let member = Member::spawn(runtime);
    wait_stored(&pool, &group, 8, Duration::from_secs(60)).await;
    let dead = dead_letters(&topics.dlq, 2).await;
    let want: Vec<(String, String, String, String)> = vec![
        (
            "store_rejected".into(),
            "redis".into(),
            String::new(),
            "bad-node".into()
        );
        2
    ];
    assert_eq!(dead, want);
    let requests: i64 = sqlx::query_scalar("SELECT sum(requests)::bigint FROM access_minute")
        .fetch_one(&pool)
        .await
        .expect("rollups");
    assert_eq!(
        requests, 8,
        "every rollup committed once, before publishing"
    );
    let report = member.stop().await;
    assert_eq!(report.dead_lettered, 2);
}
