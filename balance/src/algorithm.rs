//! The balancing algorithms. Each picks one of a pool's usable backends;
//! their state (a counter, smooth weights, a hash ring) is rebuilt when the
//! pool's membership changes, while the backends' own counters (in flight,
//! latency) live on the backends and survive it.
//!
//! - `round_robin`: each in turn.
//! - `weighted`: nginx's smooth weighted round robin: each pick adds every
//!   backend's weight to its current weight, takes the largest and
//!   subtracts the total from it; shares follow the weights exactly over
//!   any window of `sum(weights)` picks, interleaved. Weight 0 drains.
//! - `dynamic`: the same with weights from each node's reported headroom
//!   (idle CPU, run queue), smoothed, ramped up after it (re)joins.
//! - `least_conn`: fewest in flight per unit of weight.
//! - `ip_hash`: a Ketama ring of the client address (160 points per unit
//!   of weight), walking past backends above `hash_load_factor` × the mean
//!   load (consistent hashing with bounded loads).
//! - `least_time`: power of two choices on peak-EWMA latency × (in flight
//!   + 1).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{hash64, Backend};

/// An algorithm's name in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `round_robin`.
    RoundRobin,
    /// `weighted`.
    Weighted,
    /// `dynamic`.
    Dynamic,
    /// `least_conn`.
    LeastConn,
    /// `ip_hash`.
    IpHash,
    /// `least_time`.
    LeastTime,
}

/// Every algorithm's name, in the order the docs list them.
pub const NAMES: [&str; 6] = [
    "round_robin",
    "weighted",
    "dynamic",
    "least_conn",
    "ip_hash",
    "least_time",
];

impl Algorithm {
    /// Parses a configured name.
    pub fn parse(name: &str) -> Result<Algorithm, String> {
        Ok(match name {
            "round_robin" => Algorithm::RoundRobin,
            "weighted" => Algorithm::Weighted,
            "dynamic" => Algorithm::Dynamic,
            "least_conn" => Algorithm::LeastConn,
            "ip_hash" => Algorithm::IpHash,
            "least_time" => Algorithm::LeastTime,
            other => {
                return Err(format!(
                    "{other:?} is not an algorithm (one of {})",
                    NAMES.join(", ")
                ))
            }
        })
    }

    /// The configured name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::Dynamic => "dynamic",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
            Algorithm::LeastTime => "least_time",
        }
    }
}

/// Points on the ring per unit of weight (Ketama's 160).
pub const POINTS_PER_WEIGHT: u32 = 160;

/// A picker's state for one membership of a pool.
#[derive(Debug)]
pub struct Picker {
    algorithm: Algorithm,
    rr: AtomicUsize,
    /// Smooth WRR current weights, by member index.
    current: Mutex<Vec<i64>>,
    /// ip_hash ring: (point, member index), sorted.
    ring: Vec<(u64, usize)>,
    rng: AtomicU64,
    slow_start: Duration,
    load_factor: f64,
}

/// Why no backend could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// The pool has no member.
    Empty,
    /// Every member is ejected or drained.
    Unavailable,
}

impl Picker {
    /// A picker for `members`.
    pub fn new(
        algorithm: Algorithm,
        members: &[Arc<Backend>],
        slow_start: Duration,
        load_factor: f64,
    ) -> Picker {
        let ring = if algorithm == Algorithm::IpHash {
            build_ring(members)
        } else {
            Vec::new()
        };
        Picker {
            algorithm,
            rr: AtomicUsize::new(0),
            current: Mutex::new(vec![0; members.len()]),
            ring,
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ members.len() as u64),
            slow_start,
            load_factor,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A pseudo-random number (SplitMix64 over an atomic counter): cheap,
    /// lock-free, good enough to pick two backends.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Picks a member index among those `usable` says may be used, for a
    /// client whose address hashes to `client` (ip_hash only).
    pub fn pick(
        &self,
        members: &[Arc<Backend>],
        usable: &dyn Fn(usize) -> bool,
        client: u64,
        now: Instant,
    ) -> Result<usize, NoBackend> {
        if members.is_empty() {
            return Err(NoBackend::Empty);
        }
        let n = members.len();
        let found = match self.algorithm {
            Algorithm::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| usable(*i))
            }
            Algorithm::Weighted => self.smooth(n, usable, |i| f64::from(members[i].weight())),
            Algorithm::Dynamic => self.smooth(n, usable, |i| {
                members[i].dynamic_weight(now, self.slow_start)
            }),
            Algorithm::LeastConn => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, f64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    let w = members[i].weight();
                    if w == 0 || !usable(i) {
                        continue;
                    }
                    let load = (members[i].inflight() + 1) as f64 / f64::from(w);
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
                best.map(|(i, _)| i)
            }
            Algorithm::IpHash => self.ring_pick(members, usable, client),
            Algorithm::LeastTime => {
                let ok: Vec<usize> = (0..n)
                    .filter(|i| usable(*i) && members[*i].weight() > 0)
                    .collect();
                match ok.len() {
                    0 => None,
                    1 => Some(ok[0]),
                    m => {
                        let r = self.random();
                        let a = (r % m as u64) as usize;
                        let mut b = ((r >> 32) % (m as u64 - 1)) as usize;
                        if b >= a {
                            b += 1;
                        }
                        let cost = |i: usize| {
                            members[i].latency_ns(now) * (members[i].inflight() + 1) as f64
                        };
                        let (x, y) = (ok[a], ok[b]);
                        Some(if cost(y) < cost(x) { y } else { x })
                    }
                }
            }
        };
        found.ok_or(NoBackend::Unavailable)
    }

    /// Smooth weighted round robin over `weight(i)` (nginx's).
    fn smooth(
        &self,
        n: usize,
        usable: &dyn Fn(usize) -> bool,
        weight: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.len() != n {
            cur.resize(n, 0);
        }
        let mut total: i64 = 0;
        let mut pick: Option<usize> = None;
        for i in 0..n {
            // Fixed point: thousandths of a unit of weight; below one
            // thousandth (0, NaN) the backend is drained.
            let w = (weight(i) * 1000.0).round();
            if w.is_nan() || w < 1.0 || !usable(i) {
                continue;
            }
            let w = w.min(1e12) as i64;
            cur[i] += w;
            total += w;
            if pick.is_none_or(|p| cur[i] > cur[p]) {
                pick = Some(i);
            }
        }
        let p = pick?;
        cur[p] -= total;
        Some(p)
    }

    fn ring_pick(
        &self,
        members: &[Arc<Backend>],
        usable: &dyn Fn(usize) -> bool,
        client: u64,
    ) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let ok: Vec<bool> = (0..members.len())
            .map(|i| usable(i) && members[i].weight() > 0)
            .collect();
        let count = ok.iter().filter(|o| **o).count();
        if count == 0 {
            return None;
        }
        let total: u64 = (0..members.len())
            .filter(|i| ok[*i])
            .map(|i| members[i].inflight())
            .sum();
        // Bounded loads: no backend above factor × the mean (this request
        // included).
        let cap = (self.load_factor * (total + 1) as f64 / count as f64).ceil() as u64;
        let start = self.ring.partition_point(|(p, _)| *p < client);
        let len = self.ring.len();
        let mut fallback = None;
        for k in 0..len {
            let (_, i) = self.ring[(start + k) % len];
            if !ok[i] {
                continue;
            }
            if members[i].inflight() < cap {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

/// The Ketama ring of `members`: `POINTS_PER_WEIGHT` × weight points each
/// (weight capped at 100), hashed from the backend's address and the
/// point's number, so a backend keeps its points whoever else is in the
/// pool.
pub fn build_ring(members: &[Arc<Backend>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, b) in members.iter().enumerate() {
        let points = POINTS_PER_WEIGHT * b.weight().min(100);
        for p in 0..points {
            ring.push((hash64(format!("{}-{p}", b.authority).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// The ring position of a client address.
pub fn client_hash(ip: &std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v) => hash64(&v.octets()),
        std::net::IpAddr::V6(v) => hash64(&v.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Source;
    use proptest::prelude::*;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Backend::new(
                    "t",
                    &format!("10.0.0.{}:80", i + 1),
                    Source::Static,
                    *w,
                ))
            })
            .collect()
    }

    fn counts(p: &Picker, m: &[Arc<Backend>], picks: usize) -> Vec<usize> {
        let mut c = vec![0; m.len()];
        let now = Instant::now();
        for _ in 0..picks {
            c[p.pick(m, &|_| true, 0, now).expect("a pick")] += 1;
        }
        c
    }

    fn picker(a: Algorithm, m: &[Arc<Backend>]) -> Picker {
        Picker::new(a, m, Duration::from_secs(10), 1.25)
    }

    #[test]
    fn weights_1_2_5_give_their_shares_over_8000_requests() {
        let m = backends(&[1, 2, 5]);
        let c = counts(&picker(Algorithm::Weighted, &m), &m, 8000);
        for (got, w) in c.iter().zip([1.0, 2.0, 5.0]) {
            let share = *got as f64 / 8000.0;
            assert!((share - w / 8.0).abs() < 0.02, "{c:?}");
        }
        // Smooth: the heavy backend never takes more than its share in a row.
        let p = picker(Algorithm::Weighted, &m);
        let seq: Vec<usize> = (0..8)
            .map(|_| p.pick(&m, &|_| true, 0, Instant::now()).expect("pick"))
            .collect();
        assert_eq!(seq.iter().filter(|i| **i == 2).count(), 5);
        assert!(
            !seq.windows(4).any(|w| w.iter().all(|i| *i == 2)),
            "{seq:?}"
        );
    }

    #[test]
    fn weight_zero_drains_and_all_zero_is_no_backend() {
        let m = backends(&[0, 3]);
        let c = counts(&picker(Algorithm::Weighted, &m), &m, 100);
        assert_eq!(c, vec![0, 100]);
        let m = backends(&[0, 0]);
        for a in [
            Algorithm::Weighted,
            Algorithm::Dynamic,
            Algorithm::LeastConn,
            Algorithm::IpHash,
            Algorithm::LeastTime,
        ] {
            assert_eq!(
                picker(a, &m).pick(&m, &|_| true, 7, Instant::now()),
                Err(NoBackend::Unavailable),
                "{a:?}"
            );
        }
        assert_eq!(
            picker(Algorithm::RoundRobin, &[]).pick(&[], &|_| true, 0, Instant::now()),
            Err(NoBackend::Empty)
        );
    }

    #[test]
    fn least_conn_and_least_time_move_traffic_from_a_slow_backend() {
        let m = backends(&[1, 1, 1]);
        let now = Instant::now();
        // Backend 0 holds 50 requests (slow to answer).
        let held: Vec<_> = (0..50).map(|_| m[0].start()).collect();
        let p = picker(Algorithm::LeastConn, &m);
        let mut guards = Vec::new();
        let mut c = [0; 3];
        for _ in 0..60 {
            let i = p.pick(&m, &|_| true, 0, now).expect("pick");
            c[i] += 1;
            guards.push(m[i].start());
        }
        assert_eq!(c[0], 0, "{c:?}");
        assert_eq!(c[1], 30);
        drop(held);

        let m = backends(&[1, 1, 1, 1]);
        for (i, b) in m.iter().enumerate() {
            let ms = if i == 0 { 200 } else { 1 + i as u64 };
            b.observe_latency(Duration::from_millis(ms), now);
        }
        let p = picker(Algorithm::LeastTime, &m);
        let c = counts(&p, &m, 4000);
        assert_eq!(c[0], 0, "the slow backend loses every comparison: {c:?}");
        assert!(c[1] > c[3], "faster backends win more: {c:?}");
    }

    #[test]
    fn ip_hash_keeps_a_client_and_moves_about_one_nth_when_a_node_leaves() {
        let m = backends(&[1, 1, 1, 1, 1]);
        let p = picker(Algorithm::IpHash, &m);
        let now = Instant::now();
        let clients: Vec<u64> = (0..1000u32)
            .map(|i| client_hash(&std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8])))
            .collect();
        let before: Vec<usize> = clients
            .iter()
            .map(|c| p.pick(&m, &|_| true, *c, now).expect("pick"))
            .collect();
        let again: Vec<usize> = clients
            .iter()
            .map(|c| p.pick(&m, &|_| true, *c, now).expect("pick"))
            .collect();
        assert_eq!(before, again, "a client stays on its node");
        // Node 2 leaves.
        let rest: Vec<Arc<Backend>> = m
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, b)| b.clone())
            .collect();
        let p2 = picker(Algorithm::IpHash, &rest);
        let moved = clients
            .iter()
            .zip(&before)
            .filter(|(c, b)| {
                let after = &rest[p2.pick(&rest, &|_| true, **c, now).expect("pick")];
                !Arc::ptr_eq(after, &m[**b])
            })
            .count();
        let on_removed = before.iter().filter(|b| **b == 2).count();
        assert_eq!(moved, on_removed, "only the removed node's clients move");
        assert!(
            (100..=320).contains(&moved),
            "about 1/5 of 1000 moved: {moved}"
        );
    }

    #[test]
    fn ip_hash_bounds_a_hot_nodes_load() {
        let m = backends(&[1, 1, 1, 1]);
        let p = picker(Algorithm::IpHash, &m);
        let now = Instant::now();
        let hot = client_hash(&"192.0.2.1".parse().expect("ip"));
        let home = p.pick(&m, &|_| true, hot, now).expect("pick");
        let mut guards = Vec::new();
        let mut c = [0; 4];
        for _ in 0..100 {
            let i = p.pick(&m, &|_| true, hot, now).expect("pick");
            c[i] += 1;
            guards.push(m[i].start());
        }
        // At most 1.25 × the mean (+1) on any node.
        for n in c {
            assert!(n <= 33, "{c:?}");
        }
        assert!(c[home] >= 25, "{c:?}");
    }

    #[test]
    fn slow_start_ramps_a_returning_node() {
        let m = backends(&[1, 1]);
        let now = Instant::now();
        let slow = Duration::from_secs(10);
        m[0].joined_at(now - Duration::from_secs(100));
        m[1].joined_at(now);
        let w0 = m[1].dynamic_weight(now, slow);
        let w5 = m[1].dynamic_weight(now + Duration::from_secs(5), slow);
        let w10 = m[1].dynamic_weight(now + Duration::from_secs(10), slow);
        assert!(
            (w0 - 0.1).abs() < 1e-6 && w0 < w5 && w5 < w10,
            "{w0} {w5} {w10}"
        );
        assert!((w10 - 1.0).abs() < 1e-6);
        let p = Picker::new(Algorithm::Dynamic, &m, slow, 1.25);
        let c = counts(&p, &m, 1100);
        assert_eq!(c, vec![1000, 100], "a tenth of the weight at first");
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_unusable() {
        let m = backends(&[1, 1, 1]);
        let p = picker(Algorithm::RoundRobin, &m);
        assert_eq!(counts(&p, &m, 300), vec![100, 100, 100]);
        let now = Instant::now();
        for _ in 0..10 {
            assert_ne!(p.pick(&m, &|i| i != 1, 0, now), Ok(1));
        }
        assert_eq!(p.pick(&m, &|_| false, 0, now), Err(NoBackend::Unavailable));
    }

    proptest! {
        #[test]
        fn smooth_weights_are_exact_over_a_cycle(weights in proptest::collection::vec(0u32..20, 1..8), cycles in 1usize..4) {
            let m = backends(&weights);
            let total: u32 = weights.iter().sum();
            let p = picker(Algorithm::Weighted, &m);
            if total == 0 {
                prop_assert_eq!(p.pick(&m, &|_| true, 0, Instant::now()), Err(NoBackend::Unavailable));
            } else {
                let c = counts(&p, &m, total as usize * cycles);
                for (got, w) in c.iter().zip(&weights) {
                    prop_assert_eq!(*got, *w as usize * cycles);
                }
            }
        }

        #[test]
        fn least_conn_picks_a_least_loaded_backend(load in proptest::collection::vec((0usize..20, 1u32..5), 1..6)) {
            let weights: Vec<u32> = load.iter().map(|(_, w)| *w).collect();
            let m = backends(&weights);
            let _held: Vec<_> = load.iter().enumerate()
                .flat_map(|(i, (n, _))| (0..*n).map(|_| m[i].start()).collect::<Vec<_>>())
                .collect();
            let p = picker(Algorithm::LeastConn, &m);
            let i = p.pick(&m, &|_| true, 0, Instant::now()).expect("pick");
            let cost = |j: usize| (m[j].inflight() + 1) as f64 / f64::from(m[j].weight());
            for j in 0..m.len() {
                prop_assert!(cost(i) <= cost(j));
            }
        }

        #[test]
        fn every_algorithm_picks_only_usable_backends(
            n in 1usize..8,
            mask in proptest::collection::vec(any::<bool>(), 8),
            client in any::<u64>(),
            a in 0usize..6,
        ) {
            let m = backends(&vec![1; n]);
            let alg = Algorithm::parse(NAMES[a]).expect("name");
            let p = picker(alg, &m);
            let usable = |i: usize| mask[i];
            match p.pick(&m, &usable, client, Instant::now()) {
                Ok(i) => prop_assert!(mask[i]),
                Err(e) => {
                    prop_assert_eq!(e, NoBackend::Unavailable);
                    prop_assert!(!mask[..n].iter().any(|x| *x));
                }
            }
        }

        #[test]
        fn ip_hash_is_stable_for_a_client(client in any::<u64>(), n in 1usize..10) {
            let m = backends(&vec![1; n]);
            let a = picker(Algorithm::IpHash, &m).pick(&m, &|_| true, client, Instant::now());
            let b = picker(Algorithm::IpHash, &m).pick(&m, &|_| true, client, Instant::now());
            prop_assert_eq!(a, b);
        }
    }
}
