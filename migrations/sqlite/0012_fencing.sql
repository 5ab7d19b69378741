-- Fencing (docs/daemon.md, "Theory of operation"): each claim of a build
-- takes the next fencing token, larger than every token handed out before
-- it, which its steps see as PIPER_FENCING_TOKEN; and the time of the last
-- renewal of the lease, which a rescue reports.
ALTER TABLE builds ADD COLUMN fence INTEGER;
ALTER TABLE builds ADD COLUMN renewed_at INTEGER;
CREATE INDEX builds_fence ON builds (fence);

-- An agent's own lease (its --lease: when it counts as offline without a
-- heartbeat) and its state: running, draining (stopping after SIGTERM) or
-- stopped.
ALTER TABLE agents ADD COLUMN lease_ms INTEGER NOT NULL DEFAULT 30000;
ALTER TABLE agents ADD COLUMN state TEXT NOT NULL DEFAULT 'running';

-- The pipeline's arguments (`piper submit PIPELINE -- ARGS`), as a JSON
-- list: "$1".. in its shell commands, ctx.args in its Lua functions.
ALTER TABLE builds ADD COLUMN args TEXT NOT NULL DEFAULT '[]';

-- Commits sent over the API (`piper submit` to an agent on another
-- machine): a git bundle by the blake3 digest of its bytes; a build names
-- it as its repository, `bundle:DIGEST`.
CREATE TABLE bundles (
    digest     TEXT PRIMARY KEY,
    data       BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
