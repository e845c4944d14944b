-- Each user's profile as one row, so that a read that misses the cache reads one row by its
-- primary key instead of joining four tables and sorting the devices (see the README's
-- Performance section). Kept by the database, not by the service: every write of a row the
-- profile shows (any writer, any version of the service, a cascade, a hand-written statement,
-- a TRUNCATE, a replica's apply) refreshes it in its own transaction, so it is never behind a
-- committed change; only disabling the triggers (`ALTER TABLE … DISABLE TRIGGER`) gets
-- around them. A user without a document is read with the join.
--
-- `document` is JSON built by `profile_document` below: instants and clock times as integer
-- microseconds (exact, whatever the writer's time zone; a stored 'infinity', which the join
-- cannot read either, as the string "Infinity", which the reader refuses in the same way),
-- devices in the profile's order.

-- The tables whose triggers this creates, all at once and first: taking them one by one, in
-- the order of the statements below, while the previous version keeps writing (a rolling
-- upgrade) deadlocked with its writes (their row locks come in another order). The runner
-- tries a deadlocked migration again.
LOCK TABLE users, notification_preferences, devices, category_choices IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE profile_documents (
    user_id  uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    document text NOT NULL
);

-- The user's document, or NULL when the user or its preferences are not there (in sight of
-- the caller's snapshot). PL/pgSQL, so that the session keeps its plan (PostgreSQL 15 plans
-- the body of a SQL function at every call); the microseconds are written out for the same
-- reason (a SQL helper function, not inlined, cost ~30 µs a call).
CREATE FUNCTION profile_document(target uuid) RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL SAFE AS
$$
DECLARE
    document text;
BEGIN
    SELECT json_build_object(
        'id', u.id, 'name', u.name, 'email', u.email, 'phone', u.phone,
        'created_at', trunc(extract(epoch FROM u.created_at) * 1000000),
        'updated_at', trunc(extract(epoch FROM u.updated_at) * 1000000),
        'preferences', json_build_object(
            'email_enabled', p.email_enabled, 'push_enabled', p.push_enabled,
            'quiet_hours_start', trunc(extract(epoch FROM p.quiet_hours_start) * 1000000),
            'quiet_hours_end', trunc(extract(epoch FROM p.quiet_hours_end) * 1000000),
            'timezone', p.timezone,
            'updated_at', trunc(extract(epoch FROM p.updated_at) * 1000000)),
        'devices', COALESCE((
            SELECT json_agg(json_build_object(
                'id', d.id, 'token', d.token, 'platform', d.platform, 'active', d.active,
                'created_at', trunc(extract(epoch FROM d.created_at) * 1000000),
                'updated_at', trunc(extract(epoch FROM d.updated_at) * 1000000),
                'last_seen_at', trunc(extract(epoch FROM d.last_seen_at) * 1000000))
                ORDER BY d.active DESC, d.last_seen_at DESC, d.id DESC)
            FROM devices AS d WHERE d.user_id = u.id), '[]'),
        'choices', COALESCE((
            SELECT json_agg(json_build_object('category_key', c.category_key, 'email', c.email, 'push', c.push)
                ORDER BY c.category_key)
            FROM category_choices AS c WHERE c.user_id = u.id), '[]')
    )::text
    INTO document
    FROM users AS u JOIN notification_preferences AS p ON p.user_id = u.id
    WHERE u.id = target;
    RETURN document;
END
$$;

-- Rewrites a user's document. Run at commit (the triggers below are deferred), after every
-- other lock of the write was taken: the document's row is the last lock of the transaction,
-- so that writers of one user wait for each other only there and never deadlock on it with
-- the order of their other locks. The document is then built in a statement that starts
-- under that lock: in READ COMMITTED it sees every write that refreshed the document before
-- (they committed before releasing it) and this transaction's own. The last writer to commit
-- writes last, from a snapshot that holds every change before it.
CREATE FUNCTION refresh_profile_document(target uuid) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    fresh text;
BEGIN
    PERFORM 1 FROM profile_documents WHERE user_id = target FOR UPDATE;
    IF NOT FOUND THEN
        -- The user's first document (its registration), or none: no user any more (a
        -- cascade of its erasure), or no preferences yet.
        INSERT INTO profile_documents (user_id, document)
        SELECT target, built.document FROM (SELECT profile_document(target) AS document) AS built
        WHERE built.document IS NOT NULL
        ON CONFLICT (user_id) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
        -- Another transaction wrote it first: take its lock, then build it again.
        PERFORM 1 FROM profile_documents WHERE user_id = target FOR UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT profile_document(target) INTO fresh;
    IF fresh IS NULL THEN
        DELETE FROM profile_documents WHERE user_id = target;
    ELSE
        UPDATE profile_documents SET document = fresh WHERE user_id = target;
    END IF;
END
$$;

-- Row triggers, deferred to the commit (constraint triggers are the deferrable kind). Both
-- owners of a device that changed hands, in UUID order (as every write locking several users).
CREATE FUNCTION refresh_profile_document_of_row() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    owner uuid;
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM refresh_profile_document(NEW.id);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM refresh_profile_document(NEW.user_id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM refresh_profile_document(OLD.user_id);
    ELSE
        FOR owner IN SELECT DISTINCT o FROM unnest(ARRAY[OLD.user_id, NEW.user_id]) AS o ORDER BY o LOOP
            PERFORM refresh_profile_document(owner);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- A user's insert is always followed by its preferences' in the same transaction (no document
-- before those), and its delete takes the document with it (ON DELETE CASCADE): only its
-- updates of what a profile shows (not its password or token version).
CREATE CONSTRAINT TRIGGER users_refresh_profile_document
    AFTER UPDATE ON users DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.name, OLD.email, OLD.phone, OLD.created_at, OLD.updated_at)
          IS DISTINCT FROM (NEW.name, NEW.email, NEW.phone, NEW.created_at, NEW.updated_at))
    EXECUTE FUNCTION refresh_profile_document_of_row();
CREATE CONSTRAINT TRIGGER notification_preferences_refresh_profile_document
    AFTER INSERT OR UPDATE OR DELETE ON notification_preferences DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION refresh_profile_document_of_row();
CREATE CONSTRAINT TRIGGER devices_refresh_profile_document
    AFTER INSERT OR UPDATE OR DELETE ON devices DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION refresh_profile_document_of_row();
CREATE CONSTRAINT TRIGGER category_choices_refresh_profile_document
    AFTER INSERT OR UPDATE OR DELETE ON category_choices DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION refresh_profile_document_of_row();

-- Also when a session replays changes as a replica (`session_replication_role = replica`:
-- logical replication's apply, some restore and sync tools), where ordinary triggers keep
-- quiet: a change that arrives that way is still a change of what the profile shows.
ALTER TABLE users ENABLE ALWAYS TRIGGER users_refresh_profile_document;
ALTER TABLE notification_preferences ENABLE ALWAYS TRIGGER notification_preferences_refresh_profile_document;
ALTER TABLE devices ENABLE ALWAYS TRIGGER devices_refresh_profile_document;
ALTER TABLE category_choices ENABLE ALWAYS TRIGGER category_choices_refresh_profile_document;

-- TRUNCATE fires no row trigger: every document is rewritten (each under its lock, as
-- above), right away (a TRUNCATE trigger cannot wait for the commit). `users` cannot be
-- truncated without this table (its foreign key), which then goes with it.
CREATE FUNCTION refresh_every_profile_document() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM refresh_profile_document(d.user_id) FROM profile_documents AS d ORDER BY d.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER notification_preferences_truncate_profile_documents
    AFTER TRUNCATE ON notification_preferences FOR EACH STATEMENT EXECUTE FUNCTION refresh_every_profile_document();
CREATE TRIGGER devices_truncate_profile_documents
    AFTER TRUNCATE ON devices FOR EACH STATEMENT EXECUTE FUNCTION refresh_every_profile_document();
CREATE TRIGGER category_choices_truncate_profile_documents
    AFTER TRUNCATE ON category_choices FOR EACH STATEMENT EXECUTE FUNCTION refresh_every_profile_document();
ALTER TABLE notification_preferences ENABLE ALWAYS TRIGGER notification_preferences_truncate_profile_documents;
ALTER TABLE devices ENABLE ALWAYS TRIGGER devices_truncate_profile_documents;
ALTER TABLE category_choices ENABLE ALWAYS TRIGGER category_choices_truncate_profile_documents;

-- Every user already there. The tables were locked first: the writes under way had committed
-- and new ones wait until this migration commits, so this statement sees every committed
-- change and none is missed.
INSERT INTO profile_documents (user_id, document)
SELECT built.user_id, built.document
FROM (SELECT u.id AS user_id, profile_document(u.id) AS document FROM users AS u) AS built
WHERE built.document IS NOT NULL;
