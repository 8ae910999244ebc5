"""What the consumer benchmarks measure of a running process, shared by
bench/consume-access/measure.py and bench/consume-health/measure.py: CPU
ticks of a process, its threads and its children, the machine's ticks, peak
memory, and the batch timings a member logs."""

import os
import re
import subprocess
import urllib.request

TCK = os.sysconf("SC_CLK_TCK")

def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on

def proc_ticks(pid, children=False):
    """utime+stime (+ cutime+cstime of reaped children), in ticks."""
    try:
        f = stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0
    t = int(f[11]) + int(f[12])
    if children:
        t += int(f[13]) + int(f[14])
    return t

def tree_ticks(root):
    """CPU of root, its live children and its reaped children."""
    if root <= 1:
        return 0
    total = proc_ticks(root, children=True)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = stat_fields(d)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if int(f[1]) == root:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total

def machine_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, total

def thread_ticks(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except FileNotFoundError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fl = s[s.rindex(")") + 2:].split()
        out[tid] = (name, int(fl[11]) + int(fl[12]))
    return out

def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0

def batch_seconds(logfile):
    """Sum and count of weir_consumer_batch_seconds (time inside
    apply_with_retry: the PostgreSQL transaction and its retries) from the
    member's /metrics, whose ephemeral address the member logged."""
    try:
        with open(logfile) as f:
            m = re.search(r"metrics listening addr=(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", f.read()))
        if not m:
            return None
        with urllib.request.urlopen(f"http://{m.group(1)}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        for k in ("sum", "count"):
            if line.startswith(f"weir_consumer_batch_seconds_{k}"):
                out[k] = out.get(k, 0) + float(line.rsplit(" ", 1)[1])
    return out or None


class Psql:
    """One psql session for polling: each query is followed by an \\echo
    marker, so that an error (the table does not exist yet) reads as no rows."""

    def __init__(self, url):
        self.p = subprocess.Popen(
            ["psql", "-X", "-Atq", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def query(self, sql):
        self.p.stdin.write(sql.rstrip(";") + ";\n\\echo __END__\n")
        self.p.stdin.flush()
        rows = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("psql exited")
            line = line.rstrip("\n")
            if line == "__END__":
                return rows
            rows.append(line)

    def scalar(self, sql, default=0):
        rows = self.query(sql)
        return int(rows[0]) if rows and rows[0] != "" else default

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=5)
        except Exception:
            self.p.kill()
