-- The users whose cached entries a recorded change touched (space-separated UUIDs): a
-- replay of the request invalidates them again before it answers, since the first answer
-- may have been cut short before their invalidation held.
ALTER TABLE idempotency_records ADD COLUMN invalidates TEXT NOT NULL DEFAULT '';
