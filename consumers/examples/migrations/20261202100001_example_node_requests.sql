-- The custom aggregator example's own table: requests per node.
CREATE TABLE IF NOT EXISTS example_node_requests (
    node_id  text   PRIMARY KEY,
    requests bigint NOT NULL
);
