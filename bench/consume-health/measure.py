#!/usr/bin/env python3
"""measure.py — runs K `weir consume health` members of one (fresh) group
until PostgreSQL holds every event, and measures how long that took and who
spent the CPU. Called by bench/consume-health/run; the WEIR_* environment
(group, database, Redis prefix, topics) is set by the caller.

Timing: t_start = just before the members are spawned; every 200 ms one
persistent psql session runs `SELECT sum(reports) FROM servers`;
t_first = first poll that sees a non-zero sum; t_done = first poll that sees
N. Rates: N / (t_done - t_start) ("from process start") and
(N - first_count) / (t_done - t_first) ("from first commit", i.e. without
start-up: migrations, group join, first fetch).

CPU (utime+stime, /proc) between t_start and t_done: each member; the
PostgreSQL server (postmaster, its live children, and children that exited,
through the postmaster's cutime/cstime); Kafka; Redis; and the whole machine
(/proc/stat), so that whatever else ran shows up as "other".

Prints one JSON object on stdout. Exit status 0 only if the final sum is
exactly N after every member stopped (no loss, no duplicate effect).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procstat import TCK, batch_seconds, machine_ticks, proc_ticks, status_kb, stat_fields, thread_ticks, tree_ticks  # noqa: E402,F401

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
    a = ap.parse_args()

    psql = Psql(a.db_url)
    res = {"members": a.members, "n": a.n, "ok": False, "errors": []}
    procs = []

    def stop_members():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 60
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                res["errors"].append(f"member pid {p.pid} did not stop within 60 s; killed")
                p.kill()
                p.wait()

    me = os.getpid()
    dbname = a.db_url.rsplit("/", 1)[-1].split("?")[0]
    poller_backend = psql.scalar("SELECT pg_backend_pid()", 0)

    def pg_split():
        mine = backend_ticks(a.pg_pid, dbname, {poller_backend})
        return mine, tree_ticks(a.pg_pid) - mine

    pg0 = pg_split()
    c0 = {
        "postgres: this run's backends": pg0[0],
        "postgres: rest of the server": pg0[1], "kafka": tree_ticks(a.kafka_pid),
        "redis": tree_ticks(a.redis_pid),
        "bench poller (python + psql)": proc_ticks(me) + proc_ticks(psql.p.pid),
    }
    m0 = machine_ticks()
    t_start = time.time()
    for i in range(a.members):
        out = open(f"{a.logdir}/member{i + 1}.json", "w")
        err = open(f"{a.logdir}/member{i + 1}.log", "w")
        procs.append(subprocess.Popen([a.weir, "consume", "health"], stdout=out, stderr=err))
    t_first = first_count = t_done = None
    timeline = []
    last = 0
    sum_sql = "SELECT coalesce(sum(reports), 0) FROM servers"
    try:
        next_poll = t_start
        while True:
            next_poll += 0.2
            delay = next_poll - time.time()
            if delay > 0:
                time.sleep(delay)
            count = psql.scalar(sum_sql)
            now = time.time()
            if count != last:
                timeline.append([round(now - t_start, 3), count])
                last = count
            if count and t_first is None:
                t_first, first_count = now, count
            if count > a.n:
                res["errors"].append(f"sum(reports) = {count} > N = {a.n}: duplicate effects")
                break
            if count == a.n:
                t_done = now
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                res["errors"].append(
                    f"member pid {dead[0].pid} exited with {dead[0].returncode} at {count}/{a.n}")
                break
            if now - t_start > a.timeout:
                res["errors"].append(f"timed out after {a.timeout:.0f} s at {count}/{a.n}")
                break
        # CPU and memory at completion, before the members are stopped.
        end = time.time()
        pg1 = pg_split()
        c1 = {
            "postgres: this run's backends": pg1[0],
            "postgres: rest of the server": pg1[1], "kafka": tree_ticks(a.kafka_pid),
            "redis": tree_ticks(a.redis_pid),
            "bench poller (python + psql)": proc_ticks(me) + proc_ticks(psql.p.pid),
        }
        m1 = machine_ticks()
        cpu = {}
        threads = {}
        for i, p in enumerate(procs):
            cpu[f"weir member {i + 1}"] = proc_ticks(p.pid) / TCK
            for name, t in thread_ticks(p.pid).values():
                threads[name] = threads.get(name, 0) + t / TCK
        res["member_hwm_kb"] = [status_kb(p.pid, "VmHWM") for p in procs]
        res["member_tx_seconds"] = [batch_seconds(f"{a.logdir}/member{i + 1}.log")
                                    for i in range(len(procs))]
        res["member_threads"] = [status_kb(p.pid, "Threads") for p in procs]
        for k in c0:
            cpu[k] = (c1[k] - c0[k]) / TCK
        # /proc/stat counts in USER_HZ too; it covers every CPU.
        busy = (m1[0] - m0[0]) / TCK
        cpu["machine total (all CPUs)"] = busy
        cpu["other"] = busy - sum(v for k, v in cpu.items()
                                  if k not in ("machine total (all CPUs)",))
        res["cpu_s"] = cpu
        res["weir_threads_cpu_s"] = dict(sorted(threads.items(), key=lambda kv: -kv[1]))
        res["measured_s"] = end - t_start
    finally:
        stop_members()

    res["timeline"] = timeline
    if t_done is not None:
        res["t_first"] = t_first - t_start
        res["first_count"] = first_count
        res["t_done"] = t_done - t_start
        res["rate_from_start"] = a.n / (t_done - t_start)
        if t_done > t_first:
            res["rate_from_first"] = (a.n - first_count) / (t_done - t_first)

    # Reports the members printed on SIGTERM.
    reports = []
    for i, p in enumerate(procs):
        if p.returncode != 0:
            res["errors"].append(f"member {i + 1} exited with {p.returncode}")
        try:
            with open(f"{a.logdir}/member{i + 1}.json") as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
            reports.append(json.loads(lines[-1]))
        except (IndexError, ValueError, FileNotFoundError):
            reports.append(None)
            res["errors"].append(f"member {i + 1} printed no report")
    res["reports"] = reports

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
    if final["stored_offsets"] != a.n:
        res["errors"].append(
            f"sum of stored next offsets = {final['stored_offsets']}, expected {a.n}")
    applied = sum(r["applied"] for r in reports if r)
    if all(reports) and applied != a.n:
        res["errors"].append(f"members report {applied} applied records in total, expected {a.n}")
    if any(r and r.get("dead_lettered") for r in reports):
        res["errors"].append("some records were dead-lettered")
    res["ok"] = t_done is not None and not res["errors"]
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
