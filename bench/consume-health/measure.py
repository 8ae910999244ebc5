#!/usr/bin/env python3
"""measure.py — runs K `weir consume health` members of one (fresh) group
until PostgreSQL holds every event, and measures how long that took and who
spent the CPU. Called by bench/consume-health/run; the WEIR_* environment
(group, database, Redis prefix, topics) is set by the caller.

The sum polled is `SELECT sum(reports) FROM servers`. Timing, rates and the members'
CPU and memory: bench/groupbench.py. Services accounted: the PostgreSQL
server (postmaster, live children, and exited children through its
cutime/cstime), Kafka, Redis, and the whole machine (/proc/stat), so that
whatever else ran shows up as "other".

Prints one JSON object on stdout. Exit status 0 only if the final sum is
exactly N after every member stopped (no loss, no duplicate effect).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from groupbench import check_bookkeeping, run_members  # noqa: E402
from procstat import Psql, stat_fields, tree_ticks  # noqa: E402

def backend_ticks(root, dbname, exclude):
    """CPU of the PostgreSQL backends (children of root) connected to dbname,
    except the pids in exclude: their process title is
    `postgres: USER DBNAME HOST(PORT) STATE`."""
    total = 0
    if root <= 1:
        return 0
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            f = stat_fields(d)
            if int(f[1]) != root:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as c:
                title = c.read().replace(b"\0", b" ").decode(errors="replace").split()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if len(title) >= 3 and title[0] == "postgres:" and title[2] == dbname:
            total += int(f[11]) + int(f[12])
    return total


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
    ap.add_argument("--wrap", default="", help="command prefix for each member (perf)")
    a = ap.parse_args()

    psql = Psql(a.db_url)
    res = {"members": a.members, "n": a.n, "ok": False, "errors": []}
    sum_sql = "SELECT coalesce(sum(reports), 0) FROM servers"
    dbname = a.db_url.rsplit("/", 1)[-1].split("?")[0]
    poller_backend = psql.scalar("SELECT pg_backend_pid()", 0)

    def services():
        mine = backend_ticks(a.pg_pid, dbname, {poller_backend})
        return {"postgres: this run's backends": mine,
                "postgres: rest of the server": tree_ticks(a.pg_pid) - mine,
                "kafka": tree_ticks(a.kafka_pid), "redis": tree_ticks(a.redis_pid)}

    reports = run_members(a, "health", psql, sum_sql, "reports", services, res,
                          wrap=a.wrap.split(), stop_timeout=120.0 if a.wrap else 60.0)

    # Exactly once: after every member stopped, the effects count N, once.
    final = {
        "sum_reports": psql.scalar(sum_sql, -1),
        "servers": psql.scalar("SELECT count(*) FROM servers", -1),
        "session_reports": psql.scalar("SELECT coalesce(sum(reports), 0) FROM node_sessions", -1),
        "sessions": psql.scalar("SELECT count(*) FROM node_sessions", -1),
        "stored_offsets": psql.scalar("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets", -1),
    }
    psql.close()
    res["final"] = final
    if final["sum_reports"] != a.n:
        res["errors"].append(f"final sum(reports) = {final['sum_reports']}, expected exactly {a.n}")
    if final["session_reports"] != a.n:
        res["errors"].append(
            f"final sum(node_sessions.reports) = {final['session_reports']}, expected {a.n}")
    check_bookkeeping(res, a.n, final["stored_offsets"], reports)
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
