#!/usr/bin/env bash
# make test-image: builds deploy/Dockerfile from a clean clone and runs the image for real,
# without a Docker engine or a registry (buildah and podman, Debian packages, installed here
# when missing; run as root).
#
# The base image the Dockerfile names, rust:1.95-bookworm, cannot be pulled here, so a local
# stand-in is made once under the same name and kept in containers-storage
# (/var/lib/containers), which is the cache between runs: a Debian 12 root
# (debootstrap --variant=minbase, with the build tools of the official image) plus this
# machine's Rust 1.95 toolchain, laid out as the official image lays it out. The Dockerfile
# itself is what a user with Docker builds; its runtime stage is `scratch`.
#
# Then the image runs under podman (whose complaints that there is no systemd to schedule
# health checks go to a log: the script runs the check itself) (runc: crun refuses this host's hybrid cgroups, and the
# default ulimits are above what this unprivileged container host may set) as its own user,
# with a read-only root, against the machine's PostgreSQL and Redis, and the script checks:
# the user is uid 10001 and the root is read-only; /health, one registration and one read
# served from the cache answer; the image's own HEALTHCHECK passes; SIGTERM stops it, exit
# status 0, within the grace period; the image is at most 100 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

RUST_IMAGE=docker.io/library/rust:1.95-bookworm
RUST_VERSION=1.95.0
IMAGE=localhost/user-service:test
POSTGRES=${IMAGE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}
REDIS=${IMAGE_TEST_REDIS:-redis://127.0.0.1:6379}
SERVICE_KEY=image-test-service-key-0123456789
GRACE_SECONDS=15
MAX_IMAGE_MB=100
# Past this much image storage, the layer cache is dropped (the next build is cold).
MAX_STORE_GB=40
NICE=(nice -n 10)
export BUILDAH_ISOLATION=chroot

step() { printf '\n== %s %s\n' "$(date +%T)" "$*"; }
fail() {
  echo "test-image: FAILED: $*" >&2
  if [ -n "${container:-}" ] && podman container exists "$container" 2>/dev/null; then
    podman logs "$container" 2>&1 | tail -n 20 >&2
  fi
  exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (buildah and podman use root's containers-storage)"

missing=()
for tool in buildah:buildah podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

work=$(mktemp -d /tmp/user-service-image-XXXXXX)
container=user-service-image-test-$$
database=user_service_image_test_$$
prefix=user-service-image-test-$$
cleanup() {
  podman rm -f "$container" >/dev/null 2>&1 || true
  psql "$POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS" --scan --pattern "$prefix*" 2>/dev/null | xargs -r redis-cli -u "$REDIS" del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ----- The base image's stand-in, made once -----
if ! podman image exists "$RUST_IMAGE"; then
  step "making $RUST_IMAGE (debootstrap and this machine's toolchain; once)"
  toolchain=$(rustc +"$RUST_VERSION" --print sysroot 2>/dev/null || rustc --print sysroot)
  "$toolchain/bin/rustc" -V | grep -q "^rustc $RUST_VERSION " || fail "no Rust $RUST_VERSION toolchain at $toolchain"
  root=$work/rust-root
  # What rust:*-bookworm (buildpack-deps:bookworm) brings that builds commonly need.
  "${NICE[@]}" debootstrap --variant=minbase \
    --include=ca-certificates,curl,git,gcc,g++,libc6-dev,make,pkg-config,libssl-dev,xz-utils \
    bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/{doc,man,info}/*
  triple=$RUST_VERSION-x86_64-unknown-linux-gnu
  mkdir -p "$root/usr/local/rustup/toolchains/$triple" "$root/usr/local/cargo/bin"
  # The toolchain without its 780 MB of HTML docs (the official image has none either).
  tar -C "$toolchain" --exclude=./share/doc/rust/html -cf - . | tar -C "$root/usr/local/rustup/toolchains/$triple" -xf -
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$triple" >"$root/usr/local/rustup/settings.toml"
  install -m 0755 "$(command -v rustup)" "$root/usr/local/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -sf rustup "$root/usr/local/cargo/bin/$proxy"
  done
  chmod -R a+w "$root/usr/local/rustup" "$root/usr/local/cargo"
  # Where outgoing TLS is re-signed by a local CA (this machine's egress), cargo gets a
  # bundle that trusts it; the system bundle, which the runtime image copies, stays Debian's.
  cainfo=()
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cat "$root/etc/ssl/certs/ca-certificates.crt" /usr/local/share/ca-certificates/*.crt \
      >"$root/usr/local/share/build-ca-bundle.crt"
    cainfo=(--change "ENV CARGO_HTTP_CAINFO=/usr/local/share/build-ca-bundle.crt")
  fi
  tar --numeric-owner -C "$root" -cf - . | "${NICE[@]}" podman import \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV RUST_VERSION=$RUST_VERSION" "${cainfo[@]}" --change 'CMD ["bash"]' \
    - "$RUST_IMAGE" >"$work/import.log" 2>&1 || { cat "$work/import.log"; fail "podman import"; }
  rm -rf "$root"
fi

# ----- The build, from a clean clone -----
step "building deploy/Dockerfile from a clean clone of $(git rev-parse --short HEAD)"
git clone -q --no-hardlinks . "$work/src"
started=$SECONDS
# --layers: every step is cached (cargo-chef's dependency layer until Cargo.lock changes);
# --format docker: the OCI format has no HEALTHCHECK.
"${NICE[@]}" buildah bud --isolation chroot --pull=never --layers --format docker --quiet \
  -f "$work/src/deploy/Dockerfile" -t "$IMAGE" "$work/src" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; fail "buildah bud"; }
echo "built in $((SECONDS - started)) s"

size_mb=$(( $(podman image inspect --format '{{.Size}}' "$IMAGE") / 1000000 ))
echo "image size: $size_mb MB (goal: at most $MAX_IMAGE_MB MB)"
[ "$size_mb" -le "$MAX_IMAGE_MB" ] || fail "the image is $size_mb MB"
healthcheck=$(podman image inspect --format '{{json .HealthCheck.Test}}' "$IMAGE")
[ "$healthcheck" = '["CMD","/usr/local/bin/user-service","healthcheck"]' ] || fail "unexpected HEALTHCHECK $healthcheck"

# ----- Run it -----
step "running it as its user, with a read-only root"
psql "$POSTGRES/postgres" -qc "CREATE DATABASE $database" >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/env" <<EOF
PORT=$port
DATABASE_URL=$POSTGRES/$database
REDIS_URL=$REDIS
CACHE_KEY_PREFIX=$prefix
SECRET_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
SERVICE_API_KEYS=$SERVICE_KEY
EOF
podman run -d --name "$container" --runtime runc \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  --network host --read-only --cap-drop ALL --security-opt no-new-privileges \
  --env-file "$work/env" "$IMAGE" >/dev/null 2>>"$work/podman.log"
base=http://127.0.0.1:$port
for _ in $(seq 1 100); do
  curl -fs -o /dev/null "$base/health/live" && break
  sleep 0.2
done
curl -fs -o /dev/null "$base/health/live" || { podman logs "$container" | tail -20; fail "never live"; }

pid=$(podman inspect --format '{{.State.Pid}}' "$container")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || fail "runs as uid $uid"
root_options=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | head -n1)
case ",$root_options," in *,ro,*) ;; *) fail "the root is mounted $root_options" ;; esac
echo "uid $uid, root mounted $root_options"

status=$(curl -s -o "$work/health" -w '%{http_code}' "$base/health")
[ "$status" = 200 ] || fail "/health answered $status: $(cat "$work/health")"
registered=$(curl -s -w '\n%{http_code}' -H "x-service-key: $SERVICE_KEY" -H 'content-type: application/json' \
  -d '{"name": "Image Test", "email": "image-test@example.com", "password": "StrongPass123!"}' "$base/api/v1/users")
[ "$(tail -n1 <<<"$registered")" = 201 ] || fail "registration answered $registered"
user=$(head -n1 <<<"$registered" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["id"])')
hits() {
  curl -s -H "x-service-key: $SERVICE_KEY" "$base/metrics" \
    | awk '/^user_service_cache_operations_total\{result="hit"\}/ {print $2}' | cut -d. -f1
}
before=$(hits)
for _ in 1 2; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-service-key: $SERVICE_KEY" "$base/api/v1/users/$user")" = 200 ] \
    || fail "GET /api/v1/users/$user"
done
[ "$(hits)" -gt "${before:-0}" ] || fail "the second read was not served from the cache"
echo "/health 200, registration 201, a read served from the Redis cache"

podman healthcheck run "$container" >/dev/null 2>>"$work/podman.log" || fail "the image's HEALTHCHECK failed"
echo "HEALTHCHECK (user-service healthcheck): healthy"

started=$SECONDS
podman stop -t "$GRACE_SECONDS" "$container" >/dev/null 2>>"$work/podman.log"
stopped=$((SECONDS - started))
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$code" = 0 ] || fail "exit status $code after SIGTERM (137: killed after the grace period)"
echo "SIGTERM: stopped in $stopped s, exit status 0 (grace period ${GRACE_SECONDS} s)"

# The layer cache grows by one build layer per source change.
store_gb=$(( $(du -sxk /var/lib/containers/storage 2>/dev/null | cut -f1) / 1000000 ))
if [ "$store_gb" -gt "$MAX_STORE_GB" ]; then
  step "containers-storage holds $store_gb GB: dropping the layer cache"
  buildah rmi --prune >/dev/null 2>&1 || true
fi
step "test-image passed: $size_mb MB"
