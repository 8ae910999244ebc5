#!/usr/bin/env python3
"""pgcost.py — PostgreSQL's CPU per event for the access group's upsert, in
isolation: no Kafka, no weir, only the statements a member sends.

Each variant gets a fresh database with weir's own access migrations (all
files of consumers/migrations/access in order, or all but the ones named with
--without). One table of synthetic events is made (untimed): N events over
N × 1.2 ms of time stamps, 50 nodes, 5000 objects with a log-uniform (Zipf-like,
s = 1) popularity, deterministic (setseed). They are pre-aggregated per batch
of B consecutive events, as a member does, into rows numbered within their
batch either in the table's key order (--sorted) or in a random order (what
iterating a hash map gives). Then, timed: one psql session sends one
`INSERT INTO access_minute … SELECT … WHERE b = k ORDER BY pos ON CONFLICT …
DO UPDATE` per batch, each in its own transaction (as the member's transaction
per batch), and the CPU of that session's backend (utime + stime from
/proc/PID/stat, in ticks of 10 ms) is read before and after.

The statement reads its rows from an indexed table where weir binds arrays
(UNNEST): the reading costs the same in every variant, so variants compare;
absolute figures include it. Prints one JSON object.

Usage: pgcost.py --db-url ADMIN_URL [--events N] [--batch B] [--sorted]
                 [--without FILE …] [--extra SQL_FILE …] [--repeat R]
"""
import argparse
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procstat import TCK, Psql, proc_ticks  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
COLS = ("requests, bytes, hits, misses, stale, status_2xx, status_3xx, status_4xx, status_5xx, "
        "latency_sum_us, latency_max_us")
UPSERT = (
    "INSERT INTO access_minute (minute, node_id, object_key, " + COLS + ") "
    "SELECT minute, node_id, object_key, " + COLS + " FROM batch_rows WHERE b = {b} ORDER BY pos "
    "ON CONFLICT (minute, node_id, object_key) DO UPDATE SET "
    + ", ".join(f"{c} = access_minute.{c} + EXCLUDED.{c}" for c in COLS.split(", ")[:-1])
    + ", latency_max_us = GREATEST(access_minute.latency_max_us, EXCLUDED.latency_max_us)")


def one(a, run):
    db = f"pgcost_{os.getpid()}_{run}"
    admin = Psql(a.db_url)
    admin.query(f'DROP DATABASE IF EXISTS "{db}"')
    admin.query(f'CREATE DATABASE "{db}"')
    url = a.db_url.rsplit("/", 1)[0] + "/" + db
    s = Psql(url)
    try:
        files = sorted(glob.glob(os.path.join(REPO, "consumers/migrations/access/*.sql")))
        used = [f for f in files if os.path.basename(f) not in a.without]
        for f in used + a.extra:
            s.query(open(f).read())
        order = "minute, node_id, object_key" if a.sorted else "random()"
        s.query(f"""SELECT setseed(0.42);
CREATE UNLOGGED TABLE ev AS
SELECT i,
  timestamptz '2026-12-01 00:00:00+00' + i * interval '1.2 ms' AS ts,
  'edge-' || lpad((abs(hashint4(i)) % 50)::text, 3, '0') AS node_id,
  'videos/object-' || lpad(floor(exp(random() * ln(5000)))::int::text, 5, '0') || '.mp4' AS object_key,
  (random() * 1e6)::bigint AS bytes, (random() * 1e4)::bigint AS lat,
  (random() < 0.8) AS hit, (200 + 100 * floor(random() * random() * 4))::int AS status
FROM generate_series(0, {a.events - 1}) AS i;
CREATE UNLOGGED TABLE agg AS
SELECT i / {a.batch} AS b, date_trunc('minute', ts) AS minute, node_id, object_key,
  count(*) AS requests, sum(bytes)::bigint AS bytes, count(*) FILTER (WHERE hit) AS hits,
  count(*) FILTER (WHERE NOT hit) AS misses, 0::bigint AS stale,
  count(*) FILTER (WHERE status = 200) AS status_2xx, count(*) FILTER (WHERE status = 300) AS status_3xx,
  count(*) FILTER (WHERE status = 400) AS status_4xx, count(*) FILTER (WHERE status = 500) AS status_5xx,
  sum(lat)::bigint AS latency_sum_us, max(lat) AS latency_max_us
FROM ev GROUP BY 1, 2, 3, 4;
CREATE UNLOGGED TABLE batch_rows AS
SELECT row_number() OVER (PARTITION BY b ORDER BY {order}) AS pos, * FROM agg;
CREATE INDEX ON batch_rows (b, pos);
ANALYZE batch_rows;
CHECKPOINT""")
        batches = s.scalar("SELECT max(b) + 1 FROM batch_rows")
        sent_rows = s.scalar("SELECT count(*) FROM batch_rows")
        pid = s.scalar("SELECT pg_backend_pid()")
        t0 = proc_ticks(pid)
        for b in range(batches):
            s.query(UPSERT.format(b=b))
        t1 = proc_ticks(pid)
        rows = s.scalar("SELECT count(*) FROM access_minute")
        total = s.scalar("SELECT sum(requests) FROM access_minute")
        s.query("SELECT pg_stat_force_next_flush()")
        st = s.query("SELECT n_tup_ins || '|' || n_tup_upd || '|' || n_tup_hot_upd "
                     "FROM pg_stat_user_tables WHERE relname = 'access_minute'")
    finally:
        s.close()
        admin.query(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
    if total != a.events:
        raise SystemExit(f"sum(requests) = {total}, expected {a.events}")
    ins, upd, hot = (int(x) for x in st[0].split("|")) if st else (None, None, None)
    return {"cpu_s": (t1 - t0) / TCK, "us_per_event": 1e6 * (t1 - t0) / TCK / a.events,
            "batches": batches, "rows_sent": sent_rows, "rows": rows,
            "inserted": ins, "updated": upd, "hot_updated": hot,
            "migrations": [os.path.basename(f) for f in used + a.extra]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--events", type=int, default=300000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--sorted", action="store_true")
    ap.add_argument("--without", nargs="*", default=[])
    ap.add_argument("--extra", nargs="*", default=[], help="SQL files applied after the migrations")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    runs = [one(a, i) for i in range(a.repeat)]
    us = [r["us_per_event"] for r in runs]
    print(json.dumps({"events": a.events, "batch": a.batch, "sorted": a.sorted,
                      "without": a.without, "extra": a.extra, "us_per_event": us,
                      "median_us_per_event": statistics.median(us), "runs": runs}))


if __name__ == "__main__":
    main()
