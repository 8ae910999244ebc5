//! The offset fence under a backlog: when another owner moves a partition's
//! stored offset while a member is pipelining batches, exactly one batch is
//! fenced. The batch collected while the fenced one was in flight read the
//! same stale offsets; it must be dropped and re-read, not fenced again.
//!
//! The foreign owner is simulated by moving the stored offset in
//! PostgreSQL, as a member that took the partition over would: it is
//! deterministic where a real rebalance is a matter of timing.

use std::time::Duration;

use weir_consumers::ConsumerConfig;
use weir_testkit::unique;

mod support;
use support::{access_records, produce_raw, wait_stored, wait_stored_at_least, Probe, Rig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_offset_move_fences_one_batch_not_two() {
    let rig = Rig::new(1).await;
    rig.migrate().await.probe_table("").await;
    const N: i64 = 20_000;
    produce_raw(&rig.topics.access, &access_records(N, |_| "n1".into())).await;

    let group = unique("fence");
    let cfg = ConsumerConfig {
        group: group.clone(),
        batch_max_records: 200,
        batch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    // A little work per batch, so that batches overlap as in production.
    let probe = Probe {
        delay: Duration::from_millis(20),
    };
    let member = rig.member(probe, &rig.topics.access, cfg);
    wait_stored_at_least(&rig.pool, &group, 1000, Duration::from_secs(60)).await;
    // Another owner applies 1 000 records past what this member stored.
    let moved = sqlx::query(
        "UPDATE consumer_offsets SET next_offset = next_offset + 1000 WHERE group_id = $1",
    )
    .bind(&group)
    .execute(&rig.pool)
    .await
    .expect("move");
    assert_eq!(moved.rows_affected(), 1);
    wait_stored(&rig.pool, &group, N, Duration::from_secs(90)).await;
    let report = member.stop().await;
    assert_eq!(report.fenced, 1, "one fence per foreign move: {report:?}");
    assert!(
        report.skipped > 0,
        "the moved-over records were skipped after the reload"
    );
}

/// The brief's check: a backlog and one rebalance (a second member joins
/// while the first is pipelining). Partitions move with batches in flight;
/// the fenced counter must not repeat, and every record is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_under_a_backlog_fences_at_most_once_and_applies_each_record_once() {
    let rig = Rig::new(6).await;
    rig.migrate().await.probe_table("").await;
    const N: i64 = 30_000;
    produce_raw(&rig.topics.access, &access_records(N, |i| format!("n{i}"))).await;

    let group = unique("rebalance");
    let member = || {
        let cfg = ConsumerConfig {
            group: group.clone(),
            batch_max_records: 300,
            batch_max_wait: Duration::from_millis(50),
            session_timeout: Duration::from_secs(6),
            ..ConsumerConfig::default()
        };
        // Slow enough that the backlog outlasts the second member's join.
        let probe = Probe {
            delay: Duration::from_millis(80),
        };
        rig.member(probe, &rig.topics.access, cfg)
    };
    let first = member();
    wait_stored_at_least(&rig.pool, &group, 3000, Duration::from_secs(60)).await;
    let second = member();
    wait_stored(&rig.pool, &group, N, Duration::from_secs(120)).await;
    let (a, b) = (first.stop().await, second.stop().await);
    assert_eq!(rig.probe_rows().await, (N, N), "each record applied once");
    eprintln!(
        "rebalance under backlog: fenced {} + {}, applied {} + {}, batches {} + {}",
        a.fenced, b.fenced, a.applied, b.applied, a.batches, b.batches
    );
    assert!(b.applied > 0, "the second member took partitions over");
    assert!(
        a.fenced + b.fenced <= 1,
        "the fence did not repeat: {a:?} {b:?}"
    );
}
