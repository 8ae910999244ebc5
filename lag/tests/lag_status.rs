//! Each lag status comes from its scripted scenario against the real broker,
//! and nothing else: an idle topic stays ok, a group falling behind warns, a
//! stuck member stalls, a group without members stops, a reset rewinds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir_core::KafkaConfig;
use weir_lag::{LagMonitor, LagReader, LagStatus};
use weir_testkit::groups::{commit_without_joining, delete_groups, produce, GroupMember};
use weir_testkit::{stack, unique, TestTopics};

const WINDOW: Duration = Duration::from_secs(3);
const RUN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_comes_from_its_scenario_only() {
    weir_testkit::init_logs();
    let st = stack();
    st.require_kafka();
    let topics = TestTopics::create(&st, 1).await;
    let (quiet, busy) = (topics.health.clone(), topics.access.clone());
    produce(&st.kafka, &quiet, 0, 10).await;
    produce(&st.kafka, &busy, 0, 10).await;

    let g = |s: &str| unique(&format!("lag-{s}"));
    let (idle, growing, stalled, stopped, rewinding, wedged) = (
        g("idle"),
        g("grow"),
        g("stall"),
        g("stop"),
        g("rewind"),
        g("wedge"),
    );
    let fresh = topics.dlq.clone();
    let expected: BTreeMap<&str, LagStatus> = BTreeMap::from([
        (idle.as_str(), LagStatus::Ok),
        (growing.as_str(), LagStatus::Warning),
        (stalled.as_str(), LagStatus::Stalled),
        (stopped.as_str(), LagStatus::Stopped),
        (rewinding.as_str(), LagStatus::Rewinding),
        (wedged.as_str(), LagStatus::Stalled),
    ]);

    // Idle: caught up on a topic nobody writes to.
    let m_idle = GroupMember::join(&st.kafka, &idle, "idle", &[&quiet], 1);
    m_idle.commit(&[(&quiet, 0, 10)]);
    // Stalled: a member that stopped committing with work left.
    let m_stall = GroupMember::join(&st.kafka, &stalled, "stall", &[&quiet], 1);
    m_stall.commit(&[(&quiet, 0, 4)]);
    // Stopped: lag and no member at all.
    commit_without_joining(&st.kafka, &stopped, &[(&quiet, 0, 4)]);
    // Rewinding: caught up, then reset backwards late in the run (a whole
    // window after the start, so it is judged on a full window).
    commit_without_joining(&st.kafka, &rewinding, &[(&quiet, 0, 10)]);
    // Growing: 100 records/s produced, 30/s committed.
    let m_grow = GroupMember::join(&st.kafka, &growing, "grow", &[&busy], 1);
    m_grow.commit(&[(&busy, 0, 0)]);
    // Wedged: a member stuck on its first batch, which never commits the
    // records that arrive while it is watched (issue 9: such a group looked
    // `ok` with total lag 0).
    let m_wedge = GroupMember::join(&st.kafka, &wedged, "wedge", &[&fresh], 1);

    let stop = Arc::new(AtomicBool::new(false));
    let driver = std::thread::spawn({
        let (brokers, busy, quiet, rewinding, fresh, stop) = (
            st.kafka.clone(),
            busy.clone(),
            quiet.clone(),
            rewinding.clone(),
            fresh.clone(),
            stop.clone(),
        );
        move || {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("producer");
            let start = Instant::now();
            let mut committed = 0i64;
            let mut rewound = false;
            let mut wedge_fed = false;
            while !stop.load(Ordering::Relaxed) {
                if !wedge_fed && start.elapsed() > Duration::from_millis(500) {
                    for _ in 0..4 {
                        let _ = p.send(BaseRecord::<(), str>::to(&fresh).partition(0).payload("x"));
                    }
                    wedge_fed = true;
                }
                for _ in 0..10 {
                    let _ = p.send(BaseRecord::<(), str>::to(&busy).partition(0).payload("x"));
                }
                let _ = p.flush(Duration::from_secs(5));
                committed += 3;
                m_grow.commit(&[(&busy, 0, committed)]);
                if !rewound && start.elapsed() > Duration::from_millis(3_500) {
                    commit_without_joining(&brokers, &rewinding, &[(&quiet, 0, 2)]);
                    rewound = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            m_grow.leave();
        }
    });

    let reader = LagReader::new(
        &KafkaConfig {
            brokers: st.kafka.clone(),
            ..KafkaConfig::default()
        },
        Duration::from_secs(10),
    )
    .expect("reader");
    let names: Vec<String> = expected.keys().map(|s| s.to_string()).collect();
    let (seen, last) = tokio::task::spawn_blocking(move || {
        let mut monitor = LagMonitor::new(WINDOW);
        let mut seen: BTreeMap<String, BTreeSet<LagStatus>> = BTreeMap::new();
        let mut last: BTreeMap<String, LagStatus> = BTreeMap::new();
        let start = Instant::now();
        while start.elapsed() < RUN {
            for g in &names {
                let snap = reader.snapshot(g).expect("snapshot");
                let r = monitor.observe(&snap);
                seen.entry(g.clone()).or_default().insert(r.status);
                last.insert(g.clone(), r.status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (seen, last)
    })
    .await
    .expect("monitor");
    stop.store(true, Ordering::Relaxed);
    driver.join().expect("driver");
    drop((m_idle, m_stall, m_wedge));

    for (g, want) in &expected {
        assert_eq!(last[*g], *want, "final status of {g}: seen {:?}", seen[*g]);
        let extra: Vec<_> = seen[*g]
            .iter()
            .filter(|s| **s != LagStatus::Ok && *s != want)
            .collect();
        assert!(extra.is_empty(), "{g} ({want}) was also {extra:?}");
    }
    delete_groups(&st.kafka, &expected.keys().copied().collect::<Vec<_>>());
}
