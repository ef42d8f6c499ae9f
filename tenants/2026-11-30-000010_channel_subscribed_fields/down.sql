ALTER TABLE channels DROP COLUMN IF EXISTS subscribed_fields;
