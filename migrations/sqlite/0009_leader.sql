-- The agent doing the cluster's periodic work (rescue, schedules): whoever
-- holds this row's lease (on the database clock). scheduled_until is the
-- last minute whose schedules were queued, so a new leader catches up.
CREATE TABLE cluster_leader (
    name            TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    expires_at      INTEGER NOT NULL,
    scheduled_until INTEGER
);
