-- Event payloads are stored as the text the server wrote (json, not jsonb):
-- a replayed frame is then byte for byte the live one (jsonb reorders keys
-- and adds spaces), and appending skips jsonb's conversion. Nothing queries
-- inside a payload. This rewrites the table: a busy tenant's kept log
-- (72 h by default) takes seconds, while its processing waits.
ALTER TABLE events ALTER COLUMN payload TYPE JSON USING payload::json;
