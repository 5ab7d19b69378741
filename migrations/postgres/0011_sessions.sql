-- Web UI sessions: logging in with an API token gives the browser a random
-- session id in an HttpOnly cookie. Only its hash is kept; any agent
-- sharing the database accepts it until it expires or the user logs out.
CREATE TABLE sessions (
    hash       TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
