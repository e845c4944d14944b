-- Answers of idempotent requests, written in the same transaction as the change they made.
CREATE TABLE idempotency_records (
    caller              text        NOT NULL,
    key                 text        NOT NULL,
    request_fingerprint bytea       NOT NULL,
    response_status     smallint    NOT NULL,
    response_body       bytea       NOT NULL,
    response_location   text,
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    PRIMARY KEY (caller, key)
);

-- The periodic purge of expired records.
CREATE INDEX idempotency_records_expires_at_idx ON idempotency_records (expires_at);
