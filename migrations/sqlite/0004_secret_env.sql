-- Variables submitted as secret: given to the build's steps, masked in its
-- log, never returned by the API (only their names are).
ALTER TABLE builds ADD COLUMN secret_env TEXT NOT NULL DEFAULT '{}';
