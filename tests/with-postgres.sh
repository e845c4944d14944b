#!/usr/bin/env bash
# Runs the given command with TEST_DATABASE_URL pointing at a PostgreSQL server the tests
# may create databases on:
#   1. TEST_DATABASE_URL or DATABASE_URL when set and reachable, else the local server
#      (postgres://postgres@127.0.0.1:5432/postgres);
#   2. otherwise a throwaway cluster (initdb + pg_ctl) on a free port, removed afterwards,
#      when PostgreSQL is installed;
#   3. otherwise it says what to install.
set -euo pipefail

url="${TEST_DATABASE_URL:-${DATABASE_URL:-}}"
case "$url" in
  postgres://*|postgresql://*) ;;
  *) url="postgres://postgres@127.0.0.1:5432/postgres" ;;
esac

reachable() {
  if command -v psql >/dev/null 2>&1; then
    psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
  else
    # Without psql, assume the URL is right and let the tests report a failure.
    return 0
  fi
}

if reachable "$url"; then
  export TEST_DATABASE_URL="$url"
  exec "$@"
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

port=55432
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
datadir="$(mktemp -d)"
as_owner=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root.
  chown postgres "$datadir" 2>/dev/null || { echo "run as a non-root user or create the postgres user" >&2; exit 1; }
  as_owner=(runuser -u postgres --)
fi
cleanup() { "${as_owner[@]}" "$bindir/pg_ctl" -D "$datadir" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$datadir"; }
trap cleanup EXIT
echo "Starting a throwaway PostgreSQL ($bindir) on port $port" >&2
"${as_owner[@]}" "$bindir/initdb" -D "$datadir" -U postgres --auth=trust >/dev/null
"${as_owner[@]}" "$bindir/pg_ctl" -D "$datadir" -o "-p $port -k $datadir -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
"$@"
