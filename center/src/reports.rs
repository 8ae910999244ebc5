//! `POST /api/v1/reports` (admin): an operator asks for the uptime report of
//! a day or a range of days; the request goes onto `weir.report.v1` and the
//! answer (202) carries its id once Kafka acknowledged it. `weir mail` does
//! the rest.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::json;
use weir_core::http::ApiError;
use weir_producers::EventProducer;
use weir_schemas::report::{check_days, check_recipients, earliest_day, latest_day};
use weir_schemas::{Event, ReportKind, ReportRequest};

use crate::api::CenterState;

/// Largest request body accepted: 50 recipients of 254 bytes fit many times.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where the center puts report requests.
#[derive(Clone)]
pub struct ReportSink {
    /// The producer.
    pub producer: Arc<EventProducer>,
    /// The report topic.
    pub topic: String,
    /// Recipients when a request names none (`report.recipients`).
    pub default_recipients: Vec<String>,
    /// Zone when a request names none (`report.tz`).
    pub default_tz: String,
}

/// Body of `POST /api/v1/reports`: `day`, or `from` and `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportBody {
    day: Option<String>,
    from: Option<String>,
    to: Option<String>,
    tz: Option<String>,
    recipients: Option<Vec<String>>,
}

fn parse_day(field: &str, v: &str) -> Result<NaiveDate, ApiError> {
    let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: {:?} is not a day like 2026-12-01",
            v.chars().take(40).collect::<String>()
        ))
    })?;
    if d < earliest_day() || d > latest_day() {
        return Err(ApiError::bad_request(format!(
            "{field}: {d} is outside {} ..= {}",
            earliest_day(),
            latest_day()
        )));
    }
    Ok(d)
}

/// Builds the request a body asks for; every refusal names the field.
fn request(body: ReportBody, sink: &ReportSink) -> Result<ReportRequest, ApiError> {
    let (from, to) = match (&body.day, &body.from, &body.to) {
        (Some(d), None, None) => {
            let d = parse_day("day", d)?;
            (d, d)
        }
        (None, Some(f), Some(t)) => (parse_day("from", f)?, parse_day("to", t)?),
        _ => {
            return Err(ApiError::bad_request(
                "day: give either day, or from and to (days like 2026-12-01)",
            ))
        }
    };
    check_days(from, to).map_err(ApiError::bad_request)?;
    let recipients = body
        .recipients
        .unwrap_or_else(|| sink.default_recipients.clone());
    check_recipients(&recipients).map_err(ApiError::bad_request)?;
    let req = ReportRequest {
        schema_version: ReportRequest::SCHEMA_VERSION,
        request_id: format!("manual-{}", uuid::Uuid::new_v4().simple()),
        kind: ReportKind::Manual,
        from,
        to,
        tz: body.tz.unwrap_or_else(|| sink.default_tz.clone()),
        recipients,
        requested_at: Utc::now(),
    };
    req.validate().map_err(ApiError::bad_request)?;
    Ok(req)
}

/// `POST /api/v1/reports`.
pub(crate) async fn post_report(
    State(state): State<CenterState>,
    body: Result<Json<ReportBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(sink) = state.reports.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this center does not take report requests (no producer configured)",
        ));
    };
    let Json(body) = body.map_err(|e| {
        let status = e.status();
        let text = e.body_text();
        ApiError::new(
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                status
            } else {
                StatusCode::BAD_REQUEST
            },
            "bad_request",
            format!("body: {}", text.chars().take(300).collect::<String>()),
        )
    })?;
    let req = request(body, &sink)?;
    sink.producer
        .send(&sink.topic, &req)
        .await
        .map_err(|e| ApiError::unavailable("kafka", e))?;
    tracing::info!(request_id = %req.request_id, from = %req.from, to = %req.to, recipients = req.recipients.len(), "report requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": req.request_id,
            "from": req.from,
            "to": req.to,
            "tz": req.tz,
            "recipients": req.recipients.len(),
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> ReportBody {
        serde_json::from_value(v).expect("shape")
    }

    #[test]
    fn refusals_name_the_field() {
        let sink_err = |v: serde_json::Value| -> String {
            let sink = ReportSink {
                producer: Arc::new(
                    EventProducer::new(&weir_core::KafkaConfig::default(), "test")
                        .expect("producer"),
                ),
                topic: "t".into(),
                default_recipients: vec![],
                default_tz: "UTC".into(),
            };
            match request(body(v), &sink) {
                Ok(r) => format!("ok {}", r.request_id),
                Err(e) => format!("{:?}", e),
            }
        };
        assert!(sink_err(json!({"day": "2026-12-01"})).contains("recipients"));
        assert!(sink_err(json!({"day": "99999-01-01", "recipients": ["a@b.c"]})).contains("day"));
        assert!(sink_err(json!({"day": "1800-01-01", "recipients": ["a@b.c"]})).contains("day"));
        assert!(sink_err(
            json!({"from": "2026-01-01", "to": "2026-03-01", "recipients": ["a@b.c"]})
        )
        .contains("to:"));
        assert!(
            sink_err(json!({"day": "2026-12-01", "tz": "Nowhere", "recipients": ["a@b.c"]}))
                .contains("tz")
        );
        assert!(
            sink_err(json!({"day": "2026-12-01", "recipients": ["a@b.c"]}))
                .starts_with("ok manual-")
        );
    }
}
