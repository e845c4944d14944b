-- Users, their notification preferences and their push devices.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL,
    email         text        NOT NULL,
    phone         text,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Case-insensitive uniqueness; the adapter maps a violation of this index to "email taken".
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
-- Pagination order.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);

CREATE TABLE notification_preferences (
    user_id           uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email_enabled     boolean     NOT NULL,
    push_enabled      boolean     NOT NULL,
    quiet_hours_start time,
    quiet_hours_end   time,
    timezone          text        NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT notification_preferences_quiet_hours_paired
        CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)),
    CONSTRAINT notification_preferences_quiet_hours_not_empty
        CHECK (quiet_hours_start <> quiet_hours_end)
);

-- A unique B-tree entry cannot exceed ~2.7 kB, and tokens may be 4096 characters (web-push
-- endpoints): uniqueness is enforced on a SHA-256 digest instead. The database encoding
-- never changes, so the digest of a given text is immutable.
CREATE FUNCTION device_token_digest(token text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN sha256(convert_to(token, 'UTF8'));

CREATE TABLE devices (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token        text        NOT NULL,
    token_digest bytea       NOT NULL GENERATED ALWAYS AS (device_token_digest(token)) STORED,
    platform     text        NOT NULL CHECK (platform IN ('web', 'ios', 'android', 'unknown')),
    active       boolean     NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    CONSTRAINT devices_token_digest_key UNIQUE (token_digest)
);

CREATE INDEX devices_user_id_idx ON devices (user_id);
