#!/usr/bin/env python3
"""report.py N "KCAT_SECONDS…" GEN.json NAIVE.json NAIVE_MAX_S RESULT.json… —
the markdown tables of bench/consume-access/run: throughput and ratios to
kcat (weir × 1, weir × 2, naive), per-event CPU and where it went, then the
exactly-once checks of every weir run (profiled runs included)."""
import json
import os
import re
import statistics
import sys

TARGET = 0.7  # issue 13: >= 0.7x kcat -C, one member and two


def curve(n, runs, rounds) -> None:
    """Per group size: each run's rate over the kcat run of its own round,
    median (min-max) over the rounds."""
    if not rounds:
        return
    by_m = {}
    for r in runs:
        if "t_done" not in r or r["label"] not in rounds:
            continue
        k_rate = n / rounds[r["label"]]
        by_m.setdefault(r["members"], []).append(
            (r["rate_from_start"] / k_rate, (r.get("rate_from_first") or 0) / k_rate,
             max((x or 0 for x in r.get("member_hwm_kb", [])), default=0)))
    print("### Per round (each weir run ÷ the kcat run of its round)")
    print()
    print(f"| members | rounds | ÷ kcat from start, median (min–max) | ÷ kcat from first commit | largest member peak RSS (VmHWM) | target ≥ {TARGET} |")
    print("|---:|---:|---|---|---|---|")
    for m in sorted(by_m):
        xs = sorted(x[0] for x in by_m[m])
        ys = sorted(x[1] for x in by_m[m])
        met = "meets" if xs[0] >= TARGET else ("**misses** in every round" if xs[-1] < TARGET else "**not reliably**")
        print(f"| {m} | {len(xs)} | {statistics.median(xs):.2f} ({xs[0]:.2f}–{xs[-1]:.2f}) | "
              f"{statistics.median(ys):.2f} ({ys[0]:.2f}–{ys[-1]:.2f}) | "
              f"{max(x[2] for x in by_m[m]) / 1024:.0f} MiB | {met} |")
    print()


def main() -> None:
    n = int(sys.argv[1])
    kcat = [float(x) for x in sys.argv[2].split()]
    gen = json.load(open(sys.argv[3]))
    naive = json.load(open(sys.argv[4]))
    naive_max = float(sys.argv[5])
    results = [json.load(open(p)) for p in sys.argv[6:]]
    main_runs = [r for r in results if re.fullmatch(r"m[0-9]+(_r[0-9]+)?", r.get("label", ""))]
    k_s = statistics.median(kcat)
    k_rate = n / k_s
    rounds = {}
    if os.environ.get("BENCH_ROUNDS") and os.path.exists(os.environ["BENCH_ROUNDS"]):
        for line in open(os.environ["BENCH_ROUNDS"]):
            label, secs = line.split()
            rounds[label] = float(secs)
    curve(n, main_runs, rounds)

    def verdict(x):
        return "meets" if x >= TARGET else "**misses**"

    print("### Throughput")
    print()
    print("| reader | events | wall s | events/s | ÷ kcat | events/s from first commit | ÷ kcat | target ≥ 0.5 × kcat |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(f"| `kcat -C … -e -o beginning -q > /dev/null` (median of {len(kcat)}: "
          f"{', '.join(f'{t:.2f}' for t in kcat)} s) | {n} | {k_s:.2f} | {k_rate:,.0f} | 1.00 | | | |")
    for r in main_runs:
        name = f"`weir consume access` × {r['members']} (exactly-once on)"
        if "t_done" not in r:
            print(f"| {name} | {n} | did not finish | | | | | **fails**: {'; '.join(r['errors'])} |")
            continue
        a = r["rate_from_start"]
        b = r.get("rate_from_first")
        v = f"from start: {verdict(a / k_rate)}"
        if b is None:
            bcells = "n/a | "
        else:
            bcells = f"{b:,.0f} | {b / k_rate:.2f}"
            v += f"; from first commit: {verdict(b / k_rate)}"
        if not r["ok"]:
            v += "; **exactly-once check FAILED**"
        print(f"| {name} | {n} | {r['t_done']:.2f} | {a:,.0f} | {a / k_rate:.2f} | {bcells} | {v} |")
    if naive.get("seconds"):
        scope = (f"prefix: first {naive['applied']} events, feeding stopped after {naive_max:.0f} s"
                 if naive["cut"] else "whole topic")
        print(f"| naive: `kcat -f '%s\\n'` → python → one `INSERT … ON CONFLICT DO UPDATE` per event, "
              f"autocommit, one psql session ({scope}) | {naive['applied']} | {naive['seconds']:.2f} | "
              f"{naive['rate']:,.0f} | {naive['rate'] / k_rate:.3f} | | | {verdict(naive['rate'] / k_rate)} |")
    else:
        print("| naive | | failed | | | | | |")
    print()
    print("Before each weir run: " + "; ".join(
        f"× {r['members']}: {r.get('quiet', '?')}" for r in main_runs) + ".")
    print()
    print("Start-up (spawn → first non-zero `sum(requests)`): " + "; ".join(
        f"× {r['members']}: {r['t_first']:.2f} s, first count {r['first_count']}"
        for r in main_runs if "t_first" in r) + ".")
    print()
    for r in main_runs:
        reps = [x for x in r.get("reports", []) if x]
        print(f"- × {r['members']}: members' own reports (on SIGTERM): " + "; ".join(
            f"member {i + 1}: applied {x.get('applied')}, {x.get('batches')} batches, "
            f"busy {x.get('busy_secs', 0):.2f} s, rate_per_sec {x.get('rate_per_sec', 0):,.0f}"
            for i, x in enumerate(reps)) + ".")
    print()

    # ---- CPU
    print("### CPU per event and where it goes")
    print()
    print("CPU seconds between spawning the members and `sum(requests)` = N (utime+stime from /proc; "
          "in brackets µs per event = CPU ÷ N):")
    print()
    keys = []
    for r in main_runs:
        for k in r.get("cpu_s", {}):
            if k not in keys:
                keys.append(k)
    order = [k for k in keys if k.startswith("weir")] + [
        k for k in ("postgres", "postgres (this run's backends)", "kafka", "redis", "bench poller (python + psql)", "other",
                    "machine total (all CPUs)") if k in keys]
    cols = [r for r in main_runs if "cpu_s" in r]
    print("| process | " + " | ".join(f"weir × {r['members']} ({r['measured_s']:.2f} s wall)" for r in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for k in order:
        cells = []
        for r in cols:
            v = r["cpu_s"].get(k)
            cells.append("" if v is None else f"{v:.2f} s ({1e6 * v / n:.1f} µs)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    cells = []
    for r in cols:
        w = sum(v for k, v in r["cpu_s"].items() if k.startswith("weir member"))
        cells.append(f"**{w:.2f} s ({1e6 * w / n:.1f} µs)**")
    print("| **all weir members** | " + " | ".join(cells) + " |")
    print()
    if naive.get("cpu_s"):
        a = max(naive["applied"], 1)
        print(f"Naive consumer over its {naive['applied']} events: " + ", ".join(
            f"{k} {v:.2f} s ({1e6 * v / a:.0f} µs/event)" for k, v in naive["cpu_s"].items()) + ".")
        print()
    print("weir CPU by thread (all members, whole process life until completion; "
          "`weir` = the main thread running the consume loop, `tokio-rt-worker` = runtime workers "
          "(sqlx, Redis), `rdk:*` = librdkafka): " + " — ".join(
              f"× {r['members']}: " + ", ".join(
                  f"`{name}` {s:.2f} s" for name, s in list(r["weir_threads_cpu_s"].items())[:7])
              for r in main_runs if "weir_threads_cpu_s" in r) + ".")
    print()
    print("Time inside the PostgreSQL transaction per batch (`weir_consumer_batch_seconds` from each "
          "member's /metrics, summed over members) against the run's wall time: " + "; ".join(
              f"× {r['members']}: " + (
                  f"{sum(t['sum'] for t in r['member_tx_seconds'] if t):.2f} s in "
                  f"{sum(int(t['count']) for t in r['member_tx_seconds'] if t)} transactions of "
                  f"{r['measured_s']:.2f} s"
                  if any(r.get("member_tx_seconds") or []) else "n/a")
              for r in main_runs if "measured_s" in r) + ".")
    print()
    print("Progress (seconds since spawn → `sum(requests)`, polled every 200 ms):")
    print()
    for r in main_runs:
        tl = r.get("timeline", [])
        print(f"- × {r['members']}: " + ", ".join(f"{t:.1f}→{c}" for t, c in tl))
    print()

    # ---- checks
    print("### Exactly-once checks (after the members stopped)")
    print()
    print(f"gen's totals (N = {n}): requests {gen['requests']}, bytes {gen['bytes']}, "
          f"{len(gen['per_minute'])} minutes. Each weir run must match them exactly "
          "(sum and every minute), with stored next offsets summing to N and the members' "
          "`applied` summing to N. Redis top-objects scores are best effort (reported, not checked).")
    print()
    print("| run | events | sum(requests) | sum(bytes) | minutes differing | rows | stored next offsets | "
          "applied per member | batches | dead-lettered | fenced | skipped | store errors | Redis top-objects sum | peak RSS MiB | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        f = r.get("final", {})
        reps = [x for x in r.get("reports", []) if x]
        s = lambda k: sum(x.get(k, 0) for x in reps)
        hwm = ", ".join(f"{kb / 1024:.0f}" for kb in r.get("member_hwm_kb", []))
        result = "ok" if r["ok"] else "**FAILED**: " + "; ".join(r["errors"])
        label = {"m1": "weir × 1", "m2": "weir × 2", "perf": "weir × 1 under perf",
                 "callgrind": "weir × 1 under callgrind (small topic)"}.get(r.get("label"), r.get("label"))
        print(f"| {label} | {r['n']} | {f.get('sum_requests')} | {f.get('sum_bytes')} | "
              f"{f.get('minutes_differing')} of {f.get('minutes')} | {f.get('rows')} | {f.get('stored_offsets')} | "
              f"{' + '.join(str(x.get('applied')) for x in reps)} | {s('batches')} | {s('dead_lettered')} | "
              f"{s('fenced')} | {s('skipped')} | {s('store_errors')} | {r.get('redis_top_sum')} | {hwm} | {result} |")
    print()
    print("PostgreSQL's work on `access_minute` (pg_stat_user_tables): " + "; ".join(
        f"{r.get('label')}: {f['tup_inserted']} inserted, {f['tup_updated']} updated "
        f"({f['tup_hot_updated']} HOT)"
        for r in results for f in [r.get("final", {})] if "tup_inserted" in f) + ".")
    if naive.get("seconds"):
        print()
        print(f"Naive consumer: {naive['sent']} statements sent, table sum(requests) = {naive['applied']}, "
              f"{naive['rows']} rows, psql exit status {naive['psql_rc']}"
              + (" (a prefix of the topic: not compared with gen's totals)" if naive["cut"] else
                 f"; sum(bytes) {naive['bytes']} vs gen {gen['bytes']}"))


if __name__ == "__main__":
    main()
