-- The runtime's own table: offsets of every Weir consumer group, written in
-- the same transaction as the group's effects; they are the truth a member
-- seeks to on assignment. (Databases migrated before the runtime had its own
-- migrations got this table from the health migration, with the same shape:
-- IF NOT EXISTS keeps both paths working.)
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
