ALTER TABLE conversations DROP COLUMN IF EXISTS contact_delivered_at, DROP COLUMN IF EXISTS contact_read_at;
