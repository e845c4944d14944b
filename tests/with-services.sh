#!/usr/bin/env bash
# Runs the given command with the servers the tests need:
# - TEST_DATABASE_URL: a PostgreSQL the tests may create databases on. TEST_DATABASE_URL or
#   DATABASE_URL when set and reachable, else the local server
#   (postgres://postgres@127.0.0.1:5432/postgres), else a throwaway cluster (initdb +
#   pg_ctl) on a free port when PostgreSQL is installed, else it says what to install.
# - TEST_REDIS_PORT: a Redis on 127.0.0.1 (default 6379), else a throwaway redis-server on
#   a free port when Redis is installed, else it says what to install. Tests never flush it:
#   they use key prefixes of their own, and start private servers to pause or kill.
# - TEST_REDIS_CLUSTER: three Redis Cluster masters of this run (redis-server
#   --cluster-enabled on free ports, joined with redis-cli --cluster create), as
#   comma-separated host:port, for the cache's and the limiter's contract suites on a
#   cluster. Stopped and deleted at exit. Tests that kill a node start a cluster of their own.
# - TEST_AMQP_URL: a RabbitMQ on 127.0.0.1:5672 (guest/guest), else a throwaway
#   rabbitmq-server node on free ports (installed with apt-get when missing and run as
#   root), for the change-event tests. Tests never purge it: each uses an exchange and
#   queues of its own, and puts a proxy of its own in front of it to cut or blackhole it.
# - chromium: installed with apt-get when missing (and run as root), for the /docs test.
# - pgbouncer: installed with apt-get when missing (and run as root), for the pooler tests,
#   each of which starts its own on a free port in front of TEST_DATABASE_URL's server.
# - pg_autoctl (postgresql-15-auto-failover): installed with apt-get when missing (and run
#   as root), for the failover test, which starts a formation of its own on free ports.
set -euo pipefail

free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

redis_pidfile=""
cluster_dir=""
pg_datadir=""
pg_ctl=()
rabbitmq_node=""
rabbitmq_base=""
cleanup() {
  if [ -n "$rabbitmq_node" ]; then
    pkill -f "$rabbitmq_node" 2>/dev/null || true
    # The node writes its files until it has exited.
    for _ in $(seq 1 50); do pgrep -f "$rabbitmq_node" >/dev/null 2>&1 || break; sleep 0.1; done
    rm -rf "$rabbitmq_base"
  fi
  if [ -n "$redis_pidfile" ] && [ -f "$redis_pidfile" ]; then kill "$(cat "$redis_pidfile")" 2>/dev/null || true; fi
  if [ -n "$cluster_dir" ]; then
    for pidfile in "$cluster_dir"/*.pid; do [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; done
    rm -rf "$cluster_dir"
  fi
  if [ -n "$pg_datadir" ]; then "${pg_ctl[@]}" -D "$pg_datadir" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_datadir"; fi
}
trap cleanup EXIT

# Headless Chromium renders /docs in a test. Installed from Debian's packages when missing
# and this script may (root with apt-get); otherwise that test says what to install.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium (headless browser for the /docs test)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; } \
    || echo "could not install chromium; the /docs browser test will fail" >&2
fi

# PgBouncer (transaction pooling) runs in front of PostgreSQL in tests/api/pooler.rs, each
# test starting its own on a free port. Installed from Debian's packages when missing.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing pgbouncer (transaction pooler for the pooler tests)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer >/dev/null 2>&1; } \
    || echo "could not install pgbouncer; the pooler tests will fail" >&2
fi

# pg_auto_failover (a monitor and two nodes) runs in tests/api/failover.rs, started by the
# test on free ports. Installed from Debian's packages when missing.
if ! command -v pg_autoctl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing pg_auto_failover (for the failover test)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15-auto-failover >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15-auto-failover >/dev/null 2>&1; } \
    || echo "could not install pg_auto_failover; the failover test will fail" >&2
fi

redis_port="${TEST_REDIS_PORT:-6379}"
if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "No Redis answers on 127.0.0.1:$redis_port and redis-server is not installed." >&2
    echo "Install Redis 7 (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)." >&2
    exit 1
  fi
  redis_port="$(free_port 56379)"
  echo "Starting a throwaway redis-server on port $redis_port" >&2
  redis_pidfile="$(mktemp -u /tmp/user-service-test-redis-XXXXXX.pid)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$redis_pidfile" --logfile "" >/dev/null
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
export TEST_REDIS_PORT="$redis_port"

# A Redis Cluster of three masters for this run (the machine's Redis is not one).
if [ -z "${TEST_REDIS_CLUSTER:-}" ]; then
  cluster_dir="$(mktemp -d /tmp/user-service-test-cluster-XXXXXX)"
  cluster_nodes=()
  # Below the ephemeral range (32768 and up), where no outgoing connection holds a port.
  port=17000
  while [ "${#cluster_nodes[@]}" -lt 3 ] && [ "$port" -lt 17200 ]; do
    port="$(free_port "$port")"
    bus_port="$(free_port $((port + 1)))"
    redis-server --port "$port" --cluster-port "$bus_port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$cluster_dir/nodes-$port.conf" --dir "$cluster_dir" --save "" --appendonly no \
      --daemonize yes --pidfile "$cluster_dir/$port.pid" --logfile "$cluster_dir/$port.log" >/dev/null || true
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    # A port taken meanwhile: the next one.
    if redis-cli -p "$port" ping >/dev/null 2>&1; then cluster_nodes+=("127.0.0.1:$port"); fi
    port=$((bus_port + 1))
  done
  redis-cli --cluster create "${cluster_nodes[@]}" --cluster-yes >"$cluster_dir/create.log" 2>&1 \
    || { echo "could not create the test Redis Cluster:" >&2; cat "$cluster_dir/create.log" >&2; exit 1; }
  for node in "${cluster_nodes[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "${node##*:}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
      sleep 0.1
    done
  done
  TEST_REDIS_CLUSTER="$(IFS=,; echo "${cluster_nodes[*]}")"
fi
export TEST_REDIS_CLUSTER

amqp_port="${TEST_AMQP_PORT:-5672}"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; then
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing rabbitmq-server (the broker of the change-event tests)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server >/dev/null 2>&1; } \
      || true
    # The package starts the machine's node where it can; ours is private either way.
  fi
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    echo "No RabbitMQ answers on 127.0.0.1:$amqp_port and rabbitmq-server is not installed." >&2
    echo "Install RabbitMQ 3 (Debian/Ubuntu: apt-get install rabbitmq-server; macOS: brew install rabbitmq)." >&2
    exit 1
  fi
  amqp_port="$(free_port 56720)"
  dist_port="$(free_port $((amqp_port + 1)))"
  rabbitmq_base="$(mktemp -d /tmp/user-service-test-rabbitmq-XXXXXX)"
  rabbitmq_node="user-service-test-$amqp_port@localhost"
  : > "$rabbitmq_base/rabbitmq-env.conf"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$amqp_port" > "$rabbitmq_base/rabbitmq.conf"
  printf '[].\n' > "$rabbitmq_base/enabled_plugins"
  echo "Starting a throwaway RabbitMQ node on port $amqp_port" >&2
  HOME="$rabbitmq_base" RABBITMQ_CONF_ENV_FILE="$rabbitmq_base/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$rabbitmq_base/rabbitmq.conf" RABBITMQ_NODENAME="$rabbitmq_node" \
    RABBITMQ_NODE_PORT="$amqp_port" RABBITMQ_DIST_PORT="$dist_port" RABBITMQ_MNESIA_BASE="$rabbitmq_base/mnesia" \
    RABBITMQ_LOG_BASE="$rabbitmq_base/log" RABBITMQ_ENABLED_PLUGINS_FILE="$rabbitmq_base/enabled_plugins" \
    nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$rabbitmq_base/server.log" 2>&1 &
  started=0
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; then started=1; break; fi
    sleep 0.2
  done
  if [ "$started" != 1 ]; then
    echo "the throwaway RabbitMQ did not start; its log:" >&2; tail -n 30 "$rabbitmq_base/server.log" >&2; exit 1
  fi
fi
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:$amqp_port/%2f}"

url="${TEST_DATABASE_URL:-${DATABASE_URL:-}}"
case "$url" in
  postgres://*|postgresql://*) ;;
  *) url="postgres://postgres@127.0.0.1:5432/postgres" ;;
esac

reachable() {
  if command -v psql >/dev/null 2>&1; then
    psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
  elif command -v pg_isready >/dev/null 2>&1; then
    pg_isready -d "$1" -q
  else
    # No client to ask: look for a listener on the URL's host and port.
    local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"
    local host="${rest%%:*}" port="${rest##*:}"
    [ "$port" = "$rest" ] && port=5432
    (exec 3<>"/dev/tcp/${host:-127.0.0.1}/$port") 2>/dev/null
  fi
}

if reachable "$url"; then
  export TEST_DATABASE_URL="$url"
  "$@"
  exit $?
fi

bindir=""
for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
                 "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"; do
  if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then bindir="$candidate"; break; fi
done
if [ -z "$bindir" ]; then
  cat >&2 <<MSG
No PostgreSQL is reachable at $url and none is installed to start a throwaway one.
Install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install postgresql; macOS:
brew install postgresql@15), or point TEST_DATABASE_URL at a server where the user may
create databases.
MSG
  exit 1
fi

port="$(free_port 55432)"
pg_datadir="$(mktemp -d)"
as_owner=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root.
  chown postgres "$pg_datadir" 2>/dev/null || { echo "run as a non-root user or create the postgres user" >&2; exit 1; }
  as_owner=(runuser -u postgres --)
fi
pg_ctl=("${as_owner[@]}" "$bindir/pg_ctl")
echo "Starting a throwaway PostgreSQL ($bindir) on port $port" >&2
"${as_owner[@]}" "$bindir/initdb" -D "$pg_datadir" -U postgres --auth=trust >/dev/null
"${pg_ctl[@]}" -D "$pg_datadir" -o "-p $port -k $pg_datadir -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
"$@"
