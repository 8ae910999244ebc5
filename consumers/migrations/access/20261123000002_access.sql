-- Access rollups: one row per minute × node × object, written by the access
-- group in the same transaction as its offsets.
CREATE TABLE IF NOT EXISTS access_minute (
    minute         timestamptz NOT NULL,
    node_id        text        NOT NULL,
    object_key     text        NOT NULL,
    requests       bigint      NOT NULL,
    bytes          bigint      NOT NULL,
    hits           bigint      NOT NULL,
    misses         bigint      NOT NULL,
    stale          bigint      NOT NULL,
    status_2xx     bigint      NOT NULL,
    status_3xx     bigint      NOT NULL,
    status_4xx     bigint      NOT NULL,
    status_5xx     bigint      NOT NULL,
    latency_sum_us bigint      NOT NULL,
    latency_max_us bigint      NOT NULL,
    PRIMARY KEY (minute, node_id, object_key)
);
CREATE INDEX IF NOT EXISTS access_minute_node ON access_minute (node_id, minute);
