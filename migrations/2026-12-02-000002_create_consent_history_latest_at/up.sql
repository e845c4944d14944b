-- The latest `at` of a user's consent history, read with a snapshot of its own: a write
-- that appends in the same statement that took the user's consent lock (the preferences
-- update) sees, through this function, the rows of a write it waited for, which the
-- statement's own snapshot (taken before the wait) does not. PL/pgSQL so that it is never
-- inlined into the calling statement, and VOLATILE so that each call takes a new snapshot.
CREATE FUNCTION consent_history_latest_at(for_user uuid) RETURNS timestamptz
    LANGUAGE plpgsql VOLATILE AS
$$
BEGIN
    RETURN (SELECT max(at) FROM consent_history WHERE user_id = for_user);
END
$$;
