-- When the agent stored each log chunk (Unix milliseconds): the time of
-- the lines it ends in a log export (`piper logs export`, NDJSON for a
-- log store). NULL for chunks stored before this migration: exported with
-- the build's start.
ALTER TABLE log_chunks ADD COLUMN written_at INTEGER;
