"""groupbench.py — what both consumer-group benchmarks' measure.py do the
same way: spawn K members of one fresh group, poll one sum in PostgreSQL
every 200 ms until it reaches N, account the CPU of the members and of the
services between the start and that moment, stop the members with SIGTERM,
read the reports they print, and check the runtime's own bookkeeping
(stored offsets, applied records, dead letters).

Timing: t_start = just before the members are spawned; t_first = first poll
that sees a non-zero sum; t_done = first poll that sees N. Rates:
N / (t_done - t_start) ("from process start") and (N - first_count) /
(t_done - t_first) ("from first commit", i.e. without start-up: migrations,
group join, first fetch).
"""
import json
import os
import signal
import subprocess
import time

from procstat import TCK, batch_seconds, machine_ticks, proc_ticks, status_kb, thread_ticks


def run_members(a, role, psql, sum_sql, unit, services, res, wrap=(), stop_timeout=60.0):
    """Runs `a.members` × `weir consume ROLE` until `sum_sql` reaches `a.n`.

    `services()` returns {name: CPU ticks so far} for the services to account
    (PostgreSQL, Kafka, Redis); the bench's own poller is added here. Fills
    `res` (timeline, rates, CPU, memory, reports) and returns the members'
    reports."""
    procs = []
    me = os.getpid()

    def sources():
        c = services()
        c["bench poller (python + psql)"] = proc_ticks(me) + proc_ticks(psql.p.pid)
        return c

    def stop_members():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + stop_timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                res["errors"].append(
                    f"member pid {p.pid} did not stop within {stop_timeout:.0f} s; killed")
                p.kill()
                p.wait()

    c0, m0 = sources(), machine_ticks()
    t_start = time.time()
    for i in range(a.members):
        out = open(f"{a.logdir}/member{i + 1}.json", "w")
        err = open(f"{a.logdir}/member{i + 1}.log", "w")
        procs.append(subprocess.Popen(list(wrap) + [a.weir, "consume", role],
                                      stdout=out, stderr=err))
    t_first = first_count = t_done = None
    timeline = []
    last = 0
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
                res["errors"].append(f"sum({unit}) = {count} > N = {a.n}: duplicate effects")
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
        c1, m1 = sources(), machine_ticks()
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
        # A service's share of itself (e.g. one database's backends within
        # PostgreSQL, marked "(this run's …)") is not counted twice.
        cpu["other"] = busy - sum(v for k, v in cpu.items()
                                  if k != "machine total (all CPUs)" and "(this run's" not in k)
        res["cpu_s"] = cpu
        res["weir_threads_cpu_s"] = dict(sorted(threads.items(), key=lambda kv: -kv[1]))
        res["measured_s"] = end - t_start
    finally:
        stop_members()

    res["timeline"] = timeline
    res["done"] = t_done is not None
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
    return reports


def check_bookkeeping(res, n, stored_offsets, reports):
    """The runtime's side of exactly once: stored offsets and the members'
    applied records both N, nothing dead-lettered. Sets res["ok"]."""
    if stored_offsets != n:
        res["errors"].append(f"sum of stored next offsets = {stored_offsets}, expected {n}")
    applied = sum(r["applied"] for r in reports if r)
    if all(reports) and applied != n:
        res["errors"].append(f"members report {applied} applied records in total, expected {n}")
    if any(r and r.get("dead_lettered") for r in reports):
        res["errors"].append("some records were dead-lettered")
    res["ok"] = res["done"] and not res["errors"]
