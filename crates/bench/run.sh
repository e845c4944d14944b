#!/usr/bin/env bash
# `make bench`: load figures of the release user-service on PostgreSQL + Redis, beside
# references measured in the same run on the same cores (the actix-web framework ceiling,
# pgbench, raw argon2id), as ratios with targets. Writes bench-results/latest.md.
#
# Needs PostgreSQL (trust auth) and Redis running, and wrk (installed with apt-get when
# run as root). Redis is never flushed: every key carries a prefix unique to this run and
# is deleted at the end, with the servers and databases this script started or created.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [10]        seconds per wrk/pgbench run ("10s" is accepted too)
#   BENCH_CONNECTIONS [64]     wrk connections and pgbench clients
#   BENCH_THREADS [2]          wrk threads and pgbench -j
#   BENCH_BULK_CONNECTIONS [8] wrk connections for bulk eligibility (1000 ids a request)
#   BENCH_USERS [10000]        seeded users (each with preferences and two devices)
#   BENCH_WORKERS [nproc]      HTTP workers of the service and of the ceiling server
#   BENCH_PG_HOST [127.0.0.1], BENCH_PG_PORT [5432], BENCH_PG_USER [postgres]
#   BENCH_REDIS_URL [redis://127.0.0.1:6379]
#   BENCH_RESULTS_DIR [bench-results]  where latest.md, a dated copy and last-run/ go
# Service variables this script does not set reach the service (PASSWORD_HASH_CONCURRENCY=1 make bench).
#   CARGO [cargo]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LUA_DIR="$ROOT/crates/bench/lua"
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench-results}
WORK="$RESULTS_DIR/last-run" # wrk outputs, service logs, the ids file: kept for inspection
# Where cargo puts the release binaries (CARGO_TARGET_DIR when set, as cargo itself does).
RELEASE_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SERVICE_BIN="$RELEASE_DIR/user-service"
CEILING_BIN="$RELEASE_DIR/bench-ceiling"
ARGON2_BIN="$RELEASE_DIR/argon2-rate"

CARGO=${CARGO:-cargo}
DURATION=${BENCH_DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
BULK_CONNECTIONS=${BENCH_BULK_CONNECTIONS:-8}
USERS=${BENCH_USERS:-10000}
WORKERS=${BENCH_WORKERS:-$(nproc)}
PG_HOST=${BENCH_PG_HOST:-127.0.0.1}
PG_PORT=${BENCH_PG_PORT:-5432}
PG_USER=${BENCH_PG_USER:-postgres}
REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}

SERVICE_DB=user_service_bench
PGBENCH_DB=pgbench_bench
SERVICE_KEY=bench-service-key-0123456789
RUN_ID="$(date +%s)-$RANDOM$RANDOM"
CACHE_PREFIX="ubench-$RUN_ID" # the uncached instance uses "$CACHE_PREFIX-nocache"
IDS="$WORK/user-ids.txt"

# Processes this script started (servers, background wrk runs), stopped by cleanup().
PIDS=()
# Per operation: requests/s, p50 and p99 (ms), errors, requests, peak RSS (MiB).
declare -A RPS=() P50=() P99=() ERRORS=() REQUESTS=() PEAK_RSS=() CONNS=()
# Per operation: the machine's CPU split during the run, and the server's CPU per request.
declare -A CPU_SPLIT=() CPU_PER_REQUEST=() PG_CPU_PER_REQUEST=()
# Per operation: the share of the CPU taken by processes outside the benchmark (%).
declare -A OTHER_CPU=()
CLOCK_TICKS=$(getconf CLK_TCK)
CPU_BEFORE=()
REDIS_PID=""

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------
# Tools, build, machine

require_tools() {
  local tool
  for tool in psql pg_isready pgbench redis-cli curl awk; do
    command -v "$tool" >/dev/null || die "$tool is required (Debian: postgresql-client, redis-tools, curl)"
  done
  if ! command -v wrk >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      log "installing wrk"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
      die "wrk is required: sudo apt-get install wrk (or build https://github.com/wg/wrk)"
    fi
  fi
  pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
  [[ $(redis-cli -u "$REDIS_URL" ping) == PONG ]] || die "Redis does not answer at $REDIS_URL"
}

build() {
  log "building in release (lto=thin: several minutes on a small machine)"
  (cd "$ROOT" && "$CARGO" build --release -p http-actix -p bench)
}

machine_description() {
  local model memory
  model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  printf -- '- CPU: %s cores (nproc), %s\n' "$(nproc)" "${model:-unknown}"
  printf -- '- RAM: %s; kernel %s\n' "$memory" "$(uname -r)"
  printf -- '- Load average when the run started: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf -- '- %s; %s; %s\n' "$(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)" \
    "$(psql_admin -Atc 'SHOW server_version' | cut -d' ' -f1 | sed 's/^/PostgreSQL /')" \
    "$(redis-cli -u "$REDIS_URL" info server | awk -F: '/^redis_version/ { sub(/\r/, ""); print "Redis " $2 }')"
}

# ---------------------------------------------------------------------------------------
# PostgreSQL, Redis, processes

# Without the NOTICE of DROP DATABASE IF EXISTS on a missing database.
psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -q "$@"; }
psql_service() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$SERVICE_DB" -v ON_ERROR_STOP=1 -q "$@"; }

recreate_database() {
  psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}

delete_redis_keys() {
  redis-cli -u "$REDIS_URL" --scan --pattern "$CACHE_PREFIX*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null
}

# A TCP port nobody listens on.
free_port() {
  local port
  for _ in {1..100}; do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

stop_process() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in {1..100}; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# VmRSS (current) or VmHWM (peak) of a process, in MiB.
memory_mib() { awk -v field="$2:" '$1 == field { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  [[ ${#PIDS[@]} -gt 0 ]] && log "cleaning up: servers, databases, Redis keys ($CACHE_PREFIX*)"
  local pid
  for pid in "${PIDS[@]}"; do stop_process "$pid"; done
  psql_admin -c "DROP DATABASE IF EXISTS $SERVICE_DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $PGBENCH_DB WITH (FORCE)" 2>/dev/null
  delete_redis_keys 2>/dev/null
  exit "$status"
}

# Starts the release service on a free port. Sets SERVICE_PID, SERVICE_URL, READY_MS (from
# process start to the first 200 of /health/ready) and IDLE_RSS (VmRSS right after).
# Runs in $WORK so that no .env file of the checkout is read.
start_service() {
  local name=$1 cache_enabled=$2 prefix=$3 port started_ns
  port=$(free_port)
  started_ns=$(date +%s%N)
  (cd "$WORK" && exec env -u RUST_LOG \
    PORT="$port" HOST=127.0.0.1 WORKERS="$WORKERS" \
    DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$SERVICE_DB" \
    REDIS_URL="$REDIS_URL" CACHE_KEY_PREFIX="$prefix" CACHE_ENABLED="$cache_enabled" CACHE_TTL=3600 \
    SECRET_KEY="$SECRET_KEY" SERVICE_API_KEYS="$SERVICE_KEY" \
    RATE_LIMIT_PER_ADDRESS=100000000 LOG_LEVEL=warn LOG_FORMAT=json \
    "$SERVICE_BIN") >"$WORK/service-$name.log" 2>&1 &
  SERVICE_PID=$!
  PIDS+=("$SERVICE_PID")
  SERVICE_URL="http://127.0.0.1:$port"
  until curl -fso /dev/null "$SERVICE_URL/health/ready"; do
    kill -0 "$SERVICE_PID" 2>/dev/null || die "the $name service exited; see $WORK/service-$name.log"
    (($(date +%s%N) - started_ns < 60000000000)) || die "the $name service was not ready within 60 s"
    sleep 0.005
  done
  READY_MS=$((($(date +%s%N) - started_ns) / 1000000))
  IDLE_RSS=$(memory_mib "$SERVICE_PID" VmRSS)
  log "$name service ready on $SERVICE_URL in $READY_MS ms, idle RSS $IDLE_RSS MiB"
}

# ---------------------------------------------------------------------------------------
# Data

# One user through the API (a real argon2id hash), then $USERS users copying that hash,
# each with preferences (every third with quiet hours in Paris) and two devices whose tokens
# are bench-token-{id}-1 and -2. Writes their ids to $IDS.
seed() {
  local answer seed_id
  answer=$(curl -fsS -X POST "$SERVICE_URL/api/v1/users" -H 'Content-Type: application/json' \
    -H "X-Service-Key: $SERVICE_KEY" \
    -d '{"name":"Bench Seed","email":"seed@bench.example.com","password":"StrongPass123!"}')
  seed_id=$(grep -o '"id":"[0-9a-f-]*"' <<<"$answer" | head -1 | cut -d'"' -f4)
  [[ -n $seed_id ]] || die "registration of the seed user answered: $answer"
  log "seeding $USERS users with preferences and 2 devices each"
  psql_service -v users="$USERS" -v seed="$seed_id" <<'SQL'
BEGIN;
INSERT INTO users (id, name, email, phone, password_hash, created_at, updated_at)
SELECT gen_random_uuid(), 'Bench User ' || n, 'bench-' || n || '@bench.example.com',
       '+1555' || lpad(n::text, 7, '0'),
       (SELECT password_hash FROM users WHERE id = :'seed'),
       now() - n * interval '1 second', now() - n * interval '1 second'
FROM generate_series(1, :users) AS n;
INSERT INTO notification_preferences
       (user_id, email_enabled, push_enabled, quiet_hours_start, quiet_hours_end, timezone, updated_at)
SELECT id, true, true,
       CASE WHEN n % 3 = 0 THEN time '22:00' END, CASE WHEN n % 3 = 0 THEN time '07:00' END,
       CASE WHEN n % 3 = 0 THEN 'Europe/Paris' ELSE 'UTC' END, now()
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users WHERE id <> :'seed') AS seeded;
-- token_digest is a generated column.
INSERT INTO devices (id, user_id, token, platform, active, created_at, updated_at, last_seen_at)
SELECT gen_random_uuid(), u.id, 'bench-token-' || u.id || '-' || d,
       CASE d WHEN 1 THEN 'android' ELSE 'ios' END, true, now(), now(), now() - d * interval '1 minute'
FROM users AS u CROSS JOIN generate_series(1, 2) AS d
WHERE u.id <> :'seed';
COMMIT;
ANALYZE;
SQL
  psql_service -Atc "SELECT id FROM users WHERE email LIKE 'bench-%' ORDER BY id" >"$IDS"
  [[ $(wc -l <"$IDS") -eq $USERS ]] || die "expected $USERS seeded ids in $IDS"
}

# One GET of every seeded user, 16 at a time, so that the cached runs only hit.
warm_cache() {
  local config="$WORK/warm-cache.curl"
  awk -v url="$SERVICE_URL" -v key="$SERVICE_KEY" '
    NR == 1 { printf "silent\nfail\nheader = \"X-Service-Key: %s\"\n", key }
    { printf "url = \"%s/api/v1/users/%s\"\noutput = \"/dev/null\"\n", url, $1 }' "$IDS" >"$config"
  curl --parallel --parallel-max 16 -K "$config" || die "warming the cache failed"
  local entries
  entries=$(redis-cli -u "$REDIS_URL" --scan --pattern "$CACHE_PREFIX:v1:user:*" | wc -l)
  log "cache warmed: $entries entries under $CACHE_PREFIX"
}

# ---------------------------------------------------------------------------------------
# Load

# run_wrk NAME SCRIPT URL CONNECTIONS [THREADS]: wrk --latency into $WORK/wrk-NAME.txt, and
# wrk's own CPU time ("user system" seconds) into $WORK/client-NAME.cpu.
run_wrk() {
  local name=$1 script=$2 url=$3 connections=$4 threads=${5:-$THREADS}
  local TIMEFORMAT='%3U %3S'
  { time BENCH_IDS="$IDS" BENCH_SERVICE_KEY="$SERVICE_KEY" BENCH_LUA_DIR="$LUA_DIR" \
    BENCH_RUN="$name-${RUN_ID##*-}" wrk --latency -t "$threads" -c "$connections" -d "${DURATION}s" \
    --timeout 10s -s "$LUA_DIR/$script" "$url" >"$WORK/wrk-$name.txt" 2>&1; } 2>"$WORK/client-$name.cpu" ||
    die "wrk failed; see $WORK/wrk-$name.txt"
}

# Prints "requests/s p50_ms p99_ms errors requests" from a wrk --latency report. Errors are
# wrk's "Non-2xx or 3xx responses" (status ≥ 400; no route here answers 3xx) plus every
# socket error (connect, read, write, timeout).
parse_wrk() {
  awk '
    function ms(value) {
      if (value ~ /us$/) return substr(value, 1, length(value) - 2) / 1000
      if (value ~ /ms$/) return substr(value, 1, length(value) - 2) + 0
      if (value ~ /s$/)  return substr(value, 1, length(value) - 1) * 1000
      if (value ~ /m$/)  return substr(value, 1, length(value) - 1) * 60000
      if (value ~ /h$/)  return substr(value, 1, length(value) - 1) * 3600000
      return value + 0
    }
    /Latency Distribution/ { distribution = 1 }
    distribution && $1 == "50%" { p50 = ms($2) }
    distribution && $1 == "99%" { p99 = ms($2) }
    / requests in /          { requests = $1 }
    /^Requests\/sec:/        { rps = $2 }
    /Non-2xx or 3xx/         { errors += $NF }
    /Socket errors:/ {
      for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { sub(/,/, "", $i); errors += $i }
    }
    END { printf "%.1f %.3f %.3f %d %d\n", rps, p50, p99, errors, requests }' "$1"
}

# CPU accounting, in clock ticks: a process's user + system time; the sum over every local
# PostgreSQL process, reaped children included (a backend that exits, such as pgbench's,
# moves its time to the postmaster's); the whole machine's total and idle time (the first
# line of /proc/stat; guest time is already in user time).
process_ticks() {
  [[ $1 == - ]] && { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
postgres_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk '$2 == "(postgres)" { sub(/^.*\) /, ""); s += $12 + $13 + $14 + $15 } END { print s + 0 }'
}
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat; }

# The local redis-server's pid, or nothing when Redis runs elsewhere.
redis_pid() {
  local pid
  pid=$(redis-cli -u "$REDIS_URL" info server | awk -F: '/^process_id:/ { sub(/\r/, ""); print $2 }')
  [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]] && echo "$pid"
  return 0
}

# per_request TICKS REQUESTS: microseconds of CPU per request.
per_request() { awk -v t="$1" -v n="$2" -v hz="$CLOCK_TICKS" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }'; }

# measure_begin PID: notes the CPU counters before a run ("-" when no server is measured).
measure_begin() {
  CPU_BEFORE=("$(process_ticks "$1")" "$([[ -n $REDIS_PID ]] && process_ticks "$REDIS_PID" || echo 0)" "$(postgres_ticks)")
  read -r CPU_TOTAL_BEFORE CPU_IDLE_BEFORE < <(machine_ticks)
}

# measure_end PID NAME...: how the machine's CPU was shared during the run, as percentages
# "server (PID) / client (wrk or pgbench: every NAME's run) / Redis / PostgreSQL / other /
# idle"; and the CPU time of the server and of PostgreSQL per request (µs, over every NAME's
# requests). Stored under the first NAME.
measure_end() {
  local pid=$1 first=$2 server redis postgres total idle client_seconds requests=0 name
  shift
  server=$(($(process_ticks "$pid") - CPU_BEFORE[0]))
  redis=$(($([[ -n $REDIS_PID ]] && process_ticks "$REDIS_PID" || echo 0) - CPU_BEFORE[1]))
  postgres=$(($(postgres_ticks) - CPU_BEFORE[2]))
  read -r total idle < <(machine_ticks)
  total=$((total - CPU_TOTAL_BEFORE))
  idle=$((idle - CPU_IDLE_BEFORE))
  client_seconds=$(for name in "$@"; do cat "$WORK/client-$name.cpu"; done | awk '{ s += $1 + $2 } END { print s + 0 }')
  for name in "$@"; do requests=$((requests + REQUESTS[$name])); done
  CPU_SPLIT[$first]=$(awk -v t="$total" -v i="$idle" -v s="$server" -v w="$client_seconds" -v r="$redis" \
    -v p="$postgres" -v hz="$CLOCK_TICKS" 'BEGIN {
      w *= hz; other = t - i - s - w - r - p; if (other < 0) other = 0
      printf "%.0f / %.0f / %.0f / %.0f / %.0f / %.0f", 100 * s / t, 100 * w / t, 100 * r / t, 100 * p / t,
        100 * other / t, 100 * i / t }')
  OTHER_CPU[$first]=$(awk -v cpu="${CPU_SPLIT[$first]}" 'BEGIN { split(cpu, f, " / "); print f[5] }')
  CPU_PER_REQUEST[$first]=$([[ $pid == - ]] && echo "–" || per_request "$server" "$requests")
  PG_CPU_PER_REQUEST[$first]=$(per_request "$postgres" "$requests")
  printf '    %-22s CPU %% server / client / Redis / PostgreSQL / other / idle: %s; µs per request: server %s, PostgreSQL %s\n' \
    "$first" "${CPU_SPLIT[$first]}" "${CPU_PER_REQUEST[$first]}" "${PG_CPU_PER_REQUEST[$first]}" >&2
}

# record NAME CONNECTIONS [PID]: parses wrk-NAME.txt; with a PID, notes its peak RSS so far.
record() {
  local name=$1
  read -r "RPS[$name]" "P50[$name]" "P99[$name]" "ERRORS[$name]" "REQUESTS[$name]" < <(parse_wrk "$WORK/wrk-$name.txt")
  CONNS[$name]=$2
  PEAK_RSS[$name]=$([[ -n ${3:-} ]] && memory_mib "$3" VmHWM || echo "n/a")
  printf '    %-22s %10s req/s  p50 %8s ms  p99 %8s ms  errors %s  peak RSS %s MiB\n' "$name" \
    "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${ERRORS[$name]}" "${PEAK_RSS[$name]}" >&2
}

# bench NAME SCRIPT CONNECTIONS [THREADS]: one wrk run against the current service.
bench() {
  local threads=${4:-$THREADS}
  log "$1: $3 connections, $threads threads, ${DURATION}s"
  measure_begin "$SERVICE_PID"
  run_wrk "$1" "$2" "$SERVICE_URL" "$3" "$threads"
  record "$1" "$3" "$SERVICE_PID"
  measure_end "$SERVICE_PID" "$1"
}

# Cached GETs while registrations (argon2id on every core) run against the same service.
bench_storm() {
  log "registration storm: cached GET and registration concurrently, $CONNECTIONS connections each"
  measure_begin "$SERVICE_PID"
  run_wrk storm-get get_user.lua "$SERVICE_URL" "$CONNECTIONS" &
  local get_pid=$!
  run_wrk storm-register register_user.lua "$SERVICE_URL" "$CONNECTIONS" &
  local register_pid=$!
  PIDS+=("$get_pid" "$register_pid")
  wait "$get_pid" || die "the storm's GET run failed"
  wait "$register_pid" || die "the storm's registration run failed"
  record storm-get "$CONNECTIONS" "$SERVICE_PID"
  record storm-register "$CONNECTIONS" "$SERVICE_PID"
  measure_end "$SERVICE_PID" storm-get storm-register
  CPU_SPLIT[storm-register]="(with the row above)"
  CPU_PER_REQUEST[storm-register]="(with the row above)"
  PG_CPU_PER_REQUEST[storm-register]="(with the row above)"
}

# bench_ceiling NAME: the framework ceiling, run like the cached GET (same Lua script, same
# connections). It runs just before and just after the cached GET, and the ratio uses the
# mean of the two (CEILING_RPS): this machine's speed drifts within minutes.
bench_ceiling() {
  local name=$1 port
  port=$(free_port)
  log "$name: bench-ceiling, $BODY_BYTES-byte JSON body, $WORKERS workers"
  "$CEILING_BIN" "$port" "$BODY_BYTES" "$WORKERS" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  until curl -fso /dev/null "http://127.0.0.1:$port/"; do
    kill -0 "$pid" 2>/dev/null || die "bench-ceiling exited; see $WORK/$name.log"
    sleep 0.01
  done
  measure_begin "$pid"
  run_wrk "$name" get_user.lua "http://127.0.0.1:$port" "$CONNECTIONS"
  record "$name" "$CONNECTIONS" "$pid"
  measure_end "$pid" "$name"
  stop_process "$pid"
  local run rates=()
  for run in ceiling-before ceiling-after; do
    if [[ -n ${RPS[$run]:-} ]]; then rates+=("${RPS[$run]}"); fi
  done
  CEILING_RPS=$(printf '%s\n' "${rates[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
}

# pgbench on a scale-10 database of its own (1,000,000 accounts).
pgbench_init() {
  log "pgbench: initializing $PGBENCH_DB at scale 10"
  recreate_database "$PGBENCH_DB"
  pgbench -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -i -s 10 -q "$PGBENCH_DB" >"$WORK/pgbench-init.txt" 2>&1 ||
    die "pgbench -i failed; see $WORK/pgbench-init.txt"
}

# pgbench_run S|N: -S (select only) or -N (simple update: no branch/teller contention) at the
# concurrency of the wrk runs. Recorded as the operation "pgbench-S" or "pgbench-N".
pgbench_run() {
  local mode=$1 name="pgbench-$1" TIMEFORMAT='%3U %3S'
  log "pgbench -$mode: $CONNECTIONS clients, -j $THREADS, ${DURATION}s"
  measure_begin -
  { time pgbench -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "-$mode" -c "$CONNECTIONS" -j "$THREADS" \
    -T "$DURATION" "$PGBENCH_DB" >"$WORK/$name.txt" 2>&1; } 2>"$WORK/client-$name.cpu" ||
    die "pgbench -$mode failed; see $WORK/$name.txt"
  read -r "RPS[$name]" "REQUESTS[$name]" "ERRORS[$name]" "P50[$name]" < <(awk '
    /^tps = / { tps = $3 }
    /^number of transactions actually processed:/ { done = $NF }
    /^number of failed transactions:/ { failed = $5 }
    /^latency average = / { average = $4 }
    END { printf "%.1f %d %d %.3f\n", tps, done, failed, average }' "$WORK/$name.txt")
  P99[$name]="–"
  CONNS[$name]=$CONNECTIONS
  PEAK_RSS[$name]="–"
  PGBENCH_TPS[$mode]=${RPS[$name]}
  printf '    %-22s %10s tps  average latency %s ms\n' "$name" "${RPS[$name]}" "${P50[$name]}" >&2
  measure_end - "$name"
}
declare -A PGBENCH_TPS=()

# Raw argon2id hashes/s, measured just before and just after the registration run: this
# machine's speed drifts by 10-20 % within minutes, so the ratio uses the mean of the two.
ARGON2_RATES=()
bench_argon2() {
  log "argon2id: one thread per core ($(nproc)), 5 s"
  local rate
  rate=$("$ARGON2_BIN" 5 | awk '$1 == "hashes_per_second" { print $2 }')
  [[ -n $rate ]] || die "argon2-rate printed no rate"
  ARGON2_RATES+=("$rate")
  ARGON2_RATE=$(printf '%s\n' "${ARGON2_RATES[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
  printf '    argon2id %s hashes/s\n' "$rate" >&2
}

# ---------------------------------------------------------------------------------------
# Report

# calc EXPRESSION: floating-point arithmetic through awk, two decimals.
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
# verdict VALUE OPERATOR TARGET: PASS or FAIL.
verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "PASS" : "FAIL" }'; }

operation_row() {
  local name=$1 label=$2
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "${CONNS[$name]}" "${RPS[$name]}" \
    "${P50[$name]}" "${P99[$name]}" "${ERRORS[$name]} / ${REQUESTS[$name]}" "${CPU_PER_REQUEST[$name]}" \
    "${PG_CPU_PER_REQUEST[$name]}" "${CPU_SPLIT[$name]}" "${PEAK_RSS[$name]}"
}

# target_row LABEL VALUE SHOWN OPERATOR TARGET [NOTE]
target_row() {
  local label=$1 value=$2 shown=$3 operator=$4 target=$5 note=${6:-}
  local result symbol
  result=$(verdict "$value" "$operator" "$target")
  symbol=$([[ $operator == ">=" ]] && echo "≥" || echo "≤")
  printf '| %s | %s | %s %s%s | %s |\n' "$label" "$shown" "$symbol" "$target" "$note" "$result"
}

# A sentence naming the runs during which processes outside the benchmark took more than 10%
# of the CPU (their figures, and the ratios built on them, are then pessimistic), or nothing.
interference() {
  local name noisy=()
  for name in "${!OTHER_CPU[@]}"; do
    ((OTHER_CPU[$name] > 10)) && noisy+=("$name (${OTHER_CPU[$name]}%)")
  done
  ((${#noisy[@]} == 0)) && return 0
  printf '\n**Interference:** other processes took more than 10%% of the CPU during %s; rerun on a quiet machine before trusting those figures.\n' "$(IFS=,; echo "${noisy[*]}" | sed 's/,/, /g')"
}

report() {
  local cached_vs_ceiling uncached_vs_select put_vs_update register_vs_argon2 storm_p99_ratio stretch peak
  cached_vs_ceiling=$(calc "${RPS[get-cached]} / $CEILING_RPS")
  uncached_vs_select=$(calc "${RPS[get-uncached]} / ${PGBENCH_TPS[S]}")
  put_vs_update=$(calc "${RPS[put-preferences]} / ${PGBENCH_TPS[N]}")
  register_vs_argon2=$(calc "${RPS[register]} / $ARGON2_RATE")
  storm_p99_ratio=$(calc "${P99[storm-get]} / ${P99[get-cached]}")
  stretch=$(verdict "$cached_vs_ceiling" ">=" 0.8 | sed 's/PASS/met/; s/FAIL/missed/')
  # VmHWM only grows: the cached instance's last reading is its peak over all its runs.
  peak=$(printf '%s\n' "${PEAK_RSS[post-device]}" "${PEAK_RSS[get-uncached]}" | sort -g | tail -1)

  cat <<EOF
# user-service benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')

Machine (the load generator, PostgreSQL and Redis share these cores with the service):

$MACHINE

Run: ${DURATION} s per operation, wrk with $THREADS threads, $CONNECTIONS connections
(bulk eligibility: $BULK_CONNECTIONS); $USERS seeded users with preferences and 2 devices
each; service with $WORKERS HTTP workers and default pools; cached GET body $BODY_BYTES bytes.
$(interference)

## Targets

| Figure | Measured | Target | Result |
|---|---|---|---|
$(target_row "Cached GET rps / framework ceiling rps" "$cached_vs_ceiling" "$cached_vs_ceiling (${RPS[get-cached]} / $CEILING_RPS)" ">=" 0.5 " (stretch 0.8: $stretch)")
$(target_row "Cached GET p99" "${P99[get-cached]}" "${P99[get-cached]} ms" "<=" 5 " ms")
$(target_row "Uncached GET rps / pgbench -S tps" "$uncached_vs_select" "$uncached_vs_select (${RPS[get-uncached]} / ${PGBENCH_TPS[S]})" ">=" 0.5)
$(target_row "PUT preferences rps / pgbench -N tps" "$put_vs_update" "$put_vs_update (${RPS[put-preferences]} / ${PGBENCH_TPS[N]})" ">=" 0.5)
$(target_row "Registration rps / argon2id hashes/s" "$register_vs_argon2" "$register_vs_argon2 (${RPS[register]} / $ARGON2_RATE)" ">=" 0.9)
$(target_row "Cached GET p99 in a registration storm / idle" "$storm_p99_ratio" "$storm_p99_ratio (${P99[storm-get]} / ${P99[get-cached]} ms)" "<=" 2)
$(target_row "Bulk eligibility (1000 ids) p50" "${P50[eligibility-bulk]}" "${P50[eligibility-bulk]} ms at $BULK_CONNECTIONS connections (one connection: ${P50[eligibility-bulk-1]} ms)" "<=" 20 " ms")
$(target_row "Idle RSS (VmRSS once ready)" "$IDLE_RSS_CACHED" "$IDLE_RSS_CACHED MiB" "<=" 30 " MB")
$(target_row "Peak RSS under load (VmHWM)" "$peak" "$peak MiB" "<=" 150 " MB")
$(target_row "Time to ready, fresh database (migrations included)" "$READY_MS_CACHED" "$READY_MS_CACHED ms" "<=" 1000 " ms")
$(target_row "Time to ready, migrated database" "$READY_MS_UNCACHED" "$READY_MS_UNCACHED ms" "<=" 1000 " ms")

## Operations

| Operation | Connections | Requests/s | p50 (ms) | p99 (ms) | Errors / requests | Server CPU per request (µs) | PostgreSQL CPU per request (µs) | CPU % server / client / Redis / PostgreSQL / other / idle | Peak RSS (MiB) |
|---|---|---|---|---|---|---|---|---|---|
$(operation_row get-cached "GET user, cached")
$(operation_row get-uncached "GET user, uncached (\`CACHE_ENABLED=false\`)")
$(operation_row put-preferences "PUT preferences (toggle email)")
$(operation_row post-device "POST device (upsert of a known token)")
$(operation_row eligibility-single "GET eligibility (push)")
$(operation_row eligibility-bulk "POST eligibility, 1000 ids")
$(operation_row eligibility-bulk-1 "POST eligibility, 1000 ids, one connection")
$(operation_row register "POST user (registration)")
$(operation_row storm-get "GET user, cached, during the storm")
$(operation_row storm-register "POST user, during the storm")
$(operation_row ceiling-before "Framework ceiling (reference), before the cached GET")
$(operation_row ceiling-after "Framework ceiling (reference), after the cached GET")
$(operation_row pgbench-S "\`pgbench -S\` (reference; p50 column: average latency)")
$(operation_row pgbench-N "\`pgbench -N\` (reference; p50 column: average latency)")

## References (same run, same cores)

| Reference | Figure |
|---|---|
| Framework ceiling: actix-web, fixed $BODY_BYTES-byte JSON, $WORKERS workers (before and after the cached GET) | $CEILING_RPS req/s (mean of ${RPS[ceiling-before]}, ${RPS[ceiling-after]}); p99 ${P99[ceiling-before]}, ${P99[ceiling-after]} ms |
| \`pgbench -S\` ($CONNECTIONS clients, -j $THREADS, scale 10) | ${PGBENCH_TPS[S]} tps |
| \`pgbench -N\` ($CONNECTIONS clients, -j $THREADS, scale 10) | ${PGBENCH_TPS[N]} tps |
| argon2id m=19456 KiB, t=2, p=1, $(nproc) threads (before and after the registration run) | $ARGON2_RATE hashes/s (mean of $(printf '%s, ' "${ARGON2_RATES[@]}" | sed 's/, $//')) |

Idle RSS: cached instance $IDLE_RSS_CACHED MiB, uncached instance $IDLE_RSS_UNCACHED MiB.
Peak RSS of the uncached instance: $PEAK_RSS_UNCACHED MiB. Errors are non-2xx answers plus
socket errors (wrk), or failed transactions (pgbench). "CPU %" splits the machine's CPU
time during each run between the server, the client (wrk or pgbench), Redis, PostgreSQL
(every local postgres process), everything else (other users of the machine included) and
idle; "CPU per request" is user + system time divided by the requests (or transactions)
completed. Raw outputs are in bench-results/last-run/.
EOF
}

# ---------------------------------------------------------------------------------------

main() {
  require_tools
  build
  rm -rf "$WORK"
  mkdir -p "$WORK"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  MACHINE=$(machine_description)
  REDIS_PID=$(redis_pid)
  SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')

  log "database $SERVICE_DB, cache prefix $CACHE_PREFIX"
  recreate_database "$SERVICE_DB"
  start_service cached true "$CACHE_PREFIX"
  READY_MS_CACHED=$READY_MS
  IDLE_RSS_CACHED=$IDLE_RSS
  seed
  warm_cache
  BODY_BYTES=$(curl -fs -o /dev/null -w '%{size_download}' -H "X-Service-Key: $SERVICE_KEY" \
    "$SERVICE_URL/api/v1/users/$(head -1 "$IDS")")

  # Each reference runs next to the figure it is compared with, so that both see the same
  # neighbours. Reads first: the writes below invalidate cache entries.
  bench_ceiling ceiling-before
  bench get-cached get_user.lua "$CONNECTIONS"
  bench_ceiling ceiling-after
  bench eligibility-single eligibility_single.lua "$CONNECTIONS"
  bench eligibility-bulk eligibility_bulk.lua "$BULK_CONNECTIONS"
  bench eligibility-bulk-1 eligibility_bulk.lua 1 1
  bench_argon2
  bench register register_user.lua "$CONNECTIONS"
  sleep 2 # hashes queued when wrk stopped finish before the second measure
  bench_argon2
  bench_storm
  pgbench_init
  pgbench_run N
  bench put-preferences put_preferences.lua "$CONNECTIONS"
  bench post-device post_device.lua "$CONNECTIONS"
  stop_process "$SERVICE_PID"

  # A second instance on the now migrated database, reading every user from PostgreSQL.
  start_service uncached false "$CACHE_PREFIX-nocache"
  READY_MS_UNCACHED=$READY_MS
  IDLE_RSS_UNCACHED=$IDLE_RSS
  pgbench_run S
  bench get-uncached get_user.lua "$CONNECTIONS"
  PEAK_RSS_UNCACHED=${PEAK_RSS[get-uncached]}
  stop_process "$SERVICE_PID"

  report >"$RESULTS_DIR/latest.md"
  cp "$RESULTS_DIR/latest.md" "$RESULTS_DIR/$(date -u +%Y%m%dT%H%M%SZ).md"
  printf '\n' >&2
  cat "$RESULTS_DIR/latest.md"
}

main "$@"
