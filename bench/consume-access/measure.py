#!/usr/bin/env python3
"""measure.py — runs K `weir consume access` members of one (fresh) group
until PostgreSQL holds every event, and measures how long that took and who
spent the CPU. Called by bench/consume-access/run; the WEIR_* environment
(group, database, Redis prefix, topics) is set by the caller; the members,
timing and CPU accounting are bench/groupbench.py's, shared with
bench/consume-health.

The sum polled is `SELECT sum(requests) FROM access_minute`. Timing, rates and the members'
CPU and memory: bench/groupbench.py. Services accounted: the PostgreSQL
server (postmaster, live children, and exited children through its
cutime/cstime), Kafka, Redis, and the whole machine (/proc/stat), so that
whatever else ran shows up as "other".

Prints one JSON object on stdout. Exit status 0 only if, after every member
stopped, sum(requests) and sum(bytes) equal the generator's totals, every
minute's sums equal the generator's per-minute totals, the stored offsets
sum to N, and the members' `applied` sum to N (no loss, no duplicate effect).
--wrap runs each member under a command (valgrind, perf): its CPU is then
the wrapper's.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from groupbench import check_bookkeeping, run_members  # noqa: E402
from procstat import Psql, proc_ticks, tree_ticks  # noqa: E402

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--members", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--pg-pid", type=int, required=True)
    ap.add_argument("--kafka-pid", type=int, required=True)
    ap.add_argument("--redis-pid", type=int, required=True)
    ap.add_argument("--gen", required=True, help="JSON totals printed by weir gen access")
    ap.add_argument("--wrap", default="", help="command prefix for each member")
    ap.add_argument("--stop-timeout", type=float, default=60)
    a = ap.parse_args()
    gen = json.load(open(a.gen))

    psql = Psql(a.db_url)
    res = {"members": a.members, "n": a.n, "ok": False, "errors": []}
    sum_sql = "SELECT coalesce(sum(requests), 0) FROM access_minute"

    def run_backends():
        # The PostgreSQL server is shared (other users' tests run on it), so
        # its whole tree's CPU is not this run's alone: the backends
        # connected to this run's fresh database are. They are born after
        # the start, so their CPU since birth is the run's (migrations
        # included); the poller's own backend is left out.
        pids = psql.query("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid()")
        return sum(proc_ticks(int(p)) for p in pids if p.strip().isdigit())

    def services():
        return {"postgres": tree_ticks(a.pg_pid), "postgres (this run's backends)": run_backends(),
                "kafka": tree_ticks(a.kafka_pid), "redis": tree_ticks(a.redis_pid)}

    reports = run_members(a, "access", psql, sum_sql, "requests", services, res,
                          wrap=a.wrap.split(), stop_timeout=a.stop_timeout)

    # Exactly once: after every member stopped, the effects count N, once,
    # and match what the generator says it produced, minute by minute.
    final = {
        "sum_requests": psql.scalar(sum_sql, -1),
        "sum_bytes": psql.scalar("SELECT coalesce(sum(bytes), 0) FROM access_minute", -1),
        "rows": psql.scalar("SELECT count(*) FROM access_minute", -1),
        "stored_offsets": psql.scalar("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets", -1),
    }
    # What PostgreSQL did to the table: rows inserted, updated, and how many
    # of the updates were HOT (no index entry written).
    tup = psql.query("SELECT n_tup_ins || '|' || n_tup_upd || '|' || n_tup_hot_upd "
                     "FROM pg_stat_user_tables WHERE relname = 'access_minute'")
    if tup:
        ins, upd, hot = (int(x) for x in tup[0].split("|"))
        final.update(tup_inserted=ins, tup_updated=upd, tup_hot_updated=hot)
    per_minute = {}
    for row in psql.query(
            "SELECT to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            "|| '|' || sum(requests) || '|' || sum(bytes) FROM access_minute GROUP BY minute"):
        m, r, b = row.split("|")
        per_minute[m] = {"requests": int(r), "bytes": int(b)}
    psql.close()
    res["final"] = final
    if final["sum_requests"] != gen["requests"] or final["sum_requests"] != a.n:
        res["errors"].append(
            f"final sum(requests) = {final['sum_requests']}, gen says {gen['requests']}, N = {a.n}")
    if final["sum_bytes"] != gen["bytes"]:
        res["errors"].append(f"final sum(bytes) = {final['sum_bytes']}, gen says {gen['bytes']}")
    want = {m: {"requests": v["requests"], "bytes": v["bytes"]} for m, v in gen["per_minute"].items()}
    bad = sorted(m for m in set(want) | set(per_minute) if want.get(m) != per_minute.get(m))
    final["minutes"] = len(per_minute)
    final["minutes_differing"] = len(bad)
    if bad:
        res["errors"].append(f"{len(bad)} of {len(want)} minutes differ from gen's per_minute totals "
                             f"(first: {bad[0]}: db {per_minute.get(bad[0])}, gen {want.get(bad[0])})")
    check_bookkeeping(res, a.n, final["stored_offsets"], reports)
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
