-- What an agent must have to run the build (`requires` in piper.lua), as
-- JSON: NULL until an agent has read the build's piper.lua.
ALTER TABLE builds ADD COLUMN requires TEXT;
