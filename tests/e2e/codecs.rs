//! Every compression codec Kafka has, from every kind of producer users run:
//! records written by Kafka's own Java console producer (the real Java
//! client, from the broker's jars), by `kcat` (librdkafka as Debian builds
//! it) and by Weir's own producer (`kafka.compression`), each with none,
//! gzip, snappy, lz4 and zstd, are consumed by the health and access groups
//! with exact counts. The broker's own log dump proves each codec really is
//! in the topic (a producer that silently fell back to `none` would pass
//! the counts).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use weir_core::kafka::COMPRESSION_CODECS;
use weir_schemas::{AccessEvent, HealthEvent};
use weir_testkit::{eventually, last_json, repo_root, unique, Proc, TestWorld};

use crate::weir;

/// Events of each kind per (producer, codec).
const PER_RUN: u64 = 40;

/// Writes `lines` to a temporary file, one per line.
fn lines_file(name: &str, lines: &[String]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}.jsonl", unique(name)));
    std::fs::write(&p, lines.join("\n") + "\n").expect("write records file");
    p
}

fn health_lines(node: &str) -> Vec<String> {
    let t0 = Utc
        .with_ymd_and_hms(2026, 12, 2, 10, 0, 0)
        .single()
        .expect("time");
    (1..=PER_RUN)
        .map(|seq| {
            let ts = t0 + chrono::TimeDelta::seconds(seq as i64);
            serde_json::to_string(&HealthEvent::example(node, seq, ts)).expect("json")
        })
        .collect()
}

fn access_lines(node: &str) -> Vec<String> {
    let t0 = Utc
        .with_ymd_and_hms(2026, 12, 2, 10, 0, 0)
        .single()
        .expect("time");
    (1..=PER_RUN)
        .map(|seq| {
            let ts = t0 + chrono::TimeDelta::seconds(seq as i64);
            serde_json::to_string(&AccessEvent::example(node, seq, ts)).expect("json")
        })
        .collect()
}

/// `kcat -P` of `file` to `topic` with `codec`.
fn kcat(brokers: &str, topic: &str, codec: &str, file: &PathBuf) -> Command {
    let mut c = Command::new("kcat");
    c.args([
        "-P",
        "-b",
        brokers,
        "-t",
        topic,
        "-z",
        codec,
        "-X",
        "linger.ms=20",
        "-l",
    ])
    .arg(file);
    c
}

/// Kafka's `ConsoleProducer` (the Java client) reading `file`.
fn java_producer(brokers: &str, topic: &str, codec: &str, file: &PathBuf) -> Command {
    let mut c = Command::new(repo_root().join("deploy/local/kafka-class"));
    c.args([
        "org.apache.kafka.tools.ConsoleProducer",
        "--bootstrap-server",
        brokers,
        "--topic",
        topic,
        "--compression-codec",
        codec,
        "--command-property",
        "linger.ms=20",
    ])
    .stdin(std::fs::File::open(file).expect("records file"));
    c
}

/// The codecs of the record batches in partition 0 of `topic`, as the
/// broker's own `DumpLogSegments` reads them from its log.
fn codecs_in_log(topic: &str) -> BTreeSet<String> {
    let stack = std::env::var("WEIR_STACK_DIR").unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/weir-stack")
    });
    let dir = PathBuf::from(stack).join(format!("kafka/data/{topic}-0"));
    let logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the shared broker's log dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    let out = Command::new(repo_root().join("deploy/local/kafka-class"))
        .arg("org.apache.kafka.tools.DumpLogSegments")
        .arg("--files")
        .arg(
            logs.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .output()
        .expect("run DumpLogSegments");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("compresscodec: ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next())
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_from_java_kcat_and_weir_is_consumed_exactly() {
    assert!(
        Command::new("kcat").arg("-V").output().is_ok(),
        "kcat is not installed (apt-get install kcat; `./dev test` installs it)"
    );
    let world = TestWorld::create(1).await;
    let env = world.env();
    let brokers = world.stack.kafka.clone();
    let (health, access) = (world.topics.health.clone(), world.topics.access.clone());

    // Every (producer, codec) writes to both topics, all at once: the JVMs
    // start in parallel.
    let mut children = Vec::new();
    let mut files = Vec::new();
    let mut runs = 0u64;
    for codec in COMPRESSION_CODECS {
        for producer in ["kcat", "java"] {
            let node = format!("{producer}-{codec}");
            let hf = lines_file("weir-codec-health", &health_lines(&node));
            let af = lines_file("weir-codec-access", &access_lines(&node));
            for (topic, file) in [(&health, &hf), (&access, &af)] {
                let mut cmd = if producer == "kcat" {
                    kcat(&brokers, topic, codec, file)
                } else {
                    java_producer(&brokers, topic, codec, file)
                };
                let child = cmd
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{producer}: {e}"));
                children.push((format!("{producer} {codec} → {topic}"), child));
            }
            files.extend([hf, af]);
            runs += 1;
        }
    }
    for (what, child) in children {
        let out = child.wait_with_output().expect("producer runs");
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }

    // Weir's own producer with each codec (`kafka.compression`).
    let mut weir_access = 0u64;
    for codec in COMPRESSION_CODECS {
        let mut gen_env = env.clone();
        gen_env.push(("WEIR_KAFKA_COMPRESSION".into(), codec.to_string()));
        let mut g = Proc::spawn(
            &format!("gen-{codec}"),
            weir(),
            &[
                "gen",
                "access",
                "--count",
                "100",
                "--nodes",
                "2",
                "--objects",
                "5",
            ],
            &gen_env,
        );
        let st = g.wait(Duration::from_secs(60)).expect("gen finishes");
        assert!(st.success(), "weir gen with {codec}:\n{}", g.output());
        let totals = last_json(&g.output()).expect("gen totals");
        assert_eq!(totals["failed"], 0, "{totals}");
        weir_access += totals["requests"].as_u64().expect("requests");
    }

    // What the broker holds: every codec, from every producer.
    let want: BTreeSet<String> = COMPRESSION_CODECS.iter().map(|c| c.to_string()).collect();
    assert_eq!(codecs_in_log(&health), want, "codecs in {health}");
    assert_eq!(codecs_in_log(&access), want, "codecs in {access}");

    let mut members = vec![
        Proc::spawn("health", weir(), &["consume", "health"], &env),
        Proc::spawn("access", weir(), &["consume", "access"], &env),
    ];
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&world.db.url)
        .await
        .expect("pool");
    let want_reports = (runs * PER_RUN) as i64;
    let want_requests = (runs * PER_RUN + weir_access) as i64;
    let counts = || {
        let pool = pool.clone();
        async move {
            let reports: Option<i64> =
                sqlx::query_scalar("SELECT sum(reports)::bigint FROM servers")
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten();
            let requests: Option<i64> =
                sqlx::query_scalar("SELECT sum(requests)::bigint FROM access_minute")
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten();
            (reports.unwrap_or(0), requests.unwrap_or(0))
        }
    };
    eventually(Duration::from_secs(60), "every record consumed", || async {
        (counts().await == (want_reports, want_requests)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counts().await, (want_reports, want_requests));
    // Each (producer, codec) node: all of its reports, none twice.
    let per_node: Vec<(String, i64)> =
        sqlx::query_as("SELECT node_id, reports FROM servers ORDER BY node_id")
            .fetch_all(&pool)
            .await
            .expect("per node");
    assert_eq!(per_node.len() as u64, runs, "{per_node:?}");
    assert!(
        per_node.iter().all(|(_, r)| *r == PER_RUN as i64),
        "{per_node:?}"
    );
    for m in &mut members {
        let st = m.terminate(Duration::from_secs(30)).expect("member stops");
        assert!(st.success(), "{}:\n{}", m.name, m.output());
        let report = last_json(&m.output()).expect("run report");
        assert_eq!(report["dead_lettered"], 0, "{}: {report}", m.name);
    }
}
