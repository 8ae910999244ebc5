//! How a request becomes a reply plan: the request's method, `Range` and
//! conditional headers against the object's metadata, decided without I/O
//! so that a hit is answered without touching the origin, and so that every
//! combination can be tested in a table.

use axum::http::{header, HeaderMap, StatusCode};

use crate::origin::ObjectMeta;
use crate::ranges::{
    decide_range, if_range_holds, none_match_hits, not_modified_since, ByteRange, RangeDecision,
};

/// The headers of a request that decide its reply, as sent (a value that is
/// not visible ASCII counts as absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
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

fn decide(meta: &ObjectMeta, c: &Conditions<'_>) -> Plan {
    // RFC 9110 §13.2.2: If-None-Match, when present, replaces
    // If-Modified-Since.
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
