//! The gateway's HTTP surface: `POST /api/v1/health` (one report, or an
//! `application/x-ndjson` batch), `/livez`, `/readyz`; and [`serve`], which
//! runs it on the shared hardened listener until shutdown.
//!
//! A request's answer comes after Kafka acknowledged its records (the
//! producer is idempotent with `acks=all`), so a 200 means durable. The
//! answer lists every record in order: `200` with its partition and offset,
//! or why not — `400` naming the field (the rest of a batch is still
//! produced), `429` when its node id is over its rate, `503` when Kafka did
//! not take it in time or the producer's queue is full. The status of the
//! whole answer is 200 when every record was accepted, else that of its
//! most urgent refusal (503, then 429, then 400), with `Retry-After` for the
//! first two: a client resends exactly the records answered 429 or 503.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::BytesMut;
use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_core::http::{track_metrics, ApiError};
use weir_core::InternalEvent;
use weir_producers::{EventProducer, ProduceError};

use crate::config::IngestConfig;
use crate::events::{KafkaUnavailable, LimiterPruned, Readiness, RecordAnswered, RequestRefused};
use crate::limits::NodeLimiter;
use crate::records::{judge, split, BodyError};

/// How often the per-node limiter forgets node ids that are back at a
/// full burst.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Past `ingest.ack_timeout` (the producer's own message timeout), how long
/// to wait for the producer's verdict before answering 503 anyway.
const VERDICT_GRACE: Duration = Duration::from_secs(1);

/// The gateway's state, shared by its requests.
pub struct Ingest {
    cfg: IngestConfig,
    topic: String,
    producer: Arc<EventProducer>,
    limiter: NodeLimiter,
    ready: AtomicBool,
}

impl Ingest {
    /// A gateway producing to `topic` with `producer`, whose message
    /// timeout should be `cfg.ack_timeout` (see `IngestConfig`).
    pub fn new(cfg: IngestConfig, topic: String, producer: Arc<EventProducer>) -> Arc<Self> {
        let one = NonZeroU32::MIN;
        let limiter = NodeLimiter::new(
            NonZeroU32::new(cfg.per_node_rate).unwrap_or(one),
            NonZeroU32::new(cfg.per_node_burst).unwrap_or(one),
        );
        Arc::new(Ingest {
            cfg,
            topic,
            producer,
            limiter,
            ready: AtomicBool::new(false),
        })
    }

    /// Whether Kafka has answered since the start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The gateway's router: `POST /api/v1/health`, `/livez`, `/readyz`.
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/api/v1/health", post(post_health))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(ingest)
}

/// Serves the gateway (plus `extra`, e.g. `/metrics`) on `listener` within
/// the `[ingest]` connection limits until `shutdown`; open requests then get
/// the listener's drain to receive their acknowledgements.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = ingest.cfg.conn_limits();
    let app = router(ingest.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn(|req, next| {
            track_metrics("ingest", req, next)
        }));
    info!(addr = %listener.local_addr()?, topic = %ingest.topic, "ingest listening");
    Readiness { ready: false }.emit();
    tokio::spawn(watch_readiness(ingest.clone(), shutdown.clone()));
    tokio::spawn(prune_limiter(ingest.clone(), shutdown.clone()));
    weir_core::listener::serve_limited(listener, app, limits, shutdown).await
}

/// Asks Kafka for the topic until it answers: then the gateway is ready.
async fn watch_readiness(ingest: Arc<Ingest>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let (p, t) = (ingest.producer.clone(), ingest.topic.clone());
        let answer =
            tokio::task::spawn_blocking(move || p.topic_exists(&t, Duration::from_secs(5))).await;
        match answer {
            Ok(Ok(true)) => {
                ingest.ready.store(true, Ordering::Relaxed);
                Readiness { ready: true }.emit();
                return;
            }
            Ok(Ok(false)) => {
                tracing::warn!(topic = %ingest.topic, "the health topic does not exist (weir topics ensure); not ready");
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn prune_limiter(ingest: Arc<Ingest>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        LimiterPruned {
            nodes: ingest.limiter.prune(),
        }
        .emit();
    }
}

async fn ready(State(ingest): State<Arc<Ingest>>) -> Response {
    if ingest.is_ready() {
        "ok".into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Kafka has not answered yet",
        )
        .into_response()
    }
}

/// One record's answer, in the order of the request's records.
#[derive(Debug, Serialize)]
struct RecordAnswer {
    /// 200, 400, 429 or 503.
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    /// Why not: the decoder's class, `rate_limited` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl RecordAnswer {
    fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RecordAnswer {
            status: status.as_u16(),
            partition: None,
            offset: None,
            code: Some(code),
            field: None,
            message: Some(message.into()),
        }
    }
}

/// The whole answer.
#[derive(Debug, Serialize)]
struct Answer {
    accepted: usize,
    refused: usize,
    /// For a refused request, its most urgent refusal, in the shape of
    /// every Weir error (`{"code", "message"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
    results: Vec<RecordAnswer>,
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/x-ndjson")
                || t.eq_ignore_ascii_case("application/jsonl")
        })
}

fn refuse(status: StatusCode, reason: &'static str, message: String) -> Response {
    RequestRefused { reason }.emit();
    ApiError::new(status, reason, message).into_response()
}

/// Reads the body within `ingest.max_body_bytes` and `ingest.body_timeout`.
async fn read_body(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<BytesMut, Response> {
    let max = ingest.cfg.max_body_bytes;
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds ingest.max_body_bytes ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize).min(max));
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| "read_error")?;
            if buf.len() + chunk.len() > max {
                return Err("too_large");
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(ingest.cfg.body_timeout, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err("too_large")) => Err(too_large()),
        Ok(Err(_)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "read_error",
            "the body could not be read".into(),
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within ingest.body_timeout ({} ms)",
                ingest.cfg.body_timeout.as_millis()
            ),
        )),
    }
}

async fn post_health(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&ingest, &headers, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let records = match split(&body, is_ndjson(&headers), ingest.cfg.max_batch_records) {
        Ok(r) => r,
        Err(BodyError::Empty) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "empty",
                "the body holds no report".into(),
            )
        }
        Err(BodyError::TooManyRecords { limit }) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_records",
                format!("the batch has more than ingest.max_batch_records ({limit}) records"),
            )
        }
    };

    let mut answers: Vec<Option<RecordAnswer>> = Vec::with_capacity(records.len());
    let mut pending = Vec::new();
    let mut retry_after = Duration::ZERO;
    let mut queue_failure: Option<String> = None;
    for (i, record) in records.iter().enumerate() {
        let event = match judge(record) {
            Ok(e) => e,
            Err(r) => {
                RecordAnswered {
                    outcome: "invalid",
                    reason: r.code,
                    node_id: None,
                }
                .emit();
                answers.push(Some(RecordAnswer {
                    field: r.field,
                    ..RecordAnswer::refused(StatusCode::BAD_REQUEST, r.code, r.message)
                }));
                continue;
            }
        };
        if let Err(wait) = ingest.limiter.check(&event.node_id) {
            RecordAnswered {
                outcome: "rate_limited",
                reason: "none",
                node_id: Some(&event.node_id),
            }
            .emit();
            retry_after = retry_after.max(wait);
            answers.push(Some(RecordAnswer::refused(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "node {} is over ingest.per_node_rate ({}/s)",
                    event.node_id, ingest.cfg.per_node_rate
                ),
            )));
            continue;
        }
        // The record's own bytes go to the topic: the consumers will decode
        // exactly what was judged here.
        match ingest.producer.enqueue_raw(
            &ingest.topic,
            Some(event.node_id.as_bytes()),
            record,
            None,
            "health",
        ) {
            Ok(p) => {
                pending.push((i, p));
                answers.push(None);
            }
            Err(e) => {
                let reason = if matches!(e, ProduceError::QueueFull) {
                    "queue_full"
                } else {
                    "kafka"
                };
                RecordAnswered {
                    outcome: "unavailable",
                    reason,
                    node_id: Some(&event.node_id),
                }
                .emit();
                queue_failure.get_or_insert_with(|| e.to_string());
                answers.push(Some(unavailable()));
            }
        }
    }

    // Wait for Kafka's acknowledgements, all against one deadline.
    let deadline = tokio::time::Instant::now() + ingest.cfg.ack_timeout + VERDICT_GRACE;
    let verdicts = futures::future::join_all(
        pending
            .into_iter()
            .map(|(i, p)| async move { (i, tokio::time::timeout_at(deadline, p).await) }),
    )
    .await;
    let mut kafka_failure = queue_failure;
    for (i, verdict) in verdicts {
        let (answer, reason) = match verdict {
            Ok(Ok(d)) => (
                RecordAnswer {
                    status: 200,
                    partition: Some(d.partition),
                    offset: Some(d.offset),
                    code: None,
                    field: None,
                    message: None,
                },
                None,
            ),
            Ok(Err(e)) => {
                kafka_failure.get_or_insert_with(|| e.to_string());
                (unavailable(), Some("kafka"))
            }
            Err(_) => {
                kafka_failure.get_or_insert_with(|| "no acknowledgement in time".into());
                (unavailable(), Some("timeout"))
            }
        };
        RecordAnswered {
            outcome: if reason.is_none() {
                "accepted"
            } else {
                "unavailable"
            },
            reason: reason.unwrap_or("none"),
            node_id: None,
        }
        .emit();
        answers[i] = Some(answer);
    }
    let results: Vec<RecordAnswer> = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(unavailable))
        .collect();
    let unavailable_count = results.iter().filter(|a| a.status == 503).count();
    if let Some(detail) = &kafka_failure {
        KafkaUnavailable {
            records: unavailable_count,
            detail,
        }
        .emit();
    }
    respond(results, retry_after)
}

fn unavailable() -> RecordAnswer {
    RecordAnswer::refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Kafka did not take the record in time; resend it",
    )
}

/// The answer to a request whose records were all judged: 200 when all
/// were accepted, else the most urgent refusal's status.
fn respond(results: Vec<RecordAnswer>, retry_after: Duration) -> Response {
    let accepted = results.iter().filter(|a| a.status == 200).count();
    let worst = results
        .iter()
        .filter(|a| a.status != 200)
        .max_by_key(|a| match a.status {
            503 => 3,
            429 => 2,
            _ => 1,
        });
    let status = worst.map_or(StatusCode::OK, |a| {
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_REQUEST)
    });
    let error = worst.map(|a| {
        serde_json::json!({
            "code": a.code.unwrap_or("refused"),
            "message": a.message.clone().unwrap_or_default(),
        })
    });
    let answer = Answer {
        accepted,
        refused: results.len() - accepted,
        error,
        results,
    };
    let mut resp = (status, Json(answer)).into_response();
    let retry = match status {
        StatusCode::SERVICE_UNAVAILABLE => Some(1),
        StatusCode::TOO_MANY_REQUESTS => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
        _ => None,
    };
    if let Some(secs) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RecordAnswer {
        RecordAnswer {
            status: 200,
            partition: Some(0),
            offset: Some(1),
            code: None,
            field: None,
            message: None,
        }
    }

    fn no(status: StatusCode) -> RecordAnswer {
        RecordAnswer::refused(status, "x", "why")
    }

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn the_answer_takes_its_most_urgent_refusal() {
        let r = respond(vec![ok(), ok()], Duration::ZERO);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let b = body(r).await;
        assert_eq!(
            (b["accepted"].as_u64(), b["refused"].as_u64()),
            (Some(2), Some(0))
        );
        assert!(b.get("error").is_none());

        let r = respond(
            vec![
                ok(),
                no(StatusCode::BAD_REQUEST),
                no(StatusCode::TOO_MANY_REQUESTS),
            ],
            Duration::from_millis(1500),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2", "rounded up");
        let b = body(r).await;
        assert_eq!(b["results"][1]["status"], 400);

        let r = respond(
            vec![
                no(StatusCode::SERVICE_UNAVAILABLE),
                no(StatusCode::TOO_MANY_REQUESTS),
            ],
            Duration::ZERO,
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body(r).await["error"]["code"], "x");
    }

    #[test]
    fn batches_are_recognised_by_their_media_type() {
        let mut h = HeaderMap::new();
        assert!(
            !is_ndjson(&h),
            "no type: one report (curl's default form type too)"
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson; charset=utf-8"),
        );
        assert!(is_ndjson(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(!is_ndjson(&h));
    }
}
