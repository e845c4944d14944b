# user-service: `make run` starts the service, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test test-image lint fmt build migrate check clean bench

## run: build and start the service on port 3001. Without DATABASE_URL and REDIS_URL (in
## the environment or .env) it runs on the embedded default: SQLite under ./data and an
## in-process cache, no servers needed.
run:
	$(CARGO) run --bin user-service

## test: unit, adapter and API tests against real PostgreSQL and Redis (see tests/with-services.sh),
## then the OpenAPI document against the running service (schemathesis, tests/contract.sh)
test:
	@if ! $(CARGO) nextest --version >/dev/null 2>&1; then $(CARGO) install cargo-nextest --locked; fi
	tests/with-services.sh bash -c '$(CARGO) nextest run --workspace --no-fail-fast && CARGO=$(CARGO) tests/contract.sh'

## test-image: build deploy/Dockerfile from a clean clone with buildah and run the image with
## podman against the local PostgreSQL and Redis (as root; see tests/image.sh)
test-image:
	tests/image.sh

## lint: formatting and clippy with warnings denied
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

check:
	$(CARGO) check --workspace --all-targets

## build: optimized binary at target/release/user-service
build:
	$(CARGO) build --release --bin user-service

## bench: release build, then load figures on PostgreSQL + Redis beside same-run references
## (framework ceiling, pgbench, raw argon2id) → bench-results/latest.md (see crates/bench/bench.py)
bench:
	CARGO="$(CARGO)" python3 crates/bench/bench.py

## migrate: apply pending migrations to the configured store
migrate:
	$(CARGO) run --bin user-service -- migrate

clean:
	$(CARGO) clean
