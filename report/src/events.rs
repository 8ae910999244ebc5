//! The report's internal events: each writes its log line and its metric
//! together (`weir_core::telemetry`).

use weir_core::InternalEvent;

/// The scheduler requested the report of a day (it won the day's row).
pub struct ReportScheduled<'a> {
    /// The request.
    pub request_id: &'a str,
    /// The day.
    pub day: chrono::NaiveDate,
}

impl InternalEvent for ReportScheduled<'_> {
    fn emit(self) {
        tracing::info!(request_id = self.request_id, day = %self.day, "report requested by the schedule");
        metrics::counter!("weir_report_scheduled_total").increment(1);
    }
}

/// A request reached the mailer's outbox (or was a duplicate of one there).
pub struct ReportAccepted<'a> {
    /// The request.
    pub request_id: &'a str,
    /// Deliveries added (0 for a duplicate request).
    pub deliveries: u64,
}

impl InternalEvent for ReportAccepted<'_> {
    fn emit(self) {
        let outcome = if self.deliveries == 0 {
            "duplicate"
        } else {
            "new"
        };
        tracing::info!(
            request_id = self.request_id,
            deliveries = self.deliveries,
            outcome,
            "report request accepted"
        );
        metrics::counter!("weir_report_requests_total", "outcome" => outcome).increment(1);
    }
}

/// One SMTP delivery ended.
pub struct MailDelivered<'a> {
    /// The request.
    pub request_id: &'a str,
    /// `sent`, `retry` or `failed`.
    pub outcome: &'static str,
    /// Attempt number (1 for the first).
    pub attempt: i32,
    /// A resend of a delivery left "sending" by a mailer that died.
    pub resend: bool,
    /// The relay's or the connection's error.
    pub error: Option<&'a str>,
}

impl InternalEvent for MailDelivered<'_> {
    fn emit(self) {
        match self.error {
            None => tracing::info!(
                request_id = self.request_id,
                attempt = self.attempt,
                resend = self.resend,
                "mail sent"
            ),
            Some(e) => tracing::warn!(
                request_id = self.request_id,
                attempt = self.attempt,
                outcome = self.outcome,
                error = e,
                "mail not sent"
            ),
        }
        metrics::counter!("weir_mail_deliveries_total", "outcome" => self.outcome).increment(1);
        if self.resend {
            metrics::counter!("weir_mail_resends_total").increment(1);
        }
    }
}

/// Help text of the report's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "weir_report_scheduled_total",
        "Days whose report this scheduler requested (it won the day's row)"
    );
    metrics::describe_counter!(
        "weir_report_requests_total",
        "Report requests the mailer took from Kafka, new or duplicate of one already in its outbox"
    );
    metrics::describe_counter!(
        "weir_mail_deliveries_total",
        "SMTP deliveries of report mails, by outcome (sent, retry, failed)"
    );
    metrics::describe_counter!(
        "weir_mail_resends_total",
        "Deliveries sent again because the mailer that claimed them died mid-send (same Message-ID)"
    );
}
