"""Load on the dashboard's stream (bench/dashboard/run drives it).

A fleet of NODES simulated nodes reports at RATE changes per second the way
the health group publishes them (the node's key, then PUBLISH on the health
channel, speaking RESP to Redis directly), while CLIENTS SSE clients hold
/api/v1/dashboard/stream of one center. Of those, up to 20 parse every
delta and record, for each node report in it, the time from the report (its
`ts`, set when published) to the delta's arrival: report → page latency.
The others read and drop the bytes, as a browser that renders would at
least do. Prints one JSON line.

Usage: load.py CENTER_ADDR REDIS_HOST REDIS_PORT PREFIX NODES RATE CLIENTS SECONDS
Environment: CENTER_PID (the center's CPU over the window is reported),
PAGE_PID (a process tree whose CPU is reported: a browser showing the page).
"""

import asyncio
import json
import os
import random
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procstat import TCK, proc_ticks, stat_fields  # noqa: E402


def tree_ticks(root):
    """CPU of root and all its descendants (a browser's renderers are
    grandchildren of the node process that launched it)."""
    if root <= 1:
        return 0
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(stat_fields(d)[1])
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                pass
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += proc_ticks(p, children=True)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total

(center, rhost, rport, prefix, nodes, rate, clients, seconds) = sys.argv[1:9]
rport, nodes, rate, clients, seconds = int(rport), int(nodes), float(rate), int(clients), float(seconds)
chost, cport = center.rsplit(":", 1)
MEASURED = min(clients, 20)
# Each node reports every NODES/RATE seconds; expiry is three intervals.
INTERVAL_MS = max(1000, int(1000 * nodes / rate))


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def report(i, seq):
    now = datetime.now(timezone.utc)
    return {
        "schema_version": 1, "node_id": f"bench-{i:05d}", "agent_id": "00000000-0000-4000-8000-000000000000",
        "seq": seq, "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "interval_ms": INTERVAL_MS, "service": "edge", "endpoint": f"http://bench-{i:05d}:8080",
        "cdn_type": "bench", "cores": 16, "memory_total_mb": 32000, "memory_free_mb": random.randint(1000, 30000),
        "load_avg": {"one": 1.0, "five": 1.0, "fifteen": 1.0}, "cpu_usage_pct": random.uniform(1, 99),
        "interfaces": [{"name": "eth0", "rx_bytes_per_sec": random.randint(0, 10**8), "tx_bytes_per_sec": random.randint(0, 10**9), "link_speed_mbps": 25000}],
        "ips": {"lan": [], "wan": [], "device": []}, "uptime_secs": 1000,
    }


async def publish(r, w, i, seq):
    body = json.dumps(report(i, seq), separators=(",", ":"))
    ms = int(time.time() * 1000)
    w.write(resp("SET", f"{prefix}:node:bench-{i:05d}", body, "PX", 3 * INTERVAL_MS))
    w.write(resp("ZADD", f"{prefix}:nodes", ms, f"bench-{i:05d}"))
    w.write(resp("PUBLISH", f"{prefix}:health:changes", body))
    await w.drain()


async def reporter(stop):
    r, w = await asyncio.open_connection(rhost, rport)
    drained = asyncio.create_task(drain_replies(r))
    seqs = [0] * nodes
    # Everyone once, so the fleet is whole, then RATE per second.
    for i in range(nodes):
        seqs[i] += 1
        await publish(r, w, i, seqs[i])
    sent = 0
    t0 = time.monotonic()
    order = list(range(nodes))
    k = 0
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        while sent < due:
            i = order[k % nodes]
            k += 1
            seqs[i] += 1
            await publish(r, w, i, seqs[i])
            sent += 1
        await asyncio.sleep(0.005)
    w.close()
    drained.cancel()
    return sent


async def drain_replies(r):
    while await r.read(65536):
        pass


async def client(n, stop, lat, counts, ready):
    r, w = await asyncio.open_connection(chost, int(cport))
    # HTTP/1.0: the body is not chunked, so SSE lines arrive as sent.
    w.write(f"GET /api/v1/dashboard/stream HTTP/1.0\r\nHost: {center}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    measure = n < MEASURED
    buf = b""
    event, data = None, []
    have_snapshot = False
    tail = b""
    while not stop.is_set():
        chunk = await r.read(1 << 16)
        if not chunk:
            break
        counts["bytes"] += len(chunk)
        if not have_snapshot:
            # The first event (the snapshot) ends at the first blank line.
            if b"\n\n" in tail + chunk:
                have_snapshot = True
                ready.release()
            tail = chunk[-1:]
        if not measure:
            continue
        buf += chunk
        # Chunked transfer: strip size lines crudely by parsing SSE lines only.
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip())
            elif line == b"" and data:
                now = time.time() * 1000
                try:
                    v = json.loads(b"\n".join(data))
                except ValueError:
                    v = None
                if v is not None and event == "delta":
                    counts["deltas"] += 1
                    for node in v.get("nodes", []):
                        if node["id"].startswith("bench-"):
                            lat.append(now - node["last_ms"])
                elif event == "snapshot":
                    counts["snapshots"] += 1
                event, data = None, []
    w.close()


async def main():
    stop = asyncio.Event()
    lat, counts = [], {"bytes": 0, "deltas": 0, "snapshots": 0}
    ready = asyncio.Semaphore(0)
    rep = asyncio.create_task(reporter(stop))
    await asyncio.sleep(2)  # the fleet is in before the clients come
    tasks = [asyncio.create_task(client(n, stop, lat, counts, ready)) for n in range(clients)]
    # Every client has its snapshot (the fleet), then a warm-up.
    for _ in range(clients):
        await ready.acquire()
    await asyncio.sleep(3)
    lat.clear()
    counts.update(bytes=0, deltas=0)
    center_pid = int(os.environ.get("CENTER_PID", "0"))
    page_pid = int(os.environ.get("PAGE_PID", "0"))
    c0, p0, t0 = proc_ticks(center_pid), tree_ticks(page_pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, p1, t1 = proc_ticks(center_pid), tree_ticks(page_pid), time.monotonic()
    lat_window = sorted(lat)
    bytes_window = counts["bytes"]
    stop.set()
    sent = await rep
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    q = lambda p: round(lat_window[min(len(lat_window) - 1, int(p * len(lat_window)))], 1) if lat_window else None
    print(json.dumps({
        "nodes": nodes, "rate": rate, "clients": clients, "seconds": seconds, "reports_sent": sent,
        "latency_ms": {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": q(1.0), "samples": len(lat_window)},
        "deltas_per_measured_client": counts["deltas"] / max(1, MEASURED), "stream_mb_per_s": round(bytes_window / seconds / 1e6, 2),
        "center_cpu_cores": round((c1 - c0) / TCK / (t1 - t0), 3) if center_pid else None,
        "center_cpu_ms_per_client_s": round(1000 * (c1 - c0) / TCK / (t1 - t0) / max(1, clients), 3) if center_pid else None,
        "page_cpu_cores": round((p1 - p0) / TCK / (t1 - t0), 3) if page_pid else None,
    }), flush=True)


asyncio.run(main())
