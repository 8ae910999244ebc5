-- Offsets of every Weir consumer group, written in the same transaction as the
-- group's effects: they are the truth a member seeks to on assignment.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Inventory: one row per node ever seen.
CREATE TABLE IF NOT EXISTS servers (
    node_id     text        PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    reports     bigint      NOT NULL,
    last_seq    bigint      NOT NULL,
    agent_id    text        NOT NULL,
    service     text        NOT NULL,
    endpoint    text        NOT NULL,
    cdn_type    text        NOT NULL,
    interval_ms bigint      NOT NULL,
    last_event  jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Coverage: maximal runs of consecutive reports. Uptime over any window is the
-- overlap of these runs with the window, divided by the window's length since
-- the node was first seen.
CREATE TABLE IF NOT EXISTS node_sessions (
    node_id    text        NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    reports    bigint      NOT NULL,
    PRIMARY KEY (node_id, started_at)
);
CREATE INDEX IF NOT EXISTS node_sessions_window ON node_sessions (ended_at, started_at);
