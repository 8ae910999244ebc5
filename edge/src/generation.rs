//! Purge generations: a number per object that every purge (and upload)
//! raises, so that a fill which started before a purge can tell, when it
//! lands, that what it read is no longer wanted.
//!
//! A fill records the generation of its key when it starts; its flight is
//! keyed by (key, generation), so requests after a purge never join it; and
//! whatever it stores (memory tier, metadata, Redis) is checked against the
//! generation *after* storing and undone if a purge came in between. (Purge
//! raises the generation first and invalidates second, so either the purge
//! removes what the fill stored, or the fill sees the new generation.)
//!
//! Only keys purged recently need an entry: older entries are pruned, and
//! the floor (the generation every key has at least) is raised past them,
//! which at worst keeps a fill from being cached, never lets a stale one in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before pruning is considered.
const PRUNE_ABOVE: usize = 10_000;
/// Entries younger than this are never pruned: a fill in flight may still
/// depend on them (fills are bounded by the origin's timeout, far below).
const KEEP_FOR: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    next: u64,
    floor: u64,
    keys: HashMap<String, (u64, Instant)>,
}

/// Purge generations by cache id.
#[derive(Default)]
pub struct Generations {
    state: Mutex<State>,
}

impl Generations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of `id` now.
    pub fn current(&self, id: &str) -> u64 {
        let s = self.lock();
        s.keys.get(id).map_or(s.floor, |(g, _)| (*g).max(s.floor))
    }

    /// A purge of one object: raises its generation.
    pub fn bump(&self, id: &str) {
        let mut s = self.lock();
        s.next += 1;
        let g = s.next;
        s.keys.insert(id.to_string(), (g, Instant::now()));
        if s.keys.len() > PRUNE_ABOVE {
            let mut floor = s.floor;
            s.keys.retain(|_, (g, at)| {
                let keep = at.elapsed() < KEEP_FOR;
                if !keep {
                    floor = floor.max(*g);
                }
                keep
            });
            s.floor = floor;
        }
    }

    /// A purge of many objects (a prefix): raises every generation.
    pub fn bump_all(&self) {
        let mut s = self.lock();
        s.next += 1;
        s.floor = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_raise_generations_and_only_of_their_keys() {
        let g = Generations::default();
        let (a0, b0) = (g.current("a"), g.current("b"));
        g.bump("a");
        assert!(g.current("a") > a0);
        assert_eq!(g.current("b"), b0);
        let a1 = g.current("a");
        g.bump_all();
        assert!(g.current("a") > a1 && g.current("b") > b0);
    }

    #[test]
    fn pruning_never_lowers_a_generation() {
        let g = Generations::default();
        g.bump("old");
        let old = g.current("old");
        // Pretend the entry is long past; then force a prune.
        let Some(long_ago) = Instant::now().checked_sub(2 * KEEP_FOR) else {
            return; // a clock younger than that: nothing to test
        };
        g.lock().keys.get_mut("old").expect("entry").1 = long_ago;
        for i in 0..=PRUNE_ABOVE {
            g.bump(&format!("k{i}"));
        }
        assert!(!g.lock().keys.contains_key("old"));
        assert!(g.current("old") >= old);
    }
}
