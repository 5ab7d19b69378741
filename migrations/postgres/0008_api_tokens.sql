-- API tokens of the cluster: every agent sharing the database accepts
-- them. Only a hash is kept (tokens are 256 random bits: a fast hash is
-- enough, no password hashing needed).
CREATE TABLE api_tokens (
    name       TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
