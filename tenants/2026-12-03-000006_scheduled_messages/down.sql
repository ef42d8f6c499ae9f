ALTER TABLE conversations DROP COLUMN IF EXISTS next_scheduled_at;
DROP TABLE IF EXISTS scheduled_messages;
