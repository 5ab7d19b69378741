-- One row per scheduled run, so agents sharing a database queue it once.
CREATE TABLE schedule_runs (
    repo     TEXT    NOT NULL,
    pipeline TEXT    NOT NULL,
    minute   INTEGER NOT NULL,
    PRIMARY KEY (repo, pipeline, minute)
);
