//! `weir lag describe` against Kafka's own consumer-groups tool, from the
//! same Kafka jars as the broker, for a group reading several topics and
//! partitions: with a member, then with none.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;
use weir_testkit::groups::{commit_without_joining, delete_groups, produce, GroupMember};
use weir_testkit::{repo_root, stack, unique, TestTopics};

use crate::{weir, weir_output};

/// One row, as both tools report it: committed, end, lag, member, host,
/// client id (`None` where a tool prints "-").
type Row = (
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn dash(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_string())
}

/// Runs Kafka's `ConsumerGroupCommand --describe` and parses its table.
fn kafka_tool(brokers: &str, group: &str) -> BTreeMap<(String, i32), Row> {
    let out = Command::new(repo_root().join("deploy/local/kafka-class"))
        .args([
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            brokers,
            "--describe",
            "--group",
            group,
        ])
        .output()
        .expect("run Kafka's consumer-groups tool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Kafka's tool failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || f[0] != group {
            continue;
        }
        let num = |s: &str| s.parse::<i64>().ok();
        rows.insert(
            (f[1].to_string(), f[2].parse().expect("partition")),
            (
                num(f[3]),
                num(f[4]).expect("log-end offset"),
                num(f[5]),
                dash(f[6]),
                dash(f[7]),
                dash(f[8]),
            ),
        );
    }
    rows
}

/// Runs `weir lag describe --json`; returns its rows and exit code.
fn weir_lag(brokers: &str, group: &str) -> (BTreeMap<(String, i32), Row>, Value, i32) {
    let out = weir_output(
        &["lag", "describe", group, "--json"],
        [("WEIR_KAFKA_BROKERS", brokers)],
    );
    let code = out.status.code().unwrap_or(-1);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weir lag describe printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut rows = BTreeMap::new();
    for p in doc["partitions"].as_array().expect("partitions") {
        let s = |k: &str| p[k].as_str().map(str::to_string);
        rows.insert(
            (
                p["topic"].as_str().expect("topic").to_string(),
                p["partition"].as_i64().expect("partition") as i32,
            ),
            (
                p["committed"].as_i64(),
                p["end"].as_i64().expect("end"),
                p["lag"].as_i64(),
                s("member_id"),
                s("host"),
                s("client_id"),
            ),
        );
    }
    (rows, doc, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_matches_kafkas_consumer_groups_tool() {
    let st = stack();
    let topics = TestTopics::create(&st, 3).await;
    let (h, a) = (topics.health.as_str(), topics.access.as_str());
    for (t, p, n) in [(h, 0, 10), (h, 1, 20), (h, 2, 5), (a, 0, 7), (a, 2, 15)] {
        produce(&st.kafka, t, p, n).await;
    }
    let group = unique("lag-e2e");
    let member = GroupMember::join(&st.kafka, &group, "lag-e2e-member", &[h, a], 6);
    // health/2 and access/1 are never committed.
    member.commit(&[(h, 0, 4), (h, 1, 20), (a, 0, 7), (a, 2, 3)]);

    // Both tools at the same time (nothing is produced or committed now).
    let (brokers, g) = (st.kafka.clone(), group.clone());
    let theirs = std::thread::spawn(move || kafka_tool(&brokers, &g));
    let (ours, doc, code) = weir_lag(&st.kafka, &group);
    let theirs = theirs.join().expect("tool thread");
    assert_eq!(ours, theirs, "weir vs Kafka's tool with a member");
    assert_eq!(ours.len(), 6, "every assigned partition is shown");
    assert_eq!(
        ours[&(h.to_string(), 2)].0,
        None,
        "never committed shows plainly"
    );
    assert_eq!(doc["total_lag"], 6 + 12);
    assert_eq!(doc["members"], 1);
    assert_eq!(doc["uncommitted_partitions"], 2);
    assert_eq!(code, 0, "one reading of a group with members is ok");
    // Lag in seconds, from the broker's time index on a single reading: the
    // records were produced seconds ago.
    for p in doc["partitions"].as_array().expect("partitions") {
        if p["lag"].as_i64().is_some_and(|l| l > 0) {
            let s = p["lag_seconds"].as_f64().expect("lag in seconds");
            assert!((0.0..120.0).contains(&s), "lag in seconds {s} for {p}");
        }
    }

    // --no-lag-time: the same offsets, owners and totals, without the
    // time-index probes (lag in seconds only a lower bound on one reading).
    let out = weir_output(
        &["lag", "describe", &group, "--json", "--no-lag-time"],
        [("WEIR_KAFKA_BROKERS", st.kafka.as_str())],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quick: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(quick["total_lag"], doc["total_lag"]);
    assert_eq!(quick["uncommitted_partitions"], 2);
    let parts = quick["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 6, "every assigned partition is shown");
    for (p, q) in doc["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .zip(parts)
    {
        for k in ["topic", "partition", "committed", "end", "lag", "member_id"] {
            assert_eq!(p[k], q[k], "{k} with --no-lag-time");
        }
        if q["lag"].as_i64().is_some_and(|l| l > 0) {
            // Without the time index a first reading only knows a lower
            // bound, which --watch readings raise.
            assert_eq!(q["lag_seconds_at_least"], true, "a lower bound: {q}");
        }
    }

    // --watch --json: one document per reading; the window fills up.
    let watch = [
        "--watch",
        "--count",
        "3",
        "--interval",
        "200ms",
        "--window",
        "1s",
    ];
    let mut args = vec!["lag", "describe", &group, "--json"];
    args.extend(watch);
    let out = weir_output(&args, [("WEIR_KAFKA_BROKERS", &st.kafka)]);
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(docs.len(), 3, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(docs[0]["observed_seconds"], 0.0);
    assert!(docs[2]["observed_seconds"]
        .as_f64()
        .is_some_and(|s| s >= 0.3));
    assert!(docs.iter().all(|d| d["total_lag"] == 18));

    // The member leaves: the lag stays visible, and a group with lag and no
    // member is stopped (exit 5).
    member.leave();
    let (brokers, g) = (st.kafka.clone(), group.clone());
    let start = std::time::Instant::now();
    loop {
        let (ours, doc, code) = weir_lag(&st.kafka, &group);
        if doc["members"] == 0 {
            let theirs = kafka_tool(&brokers, &g);
            assert_eq!(ours, theirs, "weir vs Kafka's tool without members");
            assert_eq!(ours.len(), 4, "only committed partitions remain");
            assert_eq!(doc["total_lag"], 18);
            assert_eq!(doc["status"], "stopped");
            assert_eq!(code, 5);
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the member never left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    delete_groups(&st.kafka, &[&group]);

    // A group that does not exist: exit 3.
    let missing = unique("no-such-group");
    let out = weir_output(
        &["lag", "describe", &missing],
        [("WEIR_KAFKA_BROKERS", &st.kafka)],
    );
    assert_eq!(out.status.code(), Some(3));
}

/// A group over more partitions than one offsets request carries (weir
/// splits them into requests of 512): every partition is read once, with the
/// right committed and log-end offsets and lag in seconds, as Kafka's tool
/// reads them, with and without the time-index probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_spans_several_offset_requests() {
    const PARTITIONS: i32 = 1100;
    let st = stack();
    let topics = TestTopics::create(&st, PARTITIONS).await;
    let h = topics.health.as_str();
    // Records on partitions at the edges of each 512-partition request.
    let filled = [0, 1, 511, 512, 513, 1023, 1024, 1099];
    let mut expected_lag = 0;
    for (i, p) in filled.iter().enumerate() {
        produce(&st.kafka, h, *p, 3 + i).await;
        expected_lag += 3 + i as i64 - 1;
    }
    let group = unique("lag-chunks");
    let offsets: Vec<(&str, i32, i64)> = (0..PARTITIONS)
        .map(|p| (h, p, i64::from(filled.contains(&p))))
        .collect();
    commit_without_joining(&st.kafka, &group, &offsets);

    let (brokers, g) = (st.kafka.clone(), group.clone());
    let theirs = std::thread::spawn(move || kafka_tool(&brokers, &g));
    let (ours, doc, code) = weir_lag(&st.kafka, &group);
    let theirs = theirs.join().expect("tool thread");
    assert_eq!(ours.len(), PARTITIONS as usize, "every partition, once");
    assert_eq!(
        ours, theirs,
        "weir vs Kafka's tool over {PARTITIONS} partitions"
    );
    assert_eq!(doc["total_lag"], expected_lag);
    assert_eq!(code, 5, "lag and no member: stopped");
    for p in doc["partitions"].as_array().expect("partitions") {
        if p["lag"].as_i64().is_some_and(|l| l > 0) {
            let s = p["lag_seconds"].as_f64().expect("lag in seconds");
            assert!((0.0..300.0).contains(&s), "lag in seconds {s} for {p}");
        }
    }
    let out = weir_output(
        &["lag", "describe", &group, "--json", "--no-lag-time"],
        [("WEIR_KAFKA_BROKERS", st.kafka.as_str())],
    );
    let quick: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(quick["total_lag"], expected_lag);
    assert_eq!(
        quick["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize)
    );
    delete_groups(&st.kafka, &[&group]);
}

/// `weir lag advise` on a group that takes 2 records for every 5 produced, on
/// one partition: one consumer at most, more partitions, a producer cap, a
/// growing backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_measures_rates_and_applies_the_playbook() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let st = stack();
    let topics = TestTopics::create(&st, 1).await;
    let topic = topics.health.clone();
    produce(&st.kafka, &topic, 0, 10).await;
    let group = unique("lag-advise");
    let member = GroupMember::join(&st.kafka, &group, "advise", &[&topic], 1);
    member.commit(&[(&topic, 0, 0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let driver = std::thread::spawn({
        let (brokers, topic, stop) = (st.kafka.clone(), topic.clone(), stop.clone());
        move || {
            use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
            let p: BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("producer");
            let mut committed = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    let _ = p.send(BaseRecord::<(), str>::to(&topic).partition(0).payload("x"));
                }
                let _ = p.flush(Duration::from_secs(5));
                committed += 20;
                member.commit(&[(&topic, 0, committed)]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let out = weir_output(
        &["lag", "advise", &group, "--window", "3s", "--json"],
        [("WEIR_KAFKA_BROKERS", &st.kafka)],
    );
    stop.store(true, Ordering::Relaxed);
    driver.join().expect("driver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: Value = serde_json::from_slice(&out.stdout).expect("json");
    let m = &a["measured"];
    let (prod, cons) = (
        m["produce_per_s"].as_f64().expect("produce"),
        m["consume_per_s"].as_f64().expect("consume"),
    );
    assert!(prod > 0.0 && cons > 0.0 && prod > 1.8 * cons, "{m}");
    assert_eq!(
        a["consumers"], 1,
        "never more consumers than partitions: {a}"
    );
    assert!(
        a["partitions_needed"].as_u64().is_some_and(|n| n >= 2),
        "{a}"
    );
    assert!(
        a["producer_cap_per_s"].as_f64().is_some_and(|c| c < prod),
        "{a}"
    );
    assert_eq!(a["shrinking"], false);
    let lines: Vec<&str> = a["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("partitions:") && l.contains("weir topics scale")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("backlog: growing")),
        "{lines:?}"
    );
    delete_groups(&st.kafka, &[&group]);
}

/// Kafka's `ConsumerGroupCommand --describe --members`: (consumer id, host,
/// client id, partition count) of each member.
fn kafka_members(brokers: &str, group: &str) -> BTreeMap<String, (String, String, usize)> {
    let out = Command::new(repo_root().join("deploy/local/kafka-class"))
        .args([
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            brokers,
            "--describe",
            "--members",
            "--group",
            group,
        ])
        .output()
        .expect("run Kafka's consumer-groups tool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "Kafka's tool failed: {text}");
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 5 && f[0] == group)
        .map(|f| {
            (
                f[1].to_string(),
                (
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].parse().expect("#partitions"),
                ),
            )
        })
        .collect()
}

/// The members as `weir lag describe --json` shows them on its partitions.
fn weir_members(doc: &Value) -> BTreeMap<String, (String, String, usize)> {
    let mut out: BTreeMap<String, (String, String, usize)> = BTreeMap::new();
    for p in doc["partitions"].as_array().expect("partitions") {
        if let Some(id) = p["member_id"].as_str() {
            let e = out.entry(id.to_string()).or_insert_with(|| {
                (
                    p["host"].as_str().unwrap_or("-").to_string(),
                    p["client_id"].as_str().unwrap_or("-").to_string(),
                    0,
                )
            });
            e.2 += 1;
        }
    }
    out
}

/// A Java console consumer (the real Java client) in `group` on `topic`,
/// committing every 200 ms.
fn java_consumer(brokers: &str, topic: &str, group: &str, protocol: &str) -> std::process::Child {
    Command::new(repo_root().join("deploy/local/kafka-class"))
        .args([
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--group",
            group,
            "--from-beginning",
        ])
        .args(["--command-property", &format!("group.protocol={protocol}")])
        .args([
            "--command-property",
            &format!("client.id={protocol}-member"),
        ])
        .args(["--command-property", "auto.commit.interval.ms=200"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the Java console consumer")
}

/// A group of the new protocol (KIP-848) and a classic group side by side,
/// both of Java consumers: `weir lag describe` equals Kafka's tool for both,
/// members included, and neither looks Dead or stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_both_protocols_match_kafkas_tool() {
    let st = stack();
    st.require_kafka();
    let topics = TestTopics::create(&st, 3).await;
    let (h, a) = (topics.health.clone(), topics.access.clone());
    for p in 0..3 {
        produce(&st.kafka, &h, p, 5 + p as usize).await;
        produce(&st.kafka, &a, p, 3 + p as usize).await;
    }
    let (new_group, classic_group) = (unique("kip848"), unique("classic"));
    let mut java = [
        java_consumer(&st.kafka, &h, &new_group, "consumer"),
        java_consumer(&st.kafka, &a, &classic_group, "classic"),
    ];
    // Both groups caught up (every partition committed, lag 0, owned).
    for g in [&new_group, &classic_group] {
        let start = std::time::Instant::now();
        loop {
            let rows = kafka_tool(&st.kafka, g);
            let settled = rows.len() == 3 && rows.values().all(|r| r.2 == Some(0) && r.3.is_some());
            if settled {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "group {g} never caught up: {rows:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    for (g, protocol) in [(&new_group, "consumer"), (&classic_group, "classic")] {
        let theirs = kafka_tool(&st.kafka, g);
        let (ours, doc, code) = weir_lag(&st.kafka, g);
        assert_eq!(ours, theirs, "{protocol} group: weir vs Kafka's tool");
        assert_eq!(
            weir_members(&doc),
            kafka_members(&st.kafka, g),
            "{protocol} members"
        );
        assert_eq!(doc["protocol"], protocol, "{doc}");
        assert_eq!(doc["state"], "Stable", "{doc}");
        assert_eq!(doc["members"], 1, "{doc}");
        assert_eq!(doc["status"], "ok", "{doc}");
        assert_eq!(code, 0);
    }
    // `weir lag list` sees both as they are.
    let out = Command::new(weir())
        .args(["lag", "list", "--json"])
        .env("WEIR_KAFKA_BROKERS", &st.kafka)
        .output()
        .expect("run weir lag list");
    let text = String::from_utf8_lossy(&out.stdout);
    let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let docs = list["groups"].as_array().expect("groups").clone();
    for (g, protocol) in [(&new_group, "consumer"), (&classic_group, "classic")] {
        let d = docs
            .iter()
            .find(|d| d["group"] == g.as_str())
            .unwrap_or_else(|| panic!("{g} not listed: {text}"));
        assert_eq!(
            (d["protocol"].as_str(), d["members"].as_u64()),
            (Some(protocol), Some(1)),
            "{d}"
        );
        assert_ne!(d["status"], "stopped", "{d}");
    }
    for c in &mut java {
        let _ = c.kill();
        let _ = c.wait();
    }
    delete_groups(&st.kafka, &[&new_group, &classic_group]);
}

/// Weir's own group on the new protocol (`consumer.group_protocol =
/// "consumer"`): two health members share the partitions, every report is
/// applied exactly once, and the lag tools read the group as Kafka's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirs_own_group_on_the_consumer_protocol() {
    use std::time::Duration;
    use weir_producers::{EventProducer, KafkaConfig};
    use weir_schemas::HealthEvent;
    use weir_testkit::{eventually, Proc, TestWorld};

    let world = TestWorld::create(4).await;
    let env = world.env_with(&[("WEIR_CONSUMER_GROUP_PROTOCOL", "consumer")]);
    let mut members = [
        Proc::spawn("member-a", weir(), &["consume", "health"], &env),
        Proc::spawn("member-b", weir(), &["consume", "health"], &env),
    ];
    let (nodes, per_node) = (8u64, 150u64);
    let p = EventProducer::new(
        &KafkaConfig {
            brokers: world.stack.kafka.clone(),
            ..KafkaConfig::default()
        },
        "test",
    )
    .expect("producer");
    let mut pending = Vec::new();
    for seq in 1..=per_node {
        for n in 0..nodes {
            let ev = HealthEvent::example(&format!("kip848-node-{n}"), seq, chrono::Utc::now());
            pending.push(p.enqueue(&world.topics.health, &ev).expect("queued"));
        }
    }
    for d in pending {
        d.await.expect("delivered");
    }
    let pool = world.db.pool().await;
    let total = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>("SELECT sum(reports)::bigint FROM servers")
                .fetch_one(&pool)
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
        }
    };
    let want = (nodes * per_node) as i64;
    eventually(Duration::from_secs(60), "every report applied", || async {
        (total().await == want).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(total().await, want, "each report exactly once");

    // Both members own partitions of a Stable `consumer` group, as Kafka's
    // tool says (members and owners; offsets move with the async commits,
    // so they are compared once the group has caught up).
    let (brokers, group) = (world.stack.kafka.clone(), world.group.clone());
    let doc = eventually(Duration::from_secs(30), "group caught up", || {
        let (brokers, group) = (brokers.clone(), group.clone());
        async move {
            let (ours, doc, _) = weir_lag(&brokers, &group);
            let theirs = kafka_tool(&brokers, &group);
            // A consumer-protocol group passes through states librdkafka
            // names "Unknown" (Assigning, Reconciling) before Stable.
            (doc["members"] == 2
                && doc["total_lag"] == 0
                && doc["state"] == "Stable"
                && ours == theirs)
                .then_some(doc)
        }
    })
    .await;
    assert_eq!(doc["protocol"], "consumer", "{doc}");
    assert_eq!(doc["state"], "Stable", "{doc}");
    assert_eq!(weir_members(&doc), kafka_members(&brokers, &group));
    for m in &mut members {
        let st = m.terminate(Duration::from_secs(30)).expect("member stops");
        assert!(st.success(), "{}:\n{}", m.name, m.output());
    }
}
