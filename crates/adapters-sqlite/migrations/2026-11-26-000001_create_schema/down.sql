DROP TABLE idempotency_records;
DROP TABLE devices;
DROP TABLE notification_preferences;
DROP TABLE users;
