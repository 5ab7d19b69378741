-- Builds, their steps, and their logs as ordered chunks.
CREATE TABLE builds (
    id            BIGSERIAL PRIMARY KEY,
    number        BIGINT NOT NULL,
    repo          TEXT   NOT NULL,
    git_ref       TEXT   NOT NULL,
    sha           TEXT,
    version       TEXT,
    pipeline      TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    requested_by  TEXT   NOT NULL,
    requested_at  BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    agent         TEXT,
    parent_id     BIGINT REFERENCES builds (id),
    error         TEXT,
    UNIQUE (repo, number)
);
CREATE INDEX builds_status ON builds (status, id);

CREATE TABLE steps (
    build_id    BIGINT NOT NULL REFERENCES builds (id),
    name        TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    exit_code   BIGINT,
    started_at  BIGINT,
    finished_at BIGINT,
    message     TEXT,
    PRIMARY KEY (build_id, name)
);

CREATE TABLE log_chunks (
    build_id     BIGINT NOT NULL REFERENCES builds (id),
    seq          BIGINT NOT NULL,
    step         TEXT   NOT NULL,
    build_offset BIGINT NOT NULL,
    step_offset  BIGINT NOT NULL,
    data         BYTEA  NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE INDEX log_chunks_step ON log_chunks (build_id, step, seq);
