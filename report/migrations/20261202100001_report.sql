-- The daily report (issue 12, R1). Owned by weir-report.

-- One row per report request the mailer accepted, written in the same
-- transaction as the mail group's offsets: the request's content is fixed
-- here, so a resend is byte-identical.
CREATE TABLE IF NOT EXISTS report_requests (
    request_id   text        PRIMARY KEY,
    kind         text        NOT NULL,
    from_day     date        NOT NULL,
    to_day       date        NOT NULL,
    tz           text        NOT NULL,
    requested_at timestamptz NOT NULL,
    subject      text        NOT NULL,
    body_text    text        NOT NULL,
    body_html    text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per (request, recipient). pending → sending (claimed
-- before the SMTP transaction) → sent (after the relay's 250), or failed
-- (the relay refused for good). A "sending" row older than mail.lease was
-- left by a mailer that died mid-send and is sent again, same Message-ID.
CREATE TABLE IF NOT EXISTS report_deliveries (
    request_id      text        NOT NULL REFERENCES report_requests (request_id),
    recipient       text        NOT NULL,
    message_id      text        NOT NULL UNIQUE,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    claimed_by      text,
    claimed_at      timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, recipient)
);
CREATE INDEX IF NOT EXISTS report_deliveries_todo
    ON report_deliveries (next_attempt_at) WHERE state IN ('pending', 'sending');

-- One row per scheduled day: the scheduler that inserts it (in the same
-- transaction as the acknowledged produce of the request) is the one that
-- requested the day; every other scheduler's insert does nothing.
CREATE TABLE IF NOT EXISTS report_schedule (
    day        date        PRIMARY KEY,
    request_id text        NOT NULL,
    claimed_by text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
