#!/usr/bin/env python3
"""report.py N "KCAT_SECONDS…" RESULT.json… — the markdown tables of
bench/consume-health/run: throughput and ratios to kcat, then where the CPU
went during each weir run, then the correctness checks."""
import json
import statistics
import sys

TARGET = 0.5


def main() -> None:
    n = int(sys.argv[1])
    kcat = [float(x) for x in sys.argv[2].split()]
    results = [json.load(open(p)) for p in sys.argv[3:]]
    k_s = statistics.median(kcat)
    k_rate = n / k_s

    def verdict(r):
        return "meets" if r >= TARGET else "**misses**"

    print("| reader | wall s | events/s | ÷ kcat | events/s from first commit | ÷ kcat | target ≥ 0.5 × kcat |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print(f"| `kcat -C … -e -o beginning -q > /dev/null` (median of {len(kcat)}: "
          f"{', '.join(f'{t:.2f}' for t in kcat)} s) | {k_s:.2f} | {k_rate:,.0f} | 1.00 | | | |")
    for r in results:
        name = (f"`weir consume health` × {r['members']}, batch_max_records = "
                f"{'5000 (default)' if r['batch'] == 'default' else r['batch']}")
        if "t_done" not in r:
            print(f"| {name} | did not finish | | | | | **fails**: {'; '.join(r['errors'])} |")
            continue
        a = r["rate_from_start"]
        b = r.get("rate_from_first")
        v = f"from start: {verdict(a / k_rate)}"
        if b is None:
            bcells = "n/a (first poll saw N) | "
        else:
            bcells = f"{b:,.0f} | {b / k_rate:.2f}"
            v += f"; from first commit: {verdict(b / k_rate)}"
        print(f"| {name} | {r['t_done']:.2f} | {a:,.0f} | {a / k_rate:.2f} | {bcells} | {v} |")
    print()
    print("Before each weir run: " + "; ".join(
        f"× {r['members']} (batch {r['batch']}): {r.get('quiet', '?')}" for r in results) + ".")
    print()
    print("Start-up (spawn → first non-zero `sum(reports)`): " + "; ".join(
        f"× {r['members']} (batch {r['batch']}): {r['t_first']:.2f} s, first count {r['first_count']}"
        for r in results if "t_first" in r) + ".")
    print()

    # CPU: seconds between spawn and completion, and % of one core.
    keys = []
    for r in results:
        for k in r.get("cpu_s", {}):
            if k not in keys:
                keys.append(k)
    order = [k for k in keys if k.startswith("weir")] + [
        k for k in ("postgres", "kafka", "redis", "bench poller (python + psql)", "other",
                    "machine total (all CPUs)") if k in keys]
    print("CPU seconds spent between spawning the members and `sum(reports)` = N "
          "(in brackets: % of one core over that time; the machine has 2 cores = 200 %):")
    print()
    print("| process | " + " | ".join(
        f"× {r['members']}, batch {r['batch']}" for r in results if "cpu_s" in r) + " |")
    print("|---|" + "---:|" * sum(1 for r in results if "cpu_s" in r))
    for k in order:
        cells = []
        for r in results:
            if "cpu_s" not in r:
                continue
            v = r["cpu_s"].get(k)
            cells.append("" if v is None else f"{v:.2f} ({100 * v / r['measured_s']:.0f} %)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print("weir CPU by thread (all members, whole process life until completion): " + " — ".join(
        f"× {r['members']}, batch {r['batch']}: " + ", ".join(
            f"`{name}` {s:.2f} s" for name, s in list(r["weir_threads_cpu_s"].items())[:6])
        for r in results if "weir_threads_cpu_s" in r) + ".")
    print()
    print("Time inside the PostgreSQL transaction per batch (`weir_consumer_batch_seconds` "
          "from each member's /metrics, summed over members) against the run's wall time: " + "; ".join(
        f"× {r['members']} (batch {r['batch']}): " + (
            f"{sum(t['sum'] for t in r['member_tx_seconds'] if t):.2f} s in "
            f"{sum(int(t['count']) for t in r['member_tx_seconds'] if t)} transactions of {r['measured_s']:.2f} s"
            if any(r.get("member_tx_seconds") or []) else "n/a")
        for r in results if "measured_s" in r) + ".")
    print()
    print("Progress (seconds since spawn → `sum(reports)`, as polled every 200 ms):")
    print()
    for r in results:
        tl = r.get("timeline", [])
        print(f"- × {r['members']}, batch {r['batch']}: " + ", ".join(f"{t:.1f}→{c}" for t, c in tl))
    print()
    print("Checks after the members stopped (exactly-once: every figure must equal N):")
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
        print(f"| × {r['members']}, batch {r['batch']} | {f.get('sum_reports')} | "
              f"{f.get('session_reports')} | {f.get('stored_offsets')} | "
              f"{f.get('servers')} / {r.get('redis_nodes')} | "
              f"{' + '.join(str(x.get('applied')) for x in reps)} | {s('batches')} | "
              f"{s('fenced')} | {s('skipped')} | {s('store_errors')} | {hwm} | {result} |")


if __name__ == "__main__":
    main()
