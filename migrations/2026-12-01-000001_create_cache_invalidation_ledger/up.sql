-- Invalidations the shared cache (Redis) could not confirm in time. While a user is listed,
-- no instance serves that user's cached entry; any instance that reaches Redis invalidates
-- it there and deletes the row (by its mark: a user recorded again meanwhile gets a new
-- mark and stays). No foreign key: a deleted user's entry must be invalidated too.
CREATE TABLE cache_invalidation_ledger (
    user_id     uuid        NOT NULL PRIMARY KEY,
    mark        uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL
);
-- Oldest first, for the replay.
CREATE INDEX cache_invalidation_ledger_recorded_at_idx ON cache_invalidation_ledger (recorded_at);
