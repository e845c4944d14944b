-- Bumped on every password change: access tokens carry the version they were issued
-- under and stop working when it moves on.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;
