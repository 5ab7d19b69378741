-- Agents coordinate through this database alone (docs/daemon.md, "Theory
-- of operation"): a claim is an attempt with a lease on the database's
-- clock; an agent renews the leases of its builds; any agent rescues a
-- build whose lease expired; every write carries the attempt (fencing).
ALTER TABLE builds ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN lease_expires_at BIGINT;
ALTER TABLE builds ADD COLUMN agent_id TEXT;
ALTER TABLE builds ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
-- Whether the build may run again after its agent died (`on_agent_lost`).
ALTER TABLE builds ADD COLUMN max_attempts BIGINT NOT NULL DEFAULT 1;
CREATE INDEX builds_lease ON builds (status, lease_expires_at);

-- Per-repository build numbers: one row per repository, bumped in the
-- submit's transaction (no retry on contention).
CREATE TABLE repo_counters (
    repo TEXT   PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO repo_counters (repo, last) SELECT repo, MAX(number) FROM builds GROUP BY repo;

-- Agents by a generated identity; the name is a label for people.
DROP TABLE agents;
CREATE TABLE agents (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    address    TEXT   NOT NULL,
    workers    BIGINT NOT NULL,
    labels     TEXT   NOT NULL,
    version    TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
