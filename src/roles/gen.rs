//! `weir gen access`: synthetic access events with known totals.
//!
//! Deterministic for a seed (a small SplitMix64 generator, so the same
//! command always produces the same events), with a skewed (Zipf-like)
//! object popularity, realistic object sizes, statuses and cache outcomes.
//! It prints the totals it produced — overall and per minute — so anyone can
//! check the rollups against them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_consumers::access::minute_of;
use weir_producers::{DeliveryHook, EventProducer, ProduceError};
use weir_schemas::{AccessEvent, CacheOutcome, Event};

use crate::cli::{GenAccessArgs, GenReplayArgs};
use crate::config::{Config, ConfigError};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// Events to produce.
    pub count: u64,
    /// Distinct edge nodes.
    pub nodes: u32,
    /// Distinct objects.
    pub objects: u32,
    /// Seed of the generator.
    pub seed: u64,
    /// Events per second (None: as fast as Kafka takes them).
    pub rate: Option<u64>,
    /// Time of the first event.
    pub start: DateTime<Utc>,
    /// Events are spread evenly over this span of event time.
    pub span: Duration,
    /// Every Nth record is a poison record (not JSON) instead of an event.
    pub poison_every: Option<u64>,
}

/// Per-minute totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MinuteTotals {
    /// Requests (events) in the minute.
    pub requests: u64,
    /// Bytes sent in the minute.
    pub bytes: u64,
}

/// What was produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenTotals {
    /// Topic written.
    pub topic: String,
    /// Valid events produced (and acknowledged).
    pub events: u64,
    /// Requests they represent (one per event).
    pub requests: u64,
    /// Sum of `bytes_sent`.
    pub bytes: u64,
    /// Poison records produced besides the events.
    pub poison: u64,
    /// Records Kafka did not acknowledge (must be 0).
    pub failed: u64,
    /// Totals per minute (RFC 3339 start of minute).
    pub per_minute: BTreeMap<String, MinuteTotals>,
    /// Wall time.
    pub elapsed_secs: f64,
    /// Records per second produced.
    pub rate_per_sec: f64,
}

/// SplitMix64: tiny, fast, and good enough for synthetic traffic.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// Object popularity: P(object i) ∝ 1 / (i + 1)^1.1, as CDN traffic is.
pub(crate) struct Popularity {
    cdf: Vec<f64>,
}

impl Popularity {
    pub(crate) fn new(objects: u32) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..objects.max(1))
            .map(|i| {
                acc += 1.0 / f64::from(i + 1).powf(1.1);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Popularity { cdf }
    }

    pub(crate) fn pick(&self, u: f64) -> usize {
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// Size of an object: log-uniform between 1 KiB and 256 MiB, fixed per object.
fn object_size(seed: u64, object: usize) -> u64 {
    let mut r = Rng(seed ^ (object as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let exp = 10.0 + r.unit() * 18.0;
    2f64.powf(exp) as u64
}

/// The `i`th event of a spec; with the generator in the same state, the
/// same event (so a seed reproduces a run).
fn event_at(spec: &GenSpec, pop: &Popularity, i: u64, rng: &mut Rng) -> AccessEvent {
    let span_ms = spec.span.as_millis().max(1) as f64;
    let offset_ms = (span_ms * i as f64 / spec.count.max(1) as f64) as i64;
    let ts = spec.start + TimeDelta::milliseconds(offset_ms);
    let object = pop.pick(rng.unit());
    let size = object_size(spec.seed, object);
    let node = rng.range(0, u64::from(spec.nodes.max(1)));
    let (cache, origin_us) = match rng.range(0, 100) {
        0..=79 => (CacheOutcome::Hit, 0),
        80..=91 => (CacheOutcome::Miss, rng.range(20_000, 200_000)),
        92..=95 => (CacheOutcome::Stream, rng.range(20_000, 200_000)),
        96..=97 => (CacheOutcome::Coalesced, rng.range(20_000, 200_000)),
        98 => (CacheOutcome::Stale, 0),
        _ => (CacheOutcome::Revalidated, rng.range(5_000, 50_000)),
    };
    let roll = rng.range(0, 100);
    let (status, range, bytes_sent, object_size) = match roll {
        0..=69 => (200, None, size, Some(size)),
        70..=89 => {
            let start = rng.range(0, size);
            let len = (size - start).min(1 << 20);
            (
                206,
                Some(format!("bytes={start}-{}", start + len - 1)),
                len,
                Some(size),
            )
        }
        90..=94 => (304, None, 0, Some(size)),
        95..=98 => (404, None, 0, None),
        _ => (503, None, 0, Some(size)),
    };
    let total_us = origin_us + rng.range(200, 2_000) + bytes_sent / 1_000;
    AccessEvent {
        schema_version: AccessEvent::SCHEMA_VERSION,
        ts,
        node_id: format!("edge-{node:03}"),
        source_id: format!("gen-{}", spec.seed),
        seq: i + 1,
        request_id: format!("{:016x}", rng.next()),
        method: if rng.range(0, 20) == 0 {
            "HEAD".into()
        } else {
            "GET".into()
        },
        object_key: format!("videos/object-{object:05}.mp4"),
        range,
        status,
        bytes_sent,
        object_size,
        cache,
        origin_latency_us: origin_us,
        total_latency_us: total_us,
        client_addr: format!("198.51.100.{}", rng.range(1, 255)),
    }
}

/// What Kafka acknowledged, tallied by the delivery reports themselves (on
/// the producer's polling thread): no future or channel per record.
#[derive(Default)]
struct Tally {
    acked: std::sync::Mutex<Acked>,
    /// Delivery reports received (acknowledged or not).
    reports: AtomicU64,
}

#[derive(Default)]
struct Acked {
    /// Per minute, keyed by the minute's Unix time.
    per_minute: BTreeMap<i64, MinuteTotals>,
    events: u64,
    bytes: u64,
    poison: u64,
    failed: u64,
}

impl Tally {
    /// The delivery report of one record: `meta` is (minute, bytes) for an
    /// event, None for a poison record.
    fn report(&self, ok: bool, meta: Option<(i64, u64)>) {
        {
            let mut a = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            match (ok, meta) {
                (true, Some((minute, b))) => {
                    a.events += 1;
                    a.bytes += b;
                    let m = a.per_minute.entry(minute).or_default();
                    m.requests += 1;
                    m.bytes += b;
                }
                (true, None) => a.poison += 1,
                (false, _) => a.failed += 1,
            }
        }
        self.reports.fetch_add(1, Ordering::Release);
    }
}

/// Produces the events and returns the totals Kafka acknowledged.
pub async fn run(
    spec: GenSpec,
    topic: &str,
    producer: Arc<EventProducer>,
    shutdown: CancellationToken,
) -> anyhow::Result<GenTotals> {
    let pop = Popularity::new(spec.objects);
    let mut rng = Rng(spec.seed);
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let per_tick = spec.rate.map(|r| (r / 100).max(1));
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0u64;
    'outer: while i < spec.count {
        if let Some(n) = per_tick {
            ticker.tick().await;
            if shutdown.is_cancelled() {
                break;
            }
            for _ in 0..n {
                if i >= spec.count {
                    break 'outer;
                }
                produce_one(&spec, &pop, &mut rng, &mut i, topic, &producer, &tally).await?;
            }
        } else {
            if shutdown.is_cancelled() {
                break;
            }
            produce_one(&spec, &pop, &mut rng, &mut i, topic, &producer, &tally).await?;
        }
    }
    // Every queued record gets a report (delivered, failed, or purged when
    // the producer goes): wait for them all, within the flush timeout.
    let p = producer.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.reports.load(Ordering::Acquire) < i && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let missing = i.saturating_sub(tally.reports.load(Ordering::Acquire));
    let a = std::mem::take(&mut *tally.acked.lock().unwrap_or_else(|e| e.into_inner()));
    let elapsed = started.elapsed().as_secs_f64();
    Ok(GenTotals {
        topic: topic.to_string(),
        per_minute: a
            .per_minute
            .into_iter()
            .map(|(m, t)| {
                let at = DateTime::from_timestamp(m, 0).unwrap_or_default();
                (at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), t)
            })
            .collect(),
        events: a.events,
        requests: a.events,
        bytes: a.bytes,
        poison: a.poison,
        failed: a.failed + missing,
        elapsed_secs: elapsed,
        rate_per_sec: (a.events + a.poison) as f64 / elapsed.max(1e-9),
    })
}

/// Queues record `*i` (an event or a poison record), waiting while the
/// producer queue is full: the generator never drops what it counts.
async fn produce_one(
    spec: &GenSpec,
    pop: &Popularity,
    rng: &mut Rng,
    i: &mut u64,
    topic: &str,
    producer: &EventProducer,
    tally: &Arc<Tally>,
) -> anyhow::Result<()> {
    let poison = spec
        .poison_every
        .is_some_and(|n| n > 0 && (*i + 1) % n == 0);
    let (payload, key, meta) = if poison {
        (
            format!("poison record {i}: not JSON").into_bytes(),
            format!("poison-{i}"),
            None,
        )
    } else {
        let ev = event_at(spec, pop, *i, rng);
        let bytes = weir_schemas::encode(&ev)
            .map_err(|e| anyhow::anyhow!("generated an invalid event: {e}"))?;
        let minute = minute_of(ev.ts).timestamp();
        (bytes, ev.node_id, Some((minute, ev.bytes_sent)))
    };
    loop {
        let t = tally.clone();
        let hook: DeliveryHook = Box::new(move |r| t.report(r.is_ok(), meta));
        match producer.enqueue_raw_with(topic, Some(key.as_bytes()), &payload, "access", hook) {
            Ok(()) => {
                *i += 1;
                return Ok(());
            }
            Err(ProduceError::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => return Err(e).context("producing a generated record"),
        }
    }
}

/// The records `run` would produce, as `key<TAB>value` lines (encoded JSON
/// never holds a raw tab or newline), with their totals.
fn write_records(spec: &GenSpec, path: &std::path::Path) -> anyhow::Result<GenTotals> {
    use std::io::Write;
    let started = Instant::now();
    let pop = Popularity::new(spec.objects);
    let mut rng = Rng(spec.seed);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut totals = GenTotals {
        topic: format!("file:{}", path.display()),
        ..GenTotals::default()
    };
    for i in 0..spec.count {
        if spec.poison_every.is_some_and(|n| (i + 1) % n == 0) {
            writeln!(out, "poison-{i}\tpoison record {i}: not JSON")?;
            totals.poison += 1;
            continue;
        }
        let ev = event_at(spec, &pop, i, &mut rng);
        let bytes = weir_schemas::encode(&ev)
            .map_err(|e| anyhow::anyhow!("generated an invalid event: {e}"))?;
        anyhow::ensure!(
            !bytes.contains(&b'\n') && !bytes.contains(&b'\t'),
            "an encoded event holds a raw tab or newline"
        );
        out.write_all(ev.node_id.as_bytes())?;
        out.write_all(b"\t")?;
        out.write_all(&bytes)?;
        out.write_all(b"\n")?;
        let minute = minute_of(ev.ts).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let m = totals.per_minute.entry(minute).or_default();
        m.requests += 1;
        m.bytes += ev.bytes_sent;
        totals.events += 1;
        totals.bytes += ev.bytes_sent;
    }
    out.flush()?;
    totals.requests = totals.events;
    totals.elapsed_secs = started.elapsed().as_secs_f64();
    totals.rate_per_sec = (totals.events + totals.poison) as f64 / totals.elapsed_secs.max(1e-9);
    Ok(totals)
}

/// What `weir gen replay` sent, as JSON on stdout.
#[derive(Debug, Default, Serialize)]
pub struct ReplayTotals {
    /// Topic the records went to.
    pub topic: String,
    /// Records read from the file and queued.
    pub records: u64,
    /// Records Kafka acknowledged.
    pub acknowledged: u64,
    /// Records Kafka refused or that were not acknowledged in time.
    pub failed: u64,
    /// Bytes of keys and values sent.
    pub bytes: u64,
    /// Seconds from the first record read to the last report.
    pub elapsed_secs: f64,
    /// Records acknowledged per second.
    pub rate_per_sec: f64,
}

/// Delivery reports of a replay: counters only, bumped on the producer's
/// polling thread.
#[derive(Default)]
struct ReplayTally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// `weir gen replay FILE`: the file's records, byte for byte, through the
/// producer the agent and the edge use.
pub async fn replay_command(
    cfg: &Config,
    a: GenReplayArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let producer = Arc::new(weir_producers::EventProducer::new(&cfg.kafka, "gen")?);
    super::require_topic(&producer, &cfg.topics.access, "topics.access").await?;
    let topic = cfg.topics.access.as_str();
    let tally = Arc::new(ReplayTally::default());
    let mut totals = ReplayTotals {
        topic: topic.to_string(),
        ..ReplayTotals::default()
    };
    let started = Instant::now();
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", a.file.display()))?;
        if n == 0 || shutdown.is_cancelled() {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.iter().position(|&b| b == b'\t') {
            Some(t) => (Some(&line[..t]), &line[t + 1..]),
            None => (None, &line[..]),
        };
        loop {
            let t = tally.clone();
            let hook: DeliveryHook = Box::new(move |r| {
                let c = if r.is_ok() { &t.ok } else { &t.failed };
                c.fetch_add(1, Ordering::Relaxed);
            });
            match producer.enqueue_raw_with(topic, key, value, "access", hook) {
                Ok(()) => break,
                Err(ProduceError::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(e).context("producing a replayed record"),
            }
        }
        totals.records += 1;
        totals.bytes += (key.map_or(0, <[u8]>::len) + value.len()) as u64;
    }
    let p = producer.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30))).await;
    let reported = || tally.ok.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reported() < totals.records && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    totals.acknowledged = tally.ok.load(Ordering::Relaxed);
    totals.failed = totals.records - totals.acknowledged;
    totals.elapsed_secs = started.elapsed().as_secs_f64();
    totals.rate_per_sec = totals.acknowledged as f64 / totals.elapsed_secs.max(1e-9);
    println!("{}", serde_json::to_string(&totals)?);
    if totals.failed > 0 {
        anyhow::bail!("{} records were not acknowledged by Kafka", totals.failed);
    }
    Ok(())
}

/// `weir gen access`: produces synthetic access events and prints totals.
pub async fn command(
    cfg: &Config,
    a: GenAccessArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let start = match &a.start {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| ConfigError {
                key: "--start".into(),
                message: format!("{t:?} is not an RFC 3339 time: {e}"),
            })?,
        None => weir_consumers::access::minute_of(chrono::Utc::now()),
    };
    let spec = GenSpec {
        count: a.count,
        nodes: a.nodes,
        objects: a.objects,
        seed: a.seed,
        rate: a.rate,
        start,
        span: a.span,
        poison_every: a.poison_every,
    };
    if let Some(path) = &a.write_to {
        let totals = write_records(&spec, path)
            .with_context(|| format!("writing the records to {}", path.display()))?;
        println!("{}", serde_json::to_string(&totals)?);
        return Ok(());
    }
    let producer = std::sync::Arc::new(weir_producers::EventProducer::new(&cfg.kafka, "gen")?);
    super::require_topic(&producer, &cfg.topics.access, "topics.access").await?;
    let totals = run(spec, &cfg.topics.access, producer.clone(), shutdown).await?;
    println!("{}", serde_json::to_string(&totals)?);
    if totals.failed > 0 {
        anyhow::bail!("{} records were not acknowledged by Kafka", totals.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GenSpec {
        GenSpec {
            count: 10_000,
            nodes: 8,
            objects: 1000,
            seed: 42,
            rate: None,
            start: DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
            span: Duration::from_secs(600),
            poison_every: None,
        }
    }

    #[test]
    fn deterministic_valid_and_skewed() {
        let s = spec();
        let pop = Popularity::new(s.objects);
        let (mut a, mut b) = (Rng(s.seed), Rng(s.seed));
        let mut counts = vec![0u32; s.objects as usize];
        for i in 0..s.count {
            let x = event_at(&s, &pop, i, &mut a);
            let y = event_at(&s, &pop, i, &mut b);
            assert_eq!(x, y, "same seed, same event");
            x.validate().expect("valid event");
            let n: usize = x.object_key[14..19].parse().expect("object index");
            counts[n] += 1;
        }
        // Zipf-like: the most popular object gets far more than the median.
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        assert!(
            counts[0] > 20 * sorted[sorted.len() / 2].max(1),
            "top {} median {}",
            counts[0],
            sorted[sorted.len() / 2]
        );
    }

    #[test]
    fn written_records_are_the_produced_ones_one_per_line() {
        let mut s = spec();
        s.count = 500;
        s.poison_every = Some(100);
        let dir = std::env::temp_dir().join(format!("weir-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("records.tsv");
        let totals = write_records(&s, &path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(text.lines().count(), 500);
        assert_eq!((totals.events, totals.poison), (495, 5));
        let pop = Popularity::new(s.objects);
        let mut rng = Rng(s.seed);
        let mut events = 0u64;
        for (i, line) in text.lines().enumerate() {
            let (key, value) = line.split_once('\t').expect("key<TAB>value");
            if (i as u64 + 1) % 100 == 0 {
                assert!(key.starts_with("poison-"), "{line}");
                continue;
            }
            let ev: AccessEvent =
                weir_schemas::decode(Some(value.as_bytes())).expect("a valid event");
            assert_eq!(
                ev,
                event_at(&s, &pop, i as u64, &mut rng),
                "as `run` makes it"
            );
            assert_eq!(key, ev.node_id);
            events += 1;
        }
        assert_eq!(events, totals.events);
        assert_eq!(
            totals.per_minute.values().map(|m| m.requests).sum::<u64>(),
            events
        );
        // A path that cannot be written (or none) is an error.
        assert!(write_records(&s, std::path::Path::new("/nonexistent-dir/x.tsv")).is_err());
        assert!(write_records(&s, std::path::Path::new("")).is_err());
    }
}
