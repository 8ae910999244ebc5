//! A pool: its members (static backends and the fleet's up nodes that pass
//! its filters), the algorithm that picks among them, passive health
//! (ejection within a share of the pool, panic mode below a threshold) and
//! the retry budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use weir_core::InternalEvent;

use crate::algorithm::{client_hash, Algorithm, NoBackend, Picker};
use crate::backend::{Backend, EjectPolicy, Load, Outcome, Source};
use crate::config::{http_authority, parse_static, BalanceConfig, PoolConfig, StaticBackend};
use crate::events::{BackendEjected, PoolChanged};
use crate::fleet::FleetView;

/// A pool's settings, resolved from `[balance]` and `[balance.pools.NAME]`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Sticky cookie on.
    pub sticky: bool,
    /// Fleet nodes are members.
    pub fleet: bool,
    /// Fleet filter on the reported service (empty: any).
    pub service: String,
    /// Fleet filter on the reported CDN role (empty: any).
    pub cdn_type: String,
    /// Static backends.
    pub statics: Vec<StaticBackend>,
    /// Passive health.
    pub eject: EjectPolicy,
    /// Share of the pool that may be ejected at once.
    pub max_ejected_share: f64,
    /// Below this usable share, every member is used.
    pub panic_threshold: f64,
    /// Slow-start ramp (`dynamic`).
    pub slow_start: Duration,
    /// Bounded-load factor (`ip_hash`).
    pub load_factor: f64,
    /// Retry budget: share of recent requests.
    pub retry_ratio: f64,
    /// Retry budget: always allowed per second.
    pub retry_min_per_sec: u32,
}

impl PoolSettings {
    /// Resolves a pool's settings (`p` None: the implicit default pool,
    /// every up node of the fleet). The config was validated.
    pub fn resolve(cfg: &BalanceConfig, p: Option<&PoolConfig>) -> PoolSettings {
        let default = PoolConfig::default();
        let p = p.unwrap_or(&default);
        let algorithm = if p.algorithm.is_empty() {
            &cfg.algorithm
        } else {
            &p.algorithm
        };
        let statics: Vec<StaticBackend> = p
            .backends
            .iter()
            .filter_map(|b| parse_static(b).ok())
            .collect();
        PoolSettings {
            algorithm: Algorithm::parse(algorithm).unwrap_or(Algorithm::RoundRobin),
            sticky: if p.sticky.is_empty() {
                cfg.sticky == "cookie" && p.backends.is_empty() && p.fleet.is_none()
            } else {
                p.sticky == "cookie"
            },
            fleet: p.fleet.unwrap_or(statics.is_empty()),
            service: p.service.clone(),
            cdn_type: p.cdn_type.clone(),
            statics,
            eject: EjectPolicy {
                max_fails: cfg.max_fails,
                base: cfg.eject_time,
                max: cfg.eject_time_max,
            },
            max_ejected_share: cfg.max_ejected_share,
            panic_threshold: cfg.panic_threshold,
            slow_start: cfg.slow_start,
            load_factor: cfg.hash_load_factor,
            retry_ratio: cfg.retry_budget,
            retry_min_per_sec: cfg.retry_min_per_sec,
        }
    }
}

/// The members of a pool at one moment, and the picker built for them.
#[derive(Debug)]
pub struct Membership {
    /// Members, in a stable order (by address).
    pub members: Vec<Arc<Backend>>,
    picker: Picker,
}

/// Retries allowed as a share of recent requests (Finagle's retry budget):
/// two ten-second windows, the current and the last.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    w: Mutex<Windows>,
}

#[derive(Debug)]
struct Windows {
    start: Instant,
    requests: u64,
    retries: u64,
    prev_requests: u64,
    prev_retries: u64,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryBudget {
    /// A budget of `ratio` × requests plus `min_per_sec` per second.
    pub fn new(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_sec,
            w: Mutex::new(Windows {
                start: Instant::now(),
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            }),
        }
    }

    fn roll(w: &mut Windows, now: Instant) {
        let age = now.saturating_duration_since(w.start);
        if age >= BUDGET_WINDOW {
            if age >= BUDGET_WINDOW * 2 {
                w.prev_requests = 0;
                w.prev_retries = 0;
            } else {
                w.prev_requests = w.requests;
                w.prev_retries = w.retries;
            }
            w.requests = 0;
            w.retries = 0;
            w.start = now;
        }
    }

    /// Counts one client request.
    pub fn deposit(&self, now: Instant) {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        Self::roll(&mut w, now);
        w.requests += 1;
    }

    /// Takes one retry if the budget allows it.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        Self::roll(&mut w, now);
        let requests = (w.requests + w.prev_requests) as f64;
        let retries = w.retries + w.prev_retries;
        let allowed =
            self.ratio * requests + f64::from(self.min_per_sec) * BUDGET_WINDOW.as_secs_f64();
        if (retries as f64) < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

/// One pool.
#[derive(Debug)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: PoolSettings,
    /// Every backend ever a member, by address: in-flight counts and
    /// ejections survive membership changes.
    registry: Mutex<HashMap<String, Arc<Backend>>>,
    current: RwLock<Arc<Membership>>,
    /// The retry budget.
    pub budget: RetryBudget,
}

/// The request attributes a pick may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickHints<'a> {
    /// The client's address (ip_hash).
    pub client: Option<IpAddr>,
    /// The sticky cookie's value.
    pub sticky: Option<&'a str>,
}

impl Pool {
    /// A pool with its static backends as members (fleet nodes join on the
    /// first [`Pool::update`]).
    pub fn new(name: &str, settings: PoolSettings) -> Pool {
        let budget = RetryBudget::new(settings.retry_ratio, settings.retry_min_per_sec);
        let pool = Pool {
            name: name.to_string(),
            current: RwLock::new(Arc::new(Membership {
                members: Vec::new(),
                picker: Picker::new(settings.algorithm, &[], settings.slow_start, 1.0),
            })),
            settings,
            registry: Mutex::new(HashMap::new()),
            budget,
        };
        pool.update(&FleetView::default());
        pool
    }

    /// The current membership.
    pub fn membership(&self) -> Arc<Membership> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Recomputes the members from the static backends and `fleet`. The
    /// picker is rebuilt only when the set of members or their weights
    /// changed; load reports only move `dynamic` weights.
    pub fn update(&self, fleet: &FleetView) {
        let s = &self.settings;
        // address → (source, weight, load, why, last report)
        let mut wanted: Vec<(
            String,
            Source,
            u32,
            Option<Load>,
            String,
            Option<DateTime<Utc>>,
        )> = s
            .statics
            .iter()
            .map(|b| {
                (
                    b.authority.clone(),
                    Source::Static,
                    b.weight,
                    None,
                    "static backend".to_string(),
                    None,
                )
            })
            .collect();
        if s.fleet {
            for n in fleet.nodes.values() {
                if (!s.service.is_empty() && n.service != s.service)
                    || (!s.cdn_type.is_empty() && n.cdn_type != s.cdn_type)
                {
                    continue;
                }
                let Ok(authority) = http_authority(&n.endpoint) else {
                    continue;
                };
                if wanted.iter().any(|w| w.0 == authority) {
                    continue;
                }
                let why = if fleet.stale {
                    format!(
                        "node {}: last report {} (fleet state unreachable; last snapshot)",
                        n.node_id,
                        n.last_seen.to_rfc3339()
                    )
                } else {
                    format!(
                        "node {}: up, reported {}",
                        n.node_id,
                        n.last_seen.to_rfc3339()
                    )
                };
                wanted.push((
                    authority,
                    Source::Fleet {
                        node_id: n.node_id.clone(),
                    },
                    1,
                    Some(n.load),
                    why,
                    Some(n.last_seen),
                ));
            }
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));

        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.membership();
        let mut members = Vec::with_capacity(wanted.len());
        for (authority, source, weight, load, why, seen) in wanted {
            let b = registry
                .entry(authority.clone())
                .or_insert_with(|| {
                    Arc::new(Backend::new(&self.name, &authority, source.clone(), weight))
                })
                .clone();
            b.set_membership(true, source, weight, load, &why);
            if let Some(t) = seen {
                b.reported(t);
            }
            members.push(b);
        }
        let mut left = Vec::new();
        for b in registry.values() {
            if !members.iter().any(|m| Arc::ptr_eq(m, b)) && b.is_member() {
                let why = match b.source() {
                    Source::Fleet { node_id } => match b.last_report() {
                        Some(t) => format!(
                            "node {node_id}: last report {}, expired (or its endpoint is no longer http://)",
                            t.to_rfc3339()
                        ),
                        None => format!("node {node_id}: not up in the fleet state"),
                    },
                    Source::Static => "removed".into(),
                };
                b.set_membership(false, b.source(), b.weight(), None, &why);
                left.push(b.authority.clone());
            }
        }
        drop(registry);
        let same = old.members.len() == members.len()
            && old
                .members
                .iter()
                .zip(&members)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let joined: Vec<String> = members
            .iter()
            .filter(|m| !old.members.iter().any(|o| Arc::ptr_eq(o, m)))
            .map(|m| m.authority.clone())
            .collect();
        if same {
            // Weights may have changed (static ones cannot; fleet ones are
            // all 1): the picker's state stays valid.
            return;
        }
        let picker = Picker::new(s.algorithm, &members, s.slow_start, s.load_factor);
        let n = members.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Membership { members, picker });
        PoolChanged {
            pool: &self.name,
            members: n,
            joined: &joined,
            left: &left,
        }
        .emit();
    }

    /// Picks a backend for one attempt, never one in `tried`. Ejected
    /// backends are skipped unless fewer than `panic_threshold` of the
    /// members are usable, when every member is.
    pub fn pick(
        &self,
        hints: PickHints<'_>,
        tried: &[Arc<Backend>],
        now: Instant,
    ) -> Result<Arc<Backend>, NoBackend> {
        let m = self.membership();
        let members = &m.members;
        if members.is_empty() {
            return Err(NoBackend::Empty);
        }
        let fresh = |i: usize| !tried.iter().any(|t| Arc::ptr_eq(t, &members[i]));
        let healthy = members.iter().filter(|b| !b.ejected(now)).count();
        let panic = (healthy as f64) < self.settings.panic_threshold * members.len() as f64;
        if let (true, Some(id)) = (self.settings.sticky, hints.sticky) {
            if let Some(i) = members.iter().position(|b| b.sticky_id == id) {
                if fresh(i) && (panic || !members[i].ejected(now)) && members[i].weight() > 0 {
                    return Ok(members[i].clone());
                }
            }
        }
        let client = hints.client.as_ref().map(client_hash).unwrap_or(0);
        let usable = |i: usize| fresh(i) && (panic || !members[i].ejected(now));
        m.picker
            .pick(members, &usable, client, now)
            .map(|i| members[i].clone())
    }

    /// Records an attempt's outcome against `backend`; ejects it after
    /// `max_fails` consecutive failures if the pool can spare it.
    pub fn record(&self, backend: &Backend, outcome: Outcome, now: Instant) {
        let may_eject = || {
            let m = self.membership();
            let n = m.members.len();
            let ejected = m.members.iter().filter(|b| b.ejected(now)).count();
            n > 0 && (ejected + 1) as f64 <= self.settings.max_ejected_share * n as f64
        };
        if let Some(length) = backend.record(outcome, self.settings.eject, may_eject, now) {
            BackendEjected {
                pool: &self.name,
                backend: &backend.authority,
                length,
                outcome,
            }
            .emit();
        }
    }

    /// Closes its backends' connections idle for `max_idle`; returns how
    /// many stay open.
    pub fn reap_idle(&self, now: Instant, max_idle: Duration) -> usize {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry
            .values()
            .map(|b| b.conns.reap(now, max_idle) + b.raw.reap(now, max_idle))
            .sum()
    }

    /// The pool's state for the admin page.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        let m = self.membership();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&Arc<Backend>> = registry.values().collect();
        all.sort_by(|a, b| a.authority.cmp(&b.authority));
        let backends: Vec<serde_json::Value> = all
            .into_iter()
            .map(|b| {
                let (state, why) = b.state(now);
                let node = match b.source() {
                    Source::Fleet { node_id } => serde_json::Value::String(node_id),
                    Source::Static => serde_json::Value::Null,
                };
                serde_json::json!({
                    "backend": b.authority,
                    "node_id": node,
                    "state": state,
                    "why": why,
                    "weight": b.weight(),
                    "effective_weight": (b.dynamic_weight(now, self.settings.slow_start) * 100.0).round() / 100.0,
                    "inflight": b.inflight(),
                    "latency_ms": (b.latency_ns(now) / 1e4).round() / 100.0,
                    "ejections": b.ejections(),
                })
            })
            .collect();
        serde_json::json!({
            "pool": self.name,
            "algorithm": self.settings.algorithm.name(),
            "sticky": self.settings.sticky,
            "members": m.members.len(),
            "backends": backends,
        })
    }
}
