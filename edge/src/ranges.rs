//! `Range`, `If-Range` and the cache validators (`If-None-Match`,
//! `If-Modified-Since`), decided from the object's metadata alone so that a
//! hit is answered without touching the origin.
//!
//! Choices where RFC 9110 leaves room: a syntactically invalid or reversed
//! range and several ranges are ignored (200 with the whole object, as the
//! RFC allows and as S3 itself does for multi-ranges); a valid range that
//! starts at or past the end is 416.

use std::time::{Duration, SystemTime};

/// A byte range to send, both ends inclusive, within the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What to answer for a `Range` header on an object of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable range: 200 with the whole object.
    Full,
    /// 206 with these bytes.
    Partial(ByteRange),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Parses a `Range` header against an object of `size` bytes.
pub fn decide_range(header: &str, size: u64) -> RangeDecision {
    // The range unit is case-insensitive (RFC 9110 §14.1).
    let h = header.trim();
    let Some(spec) = h
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix: the last N bytes.
        let Some(n) = num(b) else {
            return RangeDecision::Full;
        };
        if n == 0 || size == 0 {
            return RangeDecision::Unsatisfiable;
        }
        let n = n.min(size);
        return RangeDecision::Partial(ByteRange {
            start: size - n,
            end: size - 1,
        });
    }
    let Some(start) = num(a) else {
        return RangeDecision::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(e) if e >= start => Some(e),
            _ => return RangeDecision::Full,
        }
    };
    if start >= size {
        return RangeDecision::Unsatisfiable;
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    RangeDecision::Partial(ByteRange { start, end })
}

/// The opaque part of an entity tag and whether it is weak.
fn parse_tag(t: &str) -> Option<(bool, &str)> {
    let t = t.trim();
    let (weak, t) = match t.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        Some((weak, &t[1..t.len() - 1]))
    } else {
        None
    }
}

/// `If-None-Match` against the object's ETag, with the weak comparison the
/// RFC prescribes for this header: `*` matches any existing object, each
/// member of a list is compared, `W/"x"` matches `"x"`.
pub fn none_match_hits(header: &str, etag: &str) -> bool {
    list_matches(header, etag, false)
}

/// Whether a `*` or a list of entity tags matches `etag`; `strong`: weak
/// tags (on either side) never match.
fn list_matches(header: &str, etag: &str, strong: bool) -> bool {
    if header.trim() == "*" {
        return true;
    }
    let Some((our_weak, ours)) = parse_tag(etag) else {
        return false;
    };
    if strong && our_weak {
        return false;
    }
    header
        .split(',')
        .filter_map(parse_tag)
        .any(|(weak, theirs)| !(strong && weak) && theirs == ours)
}

/// `If-Match` against the object's ETag, with the strong comparison the
/// RFC prescribes for this header: `*` matches any existing object, a weak
/// tag never matches.
pub fn match_hits(header: &str, etag: &str) -> bool {
    list_matches(header, etag, true)
}

/// `If-Unmodified-Since`: true when the object was modified after that date
/// (answer 412). An unparsable date, or an object without a date, is
/// ignored.
pub fn modified_since(header: &str, last_modified: Option<SystemTime>) -> bool {
    match (httpdate::parse_http_date(header.trim()), last_modified) {
        (Ok(since), Some(lm)) => truncate_secs(lm) > since,
        _ => false,
    }
}

/// `If-Range`: the range applies only when the validator matches strongly
/// (same strong ETag, or exactly the Last-Modified date).
pub fn if_range_holds(header: &str, etag: &str, last_modified: Option<SystemTime>) -> bool {
    let h = header.trim();
    if h.starts_with('"') || h.starts_with("W/") {
        return match (parse_tag(h), parse_tag(etag)) {
            (Some((false, theirs)), Some((false, ours))) => theirs == ours,
            _ => false,
        };
    }
    match (httpdate::parse_http_date(h), last_modified) {
        (Ok(date), Some(lm)) => date == truncate_secs(lm),
        _ => false,
    }
}

/// `If-Modified-Since`: true when the object has not changed since then
/// (answer 304). An unparsable date is ignored, as the RFC says.
pub fn not_modified_since(header: &str, last_modified: Option<SystemTime>) -> bool {
    match (httpdate::parse_http_date(header.trim()), last_modified) {
        (Ok(since), Some(lm)) => truncate_secs(lm) <= since,
        _ => false,
    }
}

/// HTTP dates carry whole seconds.
pub fn truncate_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    fn r(start: u64, end: u64) -> RangeDecision {
        Partial(ByteRange { start, end })
    }

    #[test]
    fn range_table() {
        let size = 1000;
        let cases = [
            ("bytes=0-0", r(0, 0)),
            ("bytes=-1", r(999, 999)),
            ("bytes=-5000", r(0, 999)),
            ("bytes=999-", r(999, 999)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=5000-", Unsatisfiable),
            ("bytes=900-5000", r(900, 999)),
            ("bytes=10-5", Full),
            ("bytes=abc", Full),
            ("bytes=1-x", Full),
            ("items=0-1", Full),
            ("bytes=0-1,5-6", Full),
            ("bytes=-0", Unsatisfiable),
            ("bytes= 1 - 2 ", r(1, 2)),
            ("bytes=-", Full),
            ("bytes=+1-2", Full),
            ("Bytes=1-2", r(1, 2)),
            ("BYTES=-1", r(999, 999)),
            ("bytes", Full),
            ("é", Full),
        ];
        for (h, want) in cases {
            assert_eq!(decide_range(h, size), want, "{h}");
        }
        assert_eq!(decide_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(decide_range("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn validators() {
        let etag = "\"abc\"";
        assert!(none_match_hits("*", etag));
        assert!(none_match_hits("\"x\", \"abc\"", etag));
        assert!(none_match_hits("W/\"abc\"", etag));
        assert!(!none_match_hits("\"abcd\"", etag));
        assert!(!none_match_hits("abc", etag));
        assert!(match_hits("*", etag));
        assert!(match_hits("\"x\", \"abc\"", etag));
        assert!(!match_hits("W/\"abc\"", etag));
        assert!(!match_hits("\"x\"", etag));
        assert!(!match_hits("\"abc\"", "W/\"abc\""));
        assert!(if_range_holds("\"abc\"", etag, None));
        assert!(!if_range_holds("W/\"abc\"", etag, None));
        assert!(!if_range_holds("\"old\"", etag, None));
        let lm = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let date = httpdate::fmt_http_date(lm);
        assert!(if_range_holds(&date, etag, Some(lm)));
        assert!(!if_range_holds(
            "Mon, 01 Jan 2001 00:00:00 GMT",
            etag,
            Some(lm)
        ));
        assert!(not_modified_since(&date, Some(lm)));
        assert!(!not_modified_since(
            "Mon, 01 Jan 2001 00:00:00 GMT",
            Some(lm)
        ));
        assert!(!not_modified_since("yesterday", Some(lm)));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// The range rules, stated over numbers rather than text.
    fn model(a: Option<u64>, b: Option<u64>, size: u64) -> RangeDecision {
        match (a, b) {
            (None, None) => RangeDecision::Full,
            (None, Some(n)) if n == 0 || size == 0 => RangeDecision::Unsatisfiable,
            (None, Some(n)) => RangeDecision::Partial(ByteRange {
                start: size - n.min(size),
                end: size - 1,
            }),
            (Some(a), Some(b)) if b < a => RangeDecision::Full,
            (Some(a), _) if a >= size => RangeDecision::Unsatisfiable,
            (Some(a), b) => RangeDecision::Partial(ByteRange {
                start: a,
                end: b.unwrap_or(u64::MAX).min(size - 1),
            }),
        }
    }

    proptest! {
        #[test]
        fn any_header_is_answered_within_the_object(h in ".{0,64}", size in 0u64..u64::MAX) {
            if let RangeDecision::Partial(r) = decide_range(&h, size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }

        #[test]
        fn well_formed_ranges_agree_with_the_model(
            a in proptest::option::of(0u64..20_000),
            b in proptest::option::of(0u64..20_000),
            size in 0u64..10_000,
            upper in any::<bool>(),
            pad in "[ ]{0,2}",
        ) {
            let unit = if upper { "BYTES=" } else { "bytes=" };
            let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
            let h = format!("{pad}{unit}{}-{pad}{}", num(a), num(b));
            prop_assert_eq!(decide_range(&h, size), model(a, b, size), "{}", h);
        }

        #[test]
        fn validators_never_panic(h in ".{0,64}", etag in ".{0,16}") {
            let _ = match_hits(&h, &etag);
            let _ = none_match_hits(&h, &etag);
            let _ = if_range_holds(&h, &etag, Some(SystemTime::UNIX_EPOCH));
            let _ = modified_since(&h, Some(SystemTime::UNIX_EPOCH));
            let _ = not_modified_since(&h, None);
        }
    }
}
