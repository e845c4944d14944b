DROP FUNCTION update_preferences_recorded(uuid, boolean, boolean, boolean, time, time, text, timestamptz,
    timestamptz, text, text, text, uuid);
CREATE FUNCTION update_preferences_recorded(
    for_user uuid, new_email boolean, new_push boolean, set_quiet_hours boolean, new_start time,
    new_end time, new_timezone text, changed_at timestamptz, recorded_at timestamptz,
    by_kind text, by_name text, by_request text
) RETURNS TABLE (user_id uuid, email_enabled boolean, push_enabled boolean, quiet_hours_start time,
                 quiet_hours_end time, timezone text, updated_at timestamptz)
    LANGUAGE plpgsql AS
$$
DECLARE
    before notification_preferences%ROWTYPE;
    after notification_preferences%ROWTYPE;
    stamp timestamptz;
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
    RETURN QUERY SELECT after.user_id, after.email_enabled, after.push_enabled, after.quiet_hours_start,
        after.quiet_hours_end, after.timezone, after.updated_at;
END
$$;
DROP TABLE outbox_events;
DROP TABLE event_sequences;
