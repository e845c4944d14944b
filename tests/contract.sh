#!/usr/bin/env bash
# The OpenAPI document against the service it describes: schemathesis (pinned, in a Python
# virtual environment this script creates and keeps between runs) drives the real binary on
# a fresh PostgreSQL database with every operation, and fails on any server error, any status
# code, content type, header or body the document does not declare, and any reference it
# cannot resolve.
#
# Run by `make test` (inside tests/with-services.sh, which provides TEST_DATABASE_URL).
# Variables: SCHEMATHESIS_MAX_EXAMPLES [40] per operation and phase, SCHEMATHESIS_SEED (a
# fixed seed by default, so that a run is reproducible; set another to explore).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
CARGO=${CARGO:-cargo}
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/user-service/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "Installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

server_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database="user_service_contract_$$"
database_url="${server_url%/*}/$database"
psql "$server_url" -qc "CREATE DATABASE $database" >/dev/null

"$CARGO" build --quiet -p http-actix --bin user-service
binary="$(realpath "${CARGO_TARGET_DIR:-target}/debug/user-service")"
workdir="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="contract-key-0123456789abcdef"
service_pid=""
cleanup() {
  if [ -n "$service_pid" ]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  psql "$server_url" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$workdir"
}
trap cleanup EXIT

# From an empty directory, so that no .env is read.
(cd "$workdir" && exec env -i PATH="$PATH" DATABASE_URL="$database_url" MIGRATE_ON_STARTUP=true HOST=127.0.0.1 \
  PORT="$port" SECRET_KEY=contract-secret-0123456789abcdef0123456789 SERVICE_API_KEYS="$key" \
  RATE_LIMIT_PER_ADDRESS=100000000 LOG_LEVEL=warn LOG_FORMAT=json "$binary" >"$workdir/service.log" 2>&1) &
service_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -fs "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
if ! curl -fs "$base/health/ready" >/dev/null 2>&1; then
  echo "the service did not become ready; its log:" >&2
  cat "$workdir/service.log" >&2
  exit 1
fi

# Existing ids, so that operations on one user or device reach their logic, not only 404.
user=$(curl -fs -X POST "$base/api/v1/users" -H 'Content-Type: application/json' -H "X-Service-Key: $key" \
  -d '{"name": "Contract", "email": "contract@example.com", "password": "StrongPass123!"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["id"])')
for token in contract-device-token contract-device-to-remove; do
  curl -fs -X POST "$base/api/v1/users/$user/devices" -H 'Content-Type: application/json' -H "X-Service-Key: $key" \
    -d "{\"token\": \"$token\", \"platform\": \"android\"}" >/dev/null
done
# Erasing the user (or removing the device) the other operations use would leave them only
# 404s: those two operations get a user and a device of their own.
to_erase=$(curl -fs -X POST "$base/api/v1/users" -H 'Content-Type: application/json' -H "X-Service-Key: $key" \
  -d '{"name": "Erased", "email": "erased@example.com", "password": "StrongPass123!"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["id"])')
# A category for the operations on one category (the removal gets one of its own).
for category in contract-category contract-category-to-remove; do
  curl -fs -X POST "$base/api/v1/categories" -H 'Content-Type: application/json' -H "X-Service-Key: $key" \
    -d "{\"key\": \"$category\", \"name\": \"Contract\"}" >/dev/null
done
cat >"$workdir/schemathesis.toml" <<TOML
[parameters]
"path.id" = "$user"
"path.key" = "contract-category"
"path.user_id" = "$user"
"path.device" = "contract-device-token"
"path.token" = "contract-device-token"

[[operations]]
include-name = "DELETE /api/v1/users/{id}"
parameters = { "path.id" = "$to_erase" }

[[operations]]
include-name = "DELETE /api/v1/categories/{key}"
parameters = { "path.key" = "contract-category-to-remove" }

[[operations]]
include-name = "DELETE /api/v1/users/{id}/devices/{device}"
parameters = { "path.device" = "contract-device-to-remove" }
TOML

status=0
"$VENV/bin/schemathesis" --config-file "$workdir/schemathesis.toml" run "$base/openapi.json" \
  --header "X-Service-Key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-20261201}" \
  --no-color || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- the service's log ---" >&2
  tail -n 50 "$workdir/service.log" >&2
fi
exit "$status"
