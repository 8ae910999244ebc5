//! Lag in seconds, from a per-partition table of (log-end offset, time)
//! samples.
//!
//! Kafka gives lag in messages; operators think in time ("we are 40 s
//! behind"). The table records when the log end reached each offset, so the
//! time the record at the committed offset was appended can be read off it by
//! linear interpolation between the two samples around it. Samples come from
//! our own polls and, to answer a one-shot command without history, from the
//! broker's time index (`ListOffsets` by timestamp).
//!
//! Guards: a flat stretch (no records appended between two samples) keeps
//! only its first and last sample, and interpolation only ever divides by the
//! offset difference of two samples that bracket the committed offset, which
//! is never zero. A committed offset older than every sample gives a lower
//! bound, flagged as such, instead of a made-up figure.

use std::collections::VecDeque;

use serde::Serialize;

/// Samples kept per partition; when full, the oldest are dropped. At one
/// sample every 2 s this covers about 17 minutes of producing (flat
/// stretches cost two samples, whatever their length).
pub const MAX_SAMPLES: usize = 512;

/// The log-end offset of one partition at known times, oldest first, with
/// both coordinates non-decreasing.
#[derive(Debug, Clone, Default)]
pub struct EndOffsetHistory {
    /// (unix time in ms, log-end offset).
    samples: VecDeque<(i64, i64)>,
}

/// How far behind the committed offset is, in time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LagTime {
    /// Seconds between the append of the record at the committed offset
    /// (the next one the group will read) and now.
    pub seconds: f64,
    /// The committed offset is older than every sample: the lag is at least
    /// `seconds`, perhaps more.
    pub at_least: bool,
}

impl EndOffsetHistory {
    /// Records the log end at `at_ms`. A log end that went backwards means the
    /// topic was recreated or truncated: the old samples describe another
    /// log and are dropped. A time that went backwards (clock step) is
    /// ignored.
    pub fn record(&mut self, at_ms: i64, end: i64) {
        if let Some(&(t, e)) = self.samples.back() {
            if end < e {
                self.samples.clear();
            } else if at_ms < t {
                return;
            } else if end == e {
                // Flat stretch: keep its first sample and move its last one.
                let n = self.samples.len();
                if n >= 2 && self.samples[n - 2].1 == e {
                    self.samples[n - 1].0 = at_ms;
                    return;
                }
            }
        }
        self.samples.push_back((at_ms, end));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Adds older points taken from the broker's time index: `(t, offset)`
    /// meaning "the first record appended at or after `t` has `offset`", i.e.
    /// the log end at `t`. Points that contradict the table are skipped.
    pub fn seed(&mut self, points: Vec<(i64, i64)>) {
        // Our own polls are the truth: a point must agree with every one.
        let mut merged: Vec<(i64, i64)> = points
            .into_iter()
            .filter(|&(t, e)| {
                e >= 0
                    && self
                        .samples
                        .iter()
                        .all(|&(ts, es)| (ts >= t && es >= e) || (ts <= t && es <= e))
            })
            .collect();
        merged.extend(self.samples.iter().copied());
        merged.sort_unstable();
        self.samples.clear();
        for (t, e) in merged {
            if self.samples.back().is_some_and(|&(_, last)| e < last) {
                continue;
            }
            self.record(t, e);
        }
    }

    /// Samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.samples.iter().copied()
    }

    /// Estimated unix time (ms) at which the record at `offset` was appended,
    /// and whether it is only an upper bound (the offset predates the table).
    fn appended_at(&self, offset: i64) -> Option<(f64, bool)> {
        let first = *self.samples.front()?;
        // First sample whose end is past the offset: the record was appended
        // between the sample before it and this one.
        let j = self.samples.iter().position(|&(_, e)| e > offset);
        match j {
            None => self.samples.back().map(|&(t, _)| (t as f64, false)),
            Some(0) => Some((first.0 as f64, true)),
            Some(j) => {
                let (t0, e0) = self.samples[j - 1];
                let (t1, e1) = self.samples[j];
                // e1 > offset >= e0, so e1 - e0 >= 1: no division by zero.
                let frac = (offset + 1 - e0) as f64 / (e1 - e0) as f64;
                Some((t0 as f64 + frac * (t1 - t0) as f64, false))
            }
        }
    }

    /// Lag in seconds of a group whose committed offset is `committed` when
    /// the log end is `end`, at `now_ms`. `None` without any sample.
    pub fn lag_time(&self, committed: i64, end: i64, now_ms: i64) -> Option<LagTime> {
        if committed >= end {
            return Some(LagTime {
                seconds: 0.0,
                at_least: false,
            });
        }
        let (at, at_least) = self.appended_at(committed)?;
        Some(LagTime {
            seconds: ((now_ms as f64 - at) / 1000.0).max(0.0),
            at_least,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(points: &[(i64, i64)]) -> EndOffsetHistory {
        let mut h = EndOffsetHistory::default();
        for &(t, e) in points {
            h.record(t, e);
        }
        h
    }

    #[test]
    fn interpolates_between_samples() {
        // 100 records per second from t = 10 s.
        let h = history(&[(10_000, 0), (11_000, 100), (12_000, 200), (13_000, 300)]);
        // Record 149 was appended when the end reached 150: t = 11.5 s.
        let l = h.lag_time(149, 300, 13_000).expect("samples");
        assert!((l.seconds - 1.5).abs() < 1e-9, "{l:?}");
        assert!(!l.at_least);
        // Caught up: zero, whatever the table.
        assert_eq!(h.lag_time(300, 300, 99_000).map(|l| l.seconds), Some(0.0));
        assert_eq!(h.lag_time(301, 300, 99_000).map(|l| l.seconds), Some(0.0));
    }

    #[test]
    fn flat_stretches_keep_two_samples_and_never_divide_by_zero() {
        // Nothing produced between 1 s and 60 s, then a burst.
        let mut h = history(&[(0, 0), (1_000, 50)]);
        for t in (2_000..=60_000).step_by(1_000) {
            h.record(t, 50);
        }
        h.record(61_000, 150);
        assert_eq!(
            h.samples().collect::<Vec<_>>(),
            vec![(0, 0), (1_000, 50), (60_000, 50), (61_000, 150)]
        );
        // Record 50 came in the burst, after the idle minute, not during it.
        let l = h.lag_time(50, 150, 61_000).expect("samples");
        assert!(l.seconds <= 1.0 && l.seconds >= 0.0, "{l:?}");
        // Record 49 came before the idle stretch.
        let l = h.lag_time(49, 150, 61_000).expect("samples");
        assert!((l.seconds - 60.0).abs() < 1e-9, "{l:?}");
        // A single flat sample only.
        let h = history(&[(5_000, 10), (5_000, 10)]);
        let l = h.lag_time(3, 10, 8_000).expect("one sample");
        assert!(l.at_least && (l.seconds - 3.0).abs() < 1e-9, "{l:?}");
        assert!(EndOffsetHistory::default().lag_time(0, 5, 0).is_none());
    }

    #[test]
    fn older_than_the_table_is_a_lower_bound() {
        let h = history(&[(10_000, 100), (11_000, 200)]);
        let l = h.lag_time(20, 200, 12_000).expect("samples");
        assert!(l.at_least);
        assert!((l.seconds - 2.0).abs() < 1e-9);
    }

    #[test]
    fn recreated_topic_and_clock_steps() {
        let mut h = history(&[(0, 1_000), (1_000, 2_000)]);
        h.record(2_000, 10); // log end went back: another log
        assert_eq!(h.samples().collect::<Vec<_>>(), vec![(2_000, 10)]);
        h.record(1_500, 20); // clock stepped back: ignored
        assert_eq!(h.samples().count(), 1);
    }

    #[test]
    fn seeds_from_the_time_index_merge_with_polls() {
        let mut h = history(&[(100_000, 1_000)]);
        // The broker says: end was 0 at 0 s and 500 at 50 s; one contradictory
        // point (end 2_000 at 20 s) is skipped.
        h.seed(vec![(50_000, 500), (0, 0), (20_000, 2_000)]);
        assert_eq!(
            h.samples().collect::<Vec<_>>(),
            vec![(0, 0), (50_000, 500), (100_000, 1_000)]
        );
        let l = h.lag_time(749, 1_000, 100_000).expect("samples");
        assert!((l.seconds - 25.0).abs() < 1e-9, "{l:?}");
    }

    #[test]
    fn bounded() {
        let mut h = EndOffsetHistory::default();
        for i in 0..(MAX_SAMPLES as i64 * 3) {
            h.record(i, i);
        }
        assert_eq!(h.samples().count(), MAX_SAMPLES);
    }
}
