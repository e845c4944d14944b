-- Notification categories, their revisions, users' choices and the consent history: see
-- the PostgreSQL migration of the same name. Types as in the schema migration.

CREATE TABLE notification_categories (
    key           TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    description   TEXT,
    critical      INTEGER NOT NULL CHECK (critical IN (0, 1)),
    default_email INTEGER NOT NULL CHECK (default_email IN (0, 1)),
    default_push  INTEGER NOT NULL CHECK (default_push IN (0, 1)),
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
) STRICT;

CREATE TABLE category_revisions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT    NOT NULL,
    at            TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    description   TEXT,
    critical      INTEGER NOT NULL CHECK (critical IN (0, 1)),
    default_email INTEGER NOT NULL CHECK (default_email IN (0, 1)),
    default_push  INTEGER NOT NULL CHECK (default_push IN (0, 1)),
    removed       INTEGER NOT NULL CHECK (removed IN (0, 1))
) STRICT;
CREATE INDEX category_revisions_key_at_id_idx ON category_revisions (key, at, id);

CREATE TABLE category_choices (
    user_id      TEXT    NOT NULL REFERENCES notification_preferences (user_id) ON DELETE CASCADE,
    category_key TEXT    NOT NULL REFERENCES notification_categories (key) ON DELETE CASCADE,
    email        INTEGER CHECK (email IN (0, 1)),
    push         INTEGER CHECK (push IN (0, 1)),
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (user_id, category_key),
    CONSTRAINT category_choices_not_empty CHECK (email IS NOT NULL OR push IS NOT NULL)
) STRICT;
CREATE INDEX category_choices_category_key_idx ON category_choices (category_key);

-- AUTOINCREMENT: ids are never reused, also after the newest rows went with their user, so
-- that a cursor never names a row of someone else's later history.
CREATE TABLE consent_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT    NOT NULL REFERENCES notification_preferences (user_id) ON DELETE CASCADE,
    at         TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    old_value  TEXT,
    new_value  TEXT,
    actor_kind TEXT    NOT NULL CHECK (actor_kind IN ('user', 'service', 'trusted')),
    actor_name TEXT    NOT NULL,
    request_id TEXT
) STRICT;
CREATE INDEX consent_history_user_id_id_idx ON consent_history (user_id, id);
CREATE INDEX consent_history_user_id_at_idx ON consent_history (user_id, at);

-- Append-only: rows go only with their user (the cascade), never change.
CREATE TRIGGER consent_history_append_only BEFORE UPDATE ON consent_history
BEGIN
    SELECT RAISE(ABORT, 'consent_history is append-only: rows cannot be updated');
END;
