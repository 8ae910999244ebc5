//! Hostile input from the outside (issue 9), written as an attacker or a
//! broken producer would send it, against real services with the faults
//! really injected:
//!
//! - through a real `weir edge` and straight into the topics with a plain
//!   Kafka producer: long paths (400/405), NUL and control characters in
//!   every string field, numbers that overflow when summed, ~1 MB junk
//!   records in bulk, wrong types, empty records — interleaved with good
//!   events; then every good event is counted exactly once, every bad one is
//!   dead-lettered with a reason, the groups' lag returns to 0 on every
//!   partition, and the consumers' memory stayed bounded;
//! - Redis black-holed (accepts, never answers) behind `weir center`;
//! - secrets and nonsense in the configuration;
//! - `/api/v1/uptime` with a huge window or node list.
//!
//! Written from the README, docs/, the JSON schemas, the config names and
//! the CLI only, not from the implementation.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::TestWorld;

use crate::{answer, client, weir_config, Center};

/// The Redis timeout given to a center whose Redis is black-holed, and the
/// bound on any answer: about two timeouts.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_BOUND: Duration = Duration::from_millis(2500);

/// `weir center` on the world with its Redis black-holed (the hole lives as
/// long as the returned task), and a client that waits long enough to see
/// how long an answer takes.
async fn center_with_black_holed_redis(
    world: &TestWorld,
) -> (Center, reqwest::Client, tokio::task::JoinHandle<()>) {
    let (hole, task) = weir_testkit::black_hole().await;
    let center = Center::start(&world.env_with(&[
        ("WEIR_REDIS_URL", &format!("redis://{hole}/")),
        (
            "WEIR_REDIS_TIMEOUT",
            &format!("{}ms", REDIS_TIMEOUT.as_millis()),
        ),
    ]))
    .await;
    (center, client(Duration::from_secs(60)), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_answers_503_promptly_with_redis_black_holed() {
    let world = TestWorld::create(1).await;
    let (center, http, _hole) = center_with_black_holed_redis(&world).await;
    let addr = center.addr;
    for path in ["nodes", "fleet", "nodes/x"] {
        let t = Instant::now();
        let r = answer(http.get(format!("http://{addr}/api/v1/{path}"))).await;
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "{path} with Redis black-holed");
        assert!(
            took < ANSWER_BOUND,
            "{path} took {took:?} (bound {ANSWER_BOUND:?})"
        );
    }
}

#[test]
fn config_masks_the_passwords_of_urls_it_accepts() {
    for (var, value, secret) in [
        (
            "WEIR_REDIS_URL",
            "redis://weir:hunter2-redis@127.0.0.1:6379/",
            "hunter2-redis",
        ),
        (
            "WEIR_DATABASE_URL",
            "postgres://weir:hunter2-pg@127.0.0.1:5432/weir",
            "hunter2-pg",
        ),
        (
            "WEIR_DATABASE_URL",
            "postgres://weir:hunter2-badpg@127.0.0.1:notaport/weir",
            "hunter2-badpg",
        ),
        ("WEIR_S3_SECRET_ACCESS_KEY", "hunter2-s3", "hunter2-s3"),
    ] {
        let (code, out) = weir_config(&[], &[(var, value)]);
        assert!(
            !out.contains(secret),
            "{var} (exit {code}) printed its secret: {}",
            out.trim()
        );
    }
}

/// GETs `/api/v1/uptime?{query}` of a center on the world; what is wrong
/// with the answer, if anything: it must come within 5 s and be a clear
/// refusal (400 with a message, 414, 431) or a paginated 200.
async fn uptime_answer_problem(
    http: &reqwest::Client,
    api: &str,
    what: &str,
    query: &str,
) -> Option<String> {
    let t = Instant::now();
    let r = http.get(format!("{api}?{query}")).send().await;
    let took = t.elapsed();
    let (status, body) = match r {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => return Some(format!("{what}: no answer after {took:?}: {e}")),
    };
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let clear_refusal =
        matches!(status, 400 | 414 | 431) && (status != 400 || doc["error"]["message"].is_string());
    let paginated = status == 200
        && ["next", "next_cursor", "cursor", "page", "truncated"]
            .iter()
            .any(|k| !doc[k].is_null());
    (took > Duration::from_secs(5) || !(clear_refusal || paginated)).then(|| {
        format!(
            "{what}: {status} after {took:?}, want a clear 400 or a paginated answer: {}",
            &body[..body.len().min(200)]
        )
    })
}

/// A center on the world; its uptime URL and an HTTP client.
async fn uptime_api(world: &TestWorld) -> (String, reqwest::Client, Center) {
    let center = Center::start(&world.env()).await;
    let api = format!("http://{}/api/v1/uptime", center.addr);
    (api, client(Duration::from_secs(30)), center)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_with_a_huge_window_answers_clearly() {
    let world = TestWorld::create(1).await;
    let (api, http, _center) = uptime_api(&world).await;
    let mut wrong = Vec::new();
    for (what, query) in [
        (
            "a 1000-year window",
            "from=1970-01-01T00:00:00Z&to=2999-12-31T00:00:00Z".to_string(),
        ),
        ("the largest unix window", format!("from=0&to={}", i64::MAX)),
        (
            "a window that ends before it starts",
            "from=2000000000&to=0".into(),
        ),
    ] {
        wrong.extend(uptime_answer_problem(&http, &api, what, &query).await);
    }
    assert!(wrong.is_empty(), "uptime:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Red until the fixes of issue 9 merge (branches relayer-edge and
// relayer-runtime): each of these fails on main today.
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;

use chrono::{DurationRound, TimeDelta, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use weir_schemas::{AccessEvent, HealthEvent};
use weir_testkit::{read_dead_letters, unique, DeadLetter, Proc};

use crate::{weir, Edge};

const MIB: u64 = 1024 * 1024;

/// A junk record as large as the broker takes by default (message.max.bytes
/// is 1 048 588 with the batch overhead): about 1 MiB.
const JUNK_BYTES: usize = 1_000_000;

/// How many junk records go to the access topic (`WEIR_TEST_HOSTILE_JUNK`).
fn junk_count() -> usize {
    std::env::var("WEIR_TEST_HOSTILE_JUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A consumer's peak RSS may not pass this while ~200 MB of junk flows
/// through it (librdkafka's fetch queue is 64 MiB by default; one batch of
/// junk must not be held whole).
const CONSUMER_RSS_BOUND: u64 = 256 * MIB;

/// What a record must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Counted exactly once, never dead-lettered.
    Good,
    /// Dead-lettered with a reason, never counted.
    Bad,
}

/// A plain producer, as any client of the cluster could run, with the
/// message size raised to what the broker accepts.
fn raw_producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "1048000")
        .set("linger.ms", "5")
        .create()
        .expect("Kafka producer")
}

fn send(p: &BaseProducer, topic: &str, key: &str, payload: Option<&[u8]>) {
    let rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key);
    let mut rec = match payload {
        Some(b) => rec.payload(b),
        None => rec,
    };
    // A full local queue is backpressure: serve callbacks and try again.
    while let Err((e, back)) = p.send(rec) {
        assert!(
            matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
            ),
            "produce {key}: {e}"
        );
        p.poll(Duration::from_millis(50));
        rec = back;
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// Deterministic junk: not JSON, not UTF-8.
fn junk(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..JUNK_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 0x80
        })
        .collect()
}

/// Poison strings for every string field: NUL, other C0 controls, DEL, an
/// escape sequence, a C1 control.
const NASTY: [&str; 5] = [
    "nul\u{0}byte",
    "bell\u{7}and\ttab",
    "esc\u{1b}[31mred",
    "del\u{7f}",
    "c1\u{85}next",
];

/// The access events sent straight to the topic: (key, payload, fate).
fn access_records(now: chrono::DateTime<Utc>) -> Vec<(String, Option<Vec<u8>>, Fate)> {
    let good = |node: usize, seq: u64| {
        let mut ev = serde_json::to_value(AccessEvent::example(
            &format!("hostile-good-{node}"),
            seq,
            now,
        ))
        .expect("event as json");
        ev["object_key"] = json!(format!("hostile/object-{}", seq % 7));
        ev["bytes_sent"] = json!(1000);
        ev
    };
    let template = |n: usize| {
        let mut ev = good(0, n as u64 + 1);
        ev["node_id"] = json!(format!("hostile-bad-{n}"));
        ev
    };
    let mut bad: Vec<Option<Vec<u8>>> = Vec::new();
    // NUL and control characters in every string field.
    for field in [
        "ts",
        "node_id",
        "source_id",
        "request_id",
        "method",
        "object_key",
        "range",
        "client_addr",
        "cache",
    ] {
        for nasty in NASTY {
            let mut ev = template(bad.len());
            ev[field] = json!(match field {
                "node_id" => format!("hostile-bad-{}-{nasty}", bad.len()),
                _ => nasty.to_string(),
            });
            bad.push(Some(json_bytes(&ev)));
        }
    }
    // A key too long for any index, a method too long, an unknown version.
    for (field, v) in [
        ("object_key", json!("k".repeat(3100))),
        ("object_key", json!("k".repeat(100_000))),
        ("method", json!("G".repeat(5000))),
        ("schema_version", json!(99)),
        ("status", json!(-1)),
        ("status", json!(70_000)),
        ("bytes_sent", json!(-5)),
        ("bytes_sent", json!(1e300)),
        ("seq", json!(0)),
    ] {
        let mut ev = template(bad.len());
        ev[field] = v;
        bad.push(Some(json_bytes(&ev)));
    }
    // Wrong types.
    for (field, v) in [
        ("bytes_sent", json!("lots")),
        ("status", json!("200")),
        ("object_key", json!(123)),
        ("ts", json!(12345)),
        ("node_id", json!(null)),
        ("cache", json!(["hit"])),
        ("total_latency_us", json!({"a": 1})),
    ] {
        let mut ev = template(bad.len());
        ev[field] = v;
        bad.push(Some(json_bytes(&ev)));
    }
    // Empty and almost empty.
    for p in [
        None,
        Some(Vec::new()),
        Some(b"{}".to_vec()),
        Some(b"null".to_vec()),
        Some(b"[]".to_vec()),
        Some(b"\"\"".to_vec()),
        Some(b"{\"schema_version\":1}".to_vec()),
        Some(vec![0u8; 64]),
    ] {
        bad.push(p);
    }

    // Interleave: good, bad, good, … so that a wedge shows as missing goods.
    let mut out = Vec::new();
    let mut seq = 0u64;
    for (i, payload) in bad.into_iter().enumerate() {
        for _ in 0..2 {
            seq += 1;
            out.push((
                format!("hostile-good-{seq}"),
                Some(json_bytes(&good((seq % 5) as usize, seq))),
                Fate::Good,
            ));
        }
        out.push((format!("hostile-bad-access-{i}"), payload, Fate::Bad));
    }
    for _ in 0..10 {
        seq += 1;
        out.push((
            format!("hostile-good-{seq}"),
            Some(json_bytes(&good((seq % 5) as usize, seq))),
            Fate::Good,
        ));
    }
    out
}

/// Two events for one minute × node × object whose `bytes_sent` sum does not
/// fit a bigint: they cannot both be counted.
fn overflow_pair(now: chrono::DateTime<Utc>) -> Vec<(String, Vec<u8>)> {
    (1..=2u64)
        .map(|seq| {
            let mut ev = serde_json::to_value(AccessEvent::example("hostile-ovf", seq, now))
                .expect("event as json");
            ev["object_key"] = json!("hostile/overflow");
            ev["bytes_sent"] = json!(i64::MAX - 10);
            (format!("hostile-ovf-{seq}"), json_bytes(&ev))
        })
        .collect()
}

/// Health events sent straight to the topic: (key, payload, fate). Good
/// nodes `hostile-h-0..4` report seq 1..=20 each.
fn health_records(now: chrono::DateTime<Utc>) -> Vec<(String, Option<Vec<u8>>, Fate)> {
    let template = |n: usize| {
        serde_json::to_value(HealthEvent::example(&format!("hostile-bad-h-{n}"), 1, now))
            .expect("event as json")
    };
    let mut bad: Vec<Option<Vec<u8>>> = Vec::new();
    let string_fields: [&[&str]; 10] = [
        &["node_id"],
        &["agent_id"],
        &["ts"],
        &["service"],
        &["endpoint"],
        &["cdn_type"],
        &["interfaces", "0", "name"],
        &["ips", "lan", "0"],
        &["ips", "wan", "0"],
        &["ips", "device", "0"],
    ];
    for path in string_fields {
        for nasty in NASTY {
            let mut ev = template(bad.len());
            // Make sure the array slots exist before poisoning them.
            if ev["interfaces"].as_array().is_none_or(Vec::is_empty) {
                ev["interfaces"] =
                    json!([{"name": "eth0", "rx_bytes_per_sec": 0, "tx_bytes_per_sec": 0}]);
            }
            for k in ["lan", "wan", "device"] {
                if ev["ips"][k].as_array().is_none_or(Vec::is_empty) {
                    ev["ips"][k] = json!(["192.0.2.1"]);
                }
            }
            let v = match path {
                ["node_id"] => format!("hostile-bad-h-{}-{nasty}", bad.len()),
                _ => nasty.to_string(),
            };
            let mut slot = &mut ev;
            for p in path {
                slot = match p.parse::<usize>() {
                    Ok(i) => &mut slot[i],
                    Err(_) => &mut slot[*p],
                };
            }
            *slot = json!(v);
            bad.push(Some(json_bytes(&ev)));
        }
    }
    for (field, v) in [
        ("node_id", json!("h".repeat(5000))),
        ("cores", json!("two")),
        ("load_avg", json!([1, 2, 3])),
        ("seq", json!(-1)),
        ("interval_ms", json!(0)),
        ("cpu_usage_pct", json!(1e308)),
        ("interfaces", json!("eth0")),
        ("memory_total_mb", json!(-1)),
    ] {
        let mut ev = template(bad.len());
        ev[field] = v;
        bad.push(Some(json_bytes(&ev)));
    }
    for p in [None, Some(Vec::new()), Some(b"{}".to_vec()), Some(junk(7))] {
        bad.push(p);
    }

    let mut out = Vec::new();
    let mut goods = (1..=20u64).flat_map(|seq| (0..5).map(move |n| (n, seq)));
    for (i, payload) in bad.into_iter().enumerate() {
        for (n, seq) in goods.by_ref().take(1) {
            let node = format!("hostile-h-{n}");
            let ev = HealthEvent::example(&node, seq, now + TimeDelta::milliseconds(seq as i64));
            out.push((node, Some(json_bytes(&json!(ev))), Fate::Good));
        }
        out.push((format!("hostile-bad-health-{i}"), payload, Fate::Bad));
    }
    for (n, seq) in goods {
        let node = format!("hostile-h-{n}");
        let ev = HealthEvent::example(&node, seq, now + TimeDelta::milliseconds(seq as i64));
        out.push((node, Some(json_bytes(&json!(ev))), Fate::Good));
    }
    out
}

/// The requests sent through the edge: (method, path). Each makes one
/// access event, which must be counted or dead-lettered, never lost and
/// never allowed to stop the pipeline.
fn edge_requests() -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    let long: String = (0..3100).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    vec![
        (Method::GET, "/hostile/ok.txt".into()),
        (Method::GET, format!("/{long}")),
        (Method::GET, "/hostile/missing-1".into()),
        (Method::DELETE, "/hostile/ok.txt".into()),
        (Method::GET, "/hostile/missing-2".into()),
        (Method::PUT, format!("/{long}")),
        (Method::GET, "/a%00b".into()),
        (Method::GET, "/a%1b%5b31mb".into()),
        (Method::GET, "/%ff%fe".into()),
        (Method::GET, format!("/{}", "x".repeat(8000))),
        (Method::GET, "/hostile/missing-3".into()),
        (Method::GET, "/hostile/ok.txt".into()),
    ]
}

async fn access_counts(pool: &sqlx::PgPool) -> BTreeMap<String, (i64, i64)> {
    sqlx::query_as::<_, (String, Option<i64>, Option<i64>)>(
        // Requests, and the largest row's bytes (a sum could overflow).
        "SELECT node_id, sum(requests)::bigint, max(bytes)::bigint FROM access_minute GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|(n, r, b)| (n, (r.unwrap_or(0), b.unwrap_or(0))))
            .collect()
    })
    .unwrap_or_default()
}

async fn health_counts(pool: &sqlx::PgPool) -> BTreeMap<String, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, i64)>("SELECT node_id, reports, last_seq FROM servers")
        .fetch_all(pool)
        .await
        .map(|rows| rows.into_iter().map(|(n, r, s)| (n, (r, s))).collect())
        .unwrap_or_default()
}

/// `weir lag describe GROUP --json`: every partition committed at its end?
fn lag_settled(world: &TestWorld, group: &str) -> Result<(), String> {
    let out = std::process::Command::new(weir())
        .args(["lag", "describe", group, "--json"])
        .env("WEIR_KAFKA_BROKERS", &world.stack.kafka)
        .output()
        .expect("run weir lag describe");
    let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "lag describe: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let parts = doc["partitions"].as_array().cloned().unwrap_or_default();
    let behind: Vec<&Value> = parts
        .iter()
        .filter(|p| p["committed"].as_i64() != p["end"].as_i64() || p["committed"].is_null())
        .collect();
    if doc["total_lag"] == 0 && !parts.is_empty() && behind.is_empty() {
        Ok(())
    } else {
        Err(format!("{group}: {doc}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_dead_lettered_and_good_ones_counted_once() {
    let world = TestWorld::create(3).await;
    let kafka = world.stack.kafka.clone();
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .expect("minute")
        + TimeDelta::seconds(1);

    // 1. Through the edge.
    world.bucket.put("hostile/ok.txt", b"ok".to_vec()).await;
    let edge = Edge::start(&world.env()).await;
    let http = client(Duration::from_secs(10));
    let mut edge_statuses = Vec::new();
    for (method, path) in edge_requests() {
        let r = http
            .request(method.clone(), format!("http://{}{path}", edge.addr))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("{method} {}…: no answer: {e}", &path[..path.len().min(40)])
            });
        edge_statuses.push((method, r.status().as_u16()));
    }
    let edge_sent = edge_statuses.len() as i64;

    // 2. Straight into the topics, junk first so that the consumers meet a
    //    backlog of it.
    let p = raw_producer(&kafka);
    let (access, health) = (world.topics.access.clone(), world.topics.health.clone());
    let mut fates: BTreeMap<String, (Fate, &'static str)> = BTreeMap::new();
    for i in 0..junk_count() {
        let key = format!("hostile-junk-{i}");
        send(&p, &access, &key, Some(&junk(i)));
        fates.insert(key, (Fate::Bad, "access"));
        p.poll(Duration::ZERO);
    }
    for (key, payload, fate) in access_records(now) {
        send(&p, &access, &key, payload.as_deref());
        fates.insert(key, (fate, "access"));
    }
    let ovf = overflow_pair(now);
    for (key, payload) in &ovf {
        send(&p, &access, key, Some(payload));
    }
    let health_recs = health_records(now);
    for (i, (key, payload, fate)) in health_recs.iter().enumerate() {
        // Good health records are keyed by node: give each a unique map key.
        let map_key = if *fate == Fate::Good {
            format!("{key}#{i}")
        } else {
            key.clone()
        };
        send(&p, &health, key, payload.as_deref());
        fates.insert(map_key, (*fate, "health"));
    }
    assert_eq!(
        p.flush(Duration::from_secs(120)).map_err(|e| e.to_string()),
        Ok(())
    );
    let good_access = fates
        .values()
        .filter(|(f, t)| *f == Fate::Good && *t == "access")
        .count() as i64;

    // 3. The consumers, one group each.
    let health_group = GroupName(format!("{}-health", world.group), kafka.clone());
    let health_group = health_group.0.as_str();
    let env = world.env();
    let mut access_member = Proc::spawn(
        "consume-access",
        weir(),
        &["consume", "access", "--group", &world.group],
        &env,
    );
    let mut health_member = Proc::spawn(
        "consume-health",
        weir(),
        &["consume", "health", "--group", health_group],
        &env,
    );
    let pool = world.db.pool().await;

    // Every good event counted, the edge's events all accounted for, both
    // groups committed at the end of every partition: or what is missing
    // after two minutes goes into the report.
    let mut report = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = loop {
        let access_now = access_counts(&pool).await;
        let health_now = health_counts(&pool).await;
        let good: i64 = access_now
            .iter()
            .filter(|(n, _)| n.starts_with("hostile-good-"))
            .map(|(_, (r, _))| r)
            .sum();
        let health_done = (0..5).all(|n| {
            health_now
                .get(&format!("hostile-h-{n}"))
                .is_some_and(|(_, last)| *last == 20)
        });
        let lag: Vec<String> = [world.group.as_str(), health_group]
            .iter()
            .filter_map(|g| lag_settled(&world, g).err())
            .collect();
        if good >= good_access && health_done && lag.is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            report.push(format!(
                "not settled after 120 s: {good} of {good_access} good access events counted; \
                 good health nodes {:?}; lag: {lag:?}",
                (0..5)
                    .map(|n| health_now.get(&format!("hostile-h-{n}")).copied())
                    .collect::<Vec<_>>()
            ));
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if settled {
        // Anything counted late or twice shows now.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let counts = access_counts(&pool).await;
    let health_now = health_counts(&pool).await;
    let letters = read_dead_letters(&kafka, &world.topics.dlq, Duration::from_secs(3));

    // Good access: exactly once.
    let good: i64 = counts
        .iter()
        .filter(|(n, _)| n.starts_with("hostile-good-"))
        .map(|(_, (r, _))| r)
        .sum();
    if good != good_access {
        report.push(format!(
            "good access events counted {good} times, sent {good_access}"
        ));
    }
    // Bad access and health: never counted.
    let counted_bad: Vec<&String> = counts
        .keys()
        .chain(health_now.keys())
        .filter(|n| n.starts_with("hostile-bad"))
        .collect();
    if !counted_bad.is_empty() {
        report.push(format!(
            "bad events were counted as nodes: {:?}",
            counted_bad
                .iter()
                .map(|n| n.escape_debug().to_string())
                .collect::<Vec<_>>()
        ));
    }
    // Good health: every report once, last seq 20.
    for n in 0..5 {
        let node = format!("hostile-h-{n}");
        if health_now.get(&node) != Some(&(20, 20)) {
            report.push(format!(
                "{node}: (reports, last_seq) = {:?}, want (20, 20)",
                health_now.get(&node)
            ));
        }
    }
    // Every bad record dead-lettered with a reason; no good one.
    let dead: BTreeMap<&str, &DeadLetter> = letters.iter().map(|d| (d.key.as_str(), d)).collect();
    let missing: Vec<&String> = fates
        .iter()
        .filter(|(k, (f, _))| *f == Fate::Bad && !dead.contains_key(k.as_str()))
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        report.push(format!(
            "{} bad records not dead-lettered: {:?}",
            missing.len(),
            missing.iter().take(30).collect::<Vec<_>>()
        ));
    }
    let no_reason: Vec<&str> = letters
        .iter()
        .filter(|d| d.reason.as_deref().is_none_or(str::is_empty))
        .map(|d| d.key.as_str())
        .collect();
    if !no_reason.is_empty() {
        report.push(format!(
            "dead letters without weir.dlq.reason: {no_reason:?}"
        ));
    }
    let good_dead: Vec<&str> = letters
        .iter()
        .filter(|d| d.key.starts_with("hostile-good-"))
        .map(|d| d.key.as_str())
        .collect();
    if !good_dead.is_empty() {
        report.push(format!("good records dead-lettered: {good_dead:?}"));
    }
    // The overflow pair: they cannot both be counted; each is counted or
    // dead-lettered, and what is counted fits.
    let ovf_dead = letters
        .iter()
        .filter(|d| d.key.starts_with("hostile-ovf-"))
        .count() as i64;
    let (ovf_counted, ovf_bytes) = counts.get("hostile-ovf").copied().unwrap_or((0, 0));
    if ovf_dead + ovf_counted != 2 || ovf_dead == 0 || ovf_bytes < 0 {
        report.push(format!(
            "overflow pair: counted {ovf_counted} (bytes {ovf_bytes}), dead-lettered {ovf_dead}; want one of each or two dead"
        ));
    }
    // The edge's events: each counted or dead-lettered.
    let edge_counted: i64 = counts
        .iter()
        .filter(|(n, _)| !n.starts_with("hostile-"))
        .map(|(_, (r, _))| r)
        .sum();
    let edge_dead = letters
        .iter()
        .filter(|d| {
            !d.key.starts_with("hostile-") && d.source_topic.as_deref() == Some(access.as_str())
        })
        .count() as i64;
    if edge_counted + edge_dead != edge_sent {
        report.push(format!(
            "edge: {edge_sent} requests ({edge_statuses:?}), {edge_counted} counted, {edge_dead} dead-lettered"
        ));
    }

    // Both members are still running: no input may crash them.
    for m in [&mut access_member, &mut health_member] {
        if let Some(st) = m.wait(Duration::ZERO) {
            let out = m.output();
            let last: Vec<&str> = out.lines().rev().take(3).collect();
            report.push(format!("{} exited ({st}): {last:?}", m.name));
        }
    }
    // Memory stayed bounded (peak resident set, VmHWM, of each member).
    let peaks = [access_member.peak_rss(), health_member.peak_rss()];
    for (name, peak) in ["consume access", "consume health"].iter().zip(peaks) {
        eprintln!("hostile: {name} peak RSS {} MiB", peak / MIB);
        if peak > CONSUMER_RSS_BOUND {
            report.push(format!(
                "{name}: peak RSS {} MiB over {} MiB",
                peak / MIB,
                CONSUMER_RSS_BOUND / MIB
            ));
        }
    }
    // Panicking while the members run shows their output.
    assert!(
        report.is_empty(),
        "hostile input:\n- {}",
        report.join("\n- ")
    );
}

/// A group name whose group is deleted on drop (after the members that
/// use it, when declared before them).
struct GroupName(String, String);

impl Drop for GroupName {
    fn drop(&mut self) {
        weir_testkit::groups::delete_groups(&self.1, &[&self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_answers_20_concurrent_requests_promptly_with_redis_black_holed() {
    let world = TestWorld::create(1).await;
    let (center, http, _hole) = center_with_black_holed_redis(&world).await;
    let addr = center.addr;
    let url = format!("http://{addr}/api/v1/nodes");
    let t = Instant::now();
    let answers = futures::future::join_all((0..20).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let t = Instant::now();
            let s = http.get(&url).send().await.map(|r| r.status().as_u16());
            (s, t.elapsed())
        }
    }))
    .await;
    let all = t.elapsed();
    let slow: Vec<_> = answers
        .iter()
        .filter(|(s, took)| s.as_ref().ok() != Some(&503) || *took > ANSWER_BOUND)
        .collect();
    assert!(
        slow.is_empty(),
        "20 concurrent requests with Redis black-holed took {all:?} in all; each must answer 503 within {ANSWER_BOUND:?}: {answers:?}"
    );
}

#[test]
fn config_never_prints_rdkafka_secrets_or_echoes_a_url_password() {
    let dir = std::env::temp_dir().join(unique("weir-secrets"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("weir.toml");
    std::fs::write(
        &file,
        "[kafka.rdkafka]\n\
         \"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"weir\"\n\
         \"sasl.password\" = \"hunter2-sasl\"\n\
         \"ssl.key.password\" = \"hunter2-sslkey\"\n\
         \"sasl.oauthbearer.client.secret\" = \"hunter2-oauth\"\n\
         \"ssl.keystore.password\" = \"hunter2-keystore\"\n",
    )
    .expect("write");
    let f = file.to_string_lossy().to_string();
    let mut leaks = Vec::new();
    let (code, out) = weir_config(&["--config", &f], &[]);
    if code == 0 {
        assert!(
            out.contains("sasl.username"),
            "the rdkafka table is shown: {out}"
        );
    }
    for secret in [
        "hunter2-sasl",
        "hunter2-sslkey",
        "hunter2-oauth",
        "hunter2-keystore",
    ] {
        if out.contains(secret) {
            leaks.push(format!("weir config prints {secret}"));
        }
    }
    // Environment: a secret-looking rdkafka key, and URLs with passwords,
    // valid and invalid.
    let cases: [(&str, &str, &str); 4] = [
        (
            "WEIR_KAFKA_RDKAFKA__SASL__PASSWORD",
            "hunter2-env",
            "hunter2-env",
        ),
        (
            "WEIR_REDIS_URL",
            "redis://weir:hunter2-badredis@[::1/",
            "hunter2-badredis",
        ),
        (
            "WEIR_REDIS_URL",
            "rediss://:hunter2-nouser@127.0.0.1:notaport/",
            "hunter2-nouser",
        ),
        (
            "WEIR_DATABASE_URL",
            "postgres://weir:hunter2-pg@127.0.0.1:notaport/weir",
            "hunter2-pg",
        ),
    ];
    for (var, value, secret) in cases {
        let (code, out) = weir_config(&[], &[(var, value)]);
        if out.contains(secret) {
            leaks.push(format!("{var} (exit {code}): {}", out.trim()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(leaks.is_empty(), "secrets printed:\n{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_settings_are_refused_naming_the_key() {
    // Checked at load: `weir config`.
    let mut wrong = Vec::new();
    for (var, value, key) in [
        (
            "WEIR_CONSUMER_RETRY_BACKOFF_MAX",
            "0s",
            "consumer.retry_backoff_max",
        ),
        ("WEIR_CENTER_KEEPALIVE", "0s", "center.keepalive"),
        (
            "WEIR_CONSUMER_DLQ_MAX_PAYLOAD",
            "8388608",
            "consumer.dlq_max_payload",
        ),
    ] {
        let (code, out) = weir_config(&[], &[(var, value)]);
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        if code != 2 || lines.len() != 1 || !lines[0].contains(key) {
            wrong.push(format!(
                "weir config with {var}={value}: exit {code}, want 2 and one line naming {key}: {}",
                out.lines().take(3).collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    // The DLQ cap may need the broker's limit: the role that uses it must
    // refuse it before consuming anything.
    let world = TestWorld::create(1).await;
    let mut member = Proc::spawn(
        "consume-access",
        weir(),
        &["consume", "access"],
        &world.env_with(&[("WEIR_CONSUMER_DLQ_MAX_PAYLOAD", "8388608")]),
    );
    match member.wait(Duration::from_secs(20)) {
        Some(st) => {
            let out = member.output();
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("dlq_max_payload"))
                .collect();
            if st.code() != Some(2) || lines.is_empty() {
                wrong.push(format!(
                    "weir consume access with an 8 MiB DLQ cap: {st:?}, want exit 2 naming consumer.dlq_max_payload: {}",
                    out.lines().last().unwrap_or_default()
                ));
            }
        }
        None => wrong.push(
            "weir consume access with an 8 MiB DLQ cap (above the broker's 1 MiB message limit) \
             is still running after 20 s"
                .into(),
        ),
    }
    assert!(wrong.is_empty(), "accepted:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_with_a_huge_node_list_is_refused_or_paginated() {
    let world = TestWorld::create(1).await;
    let (api, http, _center) = uptime_api(&world).await;
    let many: String = (0..2000).map(|i| format!("&node=hostile-{i}")).collect();
    let commas: String = (0..2000)
        .map(|i| format!("hostile-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut wrong = Vec::new();
    for (what, query) in [
        ("2000 node parameters", format!("from=0{many}")),
        ("2000 nodes in one parameter", format!("node={commas}")),
    ] {
        wrong.extend(uptime_answer_problem(&http, &api, what, &query).await);
    }
    assert!(wrong.is_empty(), "uptime:\n{}", wrong.join("\n"));
}
