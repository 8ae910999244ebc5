# shellcheck shell=bash disable=SC2034 # (variables are used by the sourcing scripts)
# lib.sh — common code for the deploy/local scripts (sourced, never run):
# paths and ports of the shared stack, installers for what each service needs
# (apt packages, Kafka jars, the moto venv), liveness/answer probes, pid files.

DEPLOY_LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
STACK_DIR="${WEIR_STACK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
KAFKA_LIBS="$STACK_DIR/kafka/libs"
VENV="$STACK_DIR/venv"

HOST=127.0.0.1
SERVICES=(kafka redis postgres s3)
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093
REDIS_PORT=16379
PG_PORT=15432
S3_PORT=19000
S3_BUCKET=weir

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_service() {
  local s
  for s in "${SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}

# Port of a service in the shared stack.
service_port() {
  case $1 in
    kafka) echo "$KAFKA_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    postgres) echo "$PG_PORT" ;;
    s3) echo "$S3_PORT" ;;
    *) die "unknown service '$1' (expected: ${SERVICES[*]})" ;;
  esac
}

# Runs "$@" holding an exclusive lock, so that concurrent scripts (e.g. several
# test processes spawning `serve`) do not install the same thing twice.
with_lock() {
  local name=$1
  shift
  mkdir -p "$STACK_DIR/locks"
  (
    flock 9
    "$@"
  ) 9>"$STACK_DIR/locks/$name.lock"
}

# ---------------------------------------------------------------- installers

# Runs "$@" with its output appended to logs/install.log; shows the tail of
# that log if it fails.
quietly() {
  local log="$STACK_DIR/logs/install.log"
  mkdir -p "$STACK_DIR/logs"
  printf '==== %s: %s\n' "$(date -Is)" "$*" >>"$log"
  if ! "$@" >>"$log" 2>&1 </dev/null; then
    say "failed: $* (last lines of $log:)"
    tail -n 30 "$log" >&2
    return 1
  fi
}

_apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  say "installing with apt: $*"
  if ! quietly apt-get install -y -qq --no-install-recommends "$@"; then
    quietly apt-get update -qq
    quietly apt-get install -y -qq --no-install-recommends "$@"
  fi
}

apt_install() {
  if [[ $EUID -ne 0 ]]; then
    die "missing packages: $* (run: sudo apt-get install $*)"
  fi
  with_lock apt _apt_install "$@"
}

# need_cmd COMMAND PACKAGE: installs PACKAGE unless COMMAND is on PATH.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

ensure_java() {
  need_cmd java openjdk-17-jre-headless
}

_pom_sha() { sha256sum "$DEPLOY_LOCAL/kafka/pom.xml" | cut -d' ' -f1; }

_kafka_libs_current() {
  [[ -f "$KAFKA_LIBS/.pom.sha256" && "$(cat "$KAFKA_LIBS/.pom.sha256")" == "$(_pom_sha)" ]]
}

_fetch_kafka_libs() {
  _kafka_libs_current && return 0
  need_cmd mvn maven
  local build="$STACK_DIR/kafka/build" tmp="$KAFKA_LIBS.tmp"
  say "fetching Kafka jars into $KAFKA_LIBS (mvn dependency:copy-dependencies)"
  rm -rf "$build" "$tmp"
  mkdir -p "$build"
  # Build from a copy, so that Maven never writes into the repository.
  cp "$DEPLOY_LOCAL/kafka/pom.xml" "$build/pom.xml"
  quietly mvn -B -q -Dstyle.color=never -f "$build/pom.xml" \
    dependency:copy-dependencies -DoutputDirectory="$tmp"
  _pom_sha >"$tmp/.pom.sha256"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

ensure_kafka_libs() {
  ensure_java
  _kafka_libs_current || with_lock kafka-libs _fetch_kafka_libs
}

_req_sha() { sha256sum "$DEPLOY_LOCAL/s3/requirements.txt" | cut -d' ' -f1; }

_venv_current() {
  [[ -x "$VENV/bin/moto_server" && -f "$VENV/.requirements.sha256" &&
    "$(cat "$VENV/.requirements.sha256")" == "$(_req_sha)" ]]
}

_make_venv() {
  _venv_current && return 0
  local py
  py="$(command -v python3 || true)"
  if [[ -z $py ]] || ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
    py=/usr/bin/python3
  fi
  say "creating $VENV and installing $(grep -v '^#' "$DEPLOY_LOCAL/s3/requirements.txt" | xargs)"
  rm -rf "$VENV"
  quietly "$py" -m venv "$VENV"
  quietly "$VENV/bin/pip" install -q -r "$DEPLOY_LOCAL/s3/requirements.txt"
  _req_sha >"$VENV/.requirements.sha256"
}

ensure_venv() {
  _venv_current || with_lock venv _make_venv
}

ensure_redis() {
  need_cmd redis-server redis-server
  need_cmd redis-cli redis-tools
}

# Sets PG_BIN to the PostgreSQL server binaries: the major version of an
# existing data dir ($1/PG_VERSION) if given, else the newest installed.
ensure_postgres() {
  local data=${1:-} v
  if [[ -n $data && -f $data/PG_VERSION ]]; then
    v="$(cat "$data/PG_VERSION")"
    [[ -x /usr/lib/postgresql/$v/bin/postgres ]] || apt_install "postgresql-$v"
  else
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
      apt_install postgresql
    fi
    v="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' |
      sed 's#^/usr/lib/postgresql/\([^/]*\)/.*#\1#' | sort -n | tail -n1)"
  fi
  PG_BIN="/usr/lib/postgresql/$v/bin"
  export PG_BIN
  need_cmd psql postgresql-client
}

# Installs everything SERVICE needs before it can start.
ensure_service_deps() {
  case $1 in
    kafka) ensure_kafka_libs ;;
    redis) ensure_redis ;;
    postgres) ensure_postgres "$STACK_DIR/postgres/data" ;;
    s3) ensure_venv ;;
  esac
}

# --------------------------------------------------------------------- probes

JAVA_TOOL_OPTS=(-Xms32m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
  -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$DEPLOY_LOCAL/kafka/log4j2-tools.xml")

kafka_class() {
  java "${JAVA_TOOL_OPTS[@]}" -cp "$KAFKA_LIBS/*" "$@"
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# answers SERVICE PORT: true when the service on PORT serves requests.
answers() {
  local port=$2
  case $1 in
    kafka)
      port_open "$port" &&
        timeout 30 java "${JAVA_TOOL_OPTS[@]}" -cp "$KAFKA_LIBS/*" \
          org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$port" --list \
          >/dev/null 2>&1
      ;;
    redis)
      [[ "$(timeout 5 redis-cli -h "$HOST" -p "$port" ping 2>/dev/null)" == PONG ]]
      ;;
    postgres)
      [[ "$(PGCONNECT_TIMEOUT=5 timeout 10 psql -X -Atq \
        "postgres://weir:weir@$HOST:$port/weir" -c 'select 1' 2>/dev/null)" == 1 ]]
      ;;
    s3)
      curl -s -o /dev/null -m 5 "http://$HOST:$port/"
      ;;
  esac
}

# ------------------------------------------------------------------ pid files

pid_file() { echo "$STACK_DIR/run/$1.pid"; }

# Start time (clock ticks since boot) of a live, non-zombie process, so that a
# recycled pid is not mistaken for ours.
proc_start() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  [[ $1 != Z && $1 != X ]] || return 1
  echo "${20}"
}

record_pid() {
  mkdir -p "$STACK_DIR/run"
  echo "$2" >"$(pid_file "$1")"
  proc_start "$2" >"$STACK_DIR/run/$1.start" || true
}

# Prints the pid of SERVICE if its pid file names a live process we started.
service_pid() {
  local f pid start
  f="$(pid_file "$1")"
  [[ -f $f ]] || return 1
  pid="$(cat "$f")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  start="$(proc_start "$pid")" || return 1
  [[ "$(cat "$STACK_DIR/run/$1.start" 2>/dev/null)" == "$start" ]] || return 1
  echo "$pid"
}

forget_pid() {
  rm -f "$(pid_file "$1")" "$STACK_DIR/run/$1.start"
}
