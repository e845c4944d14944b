DROP TABLE consent_history;
DROP FUNCTION consent_history_refuse_update();
DROP TABLE category_choices;
DROP TABLE category_revisions;
DROP TABLE notification_categories;
