//! One backend as the balancer sees it: where it is, what the fleet last
//! said about it, how many requests it has in flight, how fast it answers,
//! and its passive health (consecutive failures, ejections).
//!
//! A backend outlives the snapshots it appears in: the pool keeps one
//! [`Backend`] per address, so its in-flight count and its ejection
//! survive a node's report arriving, a resync, or the node leaving and
//! coming back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::BackendMetrics;
use crate::upstream::IdleConns;

/// Where a backend comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Listed in the pool's `backends`.
    Static,
    /// A node of the fleet state.
    Fleet {
        /// The node's id.
        node_id: String,
    },
}

/// What the fleet last reported about a node, for `dynamic` weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Logical CPUs.
    pub cores: u32,
    /// One-minute load average.
    pub load1: f64,
    /// CPU use, 0–100.
    pub cpu_pct: f64,
}

impl Load {
    /// The share of the node that is free, in (0, 1]: the smaller of its
    /// idle CPU and its run-queue headroom, never below 5 % (a busy node
    /// still gets a trickle, so its recovery is seen).
    pub fn headroom(&self) -> f64 {
        let cpu = (self.cpu_pct / 100.0).clamp(0.0, 1.0);
        let queue = (self.load1 / f64::from(self.cores.max(1))).clamp(0.0, 1.0);
        (1.0 - cpu.max(queue)).clamp(0.05, 1.0)
    }
}

/// Mutable state that changes rarely (per snapshot or per ejection).
#[derive(Debug)]
struct Slow {
    source: Source,
    /// Smoothed headroom from the node's reports (1 without any).
    headroom: f64,
    /// When the backend (re)joined the pool: start of the slow-start ramp.
    joined: Instant,
    /// Member of the pool now (up in the fleet, or static).
    member: bool,
    /// Why it is a member or not, for the admin page.
    why: String,
    /// What passive health last said (ejection, refusal to eject).
    health: String,
    /// Time of the node's last report seen (fleet backends).
    last_report: Option<chrono::DateTime<chrono::Utc>>,
    /// Ejections so far (each doubles the next one's length).
    ejections: u32,
    /// When the last ejection started.
    last_ejected: Option<Instant>,
    /// Peak-EWMA latency estimate (ns) and when it was last updated.
    ewma_ns: f64,
    ewma_at: Instant,
}

/// A backend of one pool.
#[derive(Debug)]
pub struct Backend {
    /// `host:port` of its HTTP endpoint.
    pub authority: String,
    /// The pool it belongs to.
    pub pool: String,
    /// Short stable id used in the sticky cookie.
    pub sticky_id: String,
    /// Ring hash key (ip_hash).
    pub hash: u64,
    /// `http://host:port/`, to connect to.
    pub connect_uri: hyper::Uri,
    /// `host:port`, the `Host` of a request that came without one.
    pub host_header: hyper::header::HeaderValue,
    /// Kept-alive connections waiting for a request.
    pub conns: IdleConns,
    /// Kept-alive plain connections of the direct path.
    pub raw: crate::direct::RawIdle,
    inflight: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Configured weight (static), or 1 (fleet).
    weight: AtomicU32,
    /// Ejected until this many ns after [`epoch`]; 0: not ejected.
    ejected_until: AtomicU64,
    slow: Mutex<Slow>,
    /// Metrics of this backend, registered once.
    pub metrics: BackendMetrics,
}

/// The latency a backend is assumed to have before it answered once.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast the latency estimate forgets (peak-EWMA decay time).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The instant ejection deadlines are counted from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// FNV-1a then a SplitMix64 finaliser: a stable 64-bit hash (the ring must
/// not change between releases or processes, so std's hasher will not do).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What one attempt on a backend came to, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response.
    ServerError,
    /// Could not connect (refused, unreachable, connect timeout).
    ConnectFailed,
    /// No response head within the first-byte timeout.
    Timeout,
    /// The connection broke before a response.
    Broken,
}

impl Outcome {
    /// The label of this outcome in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "ok",
            Outcome::ServerError => "5xx",
            Outcome::ConnectFailed => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Broken => "broken",
        }
    }
}

/// Passive-health settings of a pool.
#[derive(Debug, Clone, Copy)]
pub struct EjectPolicy {
    /// Consecutive failures that eject.
    pub max_fails: u32,
    /// First ejection.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
}

impl Backend {
    /// A backend at `authority` (`host:port`, checked by the config) in
    /// `pool`.
    pub fn new(pool: &str, authority: &str, source: Source, weight: u32) -> Backend {
        let now = Instant::now();
        let hash = hash64(authority.as_bytes());
        let connect_uri = format!("http://{authority}/")
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("http://invalid.invalid/"));
        let host_header = hyper::header::HeaderValue::from_str(authority)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("invalid.invalid"));
        Backend {
            authority: authority.to_string(),
            pool: pool.to_string(),
            sticky_id: format!("{:012x}", hash >> 16),
            hash,
            connect_uri,
            host_header,
            conns: IdleConns::default(),
            raw: Default::default(),
            inflight: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            weight: AtomicU32::new(weight),
            ejected_until: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                source,
                headroom: 1.0,
                joined: now,
                member: true,
                why: "joined".into(),
                health: String::new(),
                last_report: None,
                ejections: 0,
                last_ejected: None,
                ewma_ns: DEFAULT_RTT.as_nanos() as f64,
                ewma_at: now,
            }),
            metrics: BackendMetrics::register(pool, authority),
        }
    }

    fn slow(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        let n = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.inflight(n);
        InFlight {
            backend: self.clone(),
            started: Instant::now(),
        }
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns)),
        }
    }

    /// Where it comes from.
    pub fn source(&self) -> Source {
        self.slow().source.clone()
    }

    /// Whether it is in the pool now.
    pub fn is_member(&self) -> bool {
        self.slow().member
    }

    /// Updates what the pool's snapshot says: member or not, weight, load.
    /// A backend that (re)joins starts its slow-start ramp.
    pub fn set_membership(
        &self,
        member: bool,
        source: Source,
        weight: u32,
        load: Option<Load>,
        why: &str,
    ) {
        let mut s = self.slow();
        if member && !s.member {
            s.joined = Instant::now();
        }
        s.member = member;
        s.source = source;
        self.weight.store(weight, Ordering::Relaxed);
        if let Some(l) = load {
            // Smoothed: one report's spike moves the weight by a third.
            s.headroom = s.headroom * (2.0 / 3.0) + l.headroom() / 3.0;
        }
        s.why = why.to_string();
        let state = if !member {
            0.0
        } else if self.ejected(Instant::now()) {
            2.0
        } else {
            1.0
        };
        self.metrics.state(state);
        self.metrics.weight(f64::from(weight) * s.headroom);
    }

    /// Notes the time of the node's latest report.
    pub fn reported(&self, at: chrono::DateTime<chrono::Utc>) {
        self.slow().last_report = Some(at);
    }

    /// The time of the node's latest report seen, if a fleet node.
    pub fn last_report(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.slow().last_report
    }

    /// Whether passive health has it ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until().is_some_and(|u| u > now)
    }

    /// The weight `dynamic` gives it: configured weight × smoothed
    /// headroom × the slow-start ramp (from 10 % to 100 % over
    /// `slow_start`).
    pub fn dynamic_weight(&self, now: Instant, slow_start: Duration) -> f64 {
        let s = self.slow();
        let ramp = if slow_start.is_zero() {
            1.0
        } else {
            let t =
                now.saturating_duration_since(s.joined).as_secs_f64() / slow_start.as_secs_f64();
            (0.1 + 0.9 * t).min(1.0)
        };
        f64::from(self.weight()) * s.headroom * ramp
    }

    /// Starts the slow-start ramp at `at` (tests).
    pub fn joined_at(&self, at: Instant) {
        self.slow().joined = at;
    }

    /// The latency estimate (ns) at `now`: peak-EWMA, decaying towards
    /// [`DEFAULT_RTT`] while no response comes, so a backend that was slow
    /// once is tried again after a while.
    pub fn latency_ns(&self, now: Instant) -> f64 {
        let s = self.slow();
        let dt = now.saturating_duration_since(s.ewma_at).as_secs_f64();
        let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
        s.ewma_ns * w + DEFAULT_RTT.as_nanos() as f64 * (1.0 - w)
    }

    /// Records one response time: a higher one is taken at once (peak),
    /// a lower one is blended in.
    pub fn observe_latency(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut s = self.slow();
        let dt = now.saturating_duration_since(s.ewma_at).as_secs_f64();
        let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
        s.ewma_ns = if rtt > s.ewma_ns {
            rtt
        } else {
            s.ewma_ns * w + rtt * (1.0 - w)
        };
        s.ewma_at = now;
    }

    /// Records an attempt's outcome. Returns the ejection's length when
    /// this failure ejects the backend; `may_eject` says whether the pool
    /// can spare it (its share of ejected backends).
    pub fn record(
        &self,
        outcome: Outcome,
        policy: EjectPolicy,
        may_eject: impl FnOnce() -> bool,
        now: Instant,
    ) -> Option<Duration> {
        if outcome == Outcome::Success {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        let fails = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < policy.max_fails {
            return None;
        }
        let mut s = self.slow();
        if self.ejected(now) {
            return None;
        }
        if !may_eject() {
            s.health = format!(
                "{fails} consecutive failures (last: {}); not ejected: too many of the pool already are",
                outcome.label()
            );
            return None;
        }
        // A backend that stayed healthy for a long stretch starts over.
        if s.last_ejected
            .is_some_and(|t| now.duration_since(t) > policy.max * 4)
        {
            s.ejections = 0;
        }
        let factor = 1u32 << s.ejections.min(16);
        let length = (policy.base * factor).min(policy.max);
        s.ejections += 1;
        let until = (now + length).saturating_duration_since(epoch());
        self.ejected_until
            .store(until.as_nanos().max(1) as u64, Ordering::Relaxed);
        s.last_ejected = Some(now);
        s.health = format!(
            "ejected for {length:?}: {fails} consecutive failures (last: {})",
            outcome.label()
        );
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.metrics.ejected();
        self.metrics.state(2.0);
        Some(length)
    }

    /// State and reason for the admin page: `up`, `ejected`, `down`,
    /// `draining`.
    pub fn state(&self, now: Instant) -> (&'static str, String) {
        let s = self.slow();
        if !s.member {
            return ("down", s.why.clone());
        }
        if let Some(u) = self.ejected_until().filter(|u| *u > now) {
            return (
                "ejected",
                format!("{}; back in {:?}", s.health, u.duration_since(now)),
            );
        }
        if self.weight() == 0 {
            return ("draining", "weight 0".into());
        }
        let why = if s.health.is_empty() {
            s.why.clone()
        } else if self.ejected_until().is_some() {
            format!("{}; earlier {}, over", s.why, s.health)
        } else {
            format!("{}; {}", s.why, s.health)
        };
        ("up", why)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u32 {
        self.slow().ejections
    }
}

/// One request counted in flight on a backend; dropping it (at the end of
/// the response body, or on failure) counts it out.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    started: Instant,
}

impl InFlight {
    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// When the attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.backend.inflight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.backend.metrics.inflight(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectPolicy {
        EjectPolicy {
            max_fails: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times() {
        let b = Backend::new("p", "127.0.0.1:1", Source::Static, 1);
        let t = Instant::now();
        assert_eq!(b.record(Outcome::ConnectFailed, policy(), || true, t), None);
        assert_eq!(b.record(Outcome::ServerError, policy(), || true, t), None);
        // A success in between starts the count again.
        assert_eq!(b.record(Outcome::Success, policy(), || true, t), None);
        assert_eq!(b.record(Outcome::Timeout, policy(), || true, t), None);
        assert_eq!(b.record(Outcome::Timeout, policy(), || true, t), None);
        assert_eq!(
            b.record(Outcome::Timeout, policy(), || true, t),
            Some(Duration::from_secs(1))
        );
        assert!(b.ejected(t));
        assert!(!b.ejected(t + Duration::from_secs(2)));
        let t2 = t + Duration::from_secs(2);
        for _ in 0..2 {
            b.record(Outcome::Broken, policy(), || true, t2);
        }
        assert_eq!(
            b.record(Outcome::Broken, policy(), || true, t2),
            Some(Duration::from_secs(2))
        );
        let fail3 = |t: Instant| {
            b.record(Outcome::Broken, policy(), || true, t);
            b.record(Outcome::Broken, policy(), || true, t);
            b.record(Outcome::Broken, policy(), || true, t)
        };
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(fail3(t3), Some(Duration::from_secs(4)));
        let t4 = t3 + Duration::from_secs(5);
        // Capped at the longest ejection.
        assert_eq!(fail3(t4), Some(Duration::from_secs(5)));
        // After a long healthy stretch the next ejection is short again.
        assert_eq!(
            fail3(t4 + Duration::from_secs(60)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_pool_that_cannot_spare_it_keeps_it() {
        let b = Backend::new("p", "127.0.0.1:1", Source::Static, 1);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(
                b.record(Outcome::ConnectFailed, policy(), || false, t),
                None
            );
        }
        assert!(!b.ejected(t));
        assert!(b.state(t).1.contains("not ejected"));
    }

    #[test]
    fn latency_is_peak_then_decays() {
        let b = Backend::new("p", "127.0.0.1:1", Source::Static, 1);
        let t = Instant::now();
        b.observe_latency(Duration::from_millis(200), t);
        assert!((b.latency_ns(t) - 200e6).abs() < 1.0);
        b.observe_latency(Duration::from_millis(1), t + Duration::from_millis(10));
        // One fast answer right after a slow one barely moves it.
        assert!(b.latency_ns(t + Duration::from_millis(10)) > 150e6);
        // Without answers it decays towards the default.
        assert!(b.latency_ns(t + Duration::from_secs(60)) < 2e6);
    }

    #[test]
    fn headroom_is_bounded() {
        let busy = Load {
            cores: 4,
            load1: 40.0,
            cpu_pct: 100.0,
        };
        assert!((busy.headroom() - 0.05).abs() < 1e-9);
        let idle = Load {
            cores: 4,
            load1: 0.0,
            cpu_pct: 0.0,
        };
        assert!((idle.headroom() - 1.0).abs() < 1e-9);
        let odd = Load {
            cores: 0,
            load1: f64::NAN,
            cpu_pct: -5.0,
        };
        let h = odd.headroom();
        assert!((0.05..=1.0).contains(&h), "{h}");
    }
}
