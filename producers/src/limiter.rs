//! Lag-aware rate limiting: the producer slows down when the group that
//! consumes its topic falls behind, shedding low-priority events first.
//!
//! The input is the group's lag per partition (the signal `weir lag export`
//! publishes). The output is the fraction `f` of the *offered* rate that
//! may pass: 1 (no limiting at all) while lag stays under the threshold, less
//! above it. Events are treated by priority: critical events (health) are
//! never shed and never wait; sheddable events (access) pass a governor
//! limiter and are dropped — counted — when it says no, so what passes is
//! a sample of the traffic at rate `f × offered`.
//!
//! **Control.** `f` comes from a PI controller on the lag error
//! `(setpoint − lag) / threshold`, with the setpoint at 75 % of the
//! threshold, an integral clamped to `[min_fraction, 1]` (no wind-up: the
//! integral saturates at 1 while lag is low, so full rate comes back as lag
//! falls), and small gains. The lag signal arrives late (commit interval +
//! export interval), and a proportional-only rule with a high gain turns that
//! delay into oscillation; these gains keep the loop damped for delays up to
//! about a second when producers offer twice what consumers take (simulated
//! and checked by the closed-loop test).
//!
//! **One limiter, variable cost.** A governor quota is fixed once built, and
//! swapping limiters lets a burst through. So there is one limiter of
//! [`CELLS_PER_SECOND`] cells per second, and the *cost* of an event in
//! cells is `CELLS_PER_SECOND / allowed_rate`: changing the cost changes the
//! rate at once, without a burst.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weir_core::config::{ConfigError, Validate};
use weir_core::InternalEvent;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use weir_schemas::Priority;

/// Cells per second of the governor limiter; an event costs
/// `CELLS_PER_SECOND / allowed rate` cells, so allowed rates from one event
/// per second up to a million are expressed exactly enough.
pub const CELLS_PER_SECOND: u32 = 1_000_000;

/// Settings of the lag-aware limiter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// Off by default: a producer without the lag signal runs at full rate.
    pub enabled: bool,
    /// Consumer group whose lag paces the producer.
    pub group: String,
    /// Lag per partition under which the producer runs at full rate.
    pub threshold: u64,
    /// Lowest fraction of the offered sheddable rate that always passes (so
    /// that access data never stops completely).
    pub min_fraction: f64,
    /// Proportional gain of the controller.
    pub kp: f64,
    /// Integral gain, per second.
    pub ki: f64,
    /// A signal older than this is ignored and the producer runs at full
    /// rate (the exporter is down: fail open, never silently starve).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            enabled: false,
            group: String::new(),
            threshold: 200,
            min_fraction: 0.05,
            kp: 0.3,
            ki: 0.05,
            stale_after: Duration::from_secs(30),
        }
    }
}

impl Validate for LimiterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.threshold == 0 {
            return Err(ConfigError::new("limiter.threshold", "must be at least 1"));
        }
        if !(self.min_fraction > 0.0 && self.min_fraction <= 1.0) {
            return Err(ConfigError::new(
                "limiter.min_fraction",
                "must be in (0, 1]",
            ));
        }
        if !(self.kp.is_finite() && self.kp >= 0.0) {
            return Err(ConfigError::new(
                "limiter.kp",
                "must be finite and non-negative",
            ));
        }
        if !(self.ki.is_finite() && self.ki >= 0.0) {
            return Err(ConfigError::new(
                "limiter.ki",
                "must be finite and non-negative",
            ));
        }
        Ok(())
    }
}

/// What the limiter decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Admit,
    /// Send it: its priority is never limited.
    Exempt,
    /// Drop it (counted): consumers are behind and it is sheddable.
    Shed,
}

impl Decision {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Admit => "admitted",
            Decision::Exempt => "exempt",
            Decision::Shed => "shed",
        }
    }
}

#[derive(Debug)]
struct Control {
    integral: f64,
    fraction: f64,
    last_update: Option<Instant>,
    offered_at_update: u64,
    offered_rate: f64,
}

/// The limiter a producer consults for every event. Cheap to share
/// (`Arc`); `decide` takes no lock.
pub struct LagLimiter {
    cfg: LimiterConfig,
    governor: DefaultDirectRateLimiter,
    /// Cells per sheddable event; 0 = not limiting.
    cost: AtomicU32,
    /// Sheddable events offered so far (to measure the offered rate).
    offered: AtomicU64,
    /// When the last signal arrived, as ms since `epoch`.
    updated_ms: AtomicU64,
    epoch: Instant,
    control: Mutex<Control>,
}

impl LagLimiter {
    /// A limiter at full rate until the first signal.
    pub fn new(cfg: LimiterConfig) -> Self {
        let per_second = NonZeroU32::new(CELLS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        LagLimiter {
            cfg,
            governor: RateLimiter::direct(Quota::per_second(per_second)),
            cost: AtomicU32::new(0),
            offered: AtomicU64::new(0),
            updated_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            control: Mutex::new(Control {
                integral: 1.0,
                fraction: 1.0,
                last_update: None,
                offered_at_update: 0,
                offered_rate: 0.0,
            }),
        }
    }

    /// Fraction of the offered sheddable rate that currently passes.
    pub fn fraction(&self) -> f64 {
        self.control
            .lock()
            .map(|c| c.fraction)
            .unwrap_or_else(|p| p.into_inner().fraction)
    }

    /// Feeds a lag signal: `lag_per_partition` of the consuming group, read
    /// at `now`. Updates the fraction and the cost of a sheddable event.
    pub fn update(&self, lag_per_partition: f64, now: Instant) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let offered = self.offered.load(Ordering::Relaxed);
        let dt = c
            .last_update
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        if dt > 0.0 {
            let rate = (offered - c.offered_at_update) as f64 / dt;
            // Smooth the offered rate over a few updates; it sets the scale.
            c.offered_rate = if c.offered_rate == 0.0 {
                rate
            } else {
                0.5 * c.offered_rate + 0.5 * rate
            };
        }
        let threshold = self.cfg.threshold.max(1) as f64;
        let error = (0.75 * threshold - lag_per_partition.max(0.0)) / threshold;
        let min = self.cfg.min_fraction.clamp(0.0, 1.0);
        c.integral = (c.integral + self.cfg.ki * error * dt).clamp(min, 1.0);
        // Full rate while lag is under the threshold and the integral says so.
        c.fraction = if lag_per_partition <= threshold && c.integral >= 1.0 {
            1.0
        } else {
            (c.integral + self.cfg.kp * error).clamp(min, 1.0)
        };
        c.last_update = Some(now);
        c.offered_at_update = offered;
        let cost = if c.fraction >= 1.0 {
            0
        } else {
            // Allowed events per second; at least one.
            let allowed = (c.fraction * c.offered_rate).max(1.0);
            (CELLS_PER_SECOND as f64 / allowed)
                .ceil()
                .min(CELLS_PER_SECOND as f64) as u32
        };
        self.cost.store(cost, Ordering::Relaxed);
        self.updated_ms.store(
            now.saturating_duration_since(self.epoch).as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        crate::events::LimiterUpdated {
            fraction: c.fraction,
            lag_per_partition,
        }
        .emit();
    }

    /// Decides for one event of `kind` with `priority`, and counts the
    /// decision in `weir_limiter_decisions_total{kind,decision}`.
    pub fn decide(&self, kind: &'static str, priority: Priority) -> Decision {
        let d = self.decide_at(priority, Instant::now());
        crate::events::LimiterDecided {
            kind,
            decision: d.as_str(),
        }
        .emit();
        d
    }

    fn decide_at(&self, priority: Priority, now: Instant) -> Decision {
        if priority == Priority::Critical {
            return Decision::Exempt;
        }
        if !self.cfg.enabled {
            return Decision::Admit;
        }
        self.offered.fetch_add(1, Ordering::Relaxed);
        let cost = self.cost.load(Ordering::Relaxed);
        let updated = self.updated_ms.load(Ordering::Relaxed);
        let age_ms = (now.saturating_duration_since(self.epoch).as_millis() as u64)
            .saturating_sub(updated.saturating_sub(1));
        let stale = updated == 0 || age_ms > self.cfg.stale_after.as_millis() as u64;
        let Some(cells) = NonZeroU32::new(cost) else {
            return Decision::Admit;
        };
        if stale {
            return Decision::Admit;
        }
        match self.governor.check_n(cells) {
            Ok(Ok(())) => Decision::Admit,
            _ => Decision::Shed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> LagLimiter {
        LagLimiter::new(LimiterConfig {
            enabled: true,
            ..LimiterConfig::default()
        })
    }

    /// Simulates a topic whose consumers take `consume` per second while
    /// producers offer `offered` per second, the signal arriving every
    /// `interval` and describing the lag `delay` earlier. Returns the lag
    /// over time.
    fn closed_loop(offered: f64, consume: f64, delay: f64, secs: f64) -> Vec<(f64, f64, f64)> {
        let l = limiter();
        let start = Instant::now();
        let (dt, interval) = (0.01, 0.5);
        let (mut lag, mut t, mut next) = (0.0f64, 0.0f64, 0.0f64);
        let mut history: Vec<(f64, f64)> = Vec::new();
        let mut out = Vec::new();
        while t < secs {
            // Offer this step's events; count what passes.
            let n = (offered * dt).round() as usize;
            let mut admitted = 0;
            for _ in 0..n {
                l.offered.fetch_add(1, Ordering::Relaxed);
                if l.fraction() >= 1.0 || rand_admit(&l) {
                    admitted += 1;
                }
            }
            lag = (lag + admitted as f64 - consume * dt).max(0.0);
            history.push((t, lag));
            if t >= next {
                let seen = history
                    .iter()
                    .rev()
                    .find(|(ht, _)| *ht <= t - delay)
                    .map_or(0.0, |h| h.1);
                l.update(seen, start + Duration::from_secs_f64(t));
                next += interval;
            }
            out.push((t, lag, l.fraction()));
            t += dt;
        }
        out
    }

    /// Deterministic stand-in for the governor in simulated time: admit a
    /// share `fraction` of events by error diffusion.
    fn rand_admit(l: &LagLimiter) -> bool {
        thread_local!(static ACC: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) });
        let f = l.fraction();
        ACC.with(|a| {
            let v = a.get() + f;
            if v >= 1.0 {
                a.set(v - 1.0);
                true
            } else {
                a.set(v);
                false
            }
        })
    }

    #[test]
    fn settles_under_the_threshold_without_oscillating() {
        for delay in [0.3, 1.0] {
            let run = closed_loop(400.0, 200.0, delay, 60.0);
            let tail: Vec<_> = run.iter().filter(|(t, _, _)| *t > 30.0).collect();
            let (lo, hi) = tail.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (_, l, _)| {
                (lo.min(*l), hi.max(*l))
            });
            assert!(hi <= 200.0, "delay {delay}: lag {lo}..{hi} in the tail");
            assert!(hi - lo < 40.0, "delay {delay}: still swinging {lo}..{hi}");
            let f = tail.last().map(|x| x.2).unwrap_or(0.0);
            assert!((f - 0.5).abs() < 0.05, "delay {delay}: fraction {f}");
        }
    }

    #[test]
    fn full_rate_under_the_threshold_and_restored_after() {
        let l = limiter();
        let t0 = Instant::now();
        l.update(50.0, t0);
        assert_eq!(l.fraction(), 1.0);
        assert_eq!(l.decide_at(Priority::Sheddable, t0), Decision::Admit);
        // Far over: cut down.
        for i in 1..=20 {
            l.update(2_000.0, t0 + Duration::from_millis(500 * i));
        }
        assert!(l.fraction() < 0.2, "{}", l.fraction());
        // Lag gone: the integral climbs back to 1 and so does the rate.
        for i in 21..=200 {
            l.update(0.0, t0 + Duration::from_millis(500 * i));
        }
        assert_eq!(l.fraction(), 1.0);
    }

    #[test]
    fn critical_events_are_never_shed_and_stale_signals_fail_open() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..40 {
            for _ in 0..1_000 {
                l.offered.fetch_add(1, Ordering::Relaxed);
            }
            l.update(10_000.0, t0 + Duration::from_millis(500 * i));
        }
        let now = t0 + Duration::from_millis(500 * 40);
        assert_eq!(l.decide_at(Priority::Critical, now), Decision::Exempt);
        let shed = (0..1_000)
            .filter(|_| l.decide_at(Priority::Sheddable, Instant::now()) == Decision::Shed)
            .count();
        // 2,000/s offered, floor 5 % → 100/s allowed; the governor's burst is
        // one second of that, so about 100 of 1,000 back-to-back events pass.
        assert!(
            (850..=920).contains(&shed),
            "sheddable events pass the cut: {shed} shed"
        );
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(l.decide_at(Priority::Sheddable, later), Decision::Admit);
    }
}
