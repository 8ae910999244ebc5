//! Poison records against the real stack: a record a store refuses for what
//! it is must not wedge its partition. It is isolated (the batch is split
//! until the offender stands alone), dead-lettered with the store's reason,
//! and everything else is applied exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use weir_consumers::ConsumerConfig;
use weir_schemas::topics::dlq_headers;
use weir_schemas::AccessEvent;
use weir_testkit::unique;

mod support;
use support::{header, produce_raw, wait_stored, Probe, Rig};

/// Settings for `group` with quick batches and retries.
fn quick(group: &str, batch_wait_ms: u64) -> ConsumerConfig {
    ConsumerConfig {
        group: group.to_string(),
        batch_max_wait: Duration::from_millis(batch_wait_ms),
        retry_backoff_max: Duration::from_millis(200),
        ..ConsumerConfig::default()
    }
}

/// Every dead letter as (reason, store, sqlstate, key), sorted.
fn dead_letters(rig: &Rig, n: usize) -> Vec<(String, String, String, String)> {
    let mut seen: Vec<_> = rig
        .dead_letters(n)
        .iter()
        .map(|d| {
            (
                header(d, dlq_headers::REASON),
                header(d, dlq_headers::STORE),
                header(d, dlq_headers::SQLSTATE),
                d.key.clone(),
            )
        })
        .collect();
    seen.sort();
    seen
}

fn record(ev: &AccessEvent) -> (String, Vec<u8>) {
    (ev.node_id.clone(), serde_json::to_vec(ev).expect("json"))
}

fn event(node: &str, seq: u64) -> AccessEvent {
    AccessEvent::example(node, seq, Utc::now())
}

/// A probe table whose CHECK refuses nodes named `poison…` (SQLSTATE 23514,
/// class 23: the record's fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_store_refuses_is_dead_lettered_and_the_rest_applied_once() {
    let rig = Rig::new(2).await;
    rig.migrate()
        .await
        .probe_table("CHECK (node NOT LIKE 'poison%')")
        .await;

    // 400 good records with 3 poison ones among them, in one backlog.
    let records: Vec<_> = (1..=403u64)
        .map(|seq| match seq {
            17 | 200 | 390 => record(&event(&format!("poison-{seq}"), seq)),
            _ => record(&event(&format!("node-{}", seq % 4), seq)),
        })
        .collect();
    produce_raw(&rig.topics.access, &records).await;

    let group = unique("probe");
    let probe = Probe {
        delay: Duration::ZERO,
    };
    let member = rig.member(probe, &rig.topics.access, quick(&group, 200));
    wait_stored(&rig.pool, &group, 403, Duration::from_secs(60)).await;
    let poison: i64 = sqlx::query_scalar("SELECT count(*) FROM probe WHERE node LIKE 'poison%'")
        .fetch_one(&rig.pool)
        .await
        .expect("probe counts");
    assert_eq!(
        (rig.probe_rows().await, poison),
        ((400, 400), 0),
        "the good records, each once"
    );

    let dead = dead_letters(&rig, 3);
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
    let rig = Rig::new(1).await;
    rig.migrate().await;

    let mut seq = 0;
    let mut next = |node: &str, spoil: &dyn Fn(&mut AccessEvent)| {
        seq += 1;
        let mut ev = event(node, seq);
        spoil(&mut ev);
        record(&ev)
    };
    let fine = |_: &mut AccessEvent| {};
    let mut records = vec![next("edge-a", &|e| e.object_key = "k".repeat(3100))];
    for _ in 0..3 {
        records.push(next("edge-a", &fine));
    }
    records.push(next("edge-a", &|e| {
        e.object_key = "videos/a\u{0}b.mp4".into()
    }));
    records.push(next("edge-a", &|e| e.method = "GET\u{1b}[2J".into()));
    for n in 0..2 {
        records.push(next("edge-a", &|e| e.bytes_sent = (1u64 << 63) - 1 - n));
    }
    records.push(next("edge-a", &|e| e.node_id = "edge\u{0}a".into()));
    for _ in 0..3 {
        records.push(next("edge-b", &fine));
    }
    produce_raw(&rig.topics.access, &records).await;

    let group = unique("access");
    let member = rig.member(rig.access(), &rig.topics.access, quick(&group, 100));
    wait_stored(
        &rig.pool,
        &group,
        records.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT node_id, sum(requests)::bigint FROM access_minute GROUP BY node_id")
            .fetch_all(&rig.pool)
            .await
            .expect("rollups");
    let counted: BTreeMap<String, i64> = rows.into_iter().collect();
    assert_eq!(
        counted,
        BTreeMap::from([("edge-a".to_string(), 3), ("edge-b".to_string(), 3)]),
        "good events counted exactly once"
    );
    let dead = dead_letters(&rig, 6);
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
    let rig = Rig::new(1).await;
    rig.migrate().await;
    let mut conn = rig.redis.conn().await;
    let bad_key = rig.redis_config().keys().node_rps("bad-node");
    let _: () = redis::AsyncCommands::set(&mut conn, bad_key, "not a hash")
        .await
        .expect("set");

    let records: Vec<_> = (1..=8u64)
        .map(|seq| {
            record(&event(
                if seq % 4 == 0 { "bad-node" } else { "edge-a" },
                seq,
            ))
        })
        .collect();
    produce_raw(&rig.topics.access, &records).await;

    let group = unique("access");
    let member = rig.member(rig.access(), &rig.topics.access, quick(&group, 300));
    wait_stored(&rig.pool, &group, 8, Duration::from_secs(60)).await;
    let dead = dead_letters(&rig, 2);
    let want = ("store_rejected", "redis", "", "bad-node");
    for d in &dead {
        assert_eq!(
            (d.0.as_str(), d.1.as_str(), d.2.as_str(), d.3.as_str()),
            want
        );
    }
    let requests: i64 = sqlx::query_scalar("SELECT sum(requests)::bigint FROM access_minute")
        .fetch_one(&rig.pool)
        .await
        .expect("rollups");
    assert_eq!(
        requests, 8,
        "every rollup committed once, before publishing"
    );
    let report = member.stop().await;
    assert_eq!(report.dead_lettered, 2);
}
