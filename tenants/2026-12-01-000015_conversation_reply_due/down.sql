ALTER TABLE conversations DROP COLUMN IF EXISTS reply_due_at;
