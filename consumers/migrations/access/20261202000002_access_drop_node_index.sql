-- access_minute_node (node_id, minute) was created with the table for
-- per-node queries that never came: nothing in Weir reads access_minute by
-- node first (the dashboard's query filters on minute, which the primary
-- key leads with). Every row the access group inserts, and every update
-- that cannot stay on its page, wrote an entry into it: dropping it cut
-- PostgreSQL's CPU per event by about a fifth (bench/consume-access/pgcost.py,
-- docs/benchmarks.md, issue 13). A deployment that queries by node can
-- create an index of its own.
DROP INDEX IF EXISTS access_minute_node;
