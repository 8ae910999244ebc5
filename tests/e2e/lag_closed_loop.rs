//! The closed loop, end to end on the real Kafka and Redis: producers offer
//! twice what one consumer takes; `weir lag export` publishes the group's lag
//! to Redis; the producer's limiter follows it.
//!
//! Without the limiter the lag grows without bound. With it, the lag settles
//! under the threshold band (≤ 1.5 × threshold) within 15 s, no health event
//! is dropped, and the shed access events are counted.
//!
//! Set `LAG_CLOSED_LOOP_CSV=path` to write both curves (docs/lag/). (Not a
//! `WEIR_` variable: the exporter it starts would refuse an unknown one.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_core::{RedisConfig, RedisHandle};
use weir_lag::LagReader;
use weir_producers::follow_signal;
use weir_producers::{EventProducer, KafkaConfig, LagLimiter, LimiterConfig, Offer};
use weir_schemas::{AccessEvent, HealthEvent};
use weir_testkit::{free_addr, stack, Proc, TestWorld};

use crate::weir;

const OFFERED_PER_S: u64 = 400;
const CONSUMED_PER_S: u64 = 200;
const THRESHOLD: u64 = 200;

/// One row of a curve.
struct Row {
    t: f64,
    lag: i64,
    fraction: f64,
    admitted: u64,
    shed: u64,
}

/// A consumer that takes `CONSUMED_PER_S` records a second and commits.
fn slow_consumer(
    brokers: &str,
    group: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let topic = topic.to_string();
    std::thread::spawn(move || {
        let per_tick = (CONSUMED_PER_S / 10) as usize;
        while !stop.load(Ordering::Relaxed) {
            let tick = Instant::now();
            let mut next = None;
            for _ in 0..per_tick {
                match c.poll(Duration::from_millis(20)) {
                    Some(Ok(m)) => next = Some(m.offset() + 1),
                    _ => break,
                }
            }
            if let Some(o) = next {
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition_offset(&topic, 0, Offset::Offset(o));
                let _ = c.commit(&tpl, CommitMode::Async);
            }
            std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
        }
    })
}

/// Runs one phase for `secs`; returns the curve and (health offered,
/// health delivered).
async fn phase(limited: bool, secs: u64) -> (Vec<Row>, u64, u64) {
    let world = TestWorld::create(1).await;
    let (st, topics, redis) = (&world.stack, &world.topics, &world.redis);
    let group = world.group.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = slow_consumer(&st.kafka, &group, &topics.access, stop.clone());

    let kafka = KafkaConfig {
        brokers: st.kafka.clone(),
        ..KafkaConfig::default()
    };
    let limiter = Arc::new(LagLimiter::new(LimiterConfig {
        enabled: limited,
        group: group.clone(),
        threshold: THRESHOLD,
        ..LimiterConfig::default()
    }));
    let mut producer = EventProducer::new(&kafka, "closed-loop").expect("producer");
    let token = CancellationToken::new();
    let mut exporter = None;
    if limited {
        producer = producer.with_limiter(limiter.clone());
        exporter = Some(Proc::spawn(
            "lag-export",
            weir(),
            &["lag", "export", "--group", &group],
            &world.env_with(&[
                ("WEIR_METRICS_ADDR", &free_addr().to_string()),
                ("WEIR_LAG_INTERVAL", "250ms"),
                ("WEIR_LAG_WINDOW", "5s"),
            ]),
        ));
        let rcfg = RedisConfig {
            url: redis.url.clone(),
            key_prefix: redis.prefix.clone(),
            ..RedisConfig::default()
        };
        tokio::spawn(follow_signal(
            Arc::new(RedisHandle::new(&rcfg).expect("redis")),
            rcfg.keys(),
            group.clone(),
            limiter.clone(),
            Duration::from_millis(250),
            token.clone(),
        ));
    }

    // Producer: 400 access events/s in ticks of 10 ms, a health event every
    // 200 ms whose delivery is checked.
    let (admitted, shed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let health_ok = Arc::new(AtomicU64::new(0));
    let producing = tokio::spawn({
        let (producer, token) = (producer.clone(), token.clone());
        let (admitted, shed, health_ok) = (admitted.clone(), shed.clone(), health_ok.clone());
        let (access, health) = (topics.access.clone(), topics.health.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut seq, mut health_sent, mut pending) = (0u64, 0u64, Vec::new());
            let per_tick = OFFERED_PER_S / 100;
            while !token.is_cancelled() {
                tick.tick().await;
                for _ in 0..per_tick {
                    seq += 1;
                    match producer.offer(&access, &AccessEvent::example("n1", seq, Utc::now())) {
                        Ok(Offer::Queued(_)) => admitted.fetch_add(1, Ordering::Relaxed),
                        Ok(Offer::Shed) => shed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => panic!("produce: {e}"),
                    };
                }
                if seq % (OFFERED_PER_S / 5) == 0 {
                    health_sent += 1;
                    match producer.offer(
                        &health,
                        &HealthEvent::example("n1", health_sent, Utc::now()),
                    ) {
                        Ok(Offer::Queued(d)) => pending.push(d),
                        Ok(Offer::Shed) => panic!("a health event was shed"),
                        Err(e) => panic!("produce health: {e}"),
                    }
                }
            }
            for d in pending {
                if d.await.is_ok() {
                    health_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            health_sent
        }
    });

    // Sample the true lag from Kafka every 500 ms.
    let reader = Arc::new(LagReader::new(&kafka, Duration::from_secs(10)).expect("reader"));
    let start = Instant::now();
    let mut rows = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (r, g) = (reader.clone(), group.clone());
        let lag = tokio::task::spawn_blocking(move || r.snapshot(&g))
            .await
            .expect("reader thread")
            .map(|s| {
                s.partitions
                    .iter()
                    .map(|p| p.end - p.committed.unwrap_or(0))
                    .sum::<i64>()
            })
            .unwrap_or(0);
        rows.push(Row {
            t: start.elapsed().as_secs_f64(),
            lag,
            fraction: if limited { limiter.fraction() } else { 1.0 },
            admitted: admitted.load(Ordering::Relaxed),
            shed: shed.load(Ordering::Relaxed),
        });
    }
    token.cancel();
    let health_sent = producing.await.expect("producer task");
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || consumer.join()).await;
    if let Some(mut p) = exporter {
        assert!(
            p.wait(Duration::ZERO).is_none(),
            "the exporter died: {}",
            p.output()
        );
        p.terminate(Duration::from_secs(10));
    }
    (rows, health_sent, health_ok.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_settles_lag_that_otherwise_grows_without_bound() {
    weir_testkit::init_logs();
    stack().require_kafka().require_redis();
    let (off, _, _) = phase(false, 10).await;
    let (on, health_sent, health_ok) = phase(true, 25).await;

    if let Ok(path) = std::env::var("LAG_CLOSED_LOOP_CSV") {
        let mut csv = String::from("limiter,t_s,lag,fraction,admitted,shed\n");
        for (name, rows) in [("off", &off), ("on", &on)] {
            for r in rows {
                csv.push_str(&format!(
                    "{name},{:.2},{},{:.3},{},{}\n",
                    r.t, r.lag, r.fraction, r.admitted, r.shed
                ));
            }
        }
        std::fs::write(&path, csv).expect("write CSV");
    }

    // Off: the lag keeps growing (≈ 200/s).
    let lag_at = |rows: &[Row], t: f64| rows.iter().find(|r| r.t >= t).map_or(0, |r| r.lag);
    let (mid, end) = (lag_at(&off, 5.0), off.last().map_or(0, |r| r.lag));
    assert!(
        end > mid + 500 && end > 1_000,
        "without the limiter lag went {mid} → {end}"
    );

    // On: under 1.5 × threshold from 15 s on.
    let late: Vec<i64> = on.iter().filter(|r| r.t >= 15.0).map(|r| r.lag).collect();
    let worst = late.iter().copied().max().unwrap_or(i64::MAX);
    assert!(
        worst <= (THRESHOLD * 3 / 2) as i64,
        "with the limiter, lag after 15 s reached {worst}: {late:?}"
    );
    let last = on.last().expect("rows");
    assert!(last.shed > 0, "nothing was shed");
    assert_eq!(health_ok, health_sent, "health events lost");
    assert!(health_sent > 0);
}
