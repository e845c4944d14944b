-- Notification categories (an operator-managed catalogue with its revisions), users' own
-- choices in them, and the consent history.

CREATE TABLE notification_categories (
    key           text        PRIMARY KEY,
    name          text        NOT NULL,
    description   text,
    critical      boolean     NOT NULL,
    default_email boolean     NOT NULL,
    default_push  boolean     NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Every create, update and removal of a category appends what it became, so that what a
-- category was at an instant (its defaults, whether it was critical) can be answered.
-- No foreign key: the revisions outlive the category.
CREATE TABLE category_revisions (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key           text        NOT NULL,
    at            timestamptz NOT NULL,
    name          text        NOT NULL,
    description   text,
    critical      boolean     NOT NULL,
    default_email boolean     NOT NULL,
    default_push  boolean     NOT NULL,
    removed       boolean     NOT NULL
);
CREATE INDEX category_revisions_key_at_id_idx ON category_revisions (key, at, id);

-- A user's own choice in a category; NULL on a channel follows the category's default. A
-- choice that says nothing is deleted rather than stored.
--
-- This table and the history refer to their user through its preferences row, which is
-- created and erased with the user (the cascade goes on to them): that row is the user's
-- consent lock, which every write of a consent holds before it writes here, so that the
-- check of the reference takes no lock on `users` that erasing the user could be waiting
-- for (a deadlock).
CREATE TABLE category_choices (
    user_id      uuid        NOT NULL REFERENCES notification_preferences (user_id) ON DELETE CASCADE,
    category_key text        NOT NULL REFERENCES notification_categories (key) ON DELETE CASCADE,
    email        boolean,
    push         boolean,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, category_key),
    CONSTRAINT category_choices_not_empty CHECK (email IS NOT NULL OR push IS NOT NULL)
);
-- Who has choices in a category (its removal).
CREATE INDEX category_choices_category_key_idx ON category_choices (category_key);

-- Every change of a user's consent, appended in the transaction of the change. Append-only:
-- the trigger below refuses updates; rows go only with their user (the right to erasure
-- wins over the record). `at` never decreases along a user's rows in `id` order.
CREATE TABLE consent_history (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES notification_preferences (user_id) ON DELETE CASCADE,
    at         timestamptz NOT NULL,
    field      text        NOT NULL,
    old_value  text,
    new_value  text,
    actor_kind text        NOT NULL CHECK (actor_kind IN ('user', 'service', 'trusted')),
    actor_name text        NOT NULL,
    request_id text
);
-- Pages, newest first; and the latest `at` of a user.
CREATE INDEX consent_history_user_id_id_idx ON consent_history (user_id, id);
-- The changes after an instant.
CREATE INDEX consent_history_user_id_at_idx ON consent_history (user_id, at);

CREATE FUNCTION consent_history_refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'consent_history is append-only: rows cannot be updated';
END
$$;

CREATE TRIGGER consent_history_append_only
    BEFORE UPDATE ON consent_history
    FOR EACH ROW EXECUTE FUNCTION consent_history_refuse_update();
