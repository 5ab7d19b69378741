-- How many lines (newline bytes) each stored log chunk holds, written with
-- the chunk: the web UI's log view goes to a line number, and says how many
-- lines lie before and after what it shows, by adding these up instead of
-- reading the whole log. NULL for chunks stored before this migration:
-- counted (and filled in) when first needed.
ALTER TABLE log_chunks ADD COLUMN lines INTEGER;
