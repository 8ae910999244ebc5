#!/usr/bin/env python3
"""naive.py — the NAIVE floor of bench/consume-access/run: one
`INSERT … ON CONFLICT DO UPDATE` per event, in autocommit (one transaction,
hence one WAL flush, per event), through ONE psql session.

    kcat -C -e -o beginning -f '%s\\n'  →  this script (JSON → SQL)  →  psql

The table is created from Weir's own migration (identical access_minute).
Stops after --max-seconds of feeding (a prefix of the topic) or at the end of
the topic, closes psql's input and waits for psql to finish every statement
already sent; the rate is the rows' sum(requests) in the table at that point
÷ (that point − start). Prints one JSON object on stdout.
"""
import argparse
import json
import os
import subprocess
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")
HITS = {"hit", "revalidated"}
MISSES = {"miss", "stream", "coalesced"}

SQL = ("INSERT INTO access_minute VALUES (date_trunc('minute', '{ts}'::timestamptz), '{node}', '{obj}', "
       "1, {bytes}, {hit}, {miss}, {stale}, {s2}, {s3}, {s4}, {s5}, {lat}, {lat}) "
       "ON CONFLICT (minute, node_id, object_key) DO UPDATE SET "
       "requests = access_minute.requests + 1, bytes = access_minute.bytes + EXCLUDED.bytes, "
       "hits = access_minute.hits + EXCLUDED.hits, misses = access_minute.misses + EXCLUDED.misses, "
       "stale = access_minute.stale + EXCLUDED.stale, "
       "status_2xx = access_minute.status_2xx + EXCLUDED.status_2xx, "
       "status_3xx = access_minute.status_3xx + EXCLUDED.status_3xx, "
       "status_4xx = access_minute.status_4xx + EXCLUDED.status_4xx, "
       "status_5xx = access_minute.status_5xx + EXCLUDED.status_5xx, "
       "latency_sum_us = access_minute.latency_sum_us + EXCLUDED.latency_sum_us, "
       "latency_max_us = GREATEST(access_minute.latency_max_us, EXCLUDED.latency_max_us);\n")


def q(s):
    return str(s).replace("'", "''")


def statement(line):
    e = json.loads(line)
    c = e.get("cache")
    cls = int(e["status"]) // 100 - 2
    lat = int(e["total_latency_us"])
    return SQL.format(
        ts=q(e["ts"]), node=q(e["node_id"]), obj=q(e["object_key"]), bytes=int(e["bytes_sent"]),
        hit=int(c in HITS), miss=int(c in MISSES), stale=int(c == "stale"),
        s2=int(cls == 0), s3=int(cls == 1), s4=int(cls == 2), s5=int(cls == 3), lat=lat)


def ticks(pid, children=False):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except FileNotFoundError:
        return 0
    f = s[s.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)


def tree_ticks(root):
    if root <= 1:
        return 0
    total = ticks(root, True)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except FileNotFoundError:
                continue
            fl = s[s.rindex(")") + 2:].split()
            if int(fl[1]) == root:
                total += int(fl[11]) + int(fl[12]) + int(fl[13]) + int(fl[14])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--migration", required=True)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--pg-pid", type=int, default=0)
    a = ap.parse_args()

    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", a.db_url, "-f", a.migration],
                   check=True, stdout=subprocess.DEVNULL)
    ch = os.times()
    children0 = ch.children_user + ch.children_system
    pg0 = tree_ticks(a.pg_pid)
    me0 = ticks(os.getpid())
    t0 = time.time()
    kcat = subprocess.Popen(["kcat", "-C", "-b", a.brokers, "-t", a.topic, "-e", "-o", "beginning",
                             "-q", "-f", "%s\n"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    psql = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", a.db_url],
                            stdin=subprocess.PIPE, text=True)
    psql.stdin.write("SET timezone = 'UTC';\n")
    sent = 0
    cut = False
    for line in kcat.stdout:
        psql.stdin.write(statement(line))
        sent += 1
        if sent % 256 == 0 and time.time() - t0 > a.max_seconds:
            cut = True
            break
    if cut:
        kcat.kill()
    kcat.wait()
    psql.stdin.close()
    rc = psql.wait()
    t1 = time.time()
    me1 = ticks(os.getpid())
    ch = os.times()  # kcat and psql, reaped: their CPU is our children's
    children = ch.children_user + ch.children_system
    pg1 = tree_ticks(a.pg_pid)
    out = subprocess.run(["psql", "-X", "-Atq", a.db_url, "-c",
                          "SELECT coalesce(sum(requests),0) || ' ' || coalesce(sum(bytes),0) || ' ' || count(*) FROM access_minute"],
                         check=True, capture_output=True, text=True).stdout.split()
    done, bytes_, rows = (int(x) for x in out)
    res = {"sent": sent, "applied": done, "bytes": bytes_, "rows": rows, "cut": cut,
           "seconds": t1 - t0, "rate": done / (t1 - t0), "psql_rc": rc,
           "cpu_s": {"python (JSON → SQL)": (me1 - me0) / TCK, "kcat + psql": children - children0, "postgres": (pg1 - pg0) / TCK}}
    print(json.dumps(res))
    sys.exit(0 if rc == 0 and done == sent else 1)


if __name__ == "__main__":
    main()
