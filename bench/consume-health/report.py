#!/usr/bin/env python3
"""report.py N KCAT.tsv RESULT.json… — the markdown tables of
bench/consume-health/run: throughput and ratios to kcat, where the CPU went
during each weir run, the progress timelines and the correctness checks.

The reference is the median of the `default` kcat runs (the command as
written); ratios to the fastest default run are given too, since kcat's own
runs fall into two groups about 1 s apart (librdkafka's fetch back-off).

A run is flagged *disturbed* when processes other than the ones measured
(weir, kcat, Kafka, PostgreSQL, Redis, the poller) used more than 20 % of
one core on average during it: someone else's build or tests were taking
the cores being measured."""
import json
import statistics
import sys

TARGET = 0.7  # issue 13: >= 0.7x kcat -C, one member and two
DISTURBED = 0.20  # of one core


def config_name(r):
    parts = []
    parts.append("batch_max_records = " + ("5000 (default)" if r["batch"] == "-" else r["batch"]))
    if r.get("rdkafka", "-") != "-":
        parts.append("rdkafka " + ", ".join(f"`{kv}`" for kv in r["rdkafka"].split(",")))
    return "; ".join(parts)


def short(r):
    s = f"× {r['members']}"
    s += ", batch " + ("default" if r["batch"] == "-" else r["batch"])
    if r.get("rdkafka", "-") != "-":
        s += ", " + r["rdkafka"]
    rep = r["label"].split("_r", 1)[-1].split("_a", 1)[0]
    if rep != "1":
        s += f" (run {rep})"
    return s


def main() -> None:
    n = int(sys.argv[1])
    kc = {}
    for line in open(sys.argv[2]):
        v, wall, cpu, other = line.split()
        kc.setdefault(v, []).append((float(wall), float(cpu), float(other)))
    results = [json.load(open(p)) for p in sys.argv[3:]]
    kcat = [w for w, _, _ in kc["default"]]
    k_s = statistics.median(kcat)
    k_rate = n / k_s
    k_fast = n / min(kcat)

    def verdict(x):
        return "meets" if x >= TARGET else "**misses**"

    def disturbed(r):
        other = r.get("cpu_s", {}).get("other")
        if other is None or "measured_s" not in r:
            return ""
        share = other / r["measured_s"]
        return f" ⚠ disturbed ({100 * share:.0f} % of a core used by other processes)" if share > DISTURBED else ""

    def flag(w, o):
        return " ⚠" if o / w > DISTURBED else ""

    by_m = {}
    for r in results:
        if "t_done" in r and r.get("batch", "-") == "-" and r.get("rdkafka", "-") == "-":
            by_m.setdefault(r["members"], []).append(
                (r["rate_from_start"] / k_rate, (r.get("rate_from_first") or 0) / k_rate,
                 max((x or 0 for x in r.get("member_hwm_kb", [])), default=0)))
    if by_m:
        print(f"Summary, default configuration (each run ÷ the kcat median; target ≥ {TARGET}):")
        print()
        print("| members | runs | ÷ kcat from start, median (min–max) | from first commit | largest member peak RSS |")
        print("|---:|---:|---|---|---:|")
        for m in sorted(by_m):
            xs = sorted(x[0] for x in by_m[m])
            ys = sorted(x[1] for x in by_m[m])
            print(f"| {m} | {len(xs)} | {statistics.median(xs):.2f} ({xs[0]:.2f}–{xs[-1]:.2f}) | "
                  f"{statistics.median(ys):.2f} ({ys[0]:.2f}–{ys[-1]:.2f}) | "
                  f"{max(x[2] for x in by_m[m]) / 1024:.0f} MiB |")
        print()
    print("| reader | wall s | events/s | ÷ kcat median | ÷ fastest kcat | from first commit: events/s "
          "| ÷ kcat median | target ≥ 0.7 × kcat (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    runs = ", ".join(f"{w:.2f}{flag(w, o)}" for w, _, o in kc["default"])
    print(f"| **`kcat -C … -e -o beginning -q > /dev/null`** (reference), median of {len(kcat)} "
          f"({runs} s) | {k_s:.2f} | {k_rate:,.0f} | 1.00 | {k_rate / k_fast:.2f} | | | |")
    if "unthrottled" in kc:
        u = [w for w, _, _ in kc["unthrottled"]]
        u_s = statistics.median(u)
        print(f"| `kcat` with `-X queued.min.messages=10000000 -X queued.max.messages.kbytes=2097151` "
              f"(context), median of {len(u)} ({', '.join(f'{w:.2f}{flag(w, o)}' for w, _, o in kc['unthrottled'])} s) "
              f"| {u_s:.2f} | {n / u_s:,.0f} | {n / u_s / k_rate:.2f} | {n / u_s / k_fast:.2f} | | | |")
    for r in results:
        name = f"`weir consume health` × {r['members']}, {config_name(r)}"
        rep = r["label"].split("_r", 1)[-1].split("_a", 1)[0]
        if rep != "1":
            name += f" (run {rep})"
        if r.get("discarded_attempts"):
            name += f" (after {r['discarded_attempts']} disturbed attempt(s) discarded)"
        name += disturbed(r)
        if "t_done" not in r:
            print(f"| {name} | did not finish | | | | | | **fails**: {'; '.join(r['errors'])} |")
            continue
        a = r["rate_from_start"]
        b = r.get("rate_from_first")
        v = f"from start: {verdict(a / k_rate)}"
        if b is None:
            bcells = "n/a (first poll saw N) | "
        else:
            bcells = f"{b:,.0f} | {b / k_rate:.2f}"
            v += f"; from first commit: {verdict(b / k_rate)}"
        print(f"| {name} | {r['t_done']:.2f} | {a:,.0f} | {a / k_rate:.2f} | {a / k_fast:.2f} | {bcells} | {v} |")
    print()
    for v, rows in kc.items():
        print(f"kcat runs ({v}): " + "; ".join(
            f"{w:.2f} s wall, kcat {c:.2f} CPU s, other processes but Kafka {o:.2f} CPU s"
            for w, c, o in rows) + ".")
        print()
    print(f"⚠ = other processes used more than {100 * DISTURBED:.0f} % of a core during the run.")
    print()
    print("Before each weir run: " + "; ".join(
        f"{short(r)}: {r.get('quiet', '?')}" for r in results) + ".")
    print()
    print("Start-up (spawn → first non-zero `sum(reports)`): " + "; ".join(
        f"{short(r)}: {r['t_first']:.2f} s, first count {r['first_count']}"
        for r in results if "t_first" in r) + ".")
    print()

    # CPU: seconds between spawn and completion, and % of one core.
    keys = []
    for r in results:
        for k in r.get("cpu_s", {}):
            if k not in keys:
                keys.append(k)
    order = [k for k in keys if k.startswith("weir")] + [
        k for k in ("postgres", "postgres: this run's backends", "postgres: rest of the server", "kafka", "redis", "bench poller (python + psql)", "other",
                    "machine total (all CPUs)") if k in keys]
    with_cpu = [r for r in results if "cpu_s" in r]
    print("CPU seconds spent between spawning the members and `sum(reports)` = N "
          "(in brackets: % of one core over that time; the machine has 2 cores = 200 %):")
    print()
    print("| process | " + " | ".join(short(r) for r in with_cpu) + " |")
    print("|---|" + "---:|" * len(with_cpu))
    for k in order:
        cells = []
        for r in with_cpu:
            v = r["cpu_s"].get(k)
            cells.append("" if v is None else f"{v:.2f} ({100 * v / r['measured_s']:.0f} %)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print("weir CPU by thread (all members, whole process life until completion; the "
          "consumer loop runs on the main thread, named after the binary):")
    print()
    for r in results:
        if "weir_threads_cpu_s" in r:
            print(f"- {short(r)}: " + ", ".join(
                f"`{name}` {s:.2f} s" for name, s in list(r["weir_threads_cpu_s"].items())[:6]))
    print()
    print("Time inside the PostgreSQL transaction of each batch (`weir_consumer_batch_seconds` "
          "from each member's /metrics, summed over members) against the run's wall time:")
    print()
    for r in results:
        if "measured_s" not in r:
            continue
        tx = [t for t in (r.get("member_tx_seconds") or []) if t]
        if tx:
            s = sum(t["sum"] for t in tx)
            c = sum(int(t["count"]) for t in tx)
            print(f"- {short(r)}: {s:.2f} s in {c} transactions ({1000 * s / max(c, 1):.1f} ms each) "
                  f"of {r['measured_s']:.2f} s")
        else:
            print(f"- {short(r)}: n/a")
    print()
    print("Progress (seconds since spawn → `sum(reports)`, as polled every 200 ms):")
    print()
    for r in results:
        tl = r.get("timeline", [])
        print(f"- {short(r)}: " + ", ".join(f"{t:.1f}→{c}" for t, c in tl))
    print()
    print("Checks after the members stopped (exactly-once: the first three figures must equal N):")
    print()
    print("| run | sum(servers.reports) | sum(node_sessions.reports) | stored next offsets | "
          "servers / Redis nodes | applied per member | batches | fenced | skipped | store errors | peak RSS MiB | result |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|")
    for r in results:
        f = r.get("final", {})
        reps = [x for x in r.get("reports", []) if x]
        s = lambda k: sum(x.get(k, 0) for x in reps)
        hwm = ", ".join(f"{kb / 1024:.0f}" for kb in r.get("member_hwm_kb", []))
        result = "ok" if r["ok"] else "**FAILED**: " + "; ".join(r["errors"])
        print(f"| {short(r)} | {f.get('sum_reports')} | "
              f"{f.get('session_reports')} | {f.get('stored_offsets')} | "
              f"{f.get('servers')} / {r.get('redis_nodes')} | "
              f"{' + '.join(str(x.get('applied')) for x in reps)} | {s('batches')} | "
              f"{s('fenced')} | {s('skipped')} | {s('store_errors')} | {hwm} | {result} |")


if __name__ == "__main__":
    main()
