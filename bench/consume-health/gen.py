#!/usr/bin/env python3
"""gen.py N NODES PREFIX — writes N valid HealthEvents (schema v1) as
`node_id:json` lines for `kcat -P -K:`.

Events are interleaved by sequence number (seq 1 of every node, then seq 2, …)
so that every partition holds each node's reports in order, one second apart,
ending about now. Fields follow HealthEvent::example (schemas/src/health.rs).
Node ids are PREFIX-nNNNN; the key (before the first ':') is the node id.
"""
import json
import sys
import time
from datetime import datetime, timezone


def main() -> None:
    n, nodes, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if n < 1 or nodes < 1 or ":" in prefix:
        sys.exit("usage: gen.py N NODES PREFIX (N, NODES ≥ 1; PREFIX without ':')")
    per_node = -(-n // nodes)  # ceil
    base = int(time.time()) - per_node
    # Everything but node_id, agent_id, seq, ts and endpoint is constant:
    # format a template once, then fill the varying fields per event.
    fixed = {
        "interval_ms": 1000,
        "service": "edge",
        "cdn_type": "edge",
        "cores": 8,
        "memory_total_mb": 16000,
        "memory_free_mb": 9000,
        "load_avg": {"one": 0.5, "five": 0.4, "fifteen": 0.3},
        "cpu_usage_pct": 12.5,
        "interfaces": [
            {"name": "eth0", "rx_bytes_per_sec": 125000, "tx_bytes_per_sec": 2500000,
             "link_speed_mbps": 10000}
        ],
        "ips": {"lan": ["10.0.0.7"], "wan": ["203.0.113.7"], "device": ["10.0.0.7"]},
        "uptime_secs": 86400,
    }
    tail = json.dumps(fixed, separators=(",", ":"))[1:]  # without the opening '{'
    ids = [f"{prefix}-n{i:04d}" for i in range(nodes)]
    agents = [f"00000000-0000-4000-8000-{i:012d}" for i in range(nodes)]
    out = sys.stdout
    buf = []
    written = 0
    for seq in range(1, per_node + 1):
        ts = datetime.fromtimestamp(base + seq, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for i in range(nodes):
            if written == n:
                break
            nid = ids[i]
            buf.append(
                f'{nid}:{{"schema_version":1,"node_id":"{nid}","agent_id":"{agents[i]}",'
                f'"seq":{seq},"ts":"{ts}","endpoint":"http://{nid}:8080",{tail}\n'
            )
            written += 1
        if len(buf) >= 10000:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))
    out.flush()


if __name__ == "__main__":
    main()
