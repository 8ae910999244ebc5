//! When the daily report fires, as pure functions of a time zone, a local
//! time of day and "now" (so a test can drive them over years in
//! milliseconds).
//!
//! The report of local day `D` fires at the configured local time on day
//! `D + 1`, and covers `[midnight of D, midnight of D + 1)` in the zone: 24
//! hours on most days, 23 or 25 on the days the clocks change. Everything is
//! computed as UTC instants:
//! - a local time that does not exist (the spring gap: 02:30 in Berlin on
//!   the last Sunday of March) is taken as the first instant after the gap,
//!   shifted by the gap's length (03:30), so the report still fires that
//!   day, once;
//! - a local time that exists twice (the autumn overlap) is taken at its
//!   first occurrence, so it fires once, not twice.

use chrono::{
    DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc,
};
use chrono_tz::Tz;

/// A daily schedule: the local time of day at which the previous local
/// day's report is sent, in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailySchedule {
    /// Zone whose days and clock the schedule follows.
    pub tz: Tz,
    /// Local time of day at which it fires.
    pub at: NaiveTime,
}

/// The UTC instant of the local date-time `t` in `tz`: the earlier one when
/// it exists twice, the same wall-clock offset past the gap when it does not
/// exist at all.
pub fn resolve(tz: Tz, t: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(x) => x.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            // Inside a gap: read `t` with the offset in force before the
            // gap, which moves it forward by the gap's length. The first
            // existing local minute after `t` marks the gap's end (gaps are
            // at most a few hours; a day bounds the search for the odd zone
            // that skipped a whole day).
            for m in 1..=(26 * 60) {
                let later = t + Duration::minutes(m);
                if let Some(x) = tz.from_local_datetime(&later).earliest() {
                    let before = x.with_timezone(&Utc) - Duration::seconds(1);
                    let off = tz
                        .offset_from_utc_datetime(&before.naive_utc())
                        .fix()
                        .local_minus_utc();
                    return (t - Duration::seconds(i64::from(off))).and_utc();
                }
            }
            // No zone has a gap this long; read the time as UTC.
            t.and_utc()
        }
    }
}

impl DailySchedule {
    /// A schedule in `tz` at `at`.
    pub fn new(tz: Tz, at: NaiveTime) -> Self {
        DailySchedule { tz, at }
    }

    /// When the report of local day `day` fires.
    pub fn fire_time(&self, day: NaiveDate) -> DateTime<Utc> {
        let next = day.succ_opt().unwrap_or(day);
        resolve(self.tz, next.and_time(self.at))
    }

    /// The UTC window `[start, end)` of local day `day`.
    pub fn window(&self, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        day_window(self.tz, day)
    }

    /// The next report to fire strictly after `now`: its day and instant.
    pub fn next_after(&self, now: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
        let local_today = now.with_timezone(&self.tz).date_naive();
        // The fire of day D is on local day D+1 (or just after a gap), so
        // the candidates start two days back.
        let mut day = local_today - Duration::days(2);
        loop {
            let t = self.fire_time(day);
            if t > now {
                return (day, t);
            }
            day = day.succ_opt().unwrap_or(day);
        }
    }

    /// The days whose report is due at `now`: fired at or before `now` but
    /// not longer than `catch_up` ago (a scheduler that was down sends the
    /// days it missed within that bound when it starts), oldest first.
    pub fn due(&self, now: DateTime<Utc>, catch_up: Duration) -> Vec<NaiveDate> {
        let local_today = now.with_timezone(&self.tz).date_naive();
        let back = catch_up.num_days() + 3;
        let mut out = Vec::new();
        let mut day = local_today - Duration::days(back);
        while day <= local_today {
            let t = self.fire_time(day);
            if t <= now && now - t < catch_up {
                out.push(day);
            }
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
        out
    }
}

/// The UTC window `[start, end)` of the local day `day` in `tz` (23, 24 or
/// 25 hours long).
pub fn day_window(tz: Tz, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = resolve(tz, day.and_time(NaiveTime::MIN));
    let next = day.succ_opt().unwrap_or(day);
    let end = resolve(tz, next.and_time(NaiveTime::MIN));
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }
    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }
    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    #[test]
    fn dst_days_in_berlin_and_new_york() {
        let berlin = DailySchedule::new(chrono_tz::Europe::Berlin, hm(2, 30));
        // 2026-03-29: 02:00 → 03:00 in Berlin; 02:30 does not exist and is
        // taken as 03:30 CEST = 01:30 UTC.
        assert_eq!(
            berlin.fire_time(d(2026, 3, 28)),
            utc("2026-03-29T01:30:00Z")
        );
        // 2026-10-25: 03:00 → 02:00; 02:30 exists twice, the first is CEST.
        assert_eq!(
            berlin.fire_time(d(2026, 10, 24)),
            utc("2026-10-25T00:30:00Z")
        );
        // The days themselves are 23 and 25 hours long.
        let (s, e) = berlin.window(d(2026, 3, 29));
        assert_eq!((e - s).num_hours(), 23);
        let (s, e) = berlin.window(d(2026, 10, 25));
        assert_eq!((e - s).num_hours(), 25);
        let ny = DailySchedule::new(chrono_tz::America::New_York, hm(6, 0));
        assert_eq!(ny.fire_time(d(2026, 3, 7)), utc("2026-03-08T10:00:00Z"));
        assert_eq!(ny.fire_time(d(2026, 3, 8)), utc("2026-03-09T10:00:00Z"));
        let u = DailySchedule::new(Tz::UTC, hm(0, 5));
        assert_eq!(u.window(d(2026, 12, 1)).0, utc("2026-12-01T00:00:00Z"));
        assert_eq!(u.fire_time(d(2026, 12, 1)), utc("2026-12-02T00:05:00Z"));
    }

    #[test]
    fn due_days_are_bounded_by_the_catch_up() {
        let s = DailySchedule::new(Tz::UTC, hm(6, 0));
        let now = utc("2026-12-10T07:00:00Z");
        let due = s.due(now, Duration::days(7));
        assert_eq!(due.len(), 7, "{due:?}");
        assert_eq!(due.first(), Some(&d(2026, 12, 3)));
        assert_eq!(due.last(), Some(&d(2026, 12, 9)));
        // Just before 06:00 the previous day is not due yet.
        let early = s.due(utc("2026-12-10T05:59:59Z"), Duration::days(7));
        assert_eq!(early.last(), Some(&d(2026, 12, 8)));
    }

    fn zones() -> impl Strategy<Value = Tz> {
        prop::sample::select(vec![
            Tz::UTC,
            chrono_tz::Europe::Berlin,
            chrono_tz::America::New_York,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::America::Santiago,
            chrono_tz::Asia::Kolkata,
            chrono_tz::Pacific::Chatham,
        ])
    }

    proptest! {
        /// The next fire is always in the future, and it is the first one
        /// after `now` (nothing fires in between).
        #[test]
        fn next_fire_is_in_the_future(tz in zones(), h in 0u32..24, m in 0u32..60, secs in 0i64..(30 * 365 * 86_400)) {
            let s = DailySchedule::new(tz, hm(h, m));
            let now = utc("2010-01-01T00:00:00Z") + Duration::seconds(secs);
            let (day, t) = s.next_after(now);
            prop_assert!(t > now);
            prop_assert_eq!(s.fire_time(day), t);
            let prev = day.pred_opt().expect("a day before");
            prop_assert!(s.fire_time(prev) <= now);
        }

        /// Exactly one fire per local day, in order, over 400 days from any
        /// start, gaps and overlaps included; each fires on the next local
        /// day or (past a gap at midnight) just after it.
        #[test]
        fn one_fire_per_local_day(tz in zones(), h in 0u32..24, m in 0u32..60, start in 0i64..(20 * 365)) {
            let s = DailySchedule::new(tz, hm(h, m));
            let first = d(2012, 1, 1) + Duration::days(start);
            let mut last: Option<DateTime<Utc>> = None;
            for i in 0..400 {
                let day = first + Duration::days(i);
                let t = s.fire_time(day);
                if let Some(l) = last {
                    prop_assert!(t > l, "{} fires at {} not after {}", day, t, l);
                    prop_assert!(t - l <= Duration::hours(27) && t - l >= Duration::hours(21));
                }
                let (ws, we) = s.window(day);
                prop_assert!(we > ws && t >= we, "{} fires at {} before its day ends {}", day, t, we);
                last = Some(t);
            }
            // Walking with `due` over the same span finds each day once.
            let mut seen = std::collections::BTreeSet::new();
            let mut now = s.fire_time(first);
            let end = s.fire_time(first + Duration::days(60));
            while now < end + Duration::hours(7) {
                for day in s.due(now, Duration::days(2)) {
                    if day >= first {
                        seen.insert(day);
                    }
                }
                now += Duration::hours(7);
            }
            prop_assert_eq!(seen.len(), 61);
        }
    }
}
