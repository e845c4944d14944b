DROP FUNCTION consent_history_latest_at(uuid);
