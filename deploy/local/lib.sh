# shellcheck shell=bash disable=SC2034 # (variables are used by the sourcing scripts)
# lib.sh — common code for the deploy/local scripts (sourced, never run):
# paths and ports of the shared stack, installers for what each service needs
# (apt packages, Kafka jars, the Garage build), liveness/answer probes, pid files.

DEPLOY_LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
STACK_DIR="${WEIR_STACK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
KAFKA_LIBS="$STACK_DIR/kafka/libs"

HOST=127.0.0.1
SERVICES=(kafka redis postgres s3 smtp)
# WEIR_STACK_PORT_OFFSET moves every port of the stack by that much, so a second
# stack (its own WEIR_STACK_DIR) can run beside the first: a fresh-machine
# rehearsal of CI next to the stack in use, for instance.
PORT_OFFSET="${WEIR_STACK_PORT_OFFSET:-0}"
[[ $PORT_OFFSET =~ ^[0-9]{1,4}$ && $PORT_OFFSET -le 10000 ]] ||
  { printf 'error: WEIR_STACK_PORT_OFFSET=%s: expected 0..10000\n' "$PORT_OFFSET" >&2; exit 2; }
KAFKA_PORT=$((19092 + PORT_OFFSET))
KAFKA_CONTROLLER_PORT=$((19093 + PORT_OFFSET))
# The shared broker's secured listeners (see docs/local-stack.md): SASL_SSL
# with SCRAM-SHA-512/256 and PLAIN, and SSL that requires a client certificate.
KAFKA_SASL_SSL_PORT=$((19094 + PORT_OFFSET))
KAFKA_SSL_PORT=$((19095 + PORT_OFFSET))
# The throw-away SASL user of every local broker; the same word protects the
# client certificate's key. Local stack only: nothing it guards is secret.
KAFKA_SASL_USER=weir
KAFKA_SASL_PASSWORD=weir-secret
REDIS_PORT=$((16379 + PORT_OFFSET))
PG_PORT=$((15432 + PORT_OFFSET))
S3_PORT=$((19000 + PORT_OFFSET))
# The local SMTP relay of `weir mail` (WEIR_MAIL_SMTP_URL=smtp://127.0.0.1:2525):
# Debian's python3-aiosmtpd, keeping every message in a maildir.
SMTP_PORT=$((2525 + PORT_OFFSET))
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
    smtp) echo "$SMTP_PORT" ;;
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

# Jar sets: NAME is kafka (the stack's 4.x broker and tools, from
# deploy/local/kafka/pom.xml) or kafka3 (a 3.x broker for compatibility
# tests, from deploy/local/kafka3/pom.xml); jars go to $STACK_DIR/NAME/libs.
_pom_sha() { sha256sum "$DEPLOY_LOCAL/$1/pom.xml" | cut -d' ' -f1; }

_libs_current() {
  local libs="$STACK_DIR/$1/libs"
  [[ -f "$libs/.pom.sha256" && "$(cat "$libs/.pom.sha256")" == "$(_pom_sha "$1")" ]]
}

_fetch_libs() {
  local name=$1 libs="$STACK_DIR/$1/libs"
  _libs_current "$name" && return 0
  need_cmd mvn maven
  local build="$STACK_DIR/$name/build" tmp="$libs.tmp"
  say "fetching $name jars into $libs (mvn dependency:copy-dependencies)"
  rm -rf "$build" "$tmp"
  mkdir -p "$build"
  # Build from a copy, so that Maven never writes into the repository.
  cp "$DEPLOY_LOCAL/$name/pom.xml" "$build/pom.xml"
  quietly mvn -B -q -Dstyle.color=never -f "$build/pom.xml" \
    dependency:copy-dependencies -DoutputDirectory="$tmp"
  _pom_sha "$name" >"$tmp/.pom.sha256"
  rm -rf "$libs"
  mv "$tmp" "$libs"
}

ensure_kafka_libs() {
  local name=${1:-kafka}
  ensure_java
  _libs_current "$name" || with_lock "$name-libs" _fetch_libs "$name"
}

# Makes a throw-away CA and the certificates of a local broker in DIR unless
# they are there already (idempotent; kept across restarts):
#   ca.pem, ca.key          the CA (10 years), which clients trust
#   broker.pem              the broker's PKCS#8 key + certificate for
#                           127.0.0.1 / localhost, signed by the CA
#   client.pem, client.key  a client certificate for mutual TLS; its key is
#                           PKCS#8 encrypted with $KAFKA_SASL_PASSWORD
# Written to a scratch dir and renamed, so an interrupted run is redone.
ensure_kafka_tls() {
  local dir=$1 tmp
  [[ -s $dir/ca.pem && -s $dir/broker.pem && -s $dir/client.key ]] && return 0
  need_cmd openssl openssl
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (
    cd "$tmp"
    quietly openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=weir-local-ca" \
      -keyout ca.key -out ca.pem
    quietly openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout broker.key -out broker.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >broker.ext
    quietly openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile broker.ext -out broker.crt
    quietly openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.p8
    cat broker.p8 broker.crt >broker.pem
    quietly openssl req -newkey rsa:2048 -nodes -subj "/CN=weir-client" \
      -keyout client.plain.key -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    quietly openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile client.ext -out client.pem
    quietly openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.plain.key -out client.key \
      -passout "pass:$KAFKA_SASL_PASSWORD"
    rm -f ./*.csr ./*.ext ./*.srl broker.key broker.p8 broker.crt client.plain.key
    chmod 600 ca.key broker.pem client.key
  )
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# The S3 server: Garage (https://garagehq.deuxfleurs.fr), an object store
# written for production, built from crates.io into $STACK_DIR/garage once per
# version and feature set (see docs/local-stack.md for why, and for the cost).
GARAGE_VERSION=2.5.0
GARAGE_FEATURES=bundled-libs,lmdb
GARAGE_ROOT="$STACK_DIR/garage"
GARAGE_BIN="$GARAGE_ROOT/bin/garage"
# The local stack's S3 credentials. Garage checks signatures, so they are
# real: every local and test client signs with these (deploy/local/env).
# Local stack only: nothing they guard is secret.
S3_ACCESS_KEY_ID=weir-local
S3_SECRET_ACCESS_KEY=weir-local-secret
S3_REGION=us-east-1
GARAGE_RPC_SECRET=77656972206c6f63616c20737461636b2c206e6f742061207365637265742121

_garage_stamp() { echo "garage $GARAGE_VERSION features=$GARAGE_FEATURES"; }

_garage_current() {
  [[ -x $GARAGE_BIN && -f $GARAGE_ROOT/.stamp && "$(cat "$GARAGE_ROOT/.stamp")" == "$(_garage_stamp)" ]]
}

# Release build without LTO and with parallel codegen: about a third of the
# compile time of Garage's own release profile, at a small cost in speed.
_build_garage() {
  _garage_current && return 0
  command -v cargo >/dev/null || die "building Garage needs cargo (Rust, from rustup)"
  need_cmd cc build-essential
  say "building Garage $GARAGE_VERSION from crates.io into $GARAGE_ROOT (once; several minutes)"
  local t0=$SECONDS
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_INCREMENTAL=false \
    CARGO_TARGET_DIR="$STACK_DIR/garage-build" \
    quietly cargo install garage --version "=$GARAGE_VERSION" --locked \
    --no-default-features --features "$GARAGE_FEATURES" --root "$GARAGE_ROOT" --force
  rm -rf "$STACK_DIR/garage-build"
  _garage_stamp >"$GARAGE_ROOT/.stamp"
  say "Garage $GARAGE_VERSION built in $((SECONDS - t0)) s"
}

ensure_garage() {
  _garage_current || with_lock garage _build_garage
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
    s3) ensure_garage ;;
    smtp) ensure_smtp ;;
  esac
}

# Debian's aiosmtpd, run by Debian's python3 (a pyenv python on PATH may not
# see it).
ensure_smtp() {
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || apt_install python3-aiosmtpd
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
    smtp)
      # The relay's greeting: "220 <host> ESMTP …".
      [[ "$(timeout 5 bash -c "exec 3<>/dev/tcp/$HOST/$port && head -c 3 <&3" 2>/dev/null)" == 220 ]]
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
