-- The transactional outbox: every write inserts its change events in its own transaction,
-- so that an event exists if and only if its change committed.
--
-- `event_sequences` holds each subject's last sequence number (a user id, or
-- `categories/<key>`): a write takes the next one under the row's lock, the last lock it
-- takes, so that a subject's events are numbered in the order their transactions commit.
--
-- `position` is the insertion order. The relay (one instance at a time, under an advisory
-- lock) gives committed events their `feed_position`, the order of the pull feed (a cursor
-- never skips an event whose transaction committed late), and sets `published_at` once
-- the broker confirmed them.
CREATE TABLE event_sequences (
    subject       text   PRIMARY KEY,
    last_sequence bigint NOT NULL CHECK (last_sequence > 0)
);

CREATE TABLE outbox_events (
    position      bigserial   PRIMARY KEY,
    id            uuid        NOT NULL,
    subject       text        NOT NULL,
    sequence      bigint      NOT NULL CHECK (sequence > 0),
    event_type    text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    data          text        NOT NULL,
    feed_position bigint,
    published_at  timestamptz,
    CONSTRAINT outbox_events_id_key UNIQUE (id),
    CONSTRAINT outbox_events_feed_position_key UNIQUE (feed_position)
);
-- What the relay looks for: events not yet in the feed, not yet published.
CREATE INDEX outbox_events_unsequenced_idx ON outbox_events (position) WHERE feed_position IS NULL;
CREATE INDEX outbox_events_unpublished_idx ON outbox_events (feed_position) WHERE published_at IS NULL;

-- `update_preferences_recorded` (see its migration) also records its change event, when a
-- field changed: the same object as `domain::event::preferences_data`.
DROP FUNCTION update_preferences_recorded(uuid, boolean, boolean, boolean, time, time, text, timestamptz,
    timestamptz, text, text, text);
CREATE FUNCTION update_preferences_recorded(
    for_user uuid, new_email boolean, new_push boolean, set_quiet_hours boolean, new_start time,
    new_end time, new_timezone text, changed_at timestamptz, recorded_at timestamptz,
    by_kind text, by_name text, by_request text, event_id uuid
) RETURNS TABLE (user_id uuid, email_enabled boolean, push_enabled boolean, quiet_hours_start time,
                 quiet_hours_end time, timezone text, updated_at timestamptz)
    LANGUAGE plpgsql AS
$$
DECLARE
    before notification_preferences%ROWTYPE;
    after notification_preferences%ROWTYPE;
    stamp timestamptz;
    changed integer;
    next_sequence bigint;
BEGIN
    SELECT * INTO before FROM notification_preferences AS p WHERE p.user_id = for_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE notification_preferences AS p SET
        email_enabled = COALESCE(new_email, before.email_enabled),
        push_enabled = COALESCE(new_push, before.push_enabled),
        quiet_hours_start = CASE WHEN set_quiet_hours THEN new_start ELSE before.quiet_hours_start END,
        quiet_hours_end = CASE WHEN set_quiet_hours THEN new_end ELSE before.quiet_hours_end END,
        timezone = COALESCE(new_timezone, before.timezone),
        updated_at = changed_at
    WHERE p.user_id = for_user
    RETURNING * INTO after;
    stamp := GREATEST(COALESCE(recorded_at, clock_timestamp()),
                      (SELECT max(latest.at) FROM consent_history AS latest WHERE latest.user_id = for_user));
    INSERT INTO consent_history AS h (user_id, at, field, old_value, new_value, actor_kind, actor_name, request_id)
    SELECT for_user, stamp, change.field, change.old_value, change.new_value, by_kind, by_name, by_request
    FROM (VALUES
        (1, 'preferences.email', before.email_enabled::text, after.email_enabled::text),
        (2, 'preferences.push', before.push_enabled::text, after.push_enabled::text),
        (3, 'preferences.quiet_hours',
            to_char(before.quiet_hours_start, 'HH24:MI') || '-' || to_char(before.quiet_hours_end, 'HH24:MI'),
            to_char(after.quiet_hours_start, 'HH24:MI') || '-' || to_char(after.quiet_hours_end, 'HH24:MI')),
        (4, 'preferences.timezone', before.timezone, after.timezone)
    ) AS change(position, field, old_value, new_value)
    WHERE change.old_value IS DISTINCT FROM change.new_value
    ORDER BY change.position;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed > 0 THEN
        INSERT INTO event_sequences AS s (subject, last_sequence) VALUES (for_user::text, 1)
        ON CONFLICT (subject) DO UPDATE SET last_sequence = s.last_sequence + 1
        RETURNING s.last_sequence INTO next_sequence;
        INSERT INTO outbox_events (id, subject, sequence, event_type, recorded_at, data)
        VALUES (event_id, for_user::text, next_sequence, 'user.preferences.changed', stamp,
            json_build_object(
                'email', after.email_enabled,
                'push', after.push_enabled,
                'quiet_hours_start', to_char(after.quiet_hours_start, 'HH24:MI'),
                'quiet_hours_end', to_char(after.quiet_hours_end, 'HH24:MI'),
                'timezone', after.timezone)::text);
    END IF;
    RETURN QUERY SELECT after.user_id, after.email_enabled, after.push_enabled, after.quiet_hours_start,
        after.quiet_hours_end, after.timezone, after.updated_at;
END
$$;
