ALTER TABLE scheduled_messages DROP COLUMN IF EXISTS sign;
