//! `weir up`'s demo: something to look at within seconds of starting.
//!
//! - A catalog of objects of realistic sizes (manifests of a few hundred
//!   bytes, scripts and styles of kilobytes, images of tens to hundreds of
//!   kilobytes, video segments of megabytes), uploaded to the bucket once:
//!   what is already there is left alone, so a restart uploads nothing.
//! - A light, steady client load through the real edge: skewed popularity
//!   (a few objects are hot), some range requests, some `HEAD`s, some keys
//!   that do not exist. The edge serves them and produces one access event
//!   each, so the access group's rollups, the top objects, hit ratios and
//!   the access group's lag all move.
//! - A few simulated edge nodes reporting health through Kafka like agents
//!   do (CPU, memory, load and bandwidth wander), and access events like
//!   edges do, so the fleet is more than this host; one of them drops out for a while every few minutes, so the
//!   page shows a node going stale, down, and back up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_producers::EventProducer;
use weir_schemas::{AccessEvent, CacheOutcome, HealthEvent, InterfaceStats, LoadAverage};

use super::gen::{Popularity, Rng};
use crate::config::Config;

/// Prefix of the demo's objects in the bucket.
pub const PREFIX: &str = "demo/";

/// One object of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoObject {
    /// Key in the bucket.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// The catalog of `n` objects: the same for the same `n` (so that a restart
/// finds its objects), most popular first.
pub fn catalog(n: u32) -> Vec<DemoObject> {
    let mut rng = Rng(0x5eed_d3e0);
    (0..n)
        .map(|i| {
            // (share in ‰, directory, extension, smallest, largest size)
            let (dir, ext, lo, hi): (&str, &str, u64, u64) = match rng.range(0, 1000) {
                0..=99 => ("live", "m3u8", 200, 2_000),
                100..=299 => ("static", "js", 2_000, 120_000),
                300..=399 => ("static", "css", 1_000, 40_000),
                400..=749 => ("img", "jpg", 15_000, 600_000),
                _ => ("video", "ts", 300_000, 2_500_000),
            };
            // Log-uniform between the bounds: many small, a few large.
            let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
            let size = (l + rng.unit() * (h - l)).exp() as u64;
            DemoObject {
                key: format!("{PREFIX}{dir}/object-{i:04}.{ext}"),
                size,
            }
        })
        .collect()
}

/// The bytes of an object: deterministic, not all zeros (so nothing on the
/// way compresses it to nothing).
fn body(obj: &DemoObject) -> Vec<u8> {
    let mut rng = Rng(obj.size ^ 0x9e37_79b9);
    let mut out = Vec::with_capacity(obj.size as usize);
    while (out.len() as u64) < obj.size {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(obj.size as usize);
    out
}

/// What seeding did.
#[derive(Debug, Default, Serialize)]
pub struct SeedReport {
    /// Objects already in the bucket.
    pub present: usize,
    /// Objects uploaded now.
    pub uploaded: usize,
    /// Bytes uploaded now.
    pub bytes: u64,
}

/// Uploads the catalog's objects that the bucket does not have (compared by
/// key and size), eight at a time.
pub async fn seed(
    cfg: &Config,
    objects: &[DemoObject],
    shutdown: &CancellationToken,
) -> anyhow::Result<SeedReport> {
    let origin = weir_edge::origin::Origin::new(&cfg.s3);
    let s3 = origin.client().clone();
    let bucket = cfg.s3.bucket.clone();
    let mut present = std::collections::HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(PREFIX)
            .set_continuation_token(token.take())
            .send()
            .await
            .with_context(|| {
                format!("listing s3://{bucket}/{PREFIX} (is S3 running? try deploy/local/up)")
            })?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                present.insert(k.to_owned(), o.size().unwrap_or(-1));
            }
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => break,
        }
    }
    let missing: Vec<DemoObject> = objects
        .iter()
        .filter(|o| present.get(&o.key) != Some(&(o.size as i64)))
        .cloned()
        .collect();
    let mut report = SeedReport {
        present: objects.len() - missing.len(),
        ..SeedReport::default()
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut puts = tokio::task::JoinSet::new();
    for obj in missing {
        if shutdown.is_cancelled() {
            break;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (s3, bucket) = (s3.clone(), bucket.clone());
        puts.spawn(async move {
            let _permit = permit;
            let size = obj.size;
            s3.put_object()
                .bucket(bucket)
                .key(&obj.key)
                .body(ByteStream::from(body(&obj)))
                .send()
                .await
                .with_context(|| format!("uploading {}", obj.key))
                .map(|_| size)
        });
    }
    while let Some(r) = puts.join_next().await {
        let size = r.context("an upload task failed")??;
        report.uploaded += 1;
        report.bytes += size;
    }
    Ok(report)
}

/// Counts of the client load, for the log at the end.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answered 2xx/3xx.
    pub ok: AtomicU64,
    /// Answered 404 (the misses asked for on purpose).
    pub not_found: AtomicU64,
    /// Other statuses, and requests that failed.
    pub failed: AtomicU64,
}

/// Requests `objects` through the edge at `rate` per second until
/// `shutdown`: Zipf-like popularity, 15 % ranges, 5 % `HEAD`, 4 % keys that
/// do not exist. At most 32 requests in flight: a slow edge slows the load
/// instead of piling requests up.
pub async fn load(
    edge: std::net::SocketAddr,
    objects: Arc<Vec<DemoObject>>,
    rate: u32,
    counts: Arc<LoadCounts>,
    shutdown: CancellationToken,
) {
    if rate == 0 || objects.is_empty() {
        return;
    }
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "demo load: cannot build an HTTP client");
            return;
        }
    };
    let pop = Popularity::new(objects.len() as u32);
    let mut rng = Rng(Utc::now().timestamp_micros() as u64);
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    // Ticks of 100 ms carry rate/10 requests, the remainder spread by a
    // running fraction so that low rates (e.g. 3/s) are exact on average.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0f64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        owed += f64::from(rate) / 10.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let Ok(permit) = sem.clone().try_acquire_owned() else {
                debug!("demo load: 32 requests in flight; skipping one");
                continue;
            };
            let obj = &objects[pop.pick(rng.unit())];
            let roll = rng.range(0, 100);
            let (key, range, head) = match roll {
                0..=3 => (
                    format!("{PREFIX}missing/object-{}.bin", rng.range(0, 50)),
                    None,
                    false,
                ),
                4..=8 => (obj.key.clone(), None, true),
                9..=23 if obj.size > 1 => {
                    let start = rng.range(0, obj.size - 1);
                    let end = (start + rng.range(1, 256 * 1024)).min(obj.size - 1);
                    (obj.key.clone(), Some(format!("bytes={start}-{end}")), false)
                }
                _ => (obj.key.clone(), None, false),
            };
            let url = format!("http://{edge}/{key}");
            let (http, counts) = (http.clone(), counts.clone());
            counts.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _permit = permit;
                let mut req = if head {
                    http.head(&url)
                } else {
                    http.get(&url)
                };
                if let Some(r) = range {
                    req = req.header("range", r);
                }
                let outcome = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // Read the body: a client that hangs up early is a
                        // different story from the one the demo tells.
                        let read = resp.bytes().await.is_ok();
                        match status {
                            200..=399 if read => &counts.ok,
                            404 => &counts.not_found,
                            _ => &counts.failed,
                        }
                    }
                    Err(_) => &counts.failed,
                };
                outcome.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
}

/// Health of one simulated node, wandering a little each report.
struct SimNode {
    id: String,
    seq: u64,
    cpu: f64,
    mem_free: f64,
    rx: f64,
    tx: f64,
    /// Drops out for `gap` reports every `period` reports (0: never).
    period: u64,
    gap: u64,
}

impl SimNode {
    fn report(&mut self, rng: &mut Rng, interval: Duration) -> Option<HealthEvent> {
        self.seq += 1;
        if self.period > 0 && self.seq % self.period >= self.period - self.gap {
            return None;
        }
        let wander = |v: f64, lo: f64, hi: f64, step: f64, rng: &mut Rng| {
            (v + (rng.unit() - 0.5) * 2.0 * step).clamp(lo, hi)
        };
        self.cpu = wander(self.cpu, 2.0, 97.0, 6.0, rng);
        self.mem_free = wander(self.mem_free, 1_000.0, 30_000.0, 400.0, rng);
        self.rx = wander(self.rx, 50_000.0, 40_000_000.0, 1_500_000.0, rng);
        self.tx = wander(self.tx, 500_000.0, 400_000_000.0, 15_000_000.0, rng);
        let mut h = HealthEvent::example(&self.id, self.seq, Utc::now());
        h.agent_id = format!("00000000-0000-4000-8000-{:012}", self.seq % 1000 + 1);
        h.interval_ms = interval.as_millis() as u64;
        h.service = "edge".into();
        h.cdn_type = "demo".into();
        h.cores = 16;
        h.memory_total_mb = 32_000;
        h.memory_free_mb = self.mem_free as u64;
        h.cpu_usage_pct = self.cpu as f32;
        let load = self.cpu / 100.0 * 16.0;
        h.load_avg = LoadAverage {
            one: (load * 100.0).round() / 100.0,
            five: (load * 90.0).round() / 100.0,
            fifteen: (load * 80.0).round() / 100.0,
        };
        h.interfaces = vec![InterfaceStats {
            name: "eth0".into(),
            rx_bytes_per_sec: self.rx as u64,
            tx_bytes_per_sec: self.tx as u64,
            link_speed_mbps: Some(25_000),
        }];
        h.uptime_secs = 86_400 * 12 + self.seq;
        Some(h)
    }
}

/// One access event of a simulated node: an object of the catalog by
/// popularity, mostly hits, some misses, ranges and 404s.
fn sim_access(
    node: &str,
    seq: u64,
    objects: &[DemoObject],
    pop: &Popularity,
    rng: &mut Rng,
) -> AccessEvent {
    let obj = &objects[pop.pick(rng.unit())];
    let mut ev = AccessEvent::example(node, seq, Utc::now());
    ev.source_id = format!("{node}-sim");
    ev.request_id = format!("{:016x}", rng.next());
    ev.object_key = obj.key.clone();
    ev.client_addr = format!("198.51.100.{}", rng.range(1, 255));
    let (cache, origin_us) = match rng.range(0, 100) {
        0..=84 => (CacheOutcome::Hit, 0),
        85..=96 => (CacheOutcome::Miss, rng.range(20_000, 150_000)),
        _ => (CacheOutcome::Revalidated, rng.range(5_000, 40_000)),
    };
    ev.cache = cache;
    ev.origin_latency_us = origin_us;
    match rng.range(0, 100) {
        0..=79 => {
            ev.status = 200;
            ev.range = None;
            ev.bytes_sent = obj.size;
        }
        80..=95 => {
            let start = rng.range(0, obj.size.max(2) - 1);
            let len = (obj.size - start).clamp(1, 256 * 1024);
            ev.status = 206;
            ev.range = Some(format!("bytes={start}-{}", start + len - 1));
            ev.bytes_sent = len;
        }
        _ => {
            ev.status = 404;
            ev.range = None;
            ev.bytes_sent = 0;
            ev.object_key = format!("{PREFIX}missing/object-{}.bin", rng.range(0, 50));
        }
    }
    ev.object_size = (ev.status != 404).then_some(obj.size);
    ev.total_latency_us = origin_us + rng.range(200, 2_000) + ev.bytes_sent / 2_000;
    ev
}

/// Produces the health of `n` simulated nodes (`demo-edge-01`, …) every
/// `interval` until `shutdown`, and their access events (`access_rate` per
/// second, shared between the nodes that are up); the last node drops out
/// for 20 reports in every 120.
pub async fn sim_nodes(
    producer: Arc<EventProducer>,
    topics: (String, String),
    n: u32,
    interval: Duration,
    (objects, access_rate): (Arc<Vec<DemoObject>>, u32),
    shutdown: CancellationToken,
) {
    let (topic, access_topic) = topics;
    let pop = Popularity::new(objects.len() as u32);
    let mut access_seq = 0u64;
    let mut owed = 0.0f64;
    let mut rng = Rng(0xd3e0_0000 ^ u64::from(n));
    let mut nodes: Vec<SimNode> = (1..=n)
        .map(|i| SimNode {
            id: format!("demo-edge-{i:02}"),
            seq: 0,
            cpu: 10.0 + rng.unit() * 50.0,
            mem_free: 4_000.0 + rng.unit() * 20_000.0,
            rx: 1_000_000.0 + rng.unit() * 10_000_000.0,
            tx: 10_000_000.0 + rng.unit() * 100_000_000.0,
            period: if i == n && n > 1 { 120 } else { 0 },
            gap: 20,
        })
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut up = Vec::new();
        for node in &mut nodes {
            if let Some(h) = node.report(&mut rng, interval) {
                if let Err(e) = producer.enqueue(&topic, &h) {
                    debug!(error = %e, node = %h.node_id, "demo node report not queued");
                }
                up.push(node.id.clone());
            }
        }
        if up.is_empty() || objects.is_empty() {
            continue;
        }
        owed += f64::from(access_rate) * interval.as_secs_f64();
        while owed >= 1.0 {
            owed -= 1.0;
            access_seq += 1;
            let node = &up[rng.range(0, up.len() as u64) as usize];
            let ev = sim_access(node, access_seq, &objects, &pop, &mut rng);
            if let Err(e) = producer.enqueue(&access_topic, &ev) {
                debug!(error = %e, "demo access event not queued");
            }
        }
    }
}

/// Runs the whole demo until `shutdown`: seeds the bucket, then the load
/// and the simulated nodes.
pub async fn run(
    cfg: Config,
    edge: std::net::SocketAddr,
    producer: Arc<EventProducer>,
    shutdown: CancellationToken,
) -> anyhow::Result<String> {
    let objects = Arc::new(catalog(cfg.up.demo_objects));
    // The simulated nodes' own traffic: as much again as the real edge's.
    let nodes = tokio::spawn(sim_nodes(
        producer,
        (cfg.topics.health.clone(), cfg.topics.access.clone()),
        cfg.up.demo_nodes,
        cfg.agent.interval,
        (objects.clone(), cfg.up.load_rate),
        shutdown.clone(),
    ));
    // The load starts at once: on a first run the hot objects (uploaded
    // first) are there within a second, the rest answer 404 until they are,
    // and the dashboard moves meanwhile.
    let counts = Arc::new(LoadCounts::default());
    let loading = tokio::spawn(load(
        edge,
        objects.clone(),
        cfg.up.load_rate,
        counts.clone(),
        shutdown.clone(),
    ));
    // Without its objects the demo still runs (every request a 404): the
    // rest of `weir up` must not stop for the demo.
    match seed(&cfg, &objects, &shutdown).await {
        Ok(seeded) => info!(
            present = seeded.present,
            uploaded = seeded.uploaded,
            bytes = seeded.bytes,
            "demo objects in the bucket"
        ),
        Err(e) => warn!(
            error = format!("{e:#}"),
            "demo: cannot put its objects in the bucket"
        ),
    }
    let _ = loading.await;
    let _ = nodes.await;
    Ok(format!(
        "demo: {} requests sent through the edge ({} ok, {} not found on purpose, {} failed)",
        counts.sent.load(Ordering::Relaxed),
        counts.ok.load(Ordering::Relaxed),
        counts.not_found.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_schemas::Event;

    #[test]
    fn the_catalog_is_stable_and_sized_like_a_cdn() {
        let a = catalog(300);
        assert_eq!(a, catalog(300), "a restart must find the same objects");
        assert_eq!(a.len(), 300);
        let total: u64 = a.iter().map(|o| o.size).sum();
        assert!(total > 20_000_000 && total < 400_000_000, "total {total}");
        assert!(a.iter().any(|o| o.size < 2_000));
        assert!(a.iter().any(|o| o.size > 1_000_000));
        assert!(a.iter().all(|o| o.key.starts_with(PREFIX)));
        assert_eq!(body(&a[0]).len() as u64, a[0].size);
    }

    #[test]
    fn the_flapping_node_drops_out_and_returns() {
        let mut rng = Rng(1);
        let mut n = SimNode {
            id: "demo-edge-03".into(),
            seq: 0,
            cpu: 50.0,
            mem_free: 8_000.0,
            rx: 1e6,
            tx: 1e7,
            period: 10,
            gap: 3,
        };
        let sent: Vec<bool> = (0..20)
            .map(|_| n.report(&mut rng, Duration::from_secs(1)).is_some())
            .collect();
        assert_eq!(sent.iter().filter(|s| !**s).count(), 6, "{sent:?}");
        let h = n.report(&mut rng, Duration::from_secs(1)).expect("report");
        h.validate().expect("a valid event");
    }

    #[test]
    fn simulated_access_events_are_valid() {
        let objects = catalog(50);
        let pop = Popularity::new(50);
        let mut rng = Rng(7);
        let mut statuses = std::collections::BTreeSet::new();
        for seq in 1..2_000 {
            let ev = sim_access("demo-edge-01", seq, &objects, &pop, &mut rng);
            ev.validate().expect("a valid event");
            statuses.insert(ev.status);
        }
        assert_eq!(
            statuses.into_iter().collect::<Vec<_>>(),
            vec![200, 206, 404]
        );
    }
}
