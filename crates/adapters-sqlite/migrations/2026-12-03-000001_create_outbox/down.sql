DROP TABLE outbox_events;
DROP TABLE event_sequences;
