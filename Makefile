# user-service: `make run` starts the service, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/user_service
export DATABASE_URL

.PHONY: run test lint fmt build migrate check clean

## run: build and start the service on port 3001 (creates the database if needed)
run:
	@if command -v psql >/dev/null 2>&1; then \
	  admin_url="$${DATABASE_URL%/*}/postgres"; name="$${DATABASE_URL##*/}"; name="$${name%%\?*}"; \
	  psql "$$admin_url" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$$name'" | grep -q 1 \
	    || psql "$$admin_url" -qc "CREATE DATABASE \"$$name\"" || true; \
	fi
	$(CARGO) run --bin user-service

## test: unit, adapter and API tests against real PostgreSQL and Redis (see tests/with-services.sh)
test:
	@if ! $(CARGO) nextest --version >/dev/null 2>&1; then $(CARGO) install cargo-nextest --locked; fi
	tests/with-services.sh $(CARGO) nextest run --workspace --no-fail-fast

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

## migrate: apply pending migrations to DATABASE_URL
migrate:
	$(CARGO) run --bin user-service -- migrate

clean:
	$(CARGO) clean
