//! `weir mail`: report requests from Kafka become mails, one per (request,
//! recipient), whatever is killed.
//!
//! Two steps, each with its own guarantee:
//! 1. [`ReportAggregator`] runs in the consumer-group runtime: a request's
//!    content (rendered from the uptime tables) and one outbox row per
//!    recipient are written in the same PostgreSQL transaction as the
//!    group's offsets. A request is therefore in the outbox exactly once,
//!    however often Kafka delivers it, and a duplicate request id (two
//!    schedulers, a retried produce) adds nothing.
//! 2. [`Sender`] drains the outbox over SMTP. A row is marked `sending`
//!    before the SMTP transaction and `sent` after the relay's `250`. A
//!    mailer killed in between leaves the row `sending`; after
//!    `mail.lease` another mailer (or the same one restarted) sends it again
//!    with the same `Message-ID`. So: exactly one `Message-ID` per (report,
//!    recipient), and a second copy of it only when a mailer died after the
//!    relay accepted the mail and before PostgreSQL heard so. SMTP has no
//!    way to ask a relay whether it already holds a message, so that
//!    window cannot be closed from this side; the stable `Message-ID` lets
//!    the relay or the reader's client drop the copy.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::{header, Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};
use weir_center::UptimeQuery;
use weir_consumers::runtime::{Aggregator, Applied, FailureClass, Record, StoreError};
use weir_core::InternalEvent;
use weir_schemas::ReportRequest;

use crate::config::MailConfig;
use crate::content::{message_id, render, DaySheet};
use crate::events::{MailDelivered, ReportAccepted};
use crate::schedule::day_window;

/// Most nodes one day of a mail lists; the rest are counted in the totals
/// of `/api/v1/uptime`, not mailed.
pub const MAX_NODES_PER_DAY: i64 = 5_000;

/// The report's tables (`report_requests`, `report_deliveries`,
/// `report_schedule`), beside the other owners' migrations.
pub fn migrator() -> sqlx::migrate::Migrator {
    weir_consumers::migrations::shared(sqlx::migrate!("./migrations"))
}

/// Reads the day sheets of a request from the uptime tables.
pub async fn day_sheets(pool: &PgPool, req: &ReportRequest) -> Result<Vec<DaySheet>, StoreError> {
    let tz = req
        .zone()
        .map_err(|e| StoreError::other("report", FailureClass::Poison, e))?;
    let mut out = Vec::new();
    for day in req.days() {
        let window = day_window(tz, day);
        let mut nodes = UptimeQuery { pool }
            .coverage(window.0, window.1, None, MAX_NODES_PER_DAY + 1)
            .await?;
        let truncated = nodes.len() as i64 > MAX_NODES_PER_DAY;
        nodes.truncate(MAX_NODES_PER_DAY as usize);
        out.push(DaySheet {
            day,
            window,
            nodes,
            truncated,
        });
    }
    Ok(out)
}

/// The mail group's aggregator: requests into the outbox (step 1 of the
/// module documentation).
pub struct ReportAggregator {
    pool: PgPool,
    wake: Arc<Notify>,
}

impl ReportAggregator {
    /// An aggregator reading uptime from `pool` and waking `wake` (the
    /// sender) after each committed batch.
    pub fn new(pool: PgPool, wake: Arc<Notify>) -> Self {
        ReportAggregator { pool, wake }
    }
}

impl Aggregator for ReportAggregator {
    type Event = ReportRequest;

    const ROLE: &'static str = "mail";

    async fn apply(&self, tx: &mut PgConnection, batch: &[Record<ReportRequest>]) -> Applied {
        for r in batch {
            let req = &r.event;
            let span = info_span!("report_request", request_id = %req.request_id, partition = r.partition, offset = r.offset);
            async {
                let known: Option<String> = sqlx::query_scalar(
                    "SELECT request_id FROM report_requests WHERE request_id = $1",
                )
                .bind(&req.request_id)
                .fetch_optional(&mut *tx)
                .await?;
                if known.is_some() {
                    ReportAccepted {
                        request_id: &req.request_id,
                        deliveries: 0,
                    }
                    .emit();
                    return Ok(());
                }
                // The figures are read outside the batch's transaction (the
                // uptime query takes a pool); they are the committed state,
                // which is all a transaction would see too.
                let sheets = day_sheets(&self.pool, req).await?;
                let content = render(&req.tz, &sheets);
                sqlx::query(
                    "INSERT INTO report_requests (request_id, kind, from_day, to_day, tz, requested_at, subject, body_text, body_html) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                )
                .bind(&req.request_id)
                .bind(serde_json::to_value(req.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
                .bind(req.from)
                .bind(req.to)
                .bind(&req.tz)
                .bind(req.requested_at)
                .bind(&content.subject)
                .bind(&content.text)
                .bind(&content.html)
                .execute(&mut *tx)
                .await?;
                let ids: Vec<String> = req
                    .recipients
                    .iter()
                    .map(|to| message_id(&req.request_id, to))
                    .collect();
                let added = sqlx::query(
                    "INSERT INTO report_deliveries (request_id, recipient, message_id) \
                     SELECT $1, * FROM UNNEST($2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                )
                .bind(&req.request_id)
                .bind(&req.recipients)
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                ReportAccepted {
                    request_id: &req.request_id,
                    deliveries: added,
                }
                .emit();
                Ok::<(), StoreError>(())
            }
            .instrument(span)
            .await?;
        }
        Ok(())
    }

    async fn publish(&self, _batch: &[Record<ReportRequest>]) -> Applied {
        // The outbox rows are committed: the sender may go.
        self.wake.notify_one();
        Ok(())
    }
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    request_id: String,
    recipient: String,
    message_id: String,
    attempts: i32,
    was: String,
    subject: String,
    body_text: String,
    body_html: String,
    requested_at: DateTime<Utc>,
}

/// What a sender pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Drained {
    /// Mails the relay accepted.
    pub sent: u64,
    /// Deliveries that failed and wait for a retry.
    pub retried: u64,
    /// Deliveries the relay refused for good.
    pub failed: u64,
}

/// Sends the outbox over SMTP (step 2 of the module documentation).
pub struct Sender {
    pool: PgPool,
    cfg: MailConfig,
    from: Mailbox,
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    /// Who claims rows (host, process, random), for `claimed_by`.
    owner: String,
}

impl Sender {
    /// A sender over `pool` with the validated `cfg`.
    pub fn new(pool: PgPool, cfg: MailConfig) -> Result<Self, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("mail.from: {e}"))?;
        let smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url)
            .map_err(|e| format!("mail.smtp_url: {e}"))?
            .timeout(Some(cfg.timeout))
            .build();
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok(Sender {
            pool,
            cfg,
            from,
            smtp,
            owner,
        })
    }

    /// Claims the oldest delivery that is due: pending and past its retry
    /// time, or `sending` for longer than the lease (its mailer died).
    async fn claim(&self) -> Result<Option<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "WITH c AS ( \
               SELECT request_id, recipient, state AS was FROM report_deliveries \
               WHERE (state = 'pending' AND next_attempt_at <= now()) \
                  OR (state = 'sending' AND claimed_at < now() - $2 * interval '1 millisecond') \
               ORDER BY next_attempt_at, created_at, request_id, recipient \
               LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE report_deliveries d SET state = 'sending', claimed_by = $1, claimed_at = now(), \
               attempts = d.attempts + 1 \
             FROM c, report_requests r \
             WHERE d.request_id = c.request_id AND d.recipient = c.recipient AND r.request_id = d.request_id \
             RETURNING d.request_id, d.recipient, d.message_id, d.attempts, c.was, r.subject, r.body_text, r.body_html, r.requested_at",
        )
        .bind(&self.owner)
        .bind(self.cfg.lease.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await
    }

    fn message(&self, c: &Claimed) -> Result<Message, String> {
        let to: Mailbox = c.recipient.parse().map_err(|e| format!("recipient: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(c.subject.clone())
            .message_id(Some(c.message_id.clone()))
            // The request's time, not the send's: a resend is the same mail.
            .date(c.requested_at.into())
            .header(header::MIME_VERSION_1_0)
            .multipart(MultiPart::alternative_plain_html(
                c.body_text.clone(),
                c.body_html.clone(),
            ))
            .map_err(|e| e.to_string())
    }

    async fn finish(
        &self,
        c: &Claimed,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let backoff =
            self.cfg.retry_backoff.as_millis() as f64 * 2f64.powi((c.attempts - 1).clamp(0, 5));
        sqlx::query(
            "UPDATE report_deliveries SET state = $4, last_error = $5, \
               sent_at = CASE WHEN $4 = 'sent' THEN now() ELSE sent_at END, \
               next_attempt_at = now() + $6 * interval '1 millisecond' \
             WHERE request_id = $1 AND recipient = $2 AND claimed_by = $3 AND state = 'sending'",
        )
        .bind(&c.request_id)
        .bind(&c.recipient)
        .bind(&self.owner)
        .bind(state)
        .bind(error)
        .bind(backoff)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sends every delivery that is due, one at a time, until none is left
    /// or `shutdown` fires.
    pub async fn drain(&self, shutdown: &CancellationToken) -> Result<Drained, sqlx::Error> {
        let mut done = Drained::default();
        while !shutdown.is_cancelled() {
            let Some(c) = self.claim().await? else {
                break;
            };
            let span = info_span!("mail", request_id = %c.request_id, message_id = %c.message_id);
            let outcome = async {
                let sent = match self.message(&c) {
                    Ok(m) => self.smtp.send(m).await.map(|_| ()).map_err(|e| {
                        let permanent = e.is_permanent();
                        (e.to_string(), permanent)
                    }),
                    Err(e) => Err((e, true)),
                };
                let resend = c.was == "sending";
                match sent {
                    Ok(()) => {
                        self.finish(&c, "sent", None).await?;
                        MailDelivered {
                            request_id: &c.request_id,
                            outcome: "sent",
                            attempt: c.attempts,
                            resend,
                            error: None,
                        }
                        .emit();
                        Ok::<_, sqlx::Error>("sent")
                    }
                    Err((e, permanent)) => {
                        let (state, outcome) = if permanent {
                            ("failed", "failed")
                        } else {
                            ("pending", "retry")
                        };
                        self.finish(&c, state, Some(&e)).await?;
                        MailDelivered {
                            request_id: &c.request_id,
                            outcome,
                            attempt: c.attempts,
                            resend,
                            error: Some(&e),
                        }
                        .emit();
                        Ok(outcome)
                    }
                }
            }
            .instrument(span)
            .await?;
            match outcome {
                "sent" => done.sent += 1,
                "failed" => done.failed += 1,
                _ => done.retried += 1,
            }
        }
        Ok(done)
    }

    /// Drains at start (deliveries left by an earlier run), whenever `wake`
    /// fires (a batch was committed) and every `mail.poll` (retries,
    /// expired leases), until `shutdown`.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.drain(&shutdown).await {
                warn!(error = %e, "outbox unreadable; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll) => {}
            }
        }
    }

    /// How long [`Sender::run`] may need to finish its current mail.
    pub fn drain_deadline(&self) -> Duration {
        self.cfg.timeout + Duration::from_secs(1)
    }
}
