//! `ReportRequest`: a request for the uptime report of a day (or a few days),
//! put on `weir.report.v1` by the schedule or by an operator, consumed by
//! `weir mail`.
//!
//! The request id is the mailer's idempotency key: a scheduled request's id
//! is derived from its day (`daily-2026-12-01`), so two schedulers (or one
//! that crashed after producing and retried) produce the same id and the
//! mailer sends it once; a manual request gets a fresh id each time.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::codec::{Event, Priority};

/// Most recipients one request may name: a report goes to a team, not a
/// mailing list (a list is one address).
pub const MAX_RECIPIENTS: usize = 50;
/// Most days one request may cover (a month).
pub const MAX_REPORT_DAYS: i64 = 31;
/// Longest e-mail address (RFC 5321's path limit).
pub const MAX_ADDRESS_BYTES: usize = 254;
/// Longest request id: it ends up in a `Message-ID` and a primary key.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Earliest day a report may cover: nothing of Weir's is older.
pub fn earliest_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// Latest day a report may cover.
pub fn latest_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2199, 12, 31).unwrap_or(NaiveDate::MAX)
}

/// Who asked for a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The daily schedule.
    Scheduled,
    /// An operator (`POST /api/v1/reports`, `weir report send`).
    Manual,
}

/// A request for the uptime report of the local days `from..=to` in `tz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Schema version (1).
    pub schema_version: u32,
    /// Idempotency key of the request (see the module documentation):
    /// 1 to 128 bytes of `A-Z a-z 0-9 . _ : -`.
    pub request_id: String,
    /// Scheduled or manual.
    pub kind: ReportKind,
    /// First day covered.
    pub from: NaiveDate,
    /// Last day covered (inclusive; at most 31 days after `from`).
    pub to: NaiveDate,
    /// IANA time zone whose midnights bound the days (`UTC` by default).
    #[serde(default = "utc_name")]
    pub tz: String,
    /// Addresses to mail, one mail each (1 to 50, no duplicates).
    pub recipients: Vec<String>,
    /// When the request was made.
    pub requested_at: DateTime<Utc>,
}

fn utc_name() -> String {
    "UTC".into()
}

impl ReportRequest {
    /// The time zone, once validated.
    pub fn zone(&self) -> Result<Tz, String> {
        self.tz
            .parse::<Tz>()
            .map_err(|_| format!("tz: {:?} is not an IANA time zone name", self.tz))
    }

    /// The days covered, in order.
    pub fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.from.iter_days().take_while(move |d| *d <= self.to)
    }
}

/// Checks a request id: it becomes part of a `Message-ID` and a primary key.
pub fn check_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
        return Err(format!(
            "request_id must be 1 to {MAX_REQUEST_ID_BYTES} bytes"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err("request_id may only hold A-Z a-z 0-9 . _ : -".into());
    }
    Ok(())
}

/// Checks one e-mail address (`local@domain`) strictly enough that it can
/// go into an SMTP envelope and a header unescaped: printable ASCII, the
/// RFC 5322 atom characters in the local part, letters, digits, hyphens and
/// dots in the domain. Quoted local parts and address literals are refused.
pub fn check_address(field: &str, addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_ADDRESS_BYTES {
        return Err(format!(
            "{field}: an address must be 1 to {MAX_ADDRESS_BYTES} bytes"
        ));
    }
    let Some((local, domain)) = addr.split_once('@') else {
        return Err(format!("{field}: {addr:?} has no @"));
    };
    let atom = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-.".contains(&b);
    if local.is_empty()
        || local.len() > 64
        || !local.bytes().all(atom)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(format!("{field}: {addr:?} has an invalid local part"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!("{field}: {addr:?} has an invalid domain"));
    }
    Ok(())
}

/// Checks a day range against the bounds of a report.
pub fn check_days(from: NaiveDate, to: NaiveDate) -> Result<(), String> {
    for (field, d) in [("from", from), ("to", to)] {
        if d < earliest_day() || d > latest_day() {
            return Err(format!(
                "{field}: {d} is outside {} ..= {}",
                earliest_day(),
                latest_day()
            ));
        }
    }
    if to < from {
        return Err(format!("to: {to} is before from ({from})"));
    }
    if (to - from).num_days() >= MAX_REPORT_DAYS {
        return Err(format!(
            "to: a report covers at most {MAX_REPORT_DAYS} days"
        ));
    }
    Ok(())
}

/// Checks a recipient list: 1 to 50 valid addresses without duplicates.
pub fn check_recipients(recipients: &[String]) -> Result<(), String> {
    if recipients.is_empty() {
        return Err("recipients: at least one address is needed".into());
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(format!(
            "recipients: at most {MAX_RECIPIENTS} addresses (got {})",
            recipients.len()
        ));
    }
    for (i, r) in recipients.iter().enumerate() {
        check_address(&format!("recipients[{i}]"), r)?;
        if recipients[..i].iter().any(|o| o.eq_ignore_ascii_case(r)) {
            return Err(format!("recipients[{i}]: {r:?} is listed twice"));
        }
    }
    Ok(())
}

impl Event for ReportRequest {
    const SCHEMA_VERSION: u32 = 1;
    const KIND: &'static str = "report";
    const PRIORITY: Priority = Priority::Critical;

    fn key(&self) -> Option<&str> {
        Some(&self.request_id)
    }

    fn schema_version(&self) -> u32 {
        self.schema_version
    }

    fn validate(&self) -> Result<(), String> {
        check_request_id(&self.request_id)?;
        check_days(self.from, self.to)?;
        self.zone()?;
        check_recipients(&self.recipients)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;
    use proptest::prelude::*;

    fn req() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1, "request_id": "daily-2026-12-01", "kind": "scheduled",
            "from": "2026-12-01", "to": "2026-12-01", "tz": "Europe/Berlin",
            "recipients": ["ops@example.com"], "requested_at": "2026-12-02T05:00:00Z"
        })
    }

    fn decoded(v: &serde_json::Value) -> Result<ReportRequest, String> {
        decode::<ReportRequest>(Some(v.to_string().as_bytes())).map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_request_decodes_and_bad_fields_are_named() {
        let ok = decoded(&req()).expect("valid");
        assert_eq!(ok.days().count(), 1);
        let cases: [(&str, serde_json::Value, &str); 9] = [
            ("recipients", serde_json::json!([]), "recipients"),
            ("recipients", serde_json::json!(["nobody"]), "recipients[0]"),
            (
                "recipients",
                serde_json::json!(["a\u{0}b@x.org"]),
                "recipients[0]",
            ),
            (
                "recipients",
                serde_json::json!(["a@x.org", "A@x.org"]),
                "recipients[1]",
            ),
            (
                "recipients",
                serde_json::json!(["a@-x.org"]),
                "recipients[0]",
            ),
            ("to", serde_json::json!("2026-11-01"), "to:"),
            ("from", serde_json::json!("1900-01-01"), "from:"),
            ("tz", serde_json::json!("Mars/Olympus"), "tz:"),
            ("request_id", serde_json::json!("a b"), "request_id"),
        ];
        for (field, value, named) in cases {
            let mut v = req();
            v[field] = value.clone();
            let err = decoded(&v).expect_err(&format!("{field} = {value}"));
            assert!(err.contains(named), "{field} = {value}: {err}");
        }
        let mut many = req();
        many["recipients"] = (0..51).map(|i| format!("u{i}@x.org")).collect();
        assert!(decoded(&many).expect_err("51").contains("at most 50"));
        let mut long = req();
        long["to"] = serde_json::json!("2027-01-01");
        assert!(decoded(&long).expect_err("32 days").contains("at most 31"));
    }

    proptest! {
        /// Whatever arrives, decoding answers (never panics), and what it
        /// accepts is within the bounds.
        #[test]
        fn decoding_never_panics_and_bounds_hold(
            id in "\\PC{0,140}",
            from in 0i64..100_000,
            len in -5i64..60,
            tz in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "X/Y", ""]),
            rcpts in prop::collection::vec("[a-z@.\\-\u{0}<>]{0,20}", 0..60),
        ) {
            let day0 = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap_or(NaiveDate::MIN);
            let f = day0 + chrono::Duration::days(from);
            let t = f + chrono::Duration::days(len);
            let v = serde_json::json!({
                "schema_version": 1, "request_id": id, "kind": "manual",
                "from": f, "to": t, "tz": tz, "recipients": rcpts,
                "requested_at": "2026-12-02T05:00:00Z"
            });
            if let Ok(r) = decoded(&v) {
                prop_assert!(!r.recipients.is_empty() && r.recipients.len() <= MAX_RECIPIENTS);
                prop_assert!(r.from <= r.to && (r.to - r.from).num_days() < MAX_REPORT_DAYS);
                prop_assert!(r.recipients.iter().all(|a| a.contains('@') && !a.contains('\0')));
                prop_assert!(r.zone().is_ok());
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ReportRequest>(Some(&bytes));
        }
    }
}
