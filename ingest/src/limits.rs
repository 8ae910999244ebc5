//! Per-node limits: a governor keyed limiter caps the reports each node id
//! may have accepted, so a runaway (or impersonating) agent cannot flood
//! the health topic. Refusals are counted in `weir_ingest_records_total
//! {outcome="rate_limited"}` and answered 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Reports per node id: `rate` per second sustained, `burst` at once.
pub struct NodeLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl NodeLimiter {
    /// A limiter of `rate` reports per second per node id, `burst` at once.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        NodeLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` when `node_id` may report now; else how long until it may.
    pub fn check(&self, node_id: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&node_id.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets node ids whose state is back at a full burst (they would be
    /// treated the same if seen anew), and says how many remain. Called
    /// periodically, so memory follows the node ids of the last seconds,
    /// not of every id ever sent.
    pub fn prune(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_its_own_budget() {
        let l = NodeLimiter::new(
            NonZeroU32::new(1).expect("1"),
            NonZeroU32::new(3).expect("3"),
        );
        for _ in 0..3 {
            l.check("a").expect("within the burst");
        }
        let wait = l.check("a").expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        l.check("b").expect("another node is not affected");
        assert_eq!(l.prune(), 2);
    }
}
