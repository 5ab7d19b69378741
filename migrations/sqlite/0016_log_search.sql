-- Search over every stored log (issue 33): each line of a finished
-- build's log, indexed by the agents in the background (never while the
-- build writes). FTS5 with the trigram tokenizer: what people search a CI
-- log for is code-like text (paths, symbols, error codes such as E0308,
-- `undefined reference to`), which word tokenizers split apart; trigrams
-- find any substring of 3 or more characters, case aside, with LIKE.
CREATE VIRTUAL TABLE log_search USING fts5(
    text, build_id UNINDEXED, step UNINDEXED, line UNINDEXED,
    tokenize = 'trigram'
);
-- Where the build's log is with log_search: 0 not indexed, 1 being
-- indexed by one agent (claimed at log_index_claimed_at, Unix ms; a claim
-- left by an agent that died is taken again after ten minutes), 2 indexed.
ALTER TABLE builds ADD COLUMN log_indexed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN log_index_claimed_at INTEGER;
CREATE INDEX builds_log_indexed ON builds (log_indexed, id);
