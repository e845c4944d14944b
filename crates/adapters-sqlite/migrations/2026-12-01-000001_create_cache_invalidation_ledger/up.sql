-- Invalidations the shared cache (Redis) could not confirm in time: see the PostgreSQL
-- migration of the same name. Types as in the schema migration.
CREATE TABLE cache_invalidation_ledger (
    user_id     TEXT NOT NULL PRIMARY KEY,
    mark        TEXT NOT NULL UNIQUE,
    recorded_at TEXT NOT NULL
) STRICT;
CREATE INDEX cache_invalidation_ledger_recorded_at_idx ON cache_invalidation_ledger (recorded_at);
