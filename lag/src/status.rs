//! Status of a partition, and of a group, from a sliding window of
//! observations.
//!
//! A single reading of lag says little: 10,000 messages behind is fine for a
//! consumer that is catching up and alarming for one that stopped. The
//! window keeps each partition's recent (time, committed offset, log end)
//! readings and judges the trend:
//!
//! - `rewinding`: the committed offset went backwards (a reset, or a member
//!   committing stale offsets);
//! - `stopped`: lag > 0, no member in the group and the committed offset has
//!   not moved: nobody is consuming;
//! - `stalled`: lag > 0, members present, and the committed offset has not
//!   moved for a whole window: a member is stuck;
//! - `warning`: the consumer moves but falls behind: every reading in the
//!   second half of the window is above every reading in the first half;
//! - `ok`: anything else, in particular a partition with no lag. An idle
//!   topic (nothing produced, nothing to consume) is therefore always ok.
//!
//! Time is unix milliseconds, passed in, so that the rules are tested on
//! plain data.

use std::collections::VecDeque;

pub use weir_schemas::LagStatus;

/// One reading of a partition for a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Unix time, ms.
    pub at_ms: i64,
    /// Committed offset (`None`: never committed).
    pub committed: Option<i64>,
    /// Log-end offset.
    pub end: i64,
}

impl Observation {
    /// max(0, end − committed); `None` when never committed.
    pub fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.end - c).max(0))
    }
}

/// The recent readings of one partition for one group.
#[derive(Debug, Clone)]
pub struct LagWindow {
    window_ms: i64,
    obs: VecDeque<Observation>,
    /// While the partition has never been committed: the log end at the
    /// first such reading, and when the log first grew past it. Records
    /// that arrived while we watched and were never committed for a whole
    /// window mean a member that is stuck on them (a wedged first batch), not
    /// an idle topic; kept outside the sliding window so that a wedge does
    /// not turn `ok` again once the traffic stops.
    uncommitted: Option<Uncommitted>,
}

/// See [`LagWindow::uncommitted`].
#[derive(Debug, Clone, Copy)]
struct Uncommitted {
    end_at_first: i64,
    grew_at_ms: Option<i64>,
}

impl LagWindow {
    /// A window `window_ms` long.
    pub fn new(window_ms: i64) -> Self {
        LagWindow {
            window_ms: window_ms.max(1),
            obs: VecDeque::new(),
            uncommitted: None,
        }
    }

    /// Adds a reading and forgets those no longer needed: the window keeps
    /// one reading older than its start, so that "not moving for a whole
    /// window" can be told from "just started watching".
    pub fn push(&mut self, o: Observation) {
        if self.obs.back().is_some_and(|l| o.at_ms < l.at_ms) {
            return;
        }
        match (o.committed, &mut self.uncommitted) {
            (Some(_), u) => *u = None,
            (None, None) => {
                self.uncommitted = Some(Uncommitted {
                    end_at_first: o.end,
                    grew_at_ms: None,
                })
            }
            (None, Some(u)) => {
                if u.grew_at_ms.is_none() && o.end > u.end_at_first {
                    u.grew_at_ms = Some(o.at_ms);
                }
            }
        }
        self.obs.push_back(o);
        let start = o.at_ms - self.window_ms;
        while self.obs.len() > 2 && self.obs[1].at_ms <= start {
            self.obs.pop_front();
        }
    }

    /// Time covered by the readings, ms.
    pub fn span_ms(&self) -> i64 {
        match (self.obs.front(), self.obs.back()) {
            (Some(a), Some(b)) => b.at_ms - a.at_ms,
            _ => 0,
        }
    }

    /// The latest reading.
    pub fn last(&self) -> Option<&Observation> {
        self.obs.back()
    }

    /// Judges the partition; `has_members` tells whether the group has any
    /// member at the latest reading.
    pub fn status(&self, has_members: bool) -> LagStatus {
        let Some(last) = self.obs.back() else {
            return LagStatus::Ok;
        };
        let committed: Vec<i64> = self.obs.iter().filter_map(|o| o.committed).collect();
        if committed.windows(2).any(|w| w[1] < w[0]) {
            return LagStatus::Rewinding;
        }
        if last.committed.is_none() {
            // Never committed. Records produced since we started watching
            // that nobody committed: with members, stalled once a whole
            // window passed; without, stopped. An idle topic (nothing new),
            // or a group that joined at the end and has had nothing to do,
            // is fine.
            let grew = self.uncommitted.and_then(|u| u.grew_at_ms);
            return match grew {
                Some(_) if !has_members => LagStatus::Stopped,
                Some(t) if last.at_ms - t >= self.window_ms => LagStatus::Stalled,
                _ => LagStatus::Ok,
            };
        }
        let lag = match last.lag() {
            Some(l) if l > 0 => l,
            _ => return LagStatus::Ok,
        };
        let moved = committed.first() != committed.last();
        if !has_members && !moved {
            return LagStatus::Stopped;
        }
        let full = self.span_ms() >= self.window_ms;
        if full && !moved {
            return LagStatus::Stalled;
        }
        if full && self.obs.len() >= 4 && lag > 0 {
            let mid = self.obs[0].at_ms + self.span_ms() / 2;
            let lags = |first: bool| {
                self.obs
                    .iter()
                    .filter(move |o| (o.at_ms <= mid) == first)
                    .filter_map(Observation::lag)
            };
            let early_max = lags(true).max();
            let late_min = lags(false).min();
            if let (Some(a), Some(b)) = (early_max, late_min) {
                if b > a {
                    return LagStatus::Warning;
                }
            }
        }
        LagStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of 10 s fed one reading a second from (committed, end) pairs.
    fn judge(readings: &[(Option<i64>, i64)], members: bool) -> LagStatus {
        let mut w = LagWindow::new(10_000);
        for (i, &(committed, end)) in readings.iter().enumerate() {
            w.push(Observation {
                at_ms: i as i64 * 1_000,
                committed,
                end,
            });
        }
        w.status(members)
    }

    fn steady(n: usize, f: impl Fn(i64) -> (Option<i64>, i64)) -> Vec<(Option<i64>, i64)> {
        (0..n as i64).map(f).collect()
    }

    #[test]
    fn idle_topic_never_alarms() {
        // Nothing produced, nothing consumed, with and without members.
        let idle = steady(30, |_| (Some(500), 500));
        assert_eq!(judge(&idle, true), LagStatus::Ok);
        assert_eq!(judge(&idle, false), LagStatus::Ok);
        // Never committed and idle: nothing to judge.
        assert_eq!(judge(&steady(30, |_| (None, 0)), false), LagStatus::Ok);
        // Old records, never committed, nothing new (a group that joined at
        // the end of an idle topic): ok.
        assert_eq!(judge(&steady(30, |_| (None, 700)), true), LagStatus::Ok);
    }

    #[test]
    fn records_never_committed_for_a_window_are_stalled() {
        // A member stuck on its first batch: records arrive at 2 s, nothing
        // is ever committed.
        let r = steady(30, |i| (None, if i < 2 { 0 } else { 4 }));
        assert_eq!(judge(&r[..8], true), LagStatus::Ok, "too early to say");
        assert_eq!(judge(&r, true), LagStatus::Stalled);
        // Still stalled long after the traffic stopped (the growth is not
        // forgotten when it leaves the sliding window).
        let long = steady(100, |i| (None, if i < 2 { 0 } else { 4 }));
        assert_eq!(judge(&long, true), LagStatus::Stalled);
        // No member left: stopped.
        assert_eq!(judge(&r, false), LagStatus::Stopped);
        // The first commit clears it.
        let mut healed = r.clone();
        healed.push((Some(4), 4));
        assert_eq!(judge(&healed, true), LagStatus::Ok);
    }

    #[test]
    fn keeping_up_with_jitter_is_ok() {
        let r = steady(30, |i| (Some(i * 100 - (i % 3) * 40), i * 100));
        assert_eq!(judge(&r, true), LagStatus::Ok);
    }

    #[test]
    fn growing_lag_warns() {
        // Produces 100/s, consumes 60/s.
        let r = steady(30, |i| (Some(i * 60), i * 100));
        assert_eq!(judge(&r, true), LagStatus::Warning);
        // Not before a whole window was seen.
        assert_eq!(judge(&r[..5], true), LagStatus::Ok);
    }

    #[test]
    fn stuck_member_is_stalled_after_a_window() {
        let r = steady(30, |i| (Some(1_000), 1_000 + i * 10));
        assert_eq!(judge(&r, true), LagStatus::Stalled);
        assert_eq!(judge(&r[..5], true), LagStatus::Ok, "too early to say");
        // Stuck with lag on an idle topic is stalled too: there is work left.
        let r = steady(30, |_| (Some(900), 1_000));
        assert_eq!(judge(&r, true), LagStatus::Stalled);
    }

    #[test]
    fn no_member_with_lag_is_stopped_at_once() {
        let r = steady(3, |i| (Some(1_000), 1_000 + i * 10));
        assert_eq!(judge(&r, false), LagStatus::Stopped);
        assert_eq!(judge(&[(Some(10), 20)], false), LagStatus::Stopped);
        // A group committing by assignment (no members) that moves is judged
        // like any other.
        let r = steady(30, |i| (Some(i * 100), i * 100 + 5));
        assert_eq!(judge(&r, false), LagStatus::Ok);
    }

    #[test]
    fn offsets_going_back_is_rewinding_while_in_the_window() {
        let mut r = steady(10, |i| (Some(1_000 + i * 10), 1_100 + i * 10));
        r.push((Some(0), 1_200));
        assert_eq!(judge(&r, true), LagStatus::Rewinding);
        // Once the reset leaves the window, the status follows the new trend.
        let later: Vec<_> = (0..30).map(|i| (Some(i * 100), i * 100 + 1)).collect();
        let mut w = LagWindow::new(10_000);
        for (i, &(c, e)) in r.iter().chain(later.iter()).enumerate() {
            w.push(Observation {
                at_ms: i as i64 * 1_000,
                committed: c,
                end: e,
            });
        }
        assert_eq!(w.status(true), LagStatus::Ok);
    }

    #[test]
    fn window_is_bounded_and_keeps_an_anchor() {
        let mut w = LagWindow::new(5_000);
        for i in 0..1_000 {
            w.push(Observation {
                at_ms: i * 1_000,
                committed: Some(0),
                end: 0,
            });
        }
        assert!(w.obs.len() <= 7, "{}", w.obs.len());
        assert!(w.span_ms() >= 5_000);
        assert!(LagStatus::Stopped > LagStatus::Ok);
    }
}
