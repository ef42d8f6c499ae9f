ALTER TABLE channels DROP COLUMN IF EXISTS last_webhook_at;
