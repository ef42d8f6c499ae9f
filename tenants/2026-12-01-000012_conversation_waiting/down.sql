DROP INDEX IF EXISTS conversations_waiting_idx;
ALTER TABLE conversations DROP COLUMN IF EXISTS waiting_since;
