-- Submits and webhook deliveries seen, so a repeated request (the same
-- Idempotency-Key, the same delivery id) returns the first build.
CREATE TABLE idempotency_keys (
    key        TEXT   PRIMARY KEY,
    build_id   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
