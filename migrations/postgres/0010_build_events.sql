-- The executor's typed events of each build, beside its log chunks and in
-- one order with them (seq is shared): what remote followers render exactly
-- as a local run. Output stays in log_chunks; a chunk that only repeats an
-- event for the raw log (`$ command`, retries, warnings) is an annotation.
CREATE TABLE build_events (
    build_id BIGINT NOT NULL REFERENCES builds (id),
    seq      BIGINT NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
ALTER TABLE log_chunks ADD COLUMN annotation BOOLEAN NOT NULL DEFAULT FALSE;
