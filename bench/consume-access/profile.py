#!/usr/bin/env python3
"""profile.py perf|callgrind — reads `perf report --stdio --no-children
--sort sym` or `callgrind_annotate --inclusive=no` output on stdin and prints
a markdown table of the cost grouped by what each function belongs to, by
symbol-name patterns (first match wins). Coarse by nature: memcpy/malloc are
shared by every part and get their own row."""
import re
import sys

GROUPS = [
    ("kernel (syscalls, network, scheduling)", [r"^\[k\]", r"\[kernel", r"^0x0*ffffffff"]),
    ("JSON decoding (serde_json, event validation, timestamp parsing)",
     [r"serde_json", r"serde::de", r"weir_schemas", r"chrono::format", r"chrono::naive",
      r"DateTime.*parse", r"::deserialize", r"Deserialize", r"from_utf8", r"parse_rfc3339"]),
    ("Kafka client (librdkafka, lz4, crc)", [r"rd_kafka", r"\brd_", r"rdk", r"lz4", r"LZ4", r"crc32", r"rdkafka"]),
    ("SQL (sqlx: encode arrays, protocol, connection)", [r"sqlx", r"postgres", r"Postgres", r"PgArg", r"PgConnection"]),
    ("Redis (pipeline build, protocol)", [r"redis::", r"\bredis\b", r"combine::"]),
    ("rollup / hashing (weir_consumers::access, HashMap)",
     [r"weir_consumers::access", r"hashbrown", r"core::hash", r"sip", r"Rollup", r"BuildHasher", r"DurationRound", r"duration_trunc"]),
    ("metrics clock (quanta calibration at start-up), clock_gettime", [r"quanta", r"clock_gettime"]),
    ("other weir consumer runtime", [r"weir_consumers", r"weir::"]),
    ("async runtime (tokio, futures)", [r"tokio", r"futures", r"mio::"]),
    ("allocation, memcpy, string ops (shared)",
     [r"malloc", r"\bfree\b", r"cfree", r"realloc", r"memcpy", r"memmove", r"memset", r"memcmp", r"strlen",
      r"alloc::", r"__rust_", r"_int_", r"tcache", r"RawVec", r"unlink_chunk"]),
    ("crypto (sha2 = PostgreSQL SCRAM-SHA-256 login: 4096 rounds per connection), TLS, zlib", [r"ring::", r"rustls", r"aws_lc", r"inflate", r"deflate", r"sha"]),
    ("dynamic loader, libc start-up (valgrind: start-up dominates small runs)", [r"ld-linux", r"_dl_", r"\bdl_"]),
]


def parse(kind, text):
    rows = []
    if kind == "perf":
        for line in text.splitlines():
            m = re.match(r"\s*([0-9.]+)%\s+(.*)$", line)
            if m:
                rows.append((float(m.group(1)), m.group(2).strip()))
    else:
        for line in text.splitlines():
            m = re.match(r"\s*([0-9,]+)\s+(?:\(\s*[0-9.]+%\)\s+)?(.*)$", line)
            if m and "PROGRAM TOTALS" not in line and ("::" in m.group(2) or ":" in m.group(2)):
                rows.append((float(m.group(1).replace(",", "")), m.group(2).strip()))
    return rows


def short(name):
    name = re.sub(r"^\[.\]\s*", "", name)  # perf's [.] / [k]
    name = re.sub(r"^[^:]*:", "", name) if name.startswith("???:") or "/" in name.split(":")[0] else name
    name = re.sub(r"\s*\[[^\]]*\]$", "", name)  # callgrind's [object]
    return name.replace("|", "/")[:80]


def main():
    kind = sys.argv[1]
    rows = parse(kind, sys.stdin.read())
    total = sum(v for v, _ in rows)
    if not total:
        print("(no profile data)")
        return
    acc = {g: 0.0 for g, _ in GROUPS}
    acc["other"] = 0.0
    top = {g: [] for g in acc}
    for v, name in rows:
        for g, pats in GROUPS:
            if any(re.search(p, name) for p in pats):
                break
        else:
            g = "other"
        acc[g] += v
        top[g].append((v, name))
    print("| group | share | largest functions in it |")
    print("|---|---:|---|")
    for g, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        if v <= 0:
            continue
        names = ", ".join("`" + short(n) + "`" for _, n in sorted(top[g], reverse=True)[:2])
        print(f"| {g} | {100 * v / total:.1f} % | {names} |")


if __name__ == "__main__":
    main()
