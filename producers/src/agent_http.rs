//! `weir agent --via URL`: the agent reporting through a `weir ingest`
//! gateway instead of Kafka, for hosts that cannot reach the brokers.
//!
//! Sampling keeps its schedule whatever the gateway does: reports go into a
//! bounded backlog (`agent.backlog`; past it the oldest is dropped and
//! counted) and a sender posts them in order, up to [`MAX_BATCH`] per
//! request as `application/x-ndjson`. The gateway answers once Kafka
//! acknowledged them; a report answered 429 or 503, or a request that got no
//! answer, goes back to the front of the backlog and is sent again after a
//! backoff (doubling from 100 ms to 5 s, at least the gateway's
//! `Retry-After`). A report keeps its sequence number when resent, so loss
//! and duplication stay countable end to end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_core::InternalEvent;
use weir_schemas::HealthEvent;

use crate::agent::{AgentConfig, AgentReport, Sampler, Schedule};
use crate::events::{GatewayRefused, ReportQueued};

/// Most reports in one request.
pub const MAX_BATCH: usize = 100;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The reports not yet accepted, oldest first.
struct Backlog {
    queue: Mutex<VecDeque<HealthEvent>>,
    cap: usize,
    wake: Notify,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<HealthEvent>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a new report; `true` when the oldest had to be dropped.
    fn push(&self, e: HealthEvent) -> bool {
        let dropped = {
            let mut q = self.lock();
            let full = q.len() >= self.cap;
            if full {
                q.pop_front();
            }
            q.push_back(e);
            full
        };
        self.wake.notify_one();
        dropped
    }

    fn take(&self, n: usize) -> Vec<HealthEvent> {
        let mut q = self.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts reports to resend back in front, in their order, dropping the
    /// oldest if new ones filled the backlog meanwhile; returns how many
    /// were dropped.
    fn put_back(&self, events: Vec<HealthEvent>) -> u64 {
        let mut q = self.lock();
        for e in events.into_iter().rev() {
            q.push_front(e);
        }
        let mut dropped = 0;
        while q.len() > self.cap {
            q.pop_front();
            dropped += 1;
        }
        dropped
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The gateway's answer, as far as the agent reads it.
#[derive(Deserialize)]
struct Answer {
    results: Vec<RecordStatus>,
}

#[derive(Deserialize)]
struct RecordStatus {
    status: u16,
    #[serde(default)]
    message: Option<String>,
}

/// What one request achieved.
#[derive(Default)]
struct Outcome {
    accepted: u64,
    invalid: u64,
    resend: Vec<HealthEvent>,
    retry_after: Duration,
}

/// Posts `batch` and sorts its reports into accepted, refused for good, and
/// to send again.
async fn post(client: &reqwest::Client, url: &str, batch: Vec<HealthEvent>) -> Outcome {
    let mut body = Vec::with_capacity(batch.len() * 1024);
    for e in &batch {
        // A sampled report always encodes; `encode` validates as well.
        match weir_schemas::encode(e) {
            Ok(b) => body.extend_from_slice(&b),
            Err(reason) => warn!(seq = e.seq, %reason, "report does not encode"),
        }
        body.push(b'\n');
    }
    let resp = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            GatewayRefused {
                status: 0,
                reports: batch.len(),
                detail: &e.to_string(),
            }
            .emit();
            return Outcome {
                resend: batch,
                ..Outcome::default()
            };
        }
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |s| Duration::from_secs(s.min(60)));
    let answer = resp.json::<Answer>().await.ok();
    let mut out = Outcome {
        retry_after,
        ..Outcome::default()
    };
    match answer {
        Some(a) if a.results.len() == batch.len() => {
            let mut first_refusal = None;
            for (e, r) in batch.into_iter().zip(a.results) {
                match r.status {
                    200 => out.accepted += 1,
                    429 | 503 => out.resend.push(e),
                    _ => {
                        out.invalid += 1;
                        warn!(
                            seq = e.seq,
                            status = r.status,
                            message = r.message.as_deref().unwrap_or(""),
                            "the gateway refused a report; it is not sent again"
                        );
                        first_refusal.get_or_insert(r.status);
                    }
                }
            }
            if !out.resend.is_empty() {
                GatewayRefused {
                    status,
                    reports: out.resend.len(),
                    detail: "to be resent",
                }
                .emit();
            }
        }
        // No per-record answer: a router's error page, a request refused
        // whole (408), a truncated answer. Resend unless the request itself
        // was refused for what it is.
        _ => {
            GatewayRefused {
                status,
                reports: batch.len(),
                detail: "no per-record answer",
            }
            .emit();
            if matches!(status, 400 | 413 | 415) {
                out.invalid = batch.len() as u64;
            } else {
                out.resend = batch;
            }
        }
    }
    out
}

/// Runs the agent until `shutdown` (or `max_reports`), reporting through
/// the gateway at `cfg.via`; then sends what it still holds for up to
/// `drain` and reports what was accepted.
pub async fn run_agent_via(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    drain: Duration,
) -> AgentReport {
    let url = format!("{}/api/v1/health", cfg.via.trim_end_matches('/'));
    let mut sampler = Sampler::new(&cfg);
    let report = Arc::new(Mutex::new(AgentReport {
        node_id: sampler.node_id().to_string(),
        agent_id: sampler.agent_id().to_string(),
        ..AgentReport::default()
    }));
    info!(node_id = sampler.node_id(), agent_id = sampler.agent_id(), %url,
          interval = ?cfg.interval, "agent started (through a gateway)");
    let client = match reqwest::Client::builder()
        .timeout(cfg.http_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the HTTP client");
            return AgentReport::default();
        }
    };
    let backlog = Arc::new(Backlog {
        queue: Mutex::new(VecDeque::new()),
        cap: cfg.backlog,
        wake: Notify::new(),
    });
    // The sender stops once sampling ended and the backlog is empty, or at
    // the drain deadline.
    let sampling_done = CancellationToken::new();
    let drain_over = CancellationToken::new();
    let sender = tokio::spawn(send_loop(
        client,
        url,
        backlog.clone(),
        report.clone(),
        sampling_done.clone(),
        drain_over.clone(),
    ));

    let mut schedule = Schedule::start(&cfg, shutdown).await;
    while schedule.next().await {
        let event = sampler.sample();
        debug!(seq = event.seq, "sampled");
        ReportQueued.emit();
        let dropped = backlog.push(event);
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
        r.queued += 1;
        if dropped {
            r.failed += 1;
            warn!(
                backlog = cfg.backlog,
                "backlog full; the oldest report was dropped"
            );
        }
    }
    sampling_done.cancel();
    backlog.wake.notify_one();
    if tokio::time::timeout(drain, sender).await.is_err() {
        drain_over.cancel();
    }
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let left = backlog.len() as u64;
    if left > 0 {
        warn!(left, "reports still held at the drain deadline");
        r.failed += left;
    }
    info!(
        queued = r.queued,
        delivered = r.delivered,
        failed = r.failed,
        resent = r.resent,
        "agent stopped"
    );
    r
}

async fn send_loop(
    client: reqwest::Client,
    url: String,
    backlog: Arc<Backlog>,
    report: Arc<Mutex<AgentReport>>,
    sampling_done: CancellationToken,
    drain_over: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let batch = backlog.take(MAX_BATCH);
        if batch.is_empty() {
            if sampling_done.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = backlog.wake.notified() => {}
                _ = sampling_done.cancelled() => {}
            }
            continue;
        }
        let sent = batch.len();
        let out = tokio::select! {
            o = post(&client, &url, batch) => o,
            _ = drain_over.cancelled() => return,
        };
        let resend = out.resend.len() as u64;
        let dropped = if out.resend.is_empty() {
            0
        } else {
            backlog.put_back(out.resend)
        };
        {
            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
            r.delivered += out.accepted;
            r.failed += out.invalid + dropped;
            r.resent += resend;
        }
        if resend == 0 {
            backoff = BACKOFF_MIN;
            continue;
        }
        let wait = backoff.max(out.retry_after);
        debug!(sent, resend, ?wait, "backing off before resending");
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = drain_over.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> HealthEvent {
        HealthEvent::example("n", seq, chrono::Utc::now())
    }

    #[test]
    fn the_backlog_keeps_order_and_its_bound() {
        let b = Backlog {
            queue: Mutex::new(VecDeque::new()),
            cap: 3,
            wake: Notify::new(),
        };
        assert!(!b.push(ev(1)) && !b.push(ev(2)) && !b.push(ev(3)));
        assert!(b.push(ev(4)), "the oldest is dropped past the cap");
        let taken = b.take(2);
        assert_eq!(taken.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        b.push(ev(5));
        b.push(ev(6));
        assert_eq!(b.put_back(taken), 2, "the oldest go past the cap");
        let all: Vec<u64> = b.take(10).iter().map(|e| e.seq).collect();
        assert_eq!(all, vec![4, 5, 6]);
        assert_eq!(b.len(), 0);
    }
}
