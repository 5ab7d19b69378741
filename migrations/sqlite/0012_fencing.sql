-- Fencing (docs/daemon.md, "Theory of operation"): each claim of a build
-- takes the next fencing token, larger than every token handed out before
-- it, which its steps see as PIPER_FENCING_TOKEN; and the time of the last
-- renewal of the lease, which a rescue reports.
ALTER TABLE builds ADD COLUMN fence INTEGER;
ALTER TABLE builds ADD COLUMN renewed_at INTEGER;
CREATE INDEX builds_fence ON builds (fence);
