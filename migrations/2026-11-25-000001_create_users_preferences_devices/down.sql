DROP TABLE devices;
DROP FUNCTION device_token_digest(text);
DROP TABLE notification_preferences;
DROP TABLE users;
