-- Whether an error word (the words the web UI's "Jump to first error"
-- looks for) ends in each stored log chunk, counting a word that began in
-- the step's previous chunk; written with the chunk. "The first error" of
-- a 200 MB log then reads the chunks that may hold one, not the whole log.
-- NULL for chunks stored before this migration: read when searched.
ALTER TABLE log_chunks ADD COLUMN has_error INTEGER;
