-- Server inventory (issue 12, M1): what operators say about a server, beside
-- what the health group measures (`servers`). A table of its own, so that the
-- health group's upsert and an operator's PATCH never write the same row:
-- neither can overwrite the other.
--
-- A node that reports before anyone registered it has a `servers` row and no
-- row here; the center shows the two joined (version 0 until an operator
-- writes). `version` counts operator writes and is the ETag: a PATCH applies
-- only `WHERE version = <If-Match>`, so concurrent read-modify-writes cannot
-- lose an update.
--
-- `status = 'decommissioned'` keeps the row for history; the health group
-- refuses the node's reports (it looks this table up once per batch).
CREATE TABLE IF NOT EXISTS server_inventory (
    node_id           text        PRIMARY KEY,
    name              text,
    owner             text,
    location          text,
    tags              text[]      NOT NULL DEFAULT '{}',
    expected_endpoint text,
    notes             text,
    status            text        NOT NULL DEFAULT 'active'
                                  CHECK (status IN ('active', 'decommissioned')),
    version           bigint      NOT NULL DEFAULT 1 CHECK (version > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    decommissioned_at timestamptz
);
CREATE INDEX IF NOT EXISTS server_inventory_tags ON server_inventory USING gin (tags);
-- The health group's per-batch look-up touches only decommissioned rows.
CREATE INDEX IF NOT EXISTS server_inventory_decommissioned
    ON server_inventory (node_id) WHERE status = 'decommissioned';
