-- Builds, their steps, and their logs as ordered chunks.
CREATE TABLE builds (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    number        INTEGER NOT NULL,
    repo          TEXT    NOT NULL,
    git_ref       TEXT    NOT NULL,
    sha           TEXT,
    version       TEXT,
    pipeline      TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    env           TEXT    NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at  INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    agent         TEXT,
    parent_id     INTEGER REFERENCES builds (id),
    error         TEXT,
    UNIQUE (repo, number)
);
CREATE INDEX builds_status ON builds (status, id);

CREATE TABLE steps (
    build_id    INTEGER NOT NULL REFERENCES builds (id),
    name        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    exit_code   INTEGER,
    started_at  INTEGER,
    finished_at INTEGER,
    message     TEXT,
    PRIMARY KEY (build_id, name)
);

CREATE TABLE log_chunks (
    build_id     INTEGER NOT NULL REFERENCES builds (id),
    seq          INTEGER NOT NULL,
    step         TEXT    NOT NULL,
    build_offset INTEGER NOT NULL,
    step_offset  INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE INDEX log_chunks_step ON log_chunks (build_id, step, seq);
