-- Submits and webhook deliveries seen, so a repeated request (the same
-- Idempotency-Key, the same delivery id) returns the first build.
CREATE TABLE idempotency_keys (
    key        TEXT   PRIMARY KEY,
    build_id   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
