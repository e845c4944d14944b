-- The transactional outbox: see the PostgreSQL migration of the same name. Writes are
-- serialized here, so `position` is also the order in which they committed: the relay gives
-- an event its `position` as its feed position.
CREATE TABLE event_sequences (
    subject       TEXT    NOT NULL PRIMARY KEY,
    last_sequence INTEGER NOT NULL CHECK (last_sequence > 0)
) STRICT;

CREATE TABLE outbox_events (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    subject       TEXT    NOT NULL,
    sequence      INTEGER NOT NULL CHECK (sequence > 0),
    event_type    TEXT    NOT NULL,
    recorded_at   TEXT    NOT NULL,
    data          TEXT    NOT NULL,
    feed_position INTEGER UNIQUE,
    published_at  TEXT
) STRICT;
CREATE INDEX outbox_events_unsequenced_idx ON outbox_events (position) WHERE feed_position IS NULL;
CREATE INDEX outbox_events_unpublished_idx ON outbox_events (feed_position) WHERE published_at IS NULL;
