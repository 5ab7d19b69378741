-- Agents sharing this database, with a heartbeat.
CREATE TABLE agents (
    name       TEXT   PRIMARY KEY,
    address    TEXT   NOT NULL,
    workers    BIGINT NOT NULL,
    labels     TEXT   NOT NULL,
    version    TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
