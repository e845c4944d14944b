DROP TRIGGER category_choices_refresh_profile_document ON category_choices;
DROP TRIGGER devices_refresh_profile_document ON devices;
DROP TRIGGER notification_preferences_refresh_profile_document ON notification_preferences;
DROP TRIGGER users_refresh_profile_document ON users;
DROP FUNCTION refresh_profile_document_of_row();
DROP FUNCTION refresh_profile_document(uuid);
DROP FUNCTION profile_document(uuid);
DROP TABLE profile_documents;
