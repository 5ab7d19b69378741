-- Search over every stored log (issue 33): each line of a finished
-- build's log, indexed by the agents in the background (never while the
-- build writes). A trigram index (pg_trgm, trusted: no superuser needed)
-- rather than PostgreSQL's word search: what people search a CI log for
-- is code-like text (paths, symbols, error codes such as E0308,
-- `undefined reference to`), which to_tsvector splits and stems; trigrams
-- find any substring of 3 or more characters, case aside, with ILIKE.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE log_search (
    build_id BIGINT NOT NULL REFERENCES builds (id),
    step     TEXT   NOT NULL,
    line     BIGINT NOT NULL,
    text     TEXT   NOT NULL
);
CREATE INDEX log_search_text ON log_search USING gin (text gin_trgm_ops);
CREATE INDEX log_search_build ON log_search (build_id);
-- Where the build's log is with log_search: 0 not indexed, 1 being
-- indexed by one agent (claimed at log_index_claimed_at, Unix ms; a claim
-- left by an agent that died is taken again after ten minutes), 2 indexed.
ALTER TABLE builds ADD COLUMN log_indexed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN log_index_claimed_at BIGINT;
CREATE INDEX builds_log_indexed ON builds (log_indexed, id);
