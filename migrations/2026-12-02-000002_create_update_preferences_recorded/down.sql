DROP FUNCTION update_preferences_recorded(uuid, boolean, boolean, boolean, time, time, text, timestamptz,
    timestamptz, text, text, text);
