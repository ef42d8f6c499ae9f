DROP INDEX IF EXISTS conversations_queued_idx;
ALTER TABLE conversations DROP COLUMN IF EXISTS queued_at;
