-- The embedded store's schema: the same tables as PostgreSQL's, in SQLite's dialect.
--
-- Types: STRICT tables check them. UUIDs are TEXT in the hyphenated lower-case form (which
-- sorts like the bytes); timestamps are TEXT in UTC as diesel writes them
-- ('2026-11-25 09:00:00.5+00:00', which sorts chronologically); times of day are TEXT
-- ('22:00:00'); booleans are INTEGER 0 or 1.
--
-- Needs `PRAGMA foreign_keys = ON` on every connection (the store sets it) for the cascades.

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    phone         TEXT,
    password_hash TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    -- Bumped on every password change that revokes access tokens.
    token_version INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Case-insensitive uniqueness. SQLite's lower() folds ASCII letters only; the service
-- stores addresses already lower-cased by Rust's full Unicode to_lowercase, so this index
-- only has to catch rows written around the service. The store checks it before writing
-- (SQLite does not name the violated constraint).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
-- Pagination order.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);

CREATE TABLE notification_preferences (
    user_id           TEXT    NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email_enabled     INTEGER NOT NULL CHECK (email_enabled IN (0, 1)),
    push_enabled      INTEGER NOT NULL CHECK (push_enabled IN (0, 1)),
    quiet_hours_start TEXT,
    quiet_hours_end   TEXT,
    timezone          TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL,
    CONSTRAINT notification_preferences_quiet_hours_paired
        CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)),
    CONSTRAINT notification_preferences_quiet_hours_not_empty
        CHECK (quiet_hours_start <> quiet_hours_end)
) STRICT;

-- SQLite has no limit on the size of an index entry: tokens of 4096 characters are unique
-- through a plain UNIQUE constraint (PostgreSQL needs a digest).
CREATE TABLE devices (
    id           TEXT    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token        TEXT    NOT NULL,
    platform     TEXT    NOT NULL CHECK (platform IN ('web', 'ios', 'android', 'unknown')),
    active       INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    last_seen_at TEXT    NOT NULL,
    CONSTRAINT devices_token_key UNIQUE (token)
) STRICT;

-- A user's devices in profile order: active first, most recently seen first.
CREATE INDEX devices_user_id_order_idx ON devices (user_id, active DESC, last_seen_at DESC, id DESC);

-- Answers of idempotent requests, written in the same transaction as the change they made.
CREATE TABLE idempotency_records (
    caller              TEXT    NOT NULL,
    key                 TEXT    NOT NULL,
    request_fingerprint BLOB    NOT NULL,
    response_status     INTEGER NOT NULL,
    response_body       BLOB    NOT NULL,
    response_location   TEXT,
    created_at          TEXT    NOT NULL,
    expires_at          TEXT    NOT NULL,
    PRIMARY KEY (caller, key)
) STRICT;

-- The periodic purge of expired records.
CREATE INDEX idempotency_records_expires_at_idx ON idempotency_records (expires_at);
