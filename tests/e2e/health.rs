//! End-to-end tests of the `weir` binary against the local stack: the health
//! pipeline from agent to center, a member killed with SIGKILL, bad input at
//! the command line, and the center with Redis gone.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use weir_producers::{EventProducer, KafkaConfig};
use weir_schemas::HealthEvent;
use weir_testkit::{eventually, stack, unique, PrivateService, Proc, TestWorld};

use crate::{get_json, run_weir, weir, Center};

async fn total_reports(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(reports)::bigint FROM servers")
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_to_center_end_to_end() {
    let world = TestWorld::create(3).await;
    agent_to_center(&world).await;
}

/// The same pipeline against a Kafka 3.x broker (the last 3.x line, KRaft,
/// from its jars: `deploy/local/serve kafka3`), as many clusters still run:
/// the producer, both consumer-group members and the center, then the lag
/// tools, which fall back to the classic describe API that 3.x speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_to_center_end_to_end_on_kafka_3() {
    let shared = stack();
    shared.require_redis().require_postgres();
    let kafka = PrivateService::start("kafka3");
    let world = TestWorld::builder()
        .on(weir_testkit::Stack {
            kafka: kafka.url(),
            ..shared
        })
        .partitions(3)
        .create()
        .await;
    agent_to_center(&world).await;
    // The members left: the group is known, with what it committed.
    let out = std::process::Command::new(weir())
        .args(["lag", "describe", &world.group, "--json"])
        .env("WEIR_KAFKA_BROKERS", kafka.url())
        .output()
        .expect("weir lag describe");
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(doc["protocol"], "classic", "{doc}");
    assert_eq!(doc["total_lag"], 0, "{doc}");
    assert_eq!(doc["uncommitted_partitions"], 0, "{doc}");
}

/// Agent → two health members → PostgreSQL, Redis → center API and live
/// stream, on `world`'s services.
async fn agent_to_center(world: &TestWorld) {
    let db = &world.db;
    let base = world.env();
    let node = unique("e2e-node");

    let mut c1 = Proc::spawn("consumer-1", weir(), &["consume", "health"], &base);
    let mut c2 = Proc::spawn("consumer-2", weir(), &["consume", "health"], &base);
    let mut center = Center::start(&base).await;
    let center_addr = center.addr;
    let api = format!("http://{center_addr}/api/v1");
    eventually(Duration::from_secs(30), "center ready", || {
        let url = format!("http://{center_addr}/readyz");
        async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
    })
    .await;

    // Open the live stream before the agent starts.
    let sse = reqwest::Client::new()
        .get(format!("{api}/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.bytes_stream();

    let mut agent = Proc::spawn(
        "agent",
        weir(),
        &["agent", "--interval", "300ms", "--node-id", &node],
        &base,
    );

    let view = eventually(
        Duration::from_secs(60),
        "node visible in the center",
        || {
            let url = format!("{api}/nodes");
            let node = node.clone();
            async move {
                let (_, body) = get_json(&url).await?;
                body.as_array()?
                    .iter()
                    .find(|n| n["node_id"] == node.as_str() && n["status"] == "up")
                    .cloned()
            }
        },
    )
    .await;
    let h = &view["health"];
    for field in [
        "schema_version",
        "node_id",
        "agent_id",
        "seq",
        "ts",
        "interval_ms",
        "service",
        "endpoint",
        "cdn_type",
        "cores",
        "memory_total_mb",
        "memory_free_mb",
        "load_avg",
        "cpu_usage_pct",
        "interfaces",
        "ips",
        "uptime_secs",
    ] {
        assert!(!h[field].is_null(), "field {field} missing in {h}");
    }
    assert_eq!(h["interval_ms"], 300);
    assert!(h["cores"].as_u64().unwrap_or(0) >= 1);
    assert!(h["memory_total_mb"].as_u64().unwrap_or(0) > 0);
    for k in ["one", "five", "fifteen"] {
        assert!(h["load_avg"][k].is_number());
    }
    for k in ["lan", "wan", "device"] {
        assert!(h["ips"][k].is_array());
    }

    let (status, one) = get_json(&format!("{api}/nodes/{node}"))
        .await
        .expect("one node");
    assert_eq!((status, one["status"].as_str()), (200, Some("up")));
    let (status, _) = get_json(&format!("{api}/nodes/no-such-node"))
        .await
        .expect("404");
    assert_eq!(status, 404);
    let (_, fleet) = get_json(&format!("{api}/fleet")).await.expect("fleet");
    assert!(
        fleet["healthy"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == node.as_str())),
        "{fleet}"
    );

    // The live stream pushed the node's reports.
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(buf.contains("event: health") && buf.contains(node.as_str())) {
        assert!(
            Instant::now() < deadline,
            "no health event on the stream: {buf}"
        );
        if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), sse.next()).await
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    // Stop the agent: it flushes and reports; the node goes down after expiry.
    let status = agent
        .terminate(Duration::from_secs(20))
        .expect("agent exits on SIGTERM");
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        agent.output()
    );
    let summary: Value = agent
        .output()
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("delivered").is_some())
        })
        .expect("agent prints its report");
    let delivered = summary["delivered"].as_i64().expect("delivered");
    assert_eq!(summary["queued"], summary["delivered"]);
    assert_eq!(summary["failed"], 0);

    let fleet = eventually(
        Duration::from_secs(20),
        "node unhealthy after expiry",
        || {
            let url = format!("{api}/fleet");
            let node = node.clone();
            async move {
                let (_, f) = get_json(&url).await?;
                f["unhealthy"]
                    .as_array()?
                    .iter()
                    .any(|n| n == node.as_str())
                    .then_some(f)
            }
        },
    )
    .await;
    assert_eq!(fleet["healthy_count"], 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.contains("event: down") {
        assert!(Instant::now() < deadline, "no down event on the stream");
        if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), sse.next()).await
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    // Every delivered report is in PostgreSQL exactly once, and uptime is served.
    let pool = db.pool().await;
    eventually(Duration::from_secs(20), "reports in PostgreSQL", || {
        let pool = pool.clone();
        async move { (total_reports(&pool).await == delivered).then_some(()) }
    })
    .await;
    let (status, up) = get_json(&format!("{api}/uptime?node={node}"))
        .await
        .expect("uptime");
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["nodes"][0]["reports"].as_i64(), Some(delivered));
    let (status, bad) = get_json(&format!("{api}/uptime?from=yesterday"))
        .await
        .expect("400");
    assert_eq!(status, 400);
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("from")),
        "{bad}"
    );

    for p in [&mut c1, &mut c2, &mut center.proc] {
        let st = p
            .terminate(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{} did not stop on SIGTERM", p.name));
        assert!(st.success(), "{} exit {st:?}:\n{}", p.name, p.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_member_loses_and_duplicates_nothing() {
    let world = TestWorld::create(6).await;
    let (topics, db) = (&world.topics, &world.db);
    let base = world.env();
    let mut a = Proc::spawn("member-a", weir(), &["consume", "health"], &base);
    let mut b = Proc::spawn("member-b", weir(), &["consume", "health"], &base);

    // 24 nodes × 1000 sequence numbers, produced over ~8 s.
    let nodes = 24u64;
    let per_node = 1000u64;
    let topic = topics.health.clone();
    let producer = tokio::spawn(async move {
        let p = EventProducer::new(
            &KafkaConfig {
                brokers: stack().kafka,
                ..KafkaConfig::default()
            },
            "test",
        )
        .expect("producer");
        let mut pending = Vec::new();
        for seq in 1..=per_node {
            for n in 0..nodes {
                let ev = HealthEvent::example(&format!("kill-node-{n}"), seq, Utc::now());
                pending.push(p.enqueue(&topic, &ev).expect("queued"));
            }
            if seq % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for d in pending {
            d.await.expect("delivered");
        }
    });

    let pool = db.pool().await;
    eventually(Duration::from_secs(60), "both members consuming", || {
        let pool = pool.clone();
        async move { (total_reports(&pool).await > 2000).then_some(()) }
    })
    .await;
    a.kill9();
    let at_kill = total_reports(&pool).await;
    producer.await.expect("producer task");
    let total = (nodes * per_node) as i64;
    assert!(
        at_kill < total,
        "the kill must happen mid-stream ({at_kill} of {total} applied)"
    );

    eventually(
        Duration::from_secs(90),
        "the survivor to apply everything",
        || {
            let pool = pool.clone();
            async move { (total_reports(&pool).await >= total).then_some(()) }
        },
    )
    .await;
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT node_id, reports, last_seq FROM servers ORDER BY node_id")
            .fetch_all(&pool)
            .await
            .expect("servers");
    assert_eq!(rows.len() as u64, nodes);
    for (node, reports, last_seq) in rows {
        assert_eq!(
            reports, per_node as i64,
            "{node}: every sequence number exactly once"
        );
        assert_eq!(last_seq, per_node as i64, "{node}: last sequence number");
    }
    let st = b
        .terminate(Duration::from_secs(30))
        .expect("survivor stops");
    assert!(st.success(), "{}", b.output());
}

/// Arguments, environment, and the key the error must name.
type BadInvocation<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_flags_and_config_exit_2_with_one_line_naming_the_key() {
    let dir = std::env::temp_dir().join(unique("weir-badcfg"));
    std::fs::create_dir_all(&dir).expect("dir");
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "[agent]\nintervall = \"1s\"\n").expect("write");
    let bad_value = dir.join("bad-value.toml");
    std::fs::write(&bad_value, "[consumer]\nbatch_max_records = \"lots\"\n").expect("write");
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "[agent\n").expect("write");
    let unk = unknown.to_string_lossy().to_string();
    let badv = bad_value.to_string_lossy().to_string();
    let badt = bad_toml.to_string_lossy().to_string();
    let cases: Vec<BadInvocation<'_>> = vec![
        (vec!["agent", "--interval", "soon"], vec![], "--interval"),
        (vec!["agent", "--frobnicate"], vec![], "--frobnicate"),
        (vec!["consume", "nothing"], vec![], "nothing"),
        (vec!["up", "--consumers", "0"], vec![], "--consumers"),
        (vec!["--config", &unk, "agent"], vec![], "intervall"),
        (
            vec!["--config", &badv, "agent"],
            vec![],
            "consumer.batch_max_records",
        ),
        (vec!["--config", &badt, "agent"], vec![], "bad.toml"),
        (
            vec!["--config", "/nonexistent/weir.toml", "agent"],
            vec![],
            "/nonexistent/weir.toml",
        ),
        (
            vec!["agent"],
            vec![("WEIR_TOPICS_PARTITIONS", "many")],
            "WEIR_TOPICS_PARTITIONS",
        ),
        (
            vec!["agent"],
            vec![("WEIR_AGENT_INTERVALL", "1s")],
            "WEIR_AGENT_INTERVALL",
        ),
        (
            vec!["center"],
            vec![("WEIR_CENTER_ADDR", "localhost:http")],
            "center.addr",
        ),
        (
            vec!["agent"],
            vec![("WEIR_AGENT_INTERVAL", "0s")],
            "agent.interval",
        ),
        (
            vec!["agent"],
            vec![("WEIR_DATABASE_URL", "mysql://x/y")],
            "database.url",
        ),
    ];
    for (args, env, key) in cases {
        let (code, stderr) = run_weir(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?} → {code}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one line expected, got:\n{stderr}"
        );
        assert!(
            lines[0].contains(key),
            "{args:?}: {:?} does not name {key}",
            lines[0]
        );
    }
    let (code, _) = run_weir(&["--help"], &[]);
    assert_eq!(code, 0);
    for sub in [
        vec!["up", "--help"],
        vec!["agent", "--help"],
        vec!["consume", "health", "--help"],
        vec!["center", "--help"],
        vec!["topics", "ensure", "--help"],
    ] {
        assert_eq!(run_weir(&sub, &[]).0, 0, "{sub:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_answers_503_while_redis_is_down_and_recovers() {
    let mut redis = PrivateService::start("redis");
    let world = TestWorld::create(1).await;
    let center = Center::start(&world.env_with(&[("WEIR_REDIS_URL", &redis.url())])).await;
    let addr = center.addr;
    let url = format!("http://{addr}/api/v1/nodes");
    let (_, body) = eventually(Duration::from_secs(30), "center up", || {
        let url = url.clone();
        async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
    })
    .await;
    assert_eq!(body, serde_json::json!([]));

    redis.stop(true);
    for path in ["nodes", "fleet", "nodes/x"] {
        let started = Instant::now();
        let (status, body) = get_json(&format!("http://{addr}/api/v1/{path}"))
            .await
            .expect("answers while Redis is down");
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("redis")));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    let (status, _) = get_json(&format!("http://{addr}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(status, 503);

    redis.restart();
    eventually(
        Duration::from_secs(30),
        "center recovers with Redis",
        || {
            let url = url.clone();
            async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
        },
    )
    .await;
}

#[test]
fn agent_refuses_a_missing_topic_with_one_clear_line() {
    let s = stack();
    s.require_kafka();
    let topic = unique("missing");
    let (code, stderr) = run_weir(
        &["agent", "--count", "1"],
        &[
            ("WEIR_KAFKA_BROKERS", &s.kafka),
            ("WEIR_TOPICS_HEALTH", &topic),
            ("WEIR_METRICS_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "off"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&topic) && stderr.contains("weir topics ensure"),
        "{stderr}"
    );
}
