# shellcheck shell=bash disable=SC2034 # (variables are used by the sourcing scripts)
# bench/lib.sh — common code of the whole-system benchmarks (sourced, never
# run): repository paths, the local stack's environment, package installs,
# the release binary, /proc readers, Kafka topic clean-up and the report file.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$BENCH_DIR/.." && pwd -P)"
OUT_DIR="$BENCH_DIR/out"

# The shared stack's addresses (WEIR_KAFKA_BROKERS, WEIR_DATABASE_URL, …) and
# its helpers (need_cmd installs a missing command with apt, under a lock).
eval "$("$REPO/deploy/local/env")"
# shellcheck source=../deploy/local/lib.sh
source "$REPO/deploy/local/lib.sh"

bsay() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Unique, sortable id of this run; lower case, digits and '-' only, so that
# it fits topic, group, Redis and (with '_') database names.
RUN_ID="$(date -u +%Y%m%d%H%M%S)-$$"

# Seconds since the epoch, with microseconds (bash 5).
now() { printf '%s' "$EPOCHREALTIME"; }

CLK_TCK="$(getconf CLK_TCK)"

# cpu_ticks PID: utime+stime of the process (every thread), in clock ticks.
cpu_ticks() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  # After "pid (comm) ": $1 = state, utime = field 14 → $12, stime → $13.
  echo $((${12} + ${13}))
}

# status_kb PID FIELD: a kB field of /proc/PID/status (VmRSS, VmHWM).
status_kb() {
  local k v _
  while read -r k v _; do
    if [[ $k == "$2:" ]]; then
      echo "$v"
      return 0
    fi
  done 2>/dev/null <"/proc/$1/status"
  return 1
}

# thread_ticks PID: one line per thread, "TID<TAB>TICKS<TAB>NAME" (utime+stime).
thread_ticks() {
  local t stat name
  for t in /proc/"$1"/task/*; do
    stat="$(cat "$t/stat" 2>/dev/null)" || continue
    name="${stat#*(}"
    name="${name%) *}"
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    printf '%s\t%d\t%s\n' "${t##*/}" $((${12} + ${13})) "$name"
  done
}

threads_of() { status_kb "$1" Threads; }

# machine_busy: "busy total" jiffies of all CPUs so far (/proc/stat).
machine_busy() {
  local _ user nice system idle iowait irq softirq steal
  read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
  echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

# wait_quiet: waits (at most BENCH_QUIET_WAIT seconds, default 300) until the
# machine is quiet — under 20 % of all CPUs busy over 5 s — since anything
# else running (a build, a test suite) takes the cores being measured.
# Proceeds anyway after the deadline, saying so; QUIET_NOTE records what
# was seen, for the report.
wait_quiet() {
  local deadline b0 t0 b1 t1 pct
  deadline=$((SECONDS + ${BENCH_QUIET_WAIT:-300}))
  while :; do
    read -r b0 t0 < <(machine_busy)
    sleep 5
    read -r b1 t1 < <(machine_busy)
    pct=$((100 * (b1 - b0) / (t1 - t0 > 0 ? t1 - t0 : 1)))
    if ((pct < 20)); then
      QUIET_NOTE="machine ${pct} % busy (all CPUs) in the 5 s before the run"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      QUIET_NOTE="**machine was ${pct} % busy (all CPUs) before the run; waited ${BENCH_QUIET_WAIT:-300} s for it to calm down, then ran anyway: figures are disturbed**"
      bsay "warning: machine still ${pct} % busy; running anyway"
      return 0
    fi
    bsay "machine ${pct} % busy (something else is running); waiting for it to calm down"
  done
}

# free_port: a TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Builds (if needed) and names the release binary in BENCH_WEIR_BIN (and, for
# scripts written against the first version of this file, WEIR_BIN).
# BENCH_WEIR_BIN=path (or WEIR_BIN=path) overrides it; BENCH_WEIR_SOURCE then
# says what it was built from, for the report. WEIR_BIN is never left in the
# environment: weir refuses unknown WEIR_* variables as configuration typos.
ensure_weir() {
  local given="${BENCH_WEIR_BIN:-${WEIR_BIN:-}}"
  export -n WEIR_BIN BENCH_WEIR_BIN
  if [[ -n $given ]]; then
    [[ -x $given ]] || die "BENCH_WEIR_BIN=$given is not executable"
    BENCH_WEIR_BIN="$given" WEIR_BIN="$given"
    WEIR_SOURCE="${BENCH_WEIR_SOURCE:-unknown: given by BENCH_WEIR_BIN}"
    return 0
  fi
  bsay "cargo build --release --bin weir"
  (cd "$REPO" && cargo build --release --bin weir >&2)
  BENCH_WEIR_BIN="$REPO/target/release/weir" WEIR_BIN="$REPO/target/release/weir"
  WEIR_SOURCE="$(source_rev)"
}

# The source the binary was built from, as far as git knows.
source_rev() {
  local rev dirty
  rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  dirty="$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
  if [[ $dirty -gt 0 ]]; then echo "$rev + $dirty modified files"; else echo "$rev"; fi
}

# Markdown lines describing the machine and its load when the run started.
machine_md() {
  local cpu load
  cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  read -r load _ </proc/loadavg
  printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  # shellcheck disable=SC2016 # (backquotes are markdown)
  printf -- '- machine: %s cores (`nproc`), %s, %s RAM (`free -h` total), %s\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(free -h | awk '/^Mem:/ {print $2}')" "$(. /etc/os-release && echo "$PRETTY_NAME")"
  printf -- '- 1-min load average at start: %s; %s\n' "$load" "${QUIET_NOTE:-quietness not checked}"
  printf -- '- weir binary: %s (source %s)\n' "${BENCH_WEIR_BIN:-?}" "${WEIR_SOURCE:-?}"
}

# list_topics: every topic name, one a line.
list_topics() {
  kcat -L -J -b "$WEIR_KAFKA_BROKERS" 2>/dev/null |
    python3 -c 'import json, sys; [print(t["topic"]) for t in json.load(sys.stdin)["topics"]]'
}

# delete_topics REGEX: deletes the matching topics (Kafka's TopicCommand).
delete_topics() {
  "$REPO/deploy/local/kafka-class" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$WEIR_KAFKA_BROKERS" --delete --if-exists --topic "$1" >/dev/null 2>&1 ||
    bsay "warning: could not delete topics matching $1"
}

# delete_groups GROUP...: deletes (empty) consumer groups.
delete_groups() {
  [[ $# -gt 0 ]] || return 0
  local args=() g
  for g in "$@"; do args+=(--group "$g"); done
  "$REPO/deploy/local/kafka-class" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "$WEIR_KAFKA_BROKERS" --delete "${args[@]}" >/dev/null 2>&1 ||
    bsay "warning: could not delete consumer groups $*"
}

# The pid embedded in a resource name made by an earlier run
# (bench-<name>-<date>-<pid>-…); true if that run is gone, so its leftovers
# (from a kill -9) may be removed.
stale_owner() {
  local pid
  pid="$(sed -n 's/^bench[-_][a-z-]*[-_][0-9]\{14\}[-_]\([0-9]\+\).*/\1/p' <<<"$1")"
  [[ -n $pid && ! -d /proc/$pid ]]
}

# write_report NAME FILE: copies the markdown report to stdout and to
# bench/out/NAME-<date>.md.
write_report() {
  mkdir -p "$OUT_DIR"
  local dest
  dest="$OUT_DIR/$1-$(date -u +%Y%m%d-%H%M%S).md"
  cp "$2" "$dest"
  cat "$2"
  bsay "report written to ${dest#"$REPO"/}"
}
