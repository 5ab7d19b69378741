-- Agents sharing this database, with a heartbeat.
CREATE TABLE agents (
    name       TEXT    PRIMARY KEY,
    address    TEXT    NOT NULL,
    workers    INTEGER NOT NULL,
    labels     TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);
