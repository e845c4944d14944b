DROP TRIGGER consent_history_append_only;
DROP TABLE consent_history;
DROP TABLE category_choices;
DROP TABLE category_revisions;
DROP TABLE notification_categories;
