-- The row trigger as 2026-12-03-000002 made it.
CREATE OR REPLACE FUNCTION refresh_profile_document_of_row() RETURNS trigger
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
