//! How a request becomes a reply plan: the request's method, `Range` and
//! conditional headers against the object's metadata, decided without I/O
//! so that a hit is answered without touching the origin, and so that every
//! combination can be tested in a table.

use axum::http::{header, HeaderMap, StatusCode};

use crate::origin::ObjectMeta;
use crate::ranges::{
    decide_range, if_range_holds, match_hits, modified_since, none_match_hits, not_modified_since,
    ByteRange, RangeDecision,
};

/// The headers of a request that decide its reply, as sent (a value that is
/// not visible ASCII counts as absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a str>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a str>,
    /// `Range`.
    pub range: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
}

impl<'a> Conditions<'a> {
    /// Reads the deciding headers of a request.
    pub fn from_headers(h: &'a HeaderMap) -> Conditions<'a> {
        let get = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        Conditions {
            if_match: get(header::IF_MATCH),
            if_unmodified_since: get(header::IF_UNMODIFIED_SINCE),
            range: get(header::RANGE),
            if_range: get(header::IF_RANGE),
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
        }
    }
}

/// What to answer, before any byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 412: a precondition (`If-Match`, `If-Unmodified-Since`) failed.
    PreconditionFailed,
    /// 304: the client's copy is current.
    NotModified,
    /// 200 with the whole object.
    Full,
    /// 206 with these bytes.
    Partial(ByteRange),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

impl Plan {
    /// The status this plan answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Plan::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Plan::NotModified => StatusCode::NOT_MODIFIED,
            Plan::Full => StatusCode::OK,
            Plan::Partial(_) => StatusCode::PARTIAL_CONTENT,
            Plan::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        }
    }

    /// The bytes of the object a `GET` sends (none for 304 and 416, and
    /// none for an empty object).
    pub fn bytes(&self, size: u64) -> Option<ByteRange> {
        match self {
            Plan::Full if size > 0 => Some(ByteRange {
                start: 0,
                end: size - 1,
            }),
            Plan::Partial(r) => Some(*r),
            _ => None,
        }
    }
}

/// A reply plan: the answer, and whether a body follows (never for `HEAD`,
/// which otherwise answers exactly as `GET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyPlan {
    /// The answer.
    pub plan: Plan,
    /// Whether the object's bytes are sent.
    pub body: bool,
}

/// Decides the reply to a `GET` (`head` false) or `HEAD` of an object.
pub fn plan(meta: &ObjectMeta, c: &Conditions<'_>, head: bool) -> ReplyPlan {
    let plan = decide(meta, c);
    let body = !head && plan.bytes(meta.size).is_some();
    ReplyPlan { plan, body }
}

/// RFC 9110 §13.2.2, in its order: If-Match (strong), else
/// If-Unmodified-Since → 412; If-None-Match (weak), else If-Modified-Since →
/// 304; then If-Range (strong) decides whether `Range` applies.
fn decide(meta: &ObjectMeta, c: &Conditions<'_>) -> Plan {
    if let Some(im) = c.if_match {
        if !match_hits(im, &meta.etag) {
            return Plan::PreconditionFailed;
        }
    } else if let Some(ius) = c.if_unmodified_since {
        if modified_since(ius, meta.last_modified) {
            return Plan::PreconditionFailed;
        }
    }
    if let Some(inm) = c.if_none_match {
        if none_match_hits(inm, &meta.etag) {
            return Plan::NotModified;
        }
    } else if let Some(ims) = c.if_modified_since {
        if not_modified_since(ims, meta.last_modified) {
            return Plan::NotModified;
        }
    }
    let Some(range) = c.range else {
        return Plan::Full;
    };
    if let Some(ir) = c.if_range {
        if !if_range_holds(ir, &meta.etag, meta.last_modified) {
            return Plan::Full;
        }
    }
    match decide_range(range, meta.size) {
        RangeDecision::Full => Plan::Full,
        RangeDecision::Partial(r) => Plan::Partial(r),
        RangeDecision::Unsatisfiable => Plan::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const ETAG: &str = "\"v1\"";
    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const BEFORE: &str = "Mon, 01 Jan 2001 00:00:00 GMT";

    fn meta() -> ObjectMeta {
        ObjectMeta {
            size: 100,
            etag: ETAG.into(),
            content_type: "text/plain".into(),
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        }
    }

    fn r(start: u64, end: u64) -> Plan {
        Plan::Partial(ByteRange { start, end })
    }

    #[test]
    fn reply_plan_table() {
        use Plan::*;
        let none = Conditions::default();
        let range = Conditions {
            range: Some("bytes=10-19"),
            ..none
        };
        let cases: Vec<(&str, Conditions, Plan)> = vec![
            ("plain", none, Full),
            ("range", range, r(10, 19)),
            (
                "range past the end",
                Conditions {
                    range: Some("bytes=100-"),
                    ..none
                },
                Unsatisfiable,
            ),
            (
                "inm hit",
                Conditions {
                    if_none_match: Some(ETAG),
                    ..range
                },
                NotModified,
            ),
            (
                "inm miss",
                Conditions {
                    if_none_match: Some("\"v0\""),
                    ..none
                },
                Full,
            ),
            (
                "ims not modified",
                Conditions {
                    if_modified_since: Some(LM),
                    ..none
                },
                NotModified,
            ),
            (
                "ims modified",
                Conditions {
                    if_modified_since: Some(BEFORE),
                    ..none
                },
                Full,
            ),
            (
                "inm miss replaces ims",
                Conditions {
                    if_none_match: Some("\"v0\""),
                    if_modified_since: Some(LM),
                    ..none
                },
                Full,
            ),
            (
                "if-range holds",
                Conditions {
                    if_range: Some(ETAG),
                    ..range
                },
                r(10, 19),
            ),
            (
                "if-range stale",
                Conditions {
                    if_range: Some("\"v0\""),
                    ..range
                },
                Full,
            ),
            (
                "if-match fails before if-none-match",
                Conditions {
                    if_match: Some("\"v0\""),
                    if_none_match: Some(ETAG),
                    ..range
                },
                PreconditionFailed,
            ),
            (
                "weak if-match never matches",
                Conditions {
                    if_match: Some("W/\"v1\""),
                    ..none
                },
                PreconditionFailed,
            ),
            (
                "if-match holds, range applies",
                Conditions {
                    if_match: Some("\"x\", \"v1\""),
                    ..range
                },
                r(10, 19),
            ),
            (
                "ius passed",
                Conditions {
                    if_unmodified_since: Some(BEFORE),
                    ..none
                },
                PreconditionFailed,
            ),
            (
                "ius holds",
                Conditions {
                    if_unmodified_since: Some(LM),
                    ..none
                },
                Full,
            ),
            (
                "if-match replaces ius",
                Conditions {
                    if_match: Some("*"),
                    if_unmodified_since: Some(BEFORE),
                    ..none
                },
                Full,
            ),
            (
                "if-range by date",
                Conditions {
                    if_range: Some(LM),
                    ..range
                },
                r(10, 19),
            ),
        ];
        for (name, c, want) in cases {
            let got = plan(&meta(), &c, false);
            assert_eq!(got.plan, want, "{name}");
            assert_eq!(got.body, want.bytes(100).is_some(), "{name}: GET body");
            let head = plan(&meta(), &c, true);
            assert_eq!(
                head,
                ReplyPlan {
                    plan: want,
                    body: false
                },
                "{name}: HEAD"
            );
        }
    }

    #[test]
    fn an_empty_object_has_no_body_to_send() {
        let mut m = meta();
        m.size = 0;
        let p = plan(&m, &Conditions::default(), false);
        assert_eq!(
            p,
            ReplyPlan {
                plan: Plan::Full,
                body: false
            }
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime};

    /// Entity tags a client may send, and what each means for an object
    /// whose ETag is `"v1"`: (text, matches strongly, matches weakly).
    const TAGS: [(&str, bool, bool); 5] = [
        ("\"v1\"", true, true),
        ("W/\"v1\"", false, true),
        ("\"v0\"", false, false),
        ("*", true, true),
        ("\"v0\", \"v1\"", true, true),
    ];
    /// Dates a client may send, against a Last-Modified of `LM`: (text,
    /// ordering of the object's date to it; `None`: not a date).
    const DATES: [(&str, Option<std::cmp::Ordering>); 4] = [
        (
            "Mon, 01 Jan 2001 00:00:00 GMT",
            Some(std::cmp::Ordering::Greater),
        ),
        (
            "Tue, 14 Nov 2023 22:13:20 GMT",
            Some(std::cmp::Ordering::Equal),
        ),
        (
            "Sun, 06 Nov 2044 08:49:37 GMT",
            Some(std::cmp::Ordering::Less),
        ),
        ("yesterday", None),
    ];

    /// RFC 9110 §13.2.2 stated over the meanings above, not over text.
    fn model(
        im: Option<usize>,
        ius: Option<usize>,
        inm: Option<usize>,
        ims: Option<usize>,
        ir: Option<usize>,
    ) -> Plan {
        use std::cmp::Ordering::Greater;
        if let Some(i) = im {
            if !TAGS[i].1 {
                return Plan::PreconditionFailed;
            }
        } else if let Some(d) = ius {
            if DATES[d].1 == Some(Greater) {
                return Plan::PreconditionFailed;
            }
        }
        if let Some(i) = inm {
            if TAGS[i].2 {
                return Plan::NotModified;
            }
        } else if let Some(d) = ims {
            if DATES[d].1.is_some_and(|o| o != Greater) {
                return Plan::NotModified;
            }
        }
        // If-Range takes one tag or one date; tags index 0..5, dates 5..9.
        let range_holds = match ir {
            None => true,
            Some(i) if i < TAGS.len() => TAGS[i].0 == "\"v1\"",
            Some(i) => DATES[i - TAGS.len()].1 == Some(std::cmp::Ordering::Equal),
        };
        if range_holds {
            Plan::Partial(ByteRange { start: 0, end: 9 })
        } else {
            Plan::Full
        }
    }

    proptest! {
        #[test]
        fn preconditions_agree_with_the_model(
            im in proptest::option::of(0..TAGS.len()),
            ius in proptest::option::of(0..DATES.len()),
            inm in proptest::option::of(0..TAGS.len()),
            ims in proptest::option::of(0..DATES.len()),
            ir in proptest::option::of(0..TAGS.len() + DATES.len()),
            head in any::<bool>(),
        ) {
            let meta = ObjectMeta {
                size: 100,
                etag: "\"v1\"".into(),
                content_type: "x".into(),
                last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_900)),
            };
            let c = Conditions {
                if_match: im.map(|i| TAGS[i].0),
                if_unmodified_since: ius.map(|d| DATES[d].0),
                if_none_match: inm.map(|i| TAGS[i].0),
                if_modified_since: ims.map(|d| DATES[d].0),
                if_range: ir.map(|i| if i < TAGS.len() { TAGS[i].0 } else { DATES[i - TAGS.len()].0 }),
                range: Some("bytes=0-9"),
            };
            let got = plan(&meta, &c, head);
            prop_assert_eq!(got.plan, model(im, ius, inm, ims, ir));
            prop_assert_eq!(got.body, !head && matches!(got.plan, Plan::Full | Plan::Partial(_)));
        }

        #[test]
        fn any_header_text_is_decided_without_panic(
            v in proptest::collection::vec(proptest::option::of(".{0,40}"), 6),
            size in any::<u64>(),
        ) {
            let meta = ObjectMeta { size, etag: "\"v1\"".into(), content_type: "x".into(), last_modified: None };
            let c = Conditions {
                if_match: v[0].as_deref(),
                if_unmodified_since: v[1].as_deref(),
                if_none_match: v[2].as_deref(),
                if_modified_since: v[3].as_deref(),
                if_range: v[4].as_deref(),
                range: v[5].as_deref(),
            };
            let p = plan(&meta, &c, false);
            if let Some(r) = p.plan.bytes(size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }
    }
}
