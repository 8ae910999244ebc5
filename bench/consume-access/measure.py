#!/usr/bin/env python3
"""measure.py — runs K `weir consume access` members of one (fresh) group
until PostgreSQL holds every event, and measures how long that took and who
spent the CPU. Called by bench/consume-access/run; the WEIR_* environment
(group, database, Redis prefix, topics) is set by the caller. Adapted from
bench/consume-health/measure.py (same timing and CPU accounting).

Timing: t_start = just before the members are spawned; every 200 ms one
persistent psql session runs `SELECT sum(requests) FROM access_minute`;
t_first = first poll that sees a non-zero sum; t_done = first poll that sees
N. Rates: N / (t_done - t_start) ("from process start") and
(N - first_count) / (t_done - t_first) ("from first commit", i.e. without
start-up: migrations, group join, first fetch).

CPU (utime+stime, /proc) between t_start and t_done: each member; the
PostgreSQL server (postmaster, its live children, and children that exited,
through the postmaster's cutime/cstime); Kafka; Redis; and the whole machine
(/proc/stat), so that whatever else ran shows up as "other".

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
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procstat import TCK, batch_seconds, machine_ticks, proc_ticks, status_kb, stat_fields, thread_ticks, tree_ticks  # noqa: E402,F401

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
    procs = []

    def stop_members():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + a.stop_timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                res["errors"].append(f"member pid {p.pid} did not stop within {a.stop_timeout:.0f} s; killed")
                p.kill()
                p.wait()

    me = os.getpid()
    c0 = {
        "postgres": tree_ticks(a.pg_pid), "kafka": tree_ticks(a.kafka_pid),
        "redis": tree_ticks(a.redis_pid),
        "bench poller (python + psql)": proc_ticks(me) + proc_ticks(psql.p.pid),
    }
    m0 = machine_ticks()
    t_start = time.time()
    for i in range(a.members):
        out = open(f"{a.logdir}/member{i + 1}.json", "w")
        err = open(f"{a.logdir}/member{i + 1}.log", "w")
        procs.append(subprocess.Popen(a.wrap.split() + [a.weir, "consume", "access"],
                                      stdout=out, stderr=err))
    t_first = first_count = t_done = None
    timeline = []
    last = 0
    sum_sql = "SELECT coalesce(sum(requests), 0) FROM access_minute"
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
                res["errors"].append(f"sum(requests) = {count} > N = {a.n}: duplicate effects")
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
        c1 = {
            "postgres": tree_ticks(a.pg_pid), "kafka": tree_ticks(a.kafka_pid),
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

    # Exactly once: after every member stopped, the effects count N, once,
    # and match what the generator says it produced, minute by minute.
    final = {
        "sum_requests": psql.scalar(sum_sql, -1),
        "sum_bytes": psql.scalar("SELECT coalesce(sum(bytes), 0) FROM access_minute", -1),
        "rows": psql.scalar("SELECT count(*) FROM access_minute", -1),
        "stored_offsets": psql.scalar("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets", -1),
    }
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
